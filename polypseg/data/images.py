"""The one image reader: Pillow first, `tifffile` for the TIFFs Pillow cannot decode.

Every reader of images and masks goes through `decode`. TIFF (CVC-ClinicDB's format) allows
sample layouts Pillow refuses (float or 32-bit RGB, signed samples, more than four samples):
those come from `tifffile` as arrays in their own dtype. Pillow's decompression-bomb guard is
silenced: our own limit (`data.max_megapixels`) is checked first.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from polypseg.config import DataConfig
from polypseg.errors import DataError

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", *TIFF_SUFFIXES, ".bmp")
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError)
Decoded = Image.Image | np.ndarray  # Pillow's image, or tifffile's array for what Pillow refuses


def _is_tiff(path: Path) -> bool:
    if path.suffix.lower() in TIFF_SUFFIXES:
        return True
    with open(path, "rb") as handle:
        return handle.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _tiff_array(path: Path) -> np.ndarray:
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


def decode(path: str | Path) -> Decoded:
    """A file decoded to its end and turned upright by its own EXIF orientation: Pillow's image,
    or tifffile's array for a TIFF Pillow refuses."""
    path = Path(path)
    try:
        # Our own limit is checked before any decoding (`pairs._check`); Pillow's error
        # remains for files beyond its hard limit, above any limit the config allows.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                ImageOps.exif_transpose(image, in_place=True)  # a camera's sideways pixels
                return image
    except Image.DecompressionBombError:
        raise DataError(
            f"image {path} is over {Image.MAX_IMAGE_PIXELS * 2 / 1e6:.0f} megapixels; "
            "downscale it or leave it out"
        ) from None
    except DECODE_ERRORS as err:
        if path.is_file() and _is_tiff(path):
            return _tiff_array(path)
        raise DataError(f"cannot decode image {path}: {err}; replace or remove the file") from None


def shown_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as the image is shown: its EXIF orientation applied (header only)."""
    turned = image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
    return (image.size[1], image.size[0]) if turned else image.size


def pixels(decoded: Decoded) -> np.ndarray:
    """The pixels in their own depth (bool, uint8, uint16, int32, float32...), channels last."""
    if isinstance(decoded, np.ndarray):
        return decoded
    if decoded.mode == "I":
        values = np.asarray(decoded)
        # 16-bit PNGs and TIFFs may arrive as 32-bit "I"; their values say what they are.
        in_16_bits = values.size and values.min() >= 0 and values.max() <= 65535
        return values.astype(np.uint16) if in_16_bits else values
    if decoded.mode in ("1", "L", "LA", "RGB", "RGBA", "F") or decoded.mode.startswith("I;16"):
        return np.asarray(decoded)
    if decoded.mode in ("P", "PA"):  # an opaque palette's alpha is flat, which the rule drops
        return np.asarray(decoded.convert("RGBA"))
    return np.asarray(decoded.convert("RGB"))


def to_rgb(decoded: Decoded) -> np.ndarray:
    """H×W×3 uint8 from any decoded image. Grey above 8 bits is stretched to its peak (a 16-bit
    image holding 0–255 stays as it is); floats and tifffile's colours go through `unit_range`."""
    if isinstance(decoded, Image.Image):
        if decoded.mode not in ("I", "F") and not decoded.mode.startswith("I;16"):
            return np.asarray(decoded.convert("RGB"), dtype=np.uint8)
        decoded = np.asarray(decoded)
    values = decoded if decoded.ndim == 2 else decoded[..., :3]
    if values.ndim == 3 and values.shape[2] < 3:
        values = values[..., 0]
    if values.ndim == 2 and values.dtype.kind in "iu" and values.dtype.itemsize > 1:
        peak = max(float(values.max()), 255.0)
        grey = np.clip(values / peak * 255.0, 0, 255).astype(np.uint8)
    else:
        grey = np.round(unit_range(values) * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2) if grey.ndim == 2 else grey


def read_image(path: str | Path) -> np.ndarray:
    return to_rgb(decode(path))


def unit_range(array: np.ndarray) -> np.ndarray:
    """Pixels as float64 in [0, 1], like MATLAB's `im2double` (which PraNet's evaluation
    applies to maps); signed integers are clipped at 0, and floats beyond 1 read as 0–255 values
    (what float TIFFs written from 8-bit data hold)."""
    if array.dtype == bool:
        return array.astype(np.float64)
    if np.issubdtype(array.dtype, np.integer):
        peak = float(np.iinfo(array.dtype).max)
        return np.clip(array.astype(np.float64), 0.0, None) / peak
    values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    if values.size and values.max() > 1.0:
        values = values / 255.0
    return np.clip(values, 0.0, 1.0)


DEFAULT_MAX_MEGAPIXELS = DataConfig.max_megapixels  # for commands without a config


def pixel_problem(width: int, height: int) -> str | None:
    """Why a `width`×`height` frame or served image is refused (over the default limit), or None."""
    if width * height <= DEFAULT_MAX_MEGAPIXELS * 1e6:
        return None
    return (
        f"{width}x{height} is {width * height / 1e6:.3g} megapixels, over the "
        f"{DEFAULT_MAX_MEGAPIXELS:g}-megapixel limit; downscale it"
    )
