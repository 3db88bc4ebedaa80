"""The registered model: an MLflow pyfunc that segments H×W×3 uint8 images of any size.

Its one artifact, `segmenter.pt` (`models.segmenter.segmenter_state`), is plain tensors and
numbers, so it loads with only polypseg installed and no network. A `PythonModel`, not
`mlflow.pytorch`, whose default `torch.export` graph has a fixed input shape.
"""

from __future__ import annotations

import re
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from mlflow.utils.logging_utils import suppress_logs

from polypseg.models.decoder import Decoder
from polypseg.models.encoders import FrozenEncoder
from polypseg.models.segmenter import load_segmenter, segmenter_state
from polypseg.tracking.model_input import read_images


class SegmenterModel(mlflow.pyfunc.PythonModel):
    """An image (`model_input.py`'s forms) → an H×W uint8 mask of 0/1; a batch → a list of them."""

    def load_context(self, context: Any) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.segmenter, self.threshold = load_segmenter(context.artifacts["segmenter"], device)

    # The `np.ndarray` hint is one MLflow 3 infers no schema from (the input takes more forms
    # than a hint can say, see `log_segmenter_model`), and without a hint MLflow warns.
    def predict(self, context, model_input: np.ndarray, params=None):  # noqa: ANN001, ANN201
        images, batch = read_images(model_input)
        masks = [self.segmenter.predict_mask(image, self.threshold) for image in images]
        return masks if batch else masks[0]


def _requirements() -> list[str]:
    """Explicit pins: inferring them costs seconds per call and wants the network."""
    pins = []
    for package in ("polypseg", "torch", "torchvision", "segment-anything", "numpy", "pillow"):
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def log_segmenter_model(
    encoder: FrozenEncoder, decoder: Decoder, image_size: int, name: str = "model"
) -> mlflow.models.model.ModelInfo:
    # Outputs only. An input schema cannot admit both forms the model takes: a TensorSpec makes
    # the scoring server build one array of the whole request, which a batch of images of
    # different sizes cannot be (HTTP 400 before the model runs), and a ColSpec turns an
    # in-process H×W×3 array into a DataFrame and refuses it. `read_images` checks instead.
    signature = ModelSignature(outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1))]))
    example = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    # MLflow's advice to log models from code is silenced (our pyfunc is an importable class, so
    # cloudpickle stores a reference to it, not code), and its note on checking the example. A
    # filter on those messages, not the logger's level, which threads logging at once could leave
    # raised for good.
    quiet = re.compile("using CloudPickle|Validating input example")
    with tempfile.TemporaryDirectory() as tmp, suppress_logs("mlflow.pyfunc", quiet):
        path = Path(tmp) / "segmenter.pt"
        torch.save(segmenter_state(encoder.cpu(), decoder.cpu(), image_size), path)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=SegmenterModel(),
            artifacts={"segmenter": str(path)},
            signature=signature,
            input_example=example,
            pip_requirements=_requirements(),
        )
