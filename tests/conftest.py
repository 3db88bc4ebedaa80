"""Shared fixtures: a small synthetic Kvasir-like set, an isolated cache, a CLI runner, a tiny
experiment config and study spec, a fresh MLflow store, a registered model to evaluate;
`one_error_line` for refused commands."""

from __future__ import annotations

import os
import sys
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


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite MLflow store in a temporary working directory; returns its URI."""
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
def registered_model(tmp_path_factory: pytest.TempPathFactory) -> dict:
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
