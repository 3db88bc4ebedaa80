"""Outputs checked before any work: unwritable places, outputs among the inputs or on each
other, and free space (`short_of_space`, the one check of it).

Every writer goes through `check_output_file`, `check_output_dir` or `check_outputs`, which
find the places polypseg never writes themselves (`protected_place`: any data set's images and
masks, the MLflow store, any SQLite database, the feature cache), so a new command inherits them.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from polypseg.caches import cache_home
from polypseg.errors import PolypsegError
from polypseg.sqlite_files import sqlite_file

# The longest file name (in bytes) Linux file systems take.
NAME_MAX = 255
# Below this not even a run's params and metrics, with SQLite's journal for them, surely fit.
MIN_FREE_BYTES = 256 << 10
# The folder names that make a data set, an images folder beside a masks folder (compared in
# lower case): data/sets.py finds data sets by them, and no output may land inside one.
IMAGE_FOLDERS = ("images", "image", "original")
MASK_FOLDERS = ("masks", "mask", "ground truth", "groundtruth")
SQLITE_HEADER = b"SQLite format 3\x00"


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))  # realpath, not Path.resolve: it never raises


def data_set_folder(folder: Path) -> Path | None:
    """The images or masks folder of a data set that `folder` is in, at any depth, or None."""
    for place in (folder, *folder.parents):
        name = place.name.lower()
        for own, other in ((IMAGE_FOLDERS, MASK_FOLDERS), (MASK_FOLDERS, IMAGE_FOLDERS)):
            if name in own and any(s.name.lower() in other for s in _folders(place.parent)):
                return place
    return None


def _folders(folder: Path) -> list[Path]:
    try:
        return [entry for entry in folder.iterdir() if entry.is_dir()]
    except OSError:  # unreadable or missing: named where it is read, if it is
        return []


def stores() -> dict[Path, str]:
    """The folders polypseg keeps its stores in, none of them a place for outputs."""
    places = {
        cache_home(): "polypseg's feature cache ($POLYPSEG_CACHE)",
        Path.cwd() / "mlruns": "the MLflow store",
    }
    database = sqlite_file(os.environ.get("MLFLOW_TRACKING_URI", ""))
    if database is not None:
        places[database.parent / "artifacts"] = "the MLflow store's artifacts"
    return {_real(folder): held for folder, held in places.items()}


def _is_database(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:  # missing, or a folder: nothing to destroy
        return False


def protected_place(folder: Path) -> str | None:
    """The data set's images/masks or the store that `folder` is in, or None."""
    real = _real(folder)
    if inside := data_set_folder(real):
        return f"{inside}, which holds the {inside.name} of data set {inside.parent}"
    for place, held in stores().items():
        if real.is_relative_to(place):
            return f"{place}, which holds {held}"
    return None


def _refuse_protected(path: Path, option: str, target: Path, folder: bool = False) -> None:
    if _is_database(path):
        raise PolypsegError(
            f"{option} {target} would replace {path}, an SQLite database (an MLflow store or "
            "an Optuna storage): choose another path"
        )
    if held := protected_place(path if folder else path.parent):
        raise PolypsegError(
            f"{option} {target} would write in {held}; polypseg never writes where its inputs "
            "or stores live: choose another folder"
        )


def _writable_folder(folder: Path, option: str, target: Path) -> None:
    existing = folder
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PolypsegError(
            f"{option} {target}: {existing} is a file, not a folder; choose another path"
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise PolypsegError(
            f"cannot write {option} {target}: {existing} is not writable ({err.strerror}); "
            "choose another place"
        ) from None


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """Refuse, before any work, a file output that cannot be written (one line naming `option`)."""
    path = Path(path)
    if path.is_dir():
        raise PolypsegError(f"{option} {path} is a folder; give a file name inside it")
    _refuse_protected(path, option, path)
    _writable_folder(path.parent, option, path)
    return path


def check_output_dir(path: str | Path, option: str = "--out") -> Path:
    """Refuse, before any work, a folder output that is a file or cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PolypsegError(f"{option} {path} is a file, not a folder; give a folder")
    _refuse_protected(path, option, path, folder=True)
    _writable_folder(path, option, path)
    return path


def check_outputs(
    outputs: Sequence[tuple[Path, str]],
    target: Path,
    fix: str,
    *,
    folders: dict[Path, str] | None = None,
    trees: dict[Path, str] | None = None,
    inputs: Sequence[Path] = (),
) -> None:
    """Refuse, before any work, outputs (path, what writes it) landing in one of `folders`
    (where inputs are listed), anywhere under one of `trees` (a data set's images/ and masks/,
    the maps scored), on one of `inputs`, in a protected place, on each other (`fix` says what
    to change) or with a name too long for the file system. `target` is what --out gave."""
    read = {_real(path): path for path in inputs}
    places: dict[Path, tuple[Path, str, bool]] = {}
    for held_in, whole in ((folders or {}, False), (trees or {}, True)):
        for folder, held in held_in.items():
            real = _real(folder)
            if whole or real not in places:
                places[real] = (folder, held, whole)
    seen: dict[Path, str] = {}
    for path, what in outputs:
        where = _real(path)
        if where in read:
            raise PolypsegError(
                f"--out {target} would replace {read[where]}, one of the inputs; choose another "
                "path"
            )
        _refuse_protected(path, "--out", target)
        for real, (shown, held, whole) in places.items():
            if where.parent == real or (whole and where.parent.is_relative_to(real)):
                raise PolypsegError(
                    f"--out {target} would write in {shown}, which holds {held}; polypseg "
                    "never writes where its inputs live: choose another folder"
                )
        if where in seen:
            raise PolypsegError(f"{seen[where]} and {what} would both write {path}; {fix}")
        if len(os.fsencode(where.name)) > NAME_MAX:
            raise PolypsegError(
                f"{what} would write {path}, a name over {NAME_MAX} bytes; choose a shorter name"
            )
        seen[where] = what


def unwritable(folder: Path) -> str | None:
    """Why `folder` (created if missing) cannot take a file and `MIN_FREE_BYTES` (`read-only
    file system`, `no space left on device (12 KiB free)`, `/x is a file, not a folder`), or None
    when it can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        free = short_of_space(folder, MIN_FREE_BYTES)
    except (FileExistsError, NotADirectoryError):  # a file, or a dangling link, in the way
        in_way = next(p for p in (folder, *folder.parents) if p.is_symlink() or p.exists())
        return f"{in_way} is a file, not a folder"
    except OSError as err:
        return (err.strerror or type(err).__name__).lower()
    if free is not None:
        return f"{os.strerror(errno.ENOSPC).lower()} ({free // 1024} KiB free)"
    return None


def short_of_space(folder: Path, needed: int) -> int | None:
    """The bytes free on the disk under `folder` when that is fewer than `needed`, else None."""
    free = shutil.disk_usage(folder).free
    return free if free < needed else None
