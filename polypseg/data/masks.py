"""Masks: the one rule that reads any mask file as polyp or background, and the sets it refuses.

Polyp sets store masks in many ways (RGB JPEGs with compression noise, 0/1 label PNGs of 8 or 16
bits, palette PNGs, masks drawn only in alpha); every reader of masks goes through
`mask_from_image`, whose docstring is the rule. A format the rule cannot read shows up as empty
masks, and a Dice on empty masks is 1.0 for a model that finds nothing; so a set (or a split
part) whose masks are all empty, or mostly polyp, is refused before anything is trained or scored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from polypseg.data.images import Decoded, decode, pixels, unit_range
from polypseg.data.split import Split
from polypseg.errors import DataError

# A set's mean foreground fraction above this reads as inverted masks. The real sets' polyps
# average well under it (Kvasir-SEG about 16 % of the image, the others less), while inverted
# masks of those sets average over 80 %; half the image is far from both.
MOSTLY_POLYP = 0.5
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, Pillow's "L"

PlainRule = Callable[[np.ndarray], np.ndarray]  # H×W grey or H×W×3 colour values → H×W bool


def _luma(colour: np.ndarray) -> np.ndarray:
    # Pillow's own `convert("L")` for 8 bits, its weights otherwise.
    if colour.dtype == np.uint8:
        return np.asarray(Image.fromarray(np.ascontiguousarray(colour)).convert("L"))
    grey = colour.astype(np.float64) @ _LUMA
    return np.round(grey).astype(colour.dtype) if colour.dtype.kind in "iu" else grey


def at_half_range(values: np.ndarray) -> np.ndarray:
    grey = _luma(values[..., :3]) if values.ndim == 3 else values
    return unit_range(grey) >= 0.5


def _without_alpha(pixels: np.ndarray) -> np.ndarray:
    # Alpha dropped, or kept alone when the mask is drawn only in it (rule 3).
    if pixels.ndim == 2:
        return pixels
    channels = pixels.shape[2]
    if channels in (2, 4):
        colour, alpha = pixels[..., :-1], pixels[..., -1]
        if colour.min() == colour.max() and alpha.min() != alpha.max():
            return alpha
        pixels = colour
    return pixels[..., 0] if pixels.shape[2] < 3 else pixels[..., :3]


def mask_from_image(image: Decoded, plain: PlainRule = at_half_range) -> np.ndarray:
    """An H×W bool mask (True: polyp) from a decoded mask file, by this rule, in order:

    1. a palette image (VOC-style label PNG) whose index 0 is black: index ≠ 0 is polyp (other
       palettes are read by their colours);
    2. a 1-bit image: set pixels are polyp;
    3. an image with an alpha channel whose colour is one flat value while alpha varies (a mask
       drawn only in alpha): the alpha channel is the mask's values; otherwise alpha is ignored;
    4. 0/1 labels (integer values, 8 or 16 bit, all 0 or 1): 1 is polyp (colour: in any channel);
    5. anything else, by `plain`: by default the grey value (colour: luma 0.299 R + 0.587 G +
       0.114 B) at least half its type's range is polyp: ≥ 128 of 255, ≥ 32768 of 65535, ≥ 0.5
       for floats in [0, 1] (floats above 1 are 0–255 values). Half the range keeps JPEG
       compression noise of 0/255 masks on the right side.
    """
    if isinstance(image, Image.Image) and image.mode in ("P", "PA"):
        palette = image.getpalette()
        if palette is None or palette[:3] == [0, 0, 0]:
            indices = np.asarray(image)
            return (indices[..., 0] if indices.ndim == 3 else indices) != 0
    values = pixels(image)
    if values.dtype == bool:
        return values.any(axis=-1) if values.ndim == 3 else values
    values = _without_alpha(values)
    if values.dtype.kind in "iu" and values.size and values.min() >= 0 and values.max() <= 1:
        return (values == 1).any(axis=-1) if values.ndim == 3 else values == 1
    return plain(values)


def read_mask(path: str | Path, plain: PlainRule = at_half_range) -> np.ndarray:
    """A mask file as H×W uint8 0/1 by the mask rule."""
    return mask_from_image(decode(path), plain).astype(np.uint8)


FILE_CAUSES = (
    "are they 0/1 label images saved as JPEG (lossy: the 1s turn into noise), or polyps drawn "
    "darker than mid-grey? Masks are read by one rule (README, Troubleshooting): save them as "
    "PNG with 0/255 or 0/1 values"
)


def foreground_problem(fractions: Sequence[float], where: str) -> str:
    """Why these masks' foreground fractions cannot be polyp annotations, or "": all empty at
    any count, a mean above `MOSTLY_POLYP` from two masks on (one close-up may fill its frame)."""
    n = len(fractions)
    if n and max(fractions) == 0:
        return f"all {n} masks in {where} are empty: {FILE_CAUSES}"
    if n >= 2 and (mean := float(np.mean(fractions))) > MOSTLY_POLYP:
        return (
            f"the {n} masks in {where} are {mean:.0%} polyp on average: are they inverted "
            "(polyp black on white)? Polyp must be the bright or non-zero value"
        )
    return ""


def sources_problem(fractions: Mapping[str, float], where: str) -> str:
    """`foreground_problem` per source set (names `<set>/<file>`; plain names: one set, `where`),
    so all-empty ClinicDB masks beside Kvasir's are refused, not averaged away."""
    groups: dict[str, list[float]] = {}
    for name, fraction in fractions.items():
        groups.setdefault(name.rpartition("/")[0], []).append(fraction)
    for source, group in sorted(groups.items()):
        if problem := foreground_problem(group, source or where):
            return problem
    return ""


def check_split_masks(split: Split, names: Sequence[str], masks: np.ndarray, where: str) -> None:
    """Refuse a source set of implausible masks and a split part of empty ones, judged on the
    feature cache's masks (one per name): those training and its test score use. Counted row by
    row: `count_nonzero` of a row is several times faster than a reduction along an axis."""
    flat = np.asarray(masks).reshape(len(names), -1)
    counts = np.fromiter((np.count_nonzero(mask) for mask in flat), np.int64, len(names))
    fractions = counts / max(1, flat.shape[1])
    if problem := sources_problem(dict(zip(names, fractions.tolist(), strict=True)), "the set"):
        raise DataError(f"{where}: {problem}")
    row = {name: index for index, name in enumerate(names)}
    cause = (
        f"{np.count_nonzero(counts)} of the set's {len(names)} masks have a polyp, and a score "
        "on masks without one means nothing: change data.split_seed or data.ratios, or leave "
        "images without polyps out"
    )
    for part in ("train", "val", "test"):  # inverted masks are judged per source set, above
        rows = [row[name] for name in getattr(split, part)]
        if rows and not counts[rows].any():
            raise DataError(f"{where}: all {len(rows)} masks in the {part} part are empty: {cause}")
