"""Where MLflow keeps things: the tracking URI, the store's creation, experiments, the UI's URL.

Importing this module starts no run and sets no URI. The embedded default is SQLite
(`sqlite:///<cwd>/mlruns/mlflow.db`, artifacts under `mlruns/`): MLflow 3's file store is in
maintenance mode. `MLFLOW_TRACKING_URI` or `--tracking-uri` override it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import mlflow

from polypseg.errors import StoreError
from polypseg.files import file_lock, first_line, sqlite_file, sqlite_uri

STORE_DIR = "mlruns"


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the embedded SQLite store under ./mlruns (an absolute path)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return sqlite_uri(Path.cwd() / STORE_DIR / "mlflow.db")


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
    database = sqlite_file(tracking_uri)
    if database is None:
        return None
    store = database.parent
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", experiment).strip("-") or "experiment"
    return (store / "artifacts" / slug).resolve().as_uri()


def _first_use_lock(uri: str) -> AbstractContextManager[Any]:
    """Workers starting at once on a fresh SQLite store would all run MLflow's migrations on it
    and break it (measured: 7 of 9 processes, started in threes, failed mid-migration); a lock file
    beside the database lets the first create it while the others wait. Servers handle this."""
    database = sqlite_file(uri)
    if database is None:
        return nullcontext()
    return file_lock(database.with_name(database.name + ".lock"))


def setup(experiment: str, tracking_uri: str | None = None) -> str:
    """Point MLflow at the store (creating it) and the experiment; returns the experiment id."""
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or default_tracking_uri()
    if (database := sqlite_file(uri)) is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    with _first_use_lock(uri), _damaged_store_is_one_line(uri):
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


@contextmanager
def _damaged_store_is_one_line(uri: str) -> Iterator[None]:
    """A SQLite store that is not a whole MLflow database (truncated, overwritten) is one line.

    The file is left as it is: it may hold runs worth rescuing.
    """
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, sqlalchemy.exc.DatabaseError) as err:
        damaged = ("malformed", "not a database", "no such table", "no such column")
        database = sqlite_file(uri)
        if database is None or not any(word in str(err) for word in damaged):
            raise
        raise StoreError(
            f"MLflow store {database} is damaged or not an MLflow database "
            f"({first_line(err, 100)}); move it aside or restore a copy, then run again"
        ) from None


def runs_url(experiment_id: str, host: str = "http://127.0.0.1:5000") -> str:
    """The runs table (MLflow 3's UI opens an experiment on its GenAI overview otherwise)."""
    return f"{host}/#/experiments/{experiment_id}/runs"
