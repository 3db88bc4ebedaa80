"""Kvasir-SEG on disk: locate or download the folder, pair images with masks, read them.

A data set is any folder holding `images/` and `masks/` whose files pair by stem (Kvasir-SEG,
CVC-ClinicDB, ETIS... with JPEG, PNG, TIFF or BMP files; TIFFs Pillow cannot decode are read
with tifffile, see `decode.py`), one file per stem in each folder. Every command finds it the
same way (`find_dataset_root`). Masks are read by one rule (`masks.py`): Kvasir-SEG's RGB JPEGs
with compression noise, 0/1 labels, palette and alpha-only masks alike.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from polypseg.caches import file_digest
from polypseg.data.checks import (
    DEFAULT_MAX_MEGAPIXELS,
    broken_links_problem,
    is_broken_link,
    listing,
    pair_problems,
    pixel_guard,
)
from polypseg.data.decode import open_image, unit_range
from polypseg.data.masks import foreground_problem, read_mask_file
from polypseg.errors import DataError, DownloadError, first_line

KAGGLE_HANDLE = "debeshjha1/kvasirseg"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
_CLASHES_SHOWN = 3  # stems named in one error line


@dataclass(frozen=True)
class Pair:
    """One image and its mask; `name` is the image's file name (the split's unit)."""

    name: str
    image: Path
    mask: Path


def _holds_data(folder: Path) -> bool:
    return (folder / "images").is_dir() and (folder / "masks").is_dir()


def _data_folders(path: Path) -> list[Path]:
    """The folders under `path` holding `images/` and `masks/`, not looking inside them.

    A folder the walk cannot read might hold a data set (or a second one): it is refused, named,
    rather than skipped as `os.walk` would.
    """
    found = []
    for folder, subfolders, _ in os.walk(path, onerror=partial(_unreadable, path)):
        subfolders.sort()
        if "images" in subfolders and "masks" in subfolders and _holds_data(Path(folder)):
            found.append(Path(folder))
            subfolders.clear()  # a data set's own subfolders are its own
    return found


def _unreadable(root: Path, err: OSError) -> None:
    raise DataError(
        f"cannot read {err.filename} ({(err.strerror or type(err).__name__).lower()}) while "
        f"looking for images/ and masks/ under {root}; make it readable, or pass the data set's "
        "own folder as the root"
    )


def find_dataset_root(path: str | Path) -> Path:
    """The data set at or under `path`: `path` itself when it holds `images/` and `masks/`,
    else the one folder under it that does (a download's nesting). Every command finds its data
    this way; a folder holding several data sets is refused, naming them, never the first taken.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(
            f"data folder {path} does not exist; pass the folder with images/ and masks/"
        )
    if _holds_data(path):
        return path
    found = _data_folders(path)
    if len(found) == 1:
        return found[0]
    if found:
        names = listing(str(folder.relative_to(path)) for folder in found)
        raise DataError(
            f"{path} holds {len(found)} data sets (folders with images/ and masks/): {names}; "
            f"pass one of them as the root, e.g. {found[0]}"
        )
    lacking = [kind for kind in ("images", "masks") if not (path / kind).is_dir()]
    if len(lacking) == 1:  # half a data set: say which half is missing
        raise DataError(
            f"{path} has no {lacking[0]}/ folder; expected {path}/images and {path}/masks"
        )
    raise DataError(
        f"no images/ and masks/ folders under {path}; a Kvasir-style folder holds both "
        "(or create one with `polypseg data synth --out DIR`)"
    )


def download_kvasir(dest: str | Path | None = None) -> Path:
    """Download Kvasir-SEG with kagglehub (reused from its cache) and return its data folder."""
    import kagglehub

    try:
        path = kagglehub.dataset_download(
            KAGGLE_HANDLE, output_dir=str(dest) if dest is not None else None
        )
    except Exception as err:  # kagglehub raises many types for network and auth failures
        # What to do instead depends on the command: its callers add that (source.py, cli/data.py).
        raise DownloadError(
            f"downloading Kaggle data set {KAGGLE_HANDLE} failed ({_reason(err)})"
        ) from None
    return find_dataset_root(path)


def _reason(err: BaseException) -> str:
    """A short cause: connection failures say so instead of quoting urllib3's paragraph."""
    if isinstance(err, (ConnectionError, OSError)) or "Connection" in type(err).__name__:
        return f"no connection: {type(err).__name__}"
    return f"{type(err).__name__}: {first_line(err)}" if str(err) else type(err).__name__


def stem_groups(folder: Path, broken: list[Path] | None = None) -> dict[str, list[Path]]:
    """The image files of a folder grouped by stem, each group sorted by name.

    Symlinks that lead nowhere go to `broken` when it is given, to be named rather than skipped.
    """
    groups: dict[str, list[Path]] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        reason = (err.strerror or type(err).__name__).lower()
        raise DataError(f"cannot read {folder} ({reason}); make it readable") from None
    for entry in entries:
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if entry.is_file():
            groups.setdefault(entry.stem, []).append(entry)
        elif broken is not None and is_broken_link(entry):
            broken.append(entry)
    return groups


def one_per_stem(groups: dict[str, list[Path]], folder: Path) -> dict[str, Path]:
    """The one file of each stem; several files for one stem in one folder (`X.jpg` beside a
    stale `X.png`, `X.JPG` beside `X.jpg`) are refused, naming them: which one pairs is not ours
    to guess. A layout that prefers one format filters `groups` before this."""
    if clashes := [files for files in groups.values() if len(files) > 1]:
        shown = "; ".join(
            f"{' and '.join(f'{folder.name}/{f.name}' for f in files)} share the stem "
            f"{files[0].stem}"
            for files in clashes[:_CLASHES_SHOWN]
        )
        if len(clashes) > _CLASHES_SHOWN:
            shown += f" ... and {len(clashes) - _CLASHES_SHOWN} more stems"
        fix = "remove one" if len(clashes) == 1 and len(clashes[0]) == 2 else "keep one per stem"
        raise DataError(f"{folder.parent}: {shown}: {fix}")
    return {stem: files[0] for stem, files in groups.items()}


def files_by_stem(folder: Path, broken: list[Path] | None = None) -> dict[str, Path]:
    """The image files of a folder by stem, one file per stem (`one_per_stem`)."""
    return one_per_stem(stem_groups(folder, broken), folder)


def list_pairs(
    root: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, decode: bool = True
) -> list[Pair]:
    """Every image of the data set at `root` (`find_dataset_root`) with its mask, by name.

    Raises `DataError` naming several files for one stem, images without masks, masks without
    images, symlinks that lead nowhere, images over `max_megapixels`, masks not the size of
    their images and files that do not decode (`polypseg.data.checks`: the same verdict for
    split, train and evaluate). `decode=False` leaves the last one to `check_decoding`, for a
    caller that may know better.
    """
    root = find_dataset_root(root)
    folders = {kind: root / kind for kind in ("images", "masks")}
    broken: list[Path] = []
    images, masks = (files_by_stem(folders[k], broken) for k in ("images", "masks"))
    if not images and not masks and not broken:
        raise DataError(
            f"no image files in {root}/images or {root}/masks "
            f"(looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    problems = [broken_links_problem(broken, root)] if broken else []
    if lonely := images.keys() - masks.keys():
        problems.append(f"images without masks: {listing(images[s].name for s in lonely)}")
    if lonely := masks.keys() - images.keys():
        problems.append(f"masks without images: {listing(masks[s].name for s in lonely)}")
    pairs = [
        Pair(images[s].name, images[s], masks[s]) for s in sorted(images.keys() & masks.keys())
    ]
    problems += pair_problems(pairs, root, max_megapixels, decode)
    if problems:
        raise DataError(f"{root}: " + "; ".join(problems))
    return pairs


def check_decoding(
    root: str | Path, pairs: Sequence[Pair], max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
) -> None:
    """The check `list_pairs(..., decode=False)` left out, before a feature-cache build: every
    file decodes to its end, and the masks are not all empty nor nearly all polyp."""
    fractions: dict[str, float] = {}
    problems = pair_problems(pairs, Path(root), max_megapixels, fractions=fractions)
    if not problems and (problem := foreground_problem(list(fractions.values()), "masks/")):
        problems = [problem]
    if problems:
        raise DataError(f"{root}: " + "; ".join(problems))


def to_rgb(image: Image.Image) -> np.ndarray:
    """H×W×3 uint8 from any PIL mode: grey, RGBA, palette and 16-bit inputs included."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0, 0, 255).astype(np.uint8))
    if image.mode == "F":  # floats in [0, 1] or 0-255, as `unit_range` reads them
        image = Image.fromarray(np.round(unit_range(np.asarray(image)) * 255).astype(np.uint8))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _decoded(path: str | Path) -> Image.Image:
    with pixel_guard(Path(path)):  # the limit was checked when listing; no word from Pillow
        return open_image(path)


def read_image(path: str | Path) -> np.ndarray:
    """An image file as H×W×3 uint8 RGB, at its original size."""
    return to_rgb(_decoded(path))


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as an H×W uint8 array of 0/1, by the mask rule (`masks.mask_from_pixels`)."""
    with pixel_guard(Path(path)):  # the limit was checked when listing; no word from Pillow
        return read_mask_file(path).astype(np.uint8)


def hash_pairs(digest: Any, pairs: Iterable[Pair]) -> None:
    """Feed every pair's name and the SHA-256 of its two files into `digest`, in order.

    Both the feature cache's key and an evaluation's data digest are built this way, so a changed
    byte in any image or mask changes both.
    """
    for pair in pairs:
        digest.update(f"{pair.name}:{file_digest(pair.image)}:{file_digest(pair.mask)}".encode())
