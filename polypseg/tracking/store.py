"""Where MLflow keeps things: the tracking URI, the store's creation, experiments, the UI's URL.

Importing this module starts no run and sets no URI. The embedded default is SQLite
(`<cwd>/mlruns/mlflow.db`, artifacts under `mlruns/`): MLflow 3's file store is in maintenance
mode. A URI is checked before any work (`check_tracking_uri`), and the store, the experiment and
its artifact folder when `open_experiment` first opens them: what MLflow reports as a traceback,
or after minutes of retries, is one `StoreError` line here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit
from urllib.request import url2pathname

import mlflow

from polypseg.atomic import refused_write, remedy
from polypseg.errors import StoreError
from polypseg.outputs import unwritable
from polypseg.sqlite_files import create_whole, not_a_file, sqlite_file, sqlite_uri
from polypseg.tracking.ending import kill_dead_runs
from polypseg.tracking.faults import store_fault
from polypseg.tracking.names import check_experiment

if TYPE_CHECKING:
    import optuna

STORE_DIR = "mlruns"
# The schemes MLflow 3 keeps runs at. `file:` is left out on purpose: that store is in
# maintenance mode and refuses new runs.
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
SERVER_RETRIES, SERVER_TIMEOUT_S = 2, 2.0  # a tracking server gets 3 tries of 2 s at most
# The experiment's type in MLflow 3's UI ("Machine learning"), so the UI neither infers one
# nor asks. In 3.17.2 it does not choose the first page: every experiment opens on its GenAI
# overview, and the runs table is at `runs_url`.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the embedded SQLite store under ./mlruns (an absolute path)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or sqlite_uri(Path.cwd() / STORE_DIR / "mlflow.db")


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
    if (database := sqlite_file(tracking_uri)) is None:
        return None
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", experiment).strip("-") or "experiment"
    return (database.parent / "artifacts" / slug).resolve().as_uri()


def _store_place(uri: str) -> str:
    """The store's folder (embedded SQLite) or its URI (a server or database), for messages."""
    database = sqlite_file(uri)
    return str(database.parent) if database is not None else mask_password(uri)


def refused(what: str, cause: str, instead: str = "pass --tracking-uri") -> StoreError:
    """A write refused where `what` lives, as one line (`cause` as `refused_write` words it)."""
    return StoreError(f"cannot write {what}: {cause}; {remedy(cause)}, or {instead}")


def store_error(err: BaseException) -> StoreError | None:
    """`err` as one line naming the current store, when it is a write the store refused."""
    where = f"to the MLflow store {_store_place(mlflow.get_tracking_uri())}"
    return None if (cause := refused_write(err)) is None else refused(where, cause)


def _check_server(uri: str) -> None:
    """Any HTTP answer from the server's /health means it is there. MLflow's own HTTP retries,
    with fewer tries and a shorter timeout than its defaults (7 tries, 120 s each: 254 s)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.rest_utils import MlflowHostCreds, http_request

    try:
        http_request(
            MlflowHostCreds(uri),
            "/health",
            "GET",
            max_retries=SERVER_RETRIES,
            backoff_factor=0.5,
            timeout=SERVER_TIMEOUT_S,
            retry_codes=(),
        )
    except MlflowException:
        raise StoreError(
            f"cannot reach the MLflow tracking server {mask_password(uri)} (no answer after "
            f"{SERVER_RETRIES + 1} tries); start it, or fix --tracking-uri / MLFLOW_TRACKING_URI"
        ) from None


def check_tracking_uri(uri: str) -> None:
    """Refuse, before any work, a tracking URI that cannot take runs: an unknown scheme, a
    server that does not answer, a SQLite store that is no file (a folder, an empty path, in
    memory). Nothing is written: the folder's write test comes when the store opens."""
    if not uri.strip():
        raise StoreError(
            "the tracking URI is empty; pass --tracking-uri sqlite:///PATH/mlflow.db (or leave "
            "the option and MLFLOW_TRACKING_URI out for ./mlruns/mlflow.db)"
        )
    scheme = urlsplit(uri).scheme.split("+")[0] or uri  # `databricks` alone is a URI too
    if scheme not in TRACKING_SCHEMES:
        raise StoreError(
            f"tracking URI {mask_password(uri)}: MLflow keeps no runs at a {scheme!r} "
            f"URI; use sqlite:///PATH/mlflow.db, http(s)://HOST:PORT or a database URL"
        )
    if scheme in ("http", "https"):
        _check_server(uri)
    if scheme == "sqlite" and (kind := not_a_file(uri)) is not None:
        raise StoreError(
            f"tracking URI {uri} names {kind}; name the database file, like "
            "sqlite:///mlruns/mlflow.db"
        )


def setup(experiment: str, tracking_uri: str | None = None) -> str:
    """Check the experiment's name and the store, then `open_experiment`; returns its id."""
    check_experiment(experiment)
    uri = default_tracking_uri() if tracking_uri is None else tracking_uri
    check_tracking_uri(uri)
    return open_experiment(experiment, uri)


def open_experiment(experiment: str, uri: str, study: optuna.Study | None = None) -> str:
    """Point MLflow at a store and experiment already checked (by `setup`, or at `tune`'s door):
    the store's folder takes writes, the store and experiment are created if need be, and the
    runs that dead workers left RUNNING in it (and those of `study`'s trials already over) are
    ended KILLED (`kill_dead_runs`). Returns the experiment's id."""
    database = sqlite_file(uri)
    if database is not None and (cause := unwritable(database.parent)) is not None:
        raise refused(f"to the MLflow store {_store_place(uri)}", cause)  # creates the folder
    mlflow.set_tracking_uri(uri)
    try:
        opened = _set_experiment(uri, experiment)
    except StoreError:
        raise
    except Exception as err:
        # A SQLite file that is not a whole MLflow database (left as it is: it may hold runs
        # worth rescuing), another MLflow version's schema, a lock, a server not MLflow's, a
        # full disk or a read-only folder.
        fault = store_fault(err, database, _store_place(uri), mask_password(uri))
        if (fault := fault or store_error(err)) is None:
            raise
        raise fault from None
    _check_artifact_folder(opened.artifact_location)
    kill_dead_runs(opened.experiment_id, study)
    return opened.experiment_id


def _set_experiment(uri: str, experiment: str) -> mlflow.entities.Experiment:
    from mlflow.exceptions import MlflowException

    if (database := sqlite_file(uri)) is not None:
        create_whole(database, lambda aside: mlflow.MlflowClient(aside).search_experiments())
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None and found.lifecycle_stage == "deleted":
        # MLflow's own commands, in forms without long options (polypseg has no such ones).
        shown, gone = mask_password(uri), found.experiment_id
        raise StoreError(
            f"MLflow experiment {experiment!r} (id {gone}) in {_store_place(uri)} is deleted "
            f"and MLflow makes no other of that name; restore it (MLFLOW_TRACKING_URI={shown} "
            f"mlflow experiments restore -x {gone}), delete the store's deleted "
            f"experiments for good (MLFLOW_TRACKING_URI={shown} mlflow gc), or choose another "
            "experiment name"
        )
    if found is None:
        try:
            experiment_id = mlflow.create_experiment(
                experiment,
                artifact_location=_artifact_location(uri, experiment),
                tags=EXPERIMENT_KIND,
            )
        except MlflowException:  # another worker created it a moment ago
            experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    else:
        experiment_id = found.experiment_id
    return mlflow.set_experiment(experiment_id=experiment_id)


def _check_artifact_folder(location: str | None) -> None:
    """A local artifact folder must be a folder that takes writes: a file at `mlruns/artifacts`
    was met only when the first artifact was logged, after training."""
    parts = urlsplit(location or "")
    if parts.scheme not in ("", "file"):
        return  # a server's or a bucket's: it answers for itself
    folder = Path(url2pathname(parts.path))
    if (cause := unwritable(folder)) is not None:
        raise refused(f"MLflow artifacts to {folder}", cause)


def runs_url(experiment_id: str, host: str = "http://127.0.0.1:5000") -> str:
    """The runs table (MLflow 3's UI opens an experiment on its GenAI overview otherwise)."""
    return f"{host}/#/experiments/{experiment_id}/runs"
