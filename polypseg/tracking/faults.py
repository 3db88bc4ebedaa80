"""What MLflow raises for a tracking store it cannot use, as one line that names the store: a
SQLite file that is not an MLflow database, another MLflow version's schema, a locked database, a
server that is not MLflow's."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException, RestException

from polypseg.errors import StoreError, first_line

# SQLite's own error names (Python's `sqlite3` keeps them on the error); a store missing MLflow's
# tables or columns gets only the generic SQLITE_ERROR, told apart by its text.
LOCKED = ("SQLITE_BUSY", "SQLITE_LOCKED")
DAMAGED = ("SQLITE_NOTADB", "SQLITE_CORRUPT")
MISSING = ("no such table", "no such column")


def _sqlite_error(err: BaseException) -> str:
    """The SQLite error name behind `err` (SQLAlchemy and MLflow wrap it), or ''."""
    while err is not None:
        if name := getattr(err, "sqlite_errorname", ""):
            return name
        err = getattr(err, "orig", None) or err.__cause__ or err.__context__
    return ""


def store_fault(
    err: BaseException, database: Path | None, place: str, uri: str
) -> StoreError | None:
    """`err` as one line when it says the store cannot be used; None for anything else.
    `database`: the SQLite file, if any; `place`: the store's folder or URI; `uri`: masked."""
    text, code = str(err), _sqlite_error(err)
    # MLflow's schema check says which revisions only in its message.
    if schema := re.search(r"found version (\w+), but expected (\w+)", text):
        return StoreError(_other_version(place, uri, schema[1], schema[2]))
    if database is not None and code in LOCKED:
        return StoreError(
            f"MLflow store {database} is locked by another process (database is locked); let "
            "it finish or stop it, then run again, or pass --tracking-uri"
        )
    if database is not None and (code in DAMAGED or any(word in text for word in MISSING)):
        return StoreError(
            f"MLflow store {database} is damaged or not an MLflow database "
            f"({first_line(err, 100)}); move it aside or restore a copy, then run again"
        )
    # An answer that is not MLflow's JSON (a RestException) to an MLflow endpoint: a 404 page.
    not_json = isinstance(err, MlflowException) and not isinstance(err, RestException)
    if not_json and err.error_code == "ENDPOINT_NOT_FOUND":
        return StoreError(
            f"{place} is not an MLflow tracking server (it answered 404 to its API); fix "
            "--tracking-uri / MLFLOW_TRACKING_URI, or start one with `mlflow server`"
        )
    return None


def _other_version(place: str, uri: str, found: str, expected: str) -> str:
    """MLflow's migrations know the revisions before theirs: an unknown one is a newer MLflow's."""
    versions = Path(mlflow.__file__).parent / "store" / "db_migrations" / "versions"
    head = f"MLflow store {place} was made by another MLflow version (schema {found}"
    if any(versions.glob(f"{found}_*.py")):
        return (
            f"{head}, older than {mlflow.__version__}'s {expected}); back it up, then run "
            f"`mlflow db upgrade {uri}`"
        )
    return (
        f"{head}, unknown to MLflow {mlflow.__version__}: a newer one's); use the MLflow version "
        "that made it, or pass --tracking-uri"
    )
