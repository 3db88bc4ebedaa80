"""SQLite database files behind `sqlite:///` URIs (MLflow's store, Optuna's storage): the URI of
a file, the file of a URI, and the lock under which one process at a time creates one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SQLITE_PREFIX = "sqlite:///"


def sqlite_uri(path: Path) -> str:
    """`sqlite:///<absolute path>`: MLflow and SQLAlchemy both want the absolute form."""
    return f"{SQLITE_PREFIX}{path.resolve()}"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///PATH` URI; None for other URIs and in-memory SQLite."""
    if not uri.startswith(SQLITE_PREFIX) or ":memory:" in uri:
        return None
    return Path(uri[len(SQLITE_PREFIX) :])


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
