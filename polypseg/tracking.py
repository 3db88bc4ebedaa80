"""MLflow, behind a thin seam: where the store is, how runs start and end, what a run logs.

Importing this module starts no run and sets no URI. The embedded default is SQLite
(`sqlite:///<cwd>/mlruns/mlflow.db`, artifacts under `mlruns/`): MLflow 3's file store is in
maintenance mode. `MLFLOW_TRACKING_URI` or `--tracking-uri` override it. Runs end FINISHED,
FAILED (an exception) or KILLED (Ctrl-C, SIGTERM), never left RUNNING.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import mlflow

from polypseg.data.split import Split

STORE_DIR = "mlruns"


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the embedded SQLite store under ./mlruns (an absolute path)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path.cwd() / STORE_DIR / 'mlflow.db').resolve()}"


def mask_password(uri: str) -> str:
    """`postgresql://user:secret@host/db` → `postgresql://user:***@host/db`, for logs and params."""
    parts = urlsplit(uri)
    if parts.password is None:
        # Not a URL urllib can read (a typo like `postgresql//u:pw@h`): it still must not leak.
        return re.sub(r"//([^/:@]*):[^/@]*@", r"//\1:***@", uri, count=1)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Beside a SQLite store: `<store dir>/artifacts/<experiment>`; a server decides its own."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    store = Path(tracking_uri[len("sqlite:///") :]).parent
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", experiment).strip("-") or "experiment"
    return (store / "artifacts" / slug).resolve().as_uri()


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive `flock` on `path` (created if missing), released on exit or when we die."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _first_use_lock(uri: str) -> AbstractContextManager[Any]:
    """Workers starting at once on a fresh SQLite store would all run MLflow's migrations on it
    and break it (measured: 7 of 9 processes, started in threes, failed mid-migration); a lock file
    beside the database lets the first create it while the others wait. Servers handle this."""
    if not uri.startswith("sqlite:///"):
        return nullcontext()
    database = Path(uri[len("sqlite:///") :])
    return file_lock(database.with_name(database.name + ".lock"))


def setup(experiment: str, tracking_uri: str | None = None) -> str:
    """Point MLflow at the store (creating it) and the experiment; returns the experiment id."""
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    with _first_use_lock(uri):
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            try:
                experiment_id = mlflow.create_experiment(
                    experiment, artifact_location=_artifact_location(uri, experiment)
                )
            except MlflowException:  # another worker created it a moment ago
                experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
        else:
            experiment_id = found.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def runs_url(experiment_id: str, host: str = "http://127.0.0.1:5000") -> str:
    """The runs table (MLflow 3's UI opens an experiment on its GenAI overview otherwise)."""
    return f"{host}/#/experiments/{experiment_id}/runs"


@contextmanager
def tracked_run(
    finished_on: tuple[type[BaseException], ...] = (), **start_kwargs: Any
) -> Iterator[mlflow.ActiveRun]:
    """`mlflow.start_run` that ends KILLED on Ctrl-C, FAILED on errors, FINISHED otherwise.

    Exceptions in `finished_on` (a pruned trial) end the run FINISHED and are re-raised.
    """
    run = mlflow.start_run(**start_kwargs)
    try:
        yield run
    except finished_on:
        mlflow.end_run("FINISHED")
        raise
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def split_digest(split: Split) -> str:
    return hashlib.sha256(json.dumps(split.manifest(), sort_keys=True).encode()).hexdigest()[:16]


def log_dataset(root: Path, split: Split, sizes: dict[str, tuple[int, int]]) -> None:
    """The split's file lists as `split.json` and the data set as the run's input."""
    import pandas as pd

    mlflow.log_dict(split.manifest(), "split.json")
    rows = [
        {"name": name, "split": part, "height": sizes[name][0], "width": sizes[name][1]}
        for part in ("train", "val", "test")
        for name in getattr(split, part)
    ]
    with warnings.catch_warnings():
        # MLflow warns that a local path could be two kinds of source, and that integer columns
        # cannot hold missing values: neither matters for a file list.
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            pd.DataFrame(rows),
            source=str(root),
            name=root.name or "data",
            digest=split_digest(split),
        )
    mlflow.log_input(dataset, context="training")


def log_figure(figure: Any, path: str) -> None:
    """Log a matplotlib figure and release it."""
    import matplotlib.pyplot as plt

    mlflow.log_figure(figure, path)
    plt.close(figure)


@contextmanager
def quiet_model_logging() -> Iterator[None]:
    """Silence MLflow's advice to log models from code while logging our pyfunc.

    The model is an importable class of this package, so cloudpickle stores a reference to it,
    not code: the advice does not apply.
    """
    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def truncate_tag(value: str, limit: int = 5000) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."
