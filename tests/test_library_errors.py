"""What MLflow, Optuna and the OS refuse, as one line naming the value and the fix (exit 2 from
the CLI), found before any work and with nothing half written: names MLflow refuses, a store
made by another MLflow version, locked by another process or holding a deleted experiment of
the name, an artifact folder that is a file, tracking URIs that name no store, a journal on a
device, a data root with unreadable folders. And `models:/m-<id>` (a logged model) is described.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import one_error_line
from typer.testing import CliRunner, Result

from polypseg.cli import app
from polypseg.data.pairs import list_pairs
from polypseg.data.sets import find_dataset_root
from polypseg.errors import DataError, StoreError
from polypseg.tracking.store import setup
from polypseg.tuning import storage


def _error_line(result: Result) -> str:
    """The one `error:` line of a refused command (MLflow's INFO lines creating a fresh store
    may come before it)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def _tune(tiny_config: Path, spec: Path, *extra: str) -> list[str]:
    return ["tune", "--trials", "1", "--config", str(tiny_config), "--study", str(spec), *extra]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--study-name", "a'b"], "quote"),
        (["--study-name", "s" * 251], "251 characters"),
        (["--set", "tracking.registered_model=a/b"], "tracking.registered_model = 'a/b'"),
    ],
)
def test_names_mlflow_refuses_are_one_line_before_any_work(
    runner: CliRunner, tiny_config: Path, study_spec, mlflow_store: str, extra, named, tmp_path
) -> None:
    line = one_error_line(runner.invoke(app, _tune(tiny_config, study_spec(), *extra)))
    assert named in line, line
    assert "choose another" in line, line
    # Refused before the study, the store or the cache was touched.
    assert not (tmp_path / "studies").exists() and not (tmp_path / "mlruns").exists()
    assert not any(Path(os.environ["POLYPSEG_CACHE"]).iterdir())


def _store(folder: Path, experiment: str = "e") -> str:
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    setup(experiment, uri)
    return uri


def _copy_with_revision(uri: str, folder: Path, revision: str) -> str:
    """A copy of the store at a new URI (MLflow checks a URI's schema once per process) whose
    schema revision is `revision`."""
    folder.mkdir()
    shutil.copy(uri[len("sqlite:///") :], folder / "mlflow.db")
    with sqlite3.connect(folder / "mlflow.db") as db:
        db.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    return f"sqlite:///{folder / 'mlflow.db'}"


def test_a_store_from_another_mlflow_version_says_upgrade_or_use_that_version(
    tmp_path: Path,
) -> None:
    uri = _store(tmp_path / "made")
    older = _copy_with_revision(uri, tmp_path / "older", "0584bdc529eb")  # one MLflow 2 knew
    with pytest.raises(StoreError, match=r"another MLflow version .*mlflow db upgrade sqlite:///"):
        setup("e", older)
    newer = _copy_with_revision(uri, tmp_path / "newer", "0a1b2c3d4e5f")
    with pytest.raises(StoreError, match=r"unknown to MLflow .*use the MLflow version that made"):
        setup("e", newer)


def test_a_store_locked_by_another_process_is_one_line(tmp_path: Path) -> None:
    database = tmp_path / "mlflow.db"
    holder = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE held (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match=rf"{database} is locked by another process"):
            setup("e", f"sqlite:///{database}")
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_study_storage_locked_longer_than_the_wait_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage.make_storage(url)
    monkeypatch.setattr(storage, "SQLITE_LOCK_WAIT_S", 0.2)
    holder = sqlite3.connect(tmp_path / "optuna.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match=r"optuna.db is locked by another process"):
            storage.make_storage(url)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_deleted_experiment_of_the_name_says_restore_or_gc(tmp_path: Path) -> None:
    import mlflow

    uri = _store(tmp_path, "gone")
    experiment_id = mlflow.get_experiment_by_name("gone").experiment_id
    mlflow.delete_experiment(experiment_id)
    with pytest.raises(StoreError) as refused:
        setup("gone", uri)
    line = str(refused.value)
    assert f"'gone' (id {experiment_id})" in line and "is deleted" in line, line
    assert f"mlflow experiments restore -x {experiment_id}" in line, line
    assert f"MLFLOW_TRACKING_URI={uri} mlflow gc" in line, line
    assert "another experiment name" in line, line


def test_an_artifact_folder_that_is_a_file_is_one_line_before_training(
    runner: CliRunner, tiny_config: Path, mlflow_store: str, tmp_path: Path
) -> None:
    import mlflow

    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "artifacts").write_text("not a folder")
    line = _error_line(runner.invoke(app, ["train", "--config", str(tiny_config)]))
    assert f"{tmp_path / 'mlruns' / 'artifacts'} is a file, not a folder" in line, line
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list")


@pytest.mark.parametrize(
    ("uri", "said"),
    [
        ("", "the tracking URI is empty"),
        ("sqlite:///", "names no file"),
        ("sqlite://", "in-memory database"),
        ("FOLDER", ", a folder; name the database file"),
    ],
)
def test_tracking_uris_that_name_no_store_are_one_line(
    runner: CliRunner, tiny_config: Path, mlflow_store: str, tmp_path: Path, uri: str, said: str
) -> None:
    uri = f"sqlite:///{tmp_path}" if uri == "FOLDER" else uri
    args = ["train", "--config", str(tiny_config), "--tracking-uri", uri]
    line = one_error_line(runner.invoke(app, args))
    assert said in line and "sqlite:///" in line, line


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # its log would share the command's stderr
        pass


@pytest.fixture
def html_server(tmp_path: Path) -> Iterator[str]:
    """A web server on loopback that is not MLflow: 404 and HTML to every API call."""
    handler = functools.partial(_QuietFiles, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_that_is_not_mlflow_is_one_line(
    runner: CliRunner, tiny_config: Path, html_server: str
) -> None:
    args = ["train", "--config", str(tiny_config), "--tracking-uri", html_server]
    line = one_error_line(runner.invoke(app, args))
    assert f"{html_server} is not an MLflow tracking server (it answered 404" in line, line


@pytest.mark.parametrize("target", ["/dev/null", "FOLDER"])
def test_a_study_storage_on_a_device_or_folder_is_refused(tmp_path: Path, target: str) -> None:
    path = str(tmp_path) if target == "FOLDER" else target
    kind = "a folder" if target == "FOLDER" else "a device or special file"
    with pytest.raises(StoreError, match=rf"journal:{path} names {path}, {kind}; name a file"):
        storage.check_storage_url(f"journal:{path}")
    assert Path("/dev/null").is_char_device()


def _refusing(original, refused: Path):  # noqa: ANN001, ANN202 - os.scandir's or iterdir's shape
    def call(path, *args):  # noqa: ANN001, ANN202
        if Path(path) == refused:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return original(path, *args)

    return call


def test_a_walk_that_meets_an_unreadable_folder_names_it(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(synthetic_root, tmp_path / "sets" / "kvasir")
    locked = tmp_path / "sets" / "private"
    locked.mkdir()
    # As root, chmod 000 does not stop reading: the refusal is simulated where the walk reads.
    monkeypatch.setattr(os, "scandir", _refusing(os.scandir, locked))
    with pytest.raises(DataError, match=rf"cannot read {locked} \(permission denied\)"):
        find_dataset_root(tmp_path / "sets")
    assert find_dataset_root(tmp_path / "sets" / "kvasir") == tmp_path / "sets" / "kvasir"


def test_an_unreadable_images_folder_is_one_line(
    runner: CliRunner, synthetic_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Path, "iterdir", _refusing(Path.iterdir, synthetic_root / "images"))
    with pytest.raises(DataError, match=rf"cannot read {synthetic_root / 'images'}"):
        list_pairs(synthetic_root)
    line = one_error_line(runner.invoke(app, ["data", "split", "--root", str(synthetic_root)]))
    assert f"cannot read {synthetic_root / 'images'} (permission denied)" in line, line


def test_a_logged_unregistered_model_uri_is_described_by_its_run(model_env: dict) -> None:
    import mlflow

    from polypseg.evaluation.predictors import Predictor

    client = mlflow.MlflowClient()
    run = client.get_run(model_env["run_id"])
    (logged,) = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    uri = f"models:/{logged.model_id}"  # MLflow 3's URI of a model logged by a run
    described = Predictor(uri).describe()
    assert described == {
        "model": uri,
        "model_name": None,
        "model_version": None,
        "model_run_id": model_env["run_id"],
    }
