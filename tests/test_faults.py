"""Stores that fail under a command: read-only folders, a full disk, unreachable or unknown
tracking URIs, a journal path that cannot be created. Each is one line, exit 2, no traceback,
and nothing already stored is lost.

Read-only folders and full disks are real: the command runs in its own mount namespace
(`unshare -m`, which needs root) where the store folder is bind-mounted read-only, or is a small
tmpfs filled to the brim. The mounts vanish with the command. Without root those tests are
skipped, and fail in CI (which runs as root).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import copy_migrated_stores, unavailable
from typer.testing import CliRunner

from polypseg.cli import app

CLI = "import sys; from polypseg.cli import main; sys.argv[0] = 'polypseg'; main()"


def _polypseg(*args: str, cwd: Path, setup: str = "", after: str = ":", timeout: float = 300):
    """`polypseg ARGS` in a subprocess; with `setup`, in its own mount namespace: `setup`, the
    command, then `after` (shell lines), so the mounts vanish with it."""
    command = [sys.executable, "-c", CLI, *args]
    if setup:
        script = f'set -e; {setup}; set +e; "$@"; rc=$?; {after}; exit $rc'
        command = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *command]
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


def _error_line(result: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a command that failed cleanly (exit 2, no traceback)."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def _read_only(folder: Path) -> str:
    return f'mount --bind "{folder}" "{folder}"; mount -o remount,ro,bind "{folder}"'


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_config_text: str) -> Path:
    """A working folder whose `mlruns/` holds one finished training run with its model, and
    whose `studies/` holds a study of one trial: the stores the fault tests break."""
    folder = tmp_path_factory.mktemp("store")
    (folder / "tiny.toml").write_text(tiny_config_text)
    (folder / "spec.toml").write_text(
        """
[study]
name = "faults"
epochs = 1
[pruner]
name = "none"
[space."train.lr"]
type = "float"
low = 1e-3
high = 1e-2
"""
    )
    env = {**os.environ, "POLYPSEG_CACHE": str(folder / "cache")}
    env.pop("MLFLOW_TRACKING_URI", None)
    for args in (["train", "--config", "tiny.toml"], _tune_args()):
        done = subprocess.run(
            [sys.executable, "-c", CLI, *args], cwd=folder, capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr[-3000:]
    return folder


def _tune_args() -> list[str]:
    return ["tune", "--trials", "1", "--config", "tiny.toml", "--study", "spec.toml"]


@pytest.fixture(scope="module")
def mounts(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A mount namespace where this process may mount: skipped without one, failed in CI."""
    folder = tmp_path_factory.mktemp("mount-probe")
    probe = ["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs"]
    try:
        done = subprocess.run([*probe, str(folder)], capture_output=True, text=True, timeout=30)
        said = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        reason = said[-1] if done.returncode else ""
    except FileNotFoundError:
        reason = "unshare is not installed (util-linux)"
    if reason:
        unavailable(f"needs root to mount in its own namespace (unshare -m): {reason}")


@pytest.fixture
def workdir(mounts: None, store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The store's folder, to run in with the default stores under it. Tests change nothing
    there: their writes fail, or go to a tmpfs mounted over it in their own namespace (a copy
    elsewhere would not do: the experiment's artifact location is an absolute path)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return store


def _run_statuses(database: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(database) as db:
        return sorted(db.execute("select run_uuid, status from runs").fetchall())


def _model_uri(work: Path) -> str:
    with sqlite3.connect(work / "mlruns" / "mlflow.db") as db:
        (run_id,) = db.execute("select run_uuid from runs order by start_time limit 1").fetchone()
    return f"runs:/{run_id}/model"


@pytest.mark.parametrize("command", ["train", "tune", "evaluate"])
def test_a_read_only_mlflow_store_is_one_line(workdir: Path, command: str) -> None:
    before = _run_statuses(workdir / "mlruns" / "mlflow.db")
    args = {
        "train": ["train", "--config", "tiny.toml", "--no-log-model"],
        "tune": _tune_args(),
        "evaluate": ["evaluate", "--model", _model_uri(workdir), "--root", _data_root(workdir)],
    }[command]
    line = _error_line(_polypseg(*args, cwd=workdir, setup=_read_only(workdir / "mlruns")))
    assert str(workdir / "mlruns") in line and "read-only" in line, line
    assert _run_statuses(workdir / "mlruns" / "mlflow.db") == before


def _data_root(work: Path) -> str:
    for line in (work / "tiny.toml").read_text().splitlines():
        if line.startswith("root = "):
            return line.split('"')[1]
    raise AssertionError("the tiny config names its data root")


def test_a_read_only_study_storage_is_one_line(workdir: Path) -> None:
    line = _error_line(_polypseg(*_tune_args(), cwd=workdir, setup=_read_only(workdir / "studies")))
    assert str(workdir / "studies") in line and "read-only" in line, line


def _full_disk(folder: Path, staging: Path, free_kib: int) -> str:
    """Shell lines: `folder` becomes a tmpfs holding a copy of itself with `free_kib` KiB free,
    and the working folder (the cwd still points at the folder hidden under the mount)."""
    size_kib = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) // 1024 + 4096
    return (
        f'cp -a "{folder}/." "{staging}/"; mount -t tmpfs -o size={size_kib}k tmpfs "{folder}"; '
        f'cp -a "{staging}/." "{folder}/"; cd "{folder}"; '
        f'head -c $(( ($(stat -f -c "%a*%S" .) / 1024 - {free_kib}) * 1024 )) /dev/zero '
        f"> .filler || true"
    )


@pytest.mark.parametrize(
    ("command", "free_kib"),
    [("train", 0), ("train", 600), ("tune", 600)],
    ids=["train-full", "train-nearly-full", "tune-nearly-full"],
)
def test_a_full_disk_under_the_mlflow_store_is_one_line(
    workdir: Path, tmp_path: Path, command: str, free_kib: int
) -> None:
    """Full: the command is refused up front. Nearly full: it fails part-way (logging the
    model; a new study registers its best trial), and a study stops at once."""
    mlruns, staging, after = workdir / "mlruns", tmp_path / "staging", tmp_path / "after"
    staging.mkdir()
    before = dict(_run_statuses(mlruns / "mlflow.db"))
    keep = f'mkdir -p "{after}"; cp -a "{mlruns}/." "{after}/"'
    tune = [*_tune_args(), "--study-name", "full-disk"]
    args = ["train", "--config", "tiny.toml"] if command == "train" else tune
    result = _polypseg(*args, cwd=workdir, setup=_full_disk(workdir, staging, free_kib), after=keep)
    line = _error_line(result)
    assert str(mlruns) in line and "no space left" in line.lower(), line
    assert ("KiB free" in line) == (free_kib == 0), line  # refused up front, or part-way
    # Nothing already stored is lost: every earlier run is still there, as it was.
    now = dict(_run_statuses(after / "mlflow.db"))
    assert {run: now[run] for run in before} == before


def _invoke_timed(args: list[str]) -> tuple[object, float]:
    start = time.monotonic()
    result = CliRunner().invoke(app, args)
    return result, time.monotonic() - start


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_an_unreachable_tracking_server_is_one_line_within_seconds(
    tiny_config: Path, synthetic_root: Path, tmp_path: Path, command: str
) -> None:
    uri = "http://127.0.0.1:1"  # nothing listens on port 1: MLflow alone retried for 254 s
    model = ["--model", "models:/m@champion"]
    args = {
        "train": ["train", "--config", str(tiny_config), "--no-log-model"],
        "evaluate": [
            "evaluate",
            *model,
            "--root",
            str(synthetic_root),
            "--out",
            str(tmp_path / "e.json"),
        ],
        "predict": ["predict", *model, "--out", str(tmp_path), str(synthetic_root / "images")],
    }[command]
    result, seconds = _invoke_timed([*args, "--tracking-uri", uri])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert uri in result.stderr and "reach" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert seconds < 15, seconds


def test_an_unknown_tracking_uri_scheme_is_one_line_at_once(tiny_config: Path) -> None:
    args = ["train", "--config", str(tiny_config), "--tracking-uri", "foo://bar"]
    result, seconds = _invoke_timed(args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "foo://bar" in result.stderr and "sqlite" in result.stderr, result.stderr
    assert seconds < 5, seconds


def test_a_journal_path_that_cannot_be_created_is_one_line(
    tiny_config: Path, study_spec, mlflow_store: str
) -> None:
    args = ["tune", "--trials", "1", "--config", str(tiny_config), "--study", str(study_spec())]
    result = CliRunner().invoke(app, [*args, "--storage", "journal:/proc/nope"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "journal:/proc/nope" in result.stderr and "--storage" in result.stderr, result.stderr


def test_a_kill_while_mlflow_makes_a_fresh_store_leaves_one_the_next_run_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_store: Path
) -> None:
    """`kill -9` mid-migration (seconds into a fresh store) left a half-migrated store, refused
    next time as another MLflow version's; the store is built aside and moved in whole."""
    from polypseg.tracking.store import setup

    database = tmp_path / "mlruns" / "mlflow.db"
    uri = f"sqlite:///{database}"
    code = f"from polypseg.tracking.store import setup; setup('demo', {uri!r})"
    creator = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
    aside = database.with_name("mlflow.db.creating")
    while not aside.exists() and creator.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # into MLflow's migrations (8-10 s here)
    creator.kill()
    creator.wait()
    assert aside.exists() and not database.exists()  # killed while building, not after
    copy_migrated_stores(monkeypatch, migrated_store)  # the rebuild as a copy: seconds sooner
    experiment_id = setup("demo", uri)
    assert experiment_id and not aside.exists()
    assert {
        row[0] for row in sqlite3.connect(database).execute("SELECT name FROM experiments")
    } >= {"demo"}


def test_a_half_made_study_storage_is_made_again(tmp_path: Path) -> None:
    """Optuna's fresh SQLite file is built aside the same way: a creator's leftovers (a partial
    file and its journal) are discarded, and the storage opens whole."""
    import optuna

    from polypseg.tuning.storage import make_storage

    database = tmp_path / "optuna.db"
    for leftover in ("optuna.db.creating", "optuna.db.creating-journal"):
        (tmp_path / leftover).write_bytes(b"half made")
    storage = make_storage(f"sqlite:///{database}")
    optuna.create_study(study_name="s", storage=storage).optimize(lambda t: 1.0, n_trials=1)
    assert not (tmp_path / "optuna.db.creating").exists()
    assert not (tmp_path / "optuna.db.creating-journal").exists()
