"""What MLflow raises for a tracking store it cannot use, as one line that names the store.

MLflow reports a SQLite file that is not an MLflow database, a schema made by another MLflow
version, a database another process holds locked and a server that is not MLflow's as a
traceback (an `MlflowException` or SQLAlchemy's error); `store.setup` meets them all when it
first opens the store, before any work, and raises `store_fault`'s line instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import mlflow

from polypseg.errors import StoreError, first_line

DAMAGED = ("malformed", "not a database", "no such table", "no such column")


def store_fault(
    err: BaseException, database: Path | None, place: str, uri: str
) -> StoreError | None:
    """`err` as one line when it says the store cannot be used; None for anything else.

    `database` is the SQLite file (None for a server or database), `place` the store's folder or
    URI for the message, `uri` the tracking URI with its password masked.
    """
    text = str(err)
    if schema := re.search(r"found version (\w+), but expected (\w+)", text):
        return StoreError(_other_version(place, uri, schema[1], schema[2]))
    if database is not None and "database is locked" in text:
        return StoreError(
            f"MLflow store {database} is locked by another process (database is locked); let "
            "it finish or stop it, then run again, or pass --tracking-uri"
        )
    if database is not None and any(word in text for word in DAMAGED):
        return StoreError(
            f"MLflow store {database} is damaged or not an MLflow database "
            f"({first_line(err, 100)}); move it aside or restore a copy, then run again"
        )
    if answer := re.search(r"API request to endpoint (\S+) failed with error code (40[45])", text):
        return StoreError(
            f"{place} is not an MLflow tracking server (it answered {answer[2]} to "
            f"{answer[1]}); fix --tracking-uri / MLFLOW_TRACKING_URI, or start one with "
            "`mlflow server`"
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
