"""Where MLflow keeps things: the tracking URI, the store's creation, experiments, the UI's URL.

Importing this module starts no run and sets no URI. The embedded default is SQLite
(`sqlite:///<cwd>/mlruns/mlflow.db`, artifacts under `mlruns/`): MLflow 3's file store is in
maintenance mode. `MLFLOW_TRACKING_URI` or `--tracking-uri` override it. A URI is checked
before any work: MLflow itself retries an unreachable server for minutes and reports an unknown
scheme, a read-only folder or a full disk as a traceback.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import mlflow

from polypseg.errors import StoreError
from polypseg.files import (
    file_lock,
    first_line,
    refused_write,
    remedy,
    sqlite_file,
    sqlite_uri,
    unwritable,
)

STORE_DIR = "mlruns"
# The schemes MLflow 3 keeps runs at. `file:` is left out on purpose: that store is in
# maintenance mode and refuses new runs.
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
# A tracking server gets a few short tries (about 7 s in all), not MLflow's minutes of retries.
SERVER_TIMEOUT_S = 2.0
SERVER_PAUSES_S = (0.5, 1.0)


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


def _store_place(uri: str) -> str:
    """The store's folder (embedded SQLite) or its URI (a server or database), for messages."""
    database = sqlite_file(uri)
    return str(database.parent) if database is not None else mask_password(uri)


def _refused(uri: str, cause: str) -> StoreError:
    return StoreError(
        f"cannot write to the MLflow store {_store_place(uri)}: {cause}; {remedy(cause)}, or "
        f"pass --tracking-uri"
    )


def store_error(err: BaseException) -> StoreError | None:
    """`err` as one line naming the current store, when it is a write the store refused."""
    cause = refused_write(err)
    return None if cause is None else _refused(mlflow.get_tracking_uri(), cause)


def _check_server(uri: str) -> None:
    """A few short tries of the server's health endpoint; any HTTP answer means it is there."""
    import urllib.error
    import urllib.request

    reason: object = None
    for pause in (*SERVER_PAUSES_S, None):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=SERVER_TIMEOUT_S).close()
            return
        except urllib.error.HTTPError:  # it answered (a proxy or auth in front of it): it is up
            return
        except ValueError:  # a URL urllib cannot open (credentials in it): leave it to MLflow
            return
        except OSError as err:  # URLError, a timeout, a refused connection
            reason = getattr(err, "reason", err)
        if pause is not None:
            time.sleep(pause)
    raise StoreError(
        f"cannot reach the MLflow tracking server {mask_password(uri)} ({reason}); start it, "
        f"or fix --tracking-uri / MLFLOW_TRACKING_URI"
    )


def check_tracking_uri(uri: str) -> None:
    """Refuse, before any work, a tracking URI that cannot take runs: an unknown scheme, a
    server that does not answer, a SQLite store whose folder is read-only or full."""
    scheme = urlsplit(uri).scheme.split("+")[0] or uri  # `databricks` alone is a URI too
    if scheme not in TRACKING_SCHEMES:
        raise StoreError(
            f"tracking URI {mask_password(uri)}: MLflow keeps no runs at a {scheme!r} "
            f"URI; use sqlite:///PATH/mlflow.db, http(s)://HOST:PORT or a database URL"
        )
    if scheme in ("http", "https"):
        _check_server(uri)
    database = sqlite_file(uri)
    if database is not None and (cause := unwritable(database.parent)) is not None:
        raise _refused(uri, cause)


def setup(experiment: str, tracking_uri: str | None = None) -> str:
    """Point MLflow at the store (checked, created) and the experiment; returns its id."""
    uri = tracking_uri or default_tracking_uri()
    check_tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    try:
        return _set_experiment(uri, experiment)
    except Exception as err:
        refused = store_error(err)
        if refused is None:
            raise
        raise refused from None


def _set_experiment(uri: str, experiment: str) -> str:
    from mlflow.exceptions import MlflowException

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
