"""Images paired with their masks by stem, and the checks every pair passes before any work.

`split`, `train`, `evaluate` and `predict` must accept and refuse the same files, so pairing and
every check of a pair live here: one file per stem, every image with a mask, links that lead
somewhere, the pixel limit (`data.max_megapixels`, ours instead of Pillow's bomb guard), a mask
its image's size, every file decoded to its end and every mask measured at full scale, as it is
scored. JPEGs are checked in Pillow's draft mode (1/8 scale): the whole stream is still read, at a
fraction of a full decode's cost. A mask `p<stem>` (ETIS and CVC-ColonDB's originals) pairs with
image `<stem>`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, JpegImagePlugin

from polypseg.caches import file_digest
from polypseg.data.images import (
    DECODE_ERRORS,
    DEFAULT_MAX_MEGAPIXELS,
    IMAGE_SUFFIXES,
    TIFF_SUFFIXES,
    pixels,
    shown_size,
)
from polypseg.data.images import decode as decode_file
from polypseg.data.masks import FILE_CAUSES, foreground_problem, mask_from_image, sources_problem
from polypseg.data.sets import find_dataset, set_folders
from polypseg.errors import DataError, listing
from polypseg.processes import usable_cores

_THREADS = 8  # decoding threads for the check, at most one per core
Verdict = tuple[str, Any, "float | None"]  # state, (w, h) or None, a mask's polyp fraction


@dataclass(frozen=True)
class Pair:
    """One image and its mask; `name` is the image's file name (the split's unit)."""

    name: str
    image: Path
    mask: Path


def is_broken_link(path: Path) -> bool:
    """A symlink whose target cannot be reached: a loop, or a target that is gone."""
    return path.is_symlink() and not path.exists()


def broken_links_problem(paths: Sequence[Path], root: Path | None = None) -> str:
    shown = (str(p.relative_to(root)) if root else str(p) for p in paths)
    return f"symlinks that lead nowhere (a loop or a missing target): {listing(shown)}"


def files_by_stem(
    folder: Path, broken: list[Path] | None = None, prefer_png: bool = False
) -> dict[str, Path]:
    """The image files of a folder by stem; several for one stem are refused (which one pairs is
    not ours to guess), except that with `prefer_png` a PNG beside a TIFF of its stem is read
    (the polyp sets' copies). Symlinks that lead nowhere go to `broken` when given."""
    groups: dict[str, list[Path]] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        reason = (err.strerror or type(err).__name__).lower()
        raise DataError(f"cannot read {folder} ({reason}); make it readable") from None
    for entry in (e for e in entries if e.suffix.lower() in IMAGE_SUFFIXES):
        if entry.is_file():
            groups.setdefault(entry.stem, []).append(entry)
        elif broken is not None and is_broken_link(entry):
            broken.append(entry)
    for stem, files in groups.items():
        if prefer_png and len(files) > 1 and any(f.suffix.lower() == ".png" for f in files):
            groups[stem] = [f for f in files if f.suffix.lower() not in TIFF_SUFFIXES]
    if clashes := [files for files in groups.values() if len(files) > 1]:
        shown = listing(
            f"{' and '.join(f'{folder.name}/{f.name}' for f in files)} share the stem "
            f"{files[0].stem}"
            for files in clashes
        )
        fix = "remove one" if len(clashes) == 1 and len(clashes[0]) == 2 else "keep one per stem"
        raise DataError(f"{folder.parent}: {shown}: {fix}")
    return {stem: files[0] for stem, files in groups.items()}


def folder_pairs(images_dir: Path, masks_dir: Path, prefix: str = "") -> list[Pair]:
    """The pairs of one images and masks folder, by stem, named `prefix` + the image's file
    name; one `DataError` line for everything unpaired."""
    broken: list[Path] = []
    prefer_png = bool(prefix)
    images, masks = (files_by_stem(d, broken, prefer_png) for d in (images_dir, masks_dir))
    for stem in [s for s in masks if s not in images and s[:1] == "p" and s[1:] in images]:
        masks[stem[1:]] = masks.pop(stem)
    root = images_dir.parent
    if not images and not masks and not broken:
        looked = ", ".join(IMAGE_SUFFIXES)
        raise DataError(f"no image files in {images_dir} or {masks_dir} (looked for {looked})")
    problems = [broken_links_problem(broken, root)] if broken else []
    if lonely := images.keys() - masks.keys():
        problems.append(f"images without masks: {listing(images[s].name for s in lonely)}")
    if lonely := masks.keys() - images.keys():
        problems.append(f"masks without images: {listing(masks[s].name for s in lonely)}")
    if problems:
        raise DataError(f"{root}: " + "; ".join(problems))
    shared = sorted(images.keys() & masks.keys())
    return [Pair(prefix + images[s].name, images[s], masks[s]) for s in shared]


def list_pairs(
    root: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, decode: bool = True
) -> list[Pair]:
    """Every image of the data set at `root` with its mask, checked. `decode=False` reads headers
    only, leaving the decoding to `check_decoding`, for a caller that may know better."""
    images_dir, masks_dir = find_dataset(root)
    pairs = folder_pairs(images_dir, masks_dir)
    _check(pairs, images_dir.parent, max_megapixels, decode)
    return pairs


def set_pairs(
    name: str,
    root: str | Path,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    decode: bool = False,
) -> list[Pair]:
    """Every pair of set `name` at `root`, named `<name>/<image file name>`, checked."""
    pairs = []
    for images_dir, masks_dir, mixed in set_folders(name, root):
        found = folder_pairs(images_dir, masks_dir, f"{name}/")
        if mixed:  # PraNet's TrainDataset: CVC-ClinicDB's files are numbered, Kvasir's are not
            found = [p for p in found if p.image.stem.isdigit() == (name == "clinicdb")]
        _check(found, images_dir.parent, max_megapixels, decode)
        pairs += found
    if len({p.name for p in pairs}) < len(pairs):
        raise DataError(f"{root}: the same {name} file name in two folders; keep one copy")
    return sorted(pairs, key=lambda p: p.name)


def check_decoding(
    root: str | Path, pairs: Sequence[Pair], max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
) -> None:
    """What `list_pairs(..., decode=False)` left out, before a feature-cache build: every file
    decodes to its end, and no source set's masks are all empty or nearly all polyp."""
    _check(pairs, Path(root), max_megapixels, decode=True, measure=True)


def hash_pairs(digest: Any, pairs: Iterable[Pair]) -> None:
    """Feed every pair's name and its two files' SHA-256 into `digest`: the feature cache's key
    and an evaluation's data digest, so a changed byte in any file changes both."""
    for pair in pairs:
        digest.update(f"{pair.name}:{file_digest(pair.image)}:{file_digest(pair.mask)}".encode())


def _inspect(path: Path, max_pixels: float, decode: bool = True, measure: bool = False) -> Verdict:
    """A `Verdict`, its state "ok" or a key of `_PHRASES`; without `decode`, of the header."""
    try:
        with Image.open(path) as image:
            if image.width * image.height > max_pixels:  # before EXIF, which may read on
                return "large", image.size, None
            size = shown_size(image)  # a mask pairs with its image as both are shown
            if not decode:
                return "ok", size, None
            # A mask is measured as it will be scored, at full scale: at 1/8 the noise of 0/1
            # labels saved as JPEG averages out to clean labels that scoring never sees.
            if not measure and isinstance(image, JpegImagePlugin.JpegImageFile):  # MPO too
                image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
            if measure:
                return _measured(image, size)
    except Image.DecompressionBombError:
        return "large", None, None
    except DECODE_ERRORS:  # TIFF layouts Pillow refuses: the one reader's tifffile path
        try:
            decoded = pixels(decode_file(path))
        except DataError:
            return "undecodable", None, None
        size = (decoded.shape[1], decoded.shape[0])
        return _measured(decoded, size) if measure else ("ok", size, None)
    return "ok", size, None


def _measured(mask: Image.Image | np.ndarray, size: Any) -> Verdict:
    """ "faint" when the mask rule finds no polyp in a mask that is not black (0/1 labels saved
    as JPEG, polyps drawn in dark grey)."""
    fraction = float(mask_from_image(mask).mean())
    if fraction == 0.0 and np.asarray(mask).any():
        return "faint", size, None
    return "ok", size, fraction


def _inspect_all(
    paths: Sequence[Path], max_pixels: float, decode: bool, measure: Sequence[bool] = ()
) -> list[Verdict]:
    """`_inspect` of every path (`measure[i]`: path i is a mask), decoded in threads (Pillow
    decodes without the GIL). The warning filter is process-wide: set once around all threads,
    since `catch_warnings` entered and left in several threads at once can restore a stale one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if not decode:  # a header is read faster than a thread is handed the work
            return [_inspect(path, max_pixels, decode) for path in paths]
        measure = list(measure) or [False] * len(paths)
        with ThreadPoolExecutor(max_workers=min(_THREADS, usable_cores())) as pool:
            work = pool.map(lambda p, m: _inspect(p, max_pixels, decode, m), paths, measure)
            return list(work)


_PHRASES = {  # what is wrong, by verdict, in the order a refusal names them
    "large": "images over the {limit:g}-megapixel limit (downscale them, or raise "
    "data.max_megapixels in the config): {names}",
    "undecodable": "files that cannot be decoded: {names}",
    "size": "masks not the size of their images: {names}",
    "faint": "masks not black but with no pixel at half range or above: {names} ({causes})",
}


def _refusal(found: dict[str, list[str]], max_megapixels: float) -> str:
    """One phrase per kind of problem in `found` (names by verdict), or "" when none."""
    return "; ".join(
        _PHRASES[kind].format(limit=max_megapixels, names=listing(found[kind]), causes=FILE_CAUSES)
        for kind in _PHRASES
        if found.get(kind)
    )


def _note(found: dict[str, list[str]], shown: str, state: str, size: Any) -> None:
    if state == "large" and size:
        shown += f" ({size[0]}×{size[1]})"
    found.setdefault(state, []).append(shown)


def _check(
    pairs: Sequence[Pair],
    root: Path,
    max_megapixels: float,
    decode: bool,
    measure: bool = False,
) -> None:
    """Refuse `pairs` in one line naming every bad file. With `measure` (a decode), the same
    pass measures each mask, and a source set of implausible masks is refused too."""
    found: dict[str, list[str]] = {}
    fractions: dict[str, float] = {}
    paths = [path for pair in pairs for path in (pair.image, pair.mask)]
    verdicts = _inspect_all(paths, max_megapixels * 1e6, decode, [False, measure] * len(pairs))
    for pair, image, mask in zip(pairs, verdicts[0::2], verdicts[1::2], strict=True):
        for path, (state, size, _) in ((pair.image, image), (pair.mask, mask)):
            _note(found, str(path.relative_to(root)), state, size)
        if mask[2] is not None:
            fractions[pair.name] = mask[2]
        if None not in (image[1], mask[1]) and image[1] != mask[1]:
            found.setdefault("size", []).append(
                f"{pair.mask.relative_to(root)} ({mask[1][0]}×{mask[1][1]})"
            )
    if problem := _refusal(found, max_megapixels) or sources_problem(fractions, "masks/"):
        raise DataError(f"{root}: {problem}")


def refuse_bad_images(paths: Sequence[Path]) -> None:
    """Single images (predict's inputs) checked like pairs: links, the pixel limit, decoding."""
    if broken := [p for p in paths if is_broken_link(p)]:
        raise DataError(broken_links_problem(broken) + "; fix or remove them")
    found: dict[str, list[str]] = {}
    verdicts = _inspect_all(paths, DEFAULT_MAX_MEGAPIXELS * 1e6, decode=True)
    for path, verdict in zip(paths, verdicts, strict=True):
        _note(found, str(path), *verdict[:2])
    if problem := _refusal(found, DEFAULT_MAX_MEGAPIXELS):
        raise DataError(problem + "; pass image files that decode")


def refuse_implausible_masks(masks: Sequence[Path], where: str) -> None:
    """Masks about to be scored, refused when all empty or nearly all polyp: a Dice on empty
    masks is 1.0 for a model that finds nothing (`masks.foreground_problem`)."""
    verdicts = _inspect_all(masks, math.inf, decode=True, measure=[True] * len(masks))
    if faint := [
        str(mask) for mask, (state, _, _) in zip(masks, verdicts, strict=True) if state == "faint"
    ]:
        raise DataError(_refusal({"faint": faint}, math.inf))
    fractions = [fraction for _, _, fraction in verdicts if fraction is not None]
    if problem := foreground_problem(fractions, where):
        raise DataError(problem)
