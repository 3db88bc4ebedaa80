"""Decoding image files: Pillow first, `tifffile` for the TIFFs Pillow cannot read.

Real polyp sets ship as TIFF (CVC-ClinicDB's frames and masks), and TIFF allows sample layouts
Pillow refuses: float or 32-bit RGB, signed samples, more than four samples per pixel. Those
files are decoded with `tifffile` instead, so the data layer, `evaluate` and `predict` read the
same files. Arrays come out channels-last in their own dtype; `unit_range` turns any of them
into floats in [0, 1] (MATLAB's `im2double`, which PraNet's evaluation applies to maps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from polypseg.errors import DataError

TIFF_SUFFIXES = (".tif", ".tiff")
PILLOW_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError)


def _is_tiff(path: Path) -> bool:
    if path.suffix.lower() in TIFF_SUFFIXES:
        return True
    with open(path, "rb") as handle:
        return handle.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def pillow_array(image: Image.Image) -> np.ndarray:
    """The pixels of a Pillow image in their own depth: bool, uint8, uint16, int32 or float32."""
    if image.mode == "I":
        values = np.asarray(image)
        # 16-bit PNGs and TIFFs may arrive as 32-bit "I"; their values say what they are.
        in_16_bits = values.size and values.min() >= 0 and values.max() <= 65535
        return values.astype(np.uint16) if in_16_bits else values
    if image.mode in ("1", "L", "LA", "RGB", "RGBA", "F") or image.mode.startswith("I;16"):
        return np.asarray(image)
    if image.mode in ("P", "PA"):
        transparent = image.mode == "PA" or "transparency" in image.info
        return np.asarray(image.convert("RGBA" if transparent else "RGB"))
    return np.asarray(image.convert("RGB"))


def _tiff_array(path: Path) -> np.ndarray:
    """A TIFF's first image, channels last, with `tifffile`; DataError when it cannot."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            page = tiff.pages[0]
            array, axes = page.asarray(), page.axes
    except Exception as err:  # tifffile raises many types for damaged or exotic files
        raise DataError(
            f"cannot decode image {path}: neither Pillow nor tifffile can read it ({err}); "
            "replace or remove the file"
        ) from None
    if axes.startswith("S") and array.ndim == 3:
        array = np.moveaxis(array, 0, -1)  # planar (separate) samples
    if array.ndim not in (2, 3):
        raise DataError(f"cannot decode image {path}: TIFF axes {axes} are not one image")
    return array


def read_array(path: str | Path) -> np.ndarray:
    """An image file's pixels, H×W or H×W×C, in their own dtype (16-bit stays 16-bit)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return pillow_array(image)
    except PILLOW_ERRORS as err:
        if path.is_file() and _is_tiff(path):
            return _tiff_array(path)
        raise DataError(f"cannot decode image {path}: {err}; replace or remove the file") from None


def unit_range(array: np.ndarray) -> np.ndarray:
    """Pixels as float64 in [0, 1], like MATLAB's `im2double`.

    bool is 0/1; unsigned integers are divided by their type's maximum (uint8 by 255, uint16 by
    65535); signed ones are clipped at 0 first. Floats in [0, 1] are kept; floats beyond 1 are
    read as 0–255 values (what float TIFFs written from 8-bit data hold) and clipped.
    """
    if array.dtype == bool:
        return array.astype(np.float64)
    if np.issubdtype(array.dtype, np.integer):
        peak = float(np.iinfo(array.dtype).max)
        return np.clip(array.astype(np.float64), 0.0, None) / peak
    values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    if values.size and values.max() > 1.0:
        values = values / 255.0
    return np.clip(values, 0.0, 1.0)


def _pillow_compatible(array: np.ndarray) -> Image.Image:
    """An array decoded by tifffile as an image Pillow's conversions accept."""
    if array.ndim == 3 and array.shape[2] >= 3:
        rgb = array[..., :3]
        return Image.fromarray(np.round(unit_range(rgb) * 255).astype(np.uint8))
    grey = array[..., 0] if array.ndim == 3 else array
    if grey.dtype in (np.uint8, np.uint16):
        return Image.fromarray(np.ascontiguousarray(grey))  # L or I;16, as Pillow reads them
    return Image.fromarray(np.round(unit_range(grey) * 255).astype(np.uint8))


def open_image(path: str | Path) -> Image.Image:
    """A decoded Pillow image of any file `read_array` reads; DataError naming it otherwise."""
    path = Path(path)
    try:
        image = Image.open(path)
        image.load()
        return image
    except PILLOW_ERRORS as err:
        if path.is_file() and _is_tiff(path):
            return _pillow_compatible(_tiff_array(path))
        raise DataError(f"cannot decode image {path}: {err}; replace or remove the file") from None


def has_image_header(path: str | Path) -> bool:
    """Whether Pillow or, for a TIFF, tifffile recognises the file (headers only: fast)."""
    path = Path(path)
    try:
        with Image.open(path):
            return True
    except PILLOW_ERRORS:
        pass
    if not (path.is_file() and _is_tiff(path)):
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            return len(tiff.pages) > 0
    except Exception:  # tifffile raises many types for files that are not TIFFs
        return False
