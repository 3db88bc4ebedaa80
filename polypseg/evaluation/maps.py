"""Saved prediction maps of any method, paired with a data set's masks and read as PraNet does.

A map is any image file (PNG, JPEG, TIFF, BMP; 8- or 16-bit; grey or RGB; any size). Like
PraNet's `eval/main.m` we take its first channel as `im2double` (uint8 / 255, uint16 / 65535)
and resize it to its mask's size when they differ (bilinear, as PraNet's test script does before
saving). Maps pair with `DATA/masks/` by file stem; `DATA/images/` is not needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from polypseg.data.images import IMAGE_SUFFIXES, decode, pixels, unit_range
from polypseg.data.masks import read_mask
from polypseg.data.pairs import Pair, files_by_stem
from polypseg.errors import DataError, listing

# MATLAB's rgb2gray weights: the first row of the inverse of the NTSC (YIQ) matrix.
_RGB2GRAY = np.linalg.inv([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]])[0]
PRANET_MASK_THRESHOLD = 128


def read_map(path: str | Path) -> np.ndarray:
    """A prediction map as float64 in [0, 1]: the first channel, as MATLAB's `im2double`."""
    array = pixels(decode(path))
    return unit_range(array[..., 0] if array.ndim == 3 else array)


def resize_map(prob_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if prob_map.shape == tuple(shape):
        return prob_map
    image = Image.fromarray(prob_map.astype(np.float32))
    resized = image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float64), 0.0, 1.0)


def _matlab_above_128(values: np.ndarray) -> np.ndarray:
    """`main.m`'s `rgb2gray` (when colour), then `> 128` of the stored values; a float mask is
    scaled to 0–255 first (MATLAB would compare its raw values with 128 and find nothing)."""
    if np.issubdtype(values.dtype, np.floating):
        values = unit_range(values) * 255.0
    if values.ndim == 3:
        grey = values[..., :3].astype(np.float64) @ _RGB2GRAY
        if np.issubdtype(values.dtype, np.integer):
            grey = np.floor(grey + 0.5)  # MATLAB rounds integer images half away from zero
        return grey > PRANET_MASK_THRESHOLD
    return values > PRANET_MASK_THRESHOLD


def read_pranet_mask(path: str | Path) -> np.ndarray:
    """A ground-truth mask as PraNet's `main.m` reads it, wherever `main.m` reads it right.

    The format is read by polypseg's mask rule (`data.masks.mask_from_image`: palette, 1-bit,
    alpha-only and 0/1 label masks, which `main.m` would read as empty); plain grey or colour
    values keep MATLAB's own threshold (`_matlab_above_128`), so published figures compare.
    """
    return read_mask(path, plain=_matlab_above_128)


def pair_maps(predictions: str | Path, root: str | Path) -> tuple[list[Pair], list[str]]:
    """Each map of `predictions` with its mask in `root/masks` as a `Pair` (the map in the
    image's place), and the masks without a map (a method may skip images); a map without a
    mask is an error."""
    predictions, masks_dir = Path(predictions), Path(root) / "masks"
    if not predictions.is_dir():
        raise DataError(f"--predictions {predictions} is not a folder of prediction maps")
    if not masks_dir.is_dir():
        raise DataError(f"{root} has no masks/ folder; pass the data set folder holding masks/")
    maps, masks = files_by_stem(predictions), files_by_stem(masks_dir)
    if not maps:
        raise DataError(f"no maps in {predictions} (looked for {', '.join(IMAGE_SUFFIXES)})")
    if orphans := sorted(maps.keys() - masks.keys()):
        raise DataError(
            f"maps without a mask in {masks_dir}: {listing(maps[s].name for s in orphans)}; "
            "maps pair with masks by file stem"
        )
    pairs = [Pair(masks[s].name, maps[s], masks[s]) for s in sorted(maps)]
    missing = sorted(masks[s].name for s in masks.keys() - maps.keys())
    return pairs, missing
