"""SQLite database files behind `sqlite:///` URIs (MLflow's store, Optuna's storage): the URI of
a file, the file of a URI, what a URI names instead of a file, and the lock under which one
process at a time creates one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
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


def not_a_file(uri: str, prefix: str = SQLITE_PREFIX) -> str | None:
    """What a SQLite URI (or one of another `prefix`, like Optuna's `journal:`) names instead of
    a database file, or None. In memory, its data would vanish at exit and no other process could
    share it; a device takes the first write and fails at the `fsync` of the next, mid-run."""
    text = uri[len(prefix) :] if uri.startswith(prefix) else None
    if text is not None and not text.strip():
        return "no file"
    if ":memory:" in uri or "mode=memory" in uri or re.fullmatch(r"sqlite(\+\w+)?:/{0,3}", uri):
        return "an in-memory database: it would vanish at exit and no other process could share it"
    if text is None:
        return None  # a server's, or a driver's URI (`sqlite+pysqlite:///...`): SQLAlchemy reads it
    # SQLAlchemy takes a `sqlite:///` path as written; our journal path is expanded.
    path = Path(text) if prefix == SQLITE_PREFIX else Path(text).expanduser()
    if path.is_dir():
        return f"{path}, a folder"
    if path.exists() and not path.is_file():
        return f"{path}, a device or special file"
    return None


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


def create_whole(database: Path, build: Callable[[str], object]) -> None:
    """Create a missing SQLite database whole, one process at a time (under `<file>.lock`):
    workers starting at once on a fresh MLflow store broke it migrating it together (7 of 9
    processes, started in threes). `build(uri)` makes a file beside it, which then takes its
    place: a process killed while migrating leaves only that file, remade next time; in place it
    left a half-migrated store, refused as another version's."""
    with file_lock(database.with_name(database.name + ".lock")):
        if database.exists():
            return
        aside = database.with_name(database.name + ".creating")
        for leftover in ("", "-journal", "-wal", "-shm"):  # a stale journal would roll back into it
            Path(f"{aside}{leftover}").unlink(missing_ok=True)
        build(sqlite_uri(aside))
        os.replace(aside, database)
