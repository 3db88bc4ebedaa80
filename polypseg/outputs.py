"""Outputs checked before any work: a place that cannot be written, outputs landing among the
inputs or on each other, and free space (the one check of it: `short_of_space`).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from polypseg.errors import OutputError

# The longest file name (in bytes) Linux file systems take.
NAME_MAX = 255
# Below this not even a run's params and metrics, with SQLite's journal for them, surely fit.
MIN_FREE_BYTES = 256 << 10


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


def unwritable(folder: Path) -> str | None:
    """Why `folder` cannot take writes (`read-only file system`, `no space left on device (12
    KiB free)`), or None when it can: it is created if missing, a file is written in it and
    removed, and at least `MIN_FREE_BYTES` must be free."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        free = short_of_space(folder, MIN_FREE_BYTES)
    except OSError as err:
        return (err.strerror or type(err).__name__).lower()
    if free is not None:
        return f"{os.strerror(errno.ENOSPC).lower()} ({free // 1024} KiB free)"
    return None


def short_of_space(folder: Path, needed: int) -> int | None:
    """The bytes free on the disk under `folder` when that is fewer than `needed`, else None."""
    free = shutil.disk_usage(folder).free
    return free if free < needed else None
