"""Shared fixtures: a small synthetic Kvasir-like set, an isolated cache (empty, or holding the
tiny config's features), a CLI runner, a tiny experiment config and study spec, a fresh MLflow
store, a registered model to evaluate; `one_error_line` for refused commands.

What tests only read is built once per session: MLflow's migrations (8-10 s per fresh store on 2
loaded cores, 0.2 s for a copy of a migrated one) and the tiny config's feature pass (3-12 s)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from typer.testing import CliRunner, Result

from polypseg.data.synthetic import make_synthetic


def one_error_line(result: Result) -> str:
    """The one stderr line of a refused command: exit 2, no traceback (the CLI's promise)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def unavailable(reason: str) -> NoReturn:
    """A test's service or tool is missing: skipped here, failed in CI (which installs it)."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test gets its own $POLYPSEG_CACHE: no test reads another's features or checkpoints."""
    cache = tmp_path_factory.mktemp("polypseg-cache")
    monkeypatch.setenv("POLYPSEG_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def tiny_features(tiny_config_text: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A $POLYPSEG_CACHE holding the tiny config's features, built once; copied, never lent."""
    from polypseg.config import load_config
    from polypseg.features.prepare import prepare

    cache = tmp_path_factory.mktemp("tiny-features")
    config = tmp_path_factory.mktemp("tiny-config") / "tiny.toml"
    config.write_text(tiny_config_text)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("POLYPSEG_CACHE", str(cache))
        prepare(load_config(config), progress=False)
    return cache


@pytest.fixture
def tiny_cache(isolated_cache: Path, tiny_features: Path) -> Path:
    """`isolated_cache` already holding the tiny config's features: for tests that train on
    `tiny_config` and neither count encoder calls nor damage the cache (those keep it empty)."""
    shutil.copytree(tiny_features, isolated_cache, dirs_exist_ok=True)
    return isolated_cache


@pytest.fixture(autouse=True)
def tracking_uri_of_its_own(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A test's `mlflow.set_tracking_uri` (polypseg's `setup` calls it) ends with the test: it
    sets a process-wide URI and MLFLOW_TRACKING_URI, which would beat the next test's store."""
    yield
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-pair synthetic set (images/, masks/), shared read-only by the whole session."""
    return make_synthetic(tmp_path_factory.mktemp("data") / "synthetic12", n=12, seed=7)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def tiny_config(tiny_config_text: str, tmp_path: Path) -> Path:
    """A CPU-sized experiment over the 12-pair set: 64 px, the tiny SAM, a narrow decoder."""
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_config_text)
    return path


@pytest.fixture(scope="session")
def tiny_config_text(synthetic_root: Path) -> str:
    """The text of `tiny_config`, for fixtures that outlive one test."""
    return f"""
[data]
source = "local"
root = "{synthetic_root}"
image_size = 64

[encoder]
name = "sam_tiny"
allow_random_weights = true

[decoder]
width = 16

[train]
epochs = 3
batch_size = 4
lr = 3e-3
device = "cpu"

[tracking]
experiment = "tests"
registered_model = "polypseg-test"
"""


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with every migration applied and no experiment yet: MLflow
    makes its Default experiment when it opens a copy, where that copy's store lives."""
    import mlflow

    database = tmp_path_factory.mktemp("migrated-store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{database}").search_experiments()
    with sqlite3.connect(database) as db:
        db.execute("DELETE FROM experiments")
    db.close()
    return database


_COPYING = threading.Lock()  # trials in threads may open one fresh store at once


def copy_migrated_stores(patch: pytest.MonkeyPatch, template: Path) -> None:
    """While `patch` lasts, a SQLite MLflow store that does not exist yet (in a folder that does)
    starts as a copy of `template` instead of running MLflow's migrations: the same database,
    in 0.2 s instead of 8-10. Stores made by subprocesses still migrate, as users' do."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore

    def copied_first(init: Callable[..., None]) -> Callable[..., None]:
        def __init__(self: object, db_uri: str, *args: object, **kwargs: object) -> None:
            database = Path(db_uri.removeprefix("sqlite:///"))
            if db_uri.startswith("sqlite:///") and ":memory:" not in db_uri and "?" not in db_uri:
                with _COPYING:
                    if not database.exists() and database.parent.is_dir():
                        partial = database.with_name(f".{database.name}.copying")
                        shutil.copyfile(template, partial)
                        partial.replace(database)
            init(self, db_uri, *args, **kwargs)

        return __init__

    for store in (TrackingStore, RegistryStore):
        patch.setattr(store, "__init__", copied_first(store.__init__))


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_store: Path) -> str:
    """A SQLite MLflow store in a temporary working directory; returns its URI. The file does
    not exist until something opens the store (tests check that refusals make none); it then
    starts as a copy of `migrated_store`, as does any other fresh store the test opens."""
    copy_migrated_stores(monkeypatch, migrated_store)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return uri


STUDY_SPEC = """
[study]
name = "{name}"
epochs = {epochs}

[sampler]
name = "tpe"
seed = 1

[pruner]
name = "{pruner}"

[space."decoder.width"]
type = "categorical"
choices = [8, 16]

[space."train.lr"]
type = "float"
low = 1e-3
high = 1e-2
log = true

[space."train.dice_weight"]
type = "float"
low = 0.0
high = 1.0
"""


@pytest.fixture
def study_spec(tmp_path: Path) -> Callable[..., Path]:
    """Writes a small study spec (the tiny config's search space); returns its path."""

    def write(name: str = "s", epochs: int = 2, pruner: str = "none") -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(STUDY_SPEC.format(name=name, epochs=epochs, pruner=pruner))
        return path

    return write


@pytest.fixture(scope="session")
def registered_model(tmp_path_factory: pytest.TempPathFactory, migrated_store: Path) -> dict:
    """A model trained on 16 synthetic pairs, registered as polypseg-eval@champion, shared by
    the evaluation and prediction tests (training it once keeps the suite quick)."""
    import mlflow

    from polypseg.config import load_config
    from polypseg.features.prepare import prepare
    from polypseg.tracking.runs import tracked_run
    from polypseg.tracking.store import setup
    from polypseg.training.run import train_and_log

    base = tmp_path_factory.mktemp("evaluate")
    root = make_synthetic(base / "data", n=16, seed=3)
    uri = f"sqlite:///{base / 'mlruns' / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("POLYPSEG_CACHE", str(base / "cache"))
        copy_migrated_stores(patch, migrated_store)
        config = load_config(
            None,
            {
                "data.source": "local",
                "data.root": str(root),
                "data.image_size": 64,
                "encoder.name": "sam_tiny",
                "encoder.allow_random_weights": True,
                "decoder.width": 16,
                "train.epochs": 3,
                "train.device": "cpu",
            },
        )
        setup("eval-tests", uri)
        with tracked_run() as run:
            train_and_log(prepare(config, progress=False), config, log_model=True)
        version = mlflow.register_model(f"runs:/{run.info.run_id}/model", "polypseg-eval")
        mlflow.MlflowClient().set_registered_model_alias(
            "polypseg-eval", "champion", version.version
        )
    return {
        "root": root,
        "uri": uri,
        "base": base,
        "version": version.version,
        "run_id": run.info.run_id,
    }


@pytest.fixture
def model_env(registered_model: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    """The registered model's store as MLFLOW_TRACKING_URI, in a fresh working directory."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered_model["uri"])
    monkeypatch.chdir(tmp_path)
    return registered_model
