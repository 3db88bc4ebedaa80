"""Atomic writes: what a later step trusts appears whole or not at all.

Everything polypseg writes that a later step trusts (manifests, feature caches, synthetic data
sets, checkpoints, masks) is written under a temporary name beside the target, then renamed, so
an interrupted run never leaves a half-written file that looks valid. A write the place refuses
(a full disk, a read-only folder) is worded in a few words by `refused_write`, with `remedy`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from polypseg.errors import PolypsegError

# Characters of a target's name kept in its temporary's (at most 4 bytes each in UTF-8).
TMP_NAME_KEPT = 40
# Writes refused by the place, not by a bug of ours: the user frees space or picks another place.
_PLACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
# The same refusals as SQLite words them (wrapped by SQLAlchemy, then by MLflow or Optuna).
_SQLITE_WORDS = {
    "database or disk is full": errno.ENOSPC,
    "attempt to write a readonly database": errno.EROFS,
}


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

    A folder is only ever created: when `path` exists by then, another process did the same
    deterministic work and ours is dropped, so nobody's folder is deleted under them. What
    appears gets a plain `open`'s or `mkdir`'s permissions, not the temporary's 0600/0700. With
    `option`, a write the place refuses (a full disk) is a `PolypsegError` naming `path`.
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
        raise PolypsegError(
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
    if cause.endswith("is a file, not a folder"):
        return "move it aside"
    return "check the path"
