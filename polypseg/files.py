"""File-system basics every layer uses: where polypseg keeps things, atomic writes, locks, hashes.

Everything polypseg writes that a later step trusts (manifests, feature caches, synthetic data
sets, checkpoints, masks) is written under a temporary name beside the target, then renamed, so
an interrupted run never leaves a half-written file that looks valid. Nothing here knows about
images, models or MLflow.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from polypseg.errors import OutputError, PolypsegError

SQLITE_PREFIX = "sqlite:///"
# Characters of a target's name kept in its temporary's (at most 4 bytes each in UTF-8).
TMP_NAME_KEPT = 40
# The longest file name (in bytes) Linux file systems take.
NAME_MAX = 255


def cache_home() -> Path:
    """`$POLYPSEG_CACHE` (default `~/.cache/polypseg`): features, checkpoints, synthetic data.

    Set but empty counts as unset: `Path("")` is the working directory, which would fill it."""
    return Path(
        os.environ.get("POLYPSEG_CACHE") or Path.home() / ".cache" / "polypseg"
    ).expanduser()


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it (`os.umask` can only
    be read by setting it, which would race with threads creating files meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(
    path: str | Path, directory: bool = False, option: str | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, else remove it.

    A file replaces what was there. A folder is only ever created: when `path` already exists
    on success, another process finished the same deterministic work first, and ours is
    dropped, so concurrent builders never delete a folder someone is reading. What appears gets
    the permissions a plain `open` or `mkdir` would give (0644 and 0755 under umask 022), not
    the temporary's private 0600/0700. With `option` (the CLI option that named the place), a
    write the place refuses (a full disk, a read-only folder) is an `OutputError` naming `path`.
    """
    path = Path(path)
    try:
        with _atomic(path, directory) as tmp:
            yield tmp
    except PolypsegError:
        raise
    except Exception as err:
        cause = refused_write(err) if option is not None else None
        if cause is None:
            raise
        raise OutputError(
            f"cannot write {option} {path}: {cause}; {remedy(cause)}, or choose another {option}"
        ) from None


@contextmanager
def _atomic(path: Path, directory: bool) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary's name keeps only the start of the target's: a target name near the 255-byte
    # limit plus a random part and a suffix would be too long for the file system.
    prefix = f".{path.name[:TMP_NAME_KEPT]}."
    if directory:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix))
    else:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory and path.exists():
            shutil.rmtree(tmp)
            return
        os.chmod(tmp, (0o777 if tmp.is_dir() else 0o666) & ~umask())
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, payload: object, option: str | None = None) -> Path:
    """Write `payload` as indented JSON, atomically (`option` as for `atomic_path`)."""
    with atomic_path(path, option=option) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
    return Path(path)


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


def file_digest(path: Path, algorithm: str = "sha256", chunk: int = 1 << 22) -> str:
    """The hex digest of a file's bytes, read in chunks (checkpoints are gigabytes)."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sqlite_uri(path: Path) -> str:
    """`sqlite:///<absolute path>`: MLflow and SQLAlchemy both want the absolute form."""
    return f"{SQLITE_PREFIX}{path.resolve()}"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///PATH` URI; None for other URIs and in-memory SQLite."""
    if not uri.startswith(SQLITE_PREFIX) or ":memory:" in uri:
        return None
    return Path(uri[len(SQLITE_PREFIX) :])


def first_line(err: BaseException, limit: int = 120) -> str:
    """An exception's first line, cut to `limit` characters, or its type when it says nothing."""
    text = str(err)
    return text.splitlines()[0][:limit] if text.strip() else type(err).__name__


def _writable_folder(folder: Path, option: str, target: Path) -> None:
    """The nearest existing folder at or above `folder` must be a folder we can write in."""
    existing = folder
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(
            f"{option} {target}: {existing} is a file, not a folder; choose another path"
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise OutputError(
            f"cannot write {option} {target}: {existing} is not writable ({err.strerror}); "
            "choose another place"
        ) from None


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """Refuse, before any work, a file output that cannot be written (one line naming `option`)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; give a file name inside it")
    _writable_folder(path.parent, option, path)
    return path


def check_output_dir(path: str | Path, option: str = "--out") -> Path:
    """Refuse, before any work, a folder output that is a file or cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file, not a folder; give a folder")
    _writable_folder(path, option, path)
    return path


def check_outputs(
    outputs: Sequence[tuple[Path, str]],
    target: Path,
    fix: str,
    *,
    folders: dict[Path, str] | None = None,
    trees: dict[Path, str] | None = None,
    option: str = "--out",
) -> None:
    """Refuse, before any work, outputs that would land among the inputs or on each other.

    `outputs` pairs every path a command will write with what writes it (`in/a.png`, `the
    per-image CSV of Kvasir`). No output may be written in one of `folders` (where inputs are
    listed: a mask beside its image), nor anywhere under one of `trees` (a data set's `images/`
    and `masks/`, the maps scored: a figure among the ground truth breaks the data set); both
    map a folder to what it holds. Two outputs with one path are refused naming both (`fix`
    says what to change), and so is a name too long for the file system. `target` is what the
    user gave as `option`.
    """
    # realpath, not Path.resolve: it never raises, even on a symlink loop
    places: dict[Path, tuple[Path, str, bool]] = {}
    for held_in, whole in ((folders or {}, False), (trees or {}, True)):
        for folder, held in held_in.items():
            real = Path(os.path.realpath(folder))
            if whole or real not in places:
                places[real] = (folder, held, whole)
    seen: dict[Path, str] = {}
    for path, what in outputs:
        where = Path(os.path.realpath(path))
        for real, (shown, held, whole) in places.items():
            if where.parent == real or (whole and where.parent.is_relative_to(real)):
                raise OutputError(
                    f"{option} {target} would write in {shown}, which holds {held}; polypseg "
                    "never writes where its inputs live: choose another folder"
                )
        if where in seen:
            raise OutputError(f"{seen[where]} and {what} would both write {path}; {fix}")
        if len(os.fsencode(where.name)) > NAME_MAX:
            raise OutputError(
                f"{what} would write {path}, a name over {NAME_MAX} bytes; choose a shorter name"
            )
        seen[where] = what


# Below this not even a run's params and metrics, with SQLite's journal for them, surely fit.
MIN_FREE_BYTES = 256 << 10
# Writes refused by the place, not by a bug of ours: the user frees space or picks another place.
_PLACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
# The same refusals as SQLite words them (wrapped by SQLAlchemy, then by MLflow or Optuna).
_SQLITE_WORDS = {
    "database or disk is full": errno.ENOSPC,
    "attempt to write a readonly database": errno.EROFS,
}


def unwritable(folder: Path) -> str | None:
    """Why `folder` cannot take writes (`read-only file system`, `no space left on device (12
    KiB free)`), or None when it can: it is created if missing, a file is written in it and
    removed, and at least `MIN_FREE_BYTES` must be free."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        free = shutil.disk_usage(folder).free
    except OSError as err:
        return (err.strerror or type(err).__name__).lower()
    if free < MIN_FREE_BYTES:
        return f"{os.strerror(errno.ENOSPC).lower()} ({free // 1024} KiB free)"
    return None


def refused_write(err: BaseException) -> str | None:
    """The cause in a few words when `err`, or an error it wraps, is a write the place refused
    (a full disk, a read-only or forbidden folder); None for any other error."""
    seen: BaseException | None = err
    for _ in range(8):  # a few layers of wrapping at most
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in _PLACE_ERRNOS:
            return os.strerror(seen.errno).lower()
        text = str(seen).lower()
        for words, code in _SQLITE_WORDS.items():
            if words in text:
                return os.strerror(code).lower()
        seen = seen.__cause__ or seen.__context__
    return None


def remedy(cause: str) -> str:
    """What the user does about a refused write, given its cause as the functions above word it."""
    if cause.startswith(("no space", "disk quota")):
        return "free space there"
    if cause.startswith(("read-only", "permission denied", "operation not permitted")):
        return "make it writable"
    return "check the path"
