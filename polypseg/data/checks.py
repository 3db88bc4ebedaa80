"""Checks on image and mask files before any work: links, the pixel limit, sizes, decoding.

`split`, `train`, `evaluate` and `predict` must accept and refuse the same files, so the checks
live here and `list_pairs` runs all of them: a symlink that leads nowhere (a loop, a missing
target) is named instead of skipped; an image over the pixel limit (`data.max_megapixels`, our
deliberate limit instead of Pillow's decompression-bomb guard) is named with its size; a mask
must have its image's size; and every file is decoded to its end, so a truncated JPEG is found
by `split` as well as by `train`. JPEGs decode in Pillow's draft mode (1/8 scale): the whole
compressed stream is still read, at a fraction of a full decode's cost. The one exception is a
feature-cache hit (`features/prepare.py`): its key holds the SHA-256 of every file, so the bytes
are the ones a build already decoded, and only headers are read again. Before a build the same
pass measures each mask's polyp fraction by the mask rule (`masks.py`; a JPEG mask empty at 1/8
scale is looked at again in full), so a set of empty masks is refused before it is encoded.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from polypseg.config import DataConfig
from polypseg.data.decode import read_array
from polypseg.data.masks import (
    foreground_problem,
    mask_from_image,
    mask_from_pixels,
    read_mask_file,
)
from polypseg.errors import DataError
from polypseg.processes import usable_cores

DEFAULT_MAX_MEGAPIXELS = DataConfig.max_megapixels  # for commands without a config
_SHOWN = 5  # names listed in an error before "... and N more"
_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError)
_THREADS = 8  # decoding threads for the check, at most one per core
Verdict = tuple[str, Any, "float | None"]  # state, (w, h) or None, a mask's polyp fraction


def listing(names: Iterable[str]) -> str:
    """`a, b, c, d, e ... and 3 more`: what one error line can show of a list."""
    names = sorted(names)
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def is_broken_link(path: Path) -> bool:
    """A symlink whose target cannot be reached: a loop, or a target that is gone."""
    return path.is_symlink() and not path.exists()


def broken_links_problem(paths: Sequence[Path], root: Path | None = None) -> str:
    shown = (str(p.relative_to(root)) if root else str(p) for p in paths)
    return f"symlinks that lead nowhere (a loop or a missing target): {listing(shown)}"


def refuse_broken_links(paths: Sequence[Path]) -> None:
    """A DataError naming every broken link among `paths` (predict's inputs)."""
    if broken := [p for p in paths if is_broken_link(p)]:
        raise DataError(broken_links_problem(broken) + "; fix or remove them")


@contextmanager
def pixel_guard(path: Path) -> Iterator[None]:
    """Pillow's decompression-bomb warning silenced and its error turned into one line.

    Our own limit is checked before any decoding (`pair_problems`); Pillow's error remains for
    files beyond Pillow's hard limit, which is above any limit the config allows.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            yield
        except Image.DecompressionBombError:
            raise DataError(
                f"image {path} is over {Image.MAX_IMAGE_PIXELS * 2 / 1e6:.0f} megapixels; "
                "downscale it or leave it out"
            ) from None


def _inspect(path: Path, max_pixels: float, decode: bool = True, measure: bool = False) -> Verdict:
    """("ok", (w, h), fraction), ("large", (w, h) or None, None) or ("undecodable", None, None).

    Without `decode` only the header is read: the size and the pixel limit, not the data. With
    `measure` (a mask) the fraction of polyp pixels by the mask rule comes too, else None.
    Pillow's decompression-bomb warning is the caller's to silence (`_inspect_all`).
    """
    try:
        with Image.open(path) as image:
            size = image.size
            if size[0] * size[1] > max_pixels:
                return "large", size, None
            if not decode:
                return "ok", size, None
            drafted = isinstance(image, JpegImagePlugin.JpegImageFile)  # MPO files are JPEGs too
            if drafted:
                image.draft(image.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
            image.load()
            fraction = float(mask_from_image(image).mean()) if measure else None
    except Image.DecompressionBombError:
        return "large", None, None
    except _DECODE_ERRORS:
        return _other_decoder(path, measure)
    if drafted and fraction == 0.0:  # a polyp under half of each 8×8 block: look at full scale
        fraction = float(read_mask_file(path).mean())
    return "ok", size, fraction


def _inspect_all(
    paths: Sequence[Path], max_pixels: float, decode: bool, measure: Sequence[bool] = ()
) -> list[Verdict]:
    """`_inspect` of every path (`measure[i]`: path i is a mask to measure); decoding runs in
    threads (Pillow decodes without the GIL).

    The warning filter is set here, once around all threads: it is process-wide, and
    `catch_warnings` entered and left in several threads at once can restore a stale list.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if not decode:  # a header is read faster than a thread is handed the work
            return [_inspect(path, max_pixels, decode) for path in paths]
        measure = list(measure) or [False] * len(paths)
        with ThreadPoolExecutor(max_workers=min(_THREADS, usable_cores())) as pool:
            work = pool.map(lambda p, m: _inspect(p, max_pixels, decode, m), paths, measure)
            return list(work)


def _other_decoder(path: Path, measure: bool) -> Verdict:
    """TIFF layouts Pillow refuses (CVC-ClinicDB's) decode with tifffile: the same verdict."""
    try:
        array = read_array(path)
    except DataError:
        return "undecodable", None, None
    fraction = float(mask_from_pixels(array).mean()) if measure else None
    return "ok", (array.shape[1], array.shape[0]), fraction


def _phrases(found: dict[str, list[str]], max_megapixels: float) -> list[str]:
    phrases = {
        "large": f"images over the {max_megapixels:g}-megapixel limit (downscale them, or "
        "raise data.max_megapixels in the config)",
        "undecodable": "files that cannot be decoded",
        "size": "masks not the size of their images",
    }
    return [f"{phrases[kind]}: {listing(names)}" for kind, names in found.items() if names]


def _note(found: dict[str, list[str]], shown: str, state: str, size: Any) -> None:
    if state == "large":
        found["large"].append(f"{shown} ({size[0]}×{size[1]})" if size else shown)
    elif state == "undecodable":
        found["undecodable"].append(shown)


def pair_problems(
    pairs: Iterable[Any],
    root: Path,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    decode: bool = True,
    fractions: dict[str, float] | None = None,
) -> list[str]:
    """What is wrong with `pairs` (each with `.image` and `.mask` paths), one phrase per kind.

    `decode=False` checks headers only (sizes, the pixel limit): for files known to decode.
    `fractions`, when given (with `decode`), receives each decoded mask's polyp fraction by
    pair name: the same pass measures the masks (`masks.foreground_problem` judges them).
    """
    found: dict[str, list[str]] = {"large": [], "undecodable": [], "size": []}
    pairs = list(pairs)
    paths = [path for pair in pairs for path in (pair.image, pair.mask)]
    measure = [fractions is not None and index % 2 == 1 for index in range(len(paths))]
    verdicts = _inspect_all(paths, max_megapixels * 1e6, decode, measure)
    for pair, image, mask in zip(pairs, verdicts[0::2], verdicts[1::2], strict=True):
        sizes = []
        for path, (state, size, _) in ((pair.image, image), (pair.mask, mask)):
            _note(found, str(path.relative_to(root)), state, size)
            sizes.append(size)
        if fractions is not None and mask[2] is not None:
            fractions[pair.name] = mask[2]
        if None not in sizes and sizes[0] != sizes[1]:
            found["size"].append(f"{pair.mask.relative_to(root)} ({sizes[1][0]}×{sizes[1][1]})")
    return _phrases(found, max_megapixels)


def refuse_bad_images(
    paths: Sequence[Path], max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
) -> None:
    """Single images (predict's inputs) checked like pairs: links, the pixel limit, decoding."""
    refuse_broken_links(paths)
    found: dict[str, list[str]] = {"large": [], "undecodable": []}
    verdicts = _inspect_all(paths, max_megapixels * 1e6, decode=True)
    for path, verdict in zip(paths, verdicts, strict=True):
        _note(found, str(path), *verdict[:2])
    if problems := _phrases(found, max_megapixels):
        raise DataError("; ".join(problems) + "; pass image files that decode")


def refuse_implausible_masks(masks: Sequence[Path], where: str) -> None:
    """Masks about to be scored, refused when all empty or nearly all polyp: a Dice on empty
    masks is 1.0 for a model that finds nothing (`masks.foreground_problem`)."""
    verdicts = _inspect_all(masks, math.inf, decode=True, measure=[True] * len(masks))
    fractions = [fraction for _, _, fraction in verdicts if fraction is not None]
    if problem := foreground_problem(fractions, where):
        raise DataError(problem)
