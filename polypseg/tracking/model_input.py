"""What the registered model accepts: one H×W×3 image or a batch, as arrays, a DataFrame column or
base64 PNG/JPEG bytes (a 475×336 image is 2.4 MB as JSON lists, tens of kB as a JPEG). Floats in
[0, 1] are fractions of full scale; an image over the pixel limit is refused from its header.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from PIL import Image

from polypseg.data.images import DECODE_ERRORS, pixel_problem, to_rgb

TEXT_KINDS = "OUS"  # numpy dtype kinds of parsed JSON strings and objects
EXPECTED = "an HxWx3 array of 0-255 values, or base64 PNG/JPEG bytes"


class ModelInputError(MlflowException, ValueError):
    """A request the model cannot read, in one line. MLflow's scoring server prefixes an
    `MlflowException`'s message with the whole parsed input (megabytes of pixels) and answers any
    other exception with a traceback: this one keeps its own message for the HTTP 400."""

    # `message` stays the one given (the exception's own `str`): the scoring server's rewrite,
    # "Failed to predict data '<the whole input>'", is dropped.
    message = property(Exception.__str__, lambda self, value: None)

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def _decode(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if problem := pixel_problem(*image.size):
                raise ModelInputError(f"{where}: {problem}")
            return to_rgb(image)
    except (*DECODE_ERRORS, Image.DecompressionBombError) as err:
        raise ModelInputError(f"{where}: not a readable PNG or JPEG ({err})"[:200]) from None


def _pixels(value: Any, where: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except ValueError:  # rows of different lengths
        raise ModelInputError(f"{where}: expected {EXPECTED}; its rows differ in length") from None
    if array.ndim != 3 or array.shape[2] != 3 or array.size == 0:
        raise ModelInputError(f"{where}: expected {EXPECTED}, got shape {array.shape}")
    if problem := pixel_problem(array.shape[1], array.shape[0]):
        raise ModelInputError(f"{where}: {problem}")
    if array.dtype.kind not in "iuf" or not (array.min() >= 0 and array.max() <= 255):
        raise ModelInputError(f"{where}: expected {EXPECTED}, got {array.dtype} values")
    if array.dtype.kind == "f" and array.max() <= 1.0:  # fractions: rounding would make black
        array = array * 255.0
    return np.round(array).astype(np.uint8)


def _image(value: Any, where: str) -> np.ndarray:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ModelInputError(f"{where}: a string must be base64 PNG/JPEG bytes") from None
    if isinstance(value, (bytes, bytearray)):
        return _decode(bytes(value), where)
    return _pixels(value, where)


def read_images(model_input: Any) -> tuple[list[np.ndarray], bool]:
    """The images as H×W×3 uint8 arrays, and whether `model_input` was a batch."""
    if isinstance(model_input, pd.DataFrame):
        if model_input.shape[1] != 1:
            columns = list(model_input.columns)
            raise ModelInputError(f"expected one column of images, got columns {columns}"[:200])
        model_input = list(model_input.iloc[:, 0])
    elif isinstance(model_input, np.ndarray) and model_input.dtype.kind in TEXT_KINDS:
        model_input = model_input.tolist() if model_input.ndim == 1 else model_input
    elif isinstance(model_input, np.ndarray) and model_input.ndim == 4:
        model_input = list(model_input)  # N images of one size
    if not isinstance(model_input, (list, tuple)):
        return [_image(model_input, "the image")], False
    if not model_input:
        raise ModelInputError(f"no images in the request; send {EXPECTED} per image")
    n = len(model_input)
    return [_image(value, f"image {i + 1} of {n}") for i, value in enumerate(model_input)], True
