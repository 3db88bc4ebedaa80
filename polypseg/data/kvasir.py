"""Kvasir-SEG on disk: locate or download the folder, pair images with masks, read them.

A data set is any folder holding `images/` and `masks/` whose files pair by stem (Kvasir-SEG,
CVC-ClinicDB, ETIS... with JPEG, PNG, TIFF or BMP files; TIFFs Pillow cannot decode are read
with tifffile, see `decode.py`). The real Kvasir-SEG masks are RGB JPEGs with compression noise,
so masks are converted to grey and thresholded at 128, never compared with 255.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from polypseg.data.checks import (
    DEFAULT_MAX_MEGAPIXELS,
    broken_links_problem,
    is_broken_link,
    listing,
    pair_problems,
    pixel_guard,
)
from polypseg.data.decode import open_image, unit_range
from polypseg.errors import DataError, DownloadError
from polypseg.files import file_digest, first_line

KAGGLE_HANDLE = "debeshjha1/kvasirseg"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
MASK_THRESHOLD = 128


@dataclass(frozen=True)
class Pair:
    """One image and its mask; `name` is the image's file name (the split's unit)."""

    name: str
    image: Path
    mask: Path


def find_dataset_root(path: str | Path) -> Path:
    """The shallowest folder at or under `path` that holds both `images/` and `masks/`."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(
            f"data folder {path} does not exist; pass the folder with images/ and masks/"
        )
    candidates = [path, *sorted(p for p in path.rglob("*") if p.is_dir())]
    for folder in sorted(candidates, key=lambda p: len(p.parts)):
        if (folder / "images").is_dir() and (folder / "masks").is_dir():
            return folder
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
        # What to do instead depends on the command: its callers add that (source.py, cli.py).
        raise DownloadError(
            f"downloading Kaggle data set {KAGGLE_HANDLE} failed ({_reason(err)})"
        ) from None
    return find_dataset_root(path)


def _reason(err: BaseException) -> str:
    """A short cause: connection failures say so instead of quoting urllib3's paragraph."""
    if isinstance(err, (ConnectionError, OSError)) or "Connection" in type(err).__name__:
        return f"no connection: {type(err).__name__}"
    return f"{type(err).__name__}: {first_line(err)}" if str(err) else type(err).__name__


def files_by_stem(folder: Path, broken: list[Path] | None = None) -> dict[str, Path]:
    """The image files of a folder by stem (the first by name when two share a stem).

    Symlinks that lead nowhere go to `broken` when it is given, to be named rather than skipped.
    """
    files: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if entry.is_file():
            files.setdefault(entry.stem, entry)
        elif broken is not None and is_broken_link(entry):
            broken.append(entry)
    return files


def list_pairs(
    root: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, decode: bool = True
) -> list[Pair]:
    """Every image of `root/images` with its mask in `root/masks`, sorted by name.

    Raises `DataError` listing images without masks, masks without images, symlinks that lead
    nowhere, images over `max_megapixels`, masks not the size of their images and files that do
    not decode (`polypseg.data.checks`: the same verdict for split, train and evaluate).
    `decode=False` leaves the last one to `check_decoding`, for a caller that may know better.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist; pass the folder with images/ and masks/"
        )
    folders = {kind: root / kind for kind in ("images", "masks")}
    for kind, folder in folders.items():
        if not folder.is_dir():
            raise DataError(
                f"{root} has no {kind}/ folder; expected {root}/images and {root}/masks"
            )
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
    """The check `list_pairs(..., decode=False)` left out: every file decodes to its end."""
    if problems := pair_problems(pairs, Path(root), max_megapixels):
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


def binarize_mask(grey: np.ndarray) -> np.ndarray:
    """0/1 uint8 from a grey mask (JPEG noise included) at the 128 threshold."""
    return (grey >= MASK_THRESHOLD).astype(np.uint8)


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file (RGB or grey, JPEG noise included) as an H×W uint8 array of 0/1."""
    grey = np.asarray(Image.fromarray(to_rgb(_decoded(path))).convert("L"))
    return binarize_mask(grey)


def hash_pairs(digest: Any, pairs: Iterable[Pair]) -> None:
    """Feed every pair's name and the SHA-256 of its two files into `digest`, in order.

    Both the feature cache's key and an evaluation's data digest are built this way, so a changed
    byte in any image or mask changes both.
    """
    for pair in pairs:
        digest.update(f"{pair.name}:{file_digest(pair.image)}:{file_digest(pair.mask)}".encode())
