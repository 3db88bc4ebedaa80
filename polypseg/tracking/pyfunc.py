"""The registered model: an MLflow pyfunc that segments H×W×3 uint8 images of any size.

Its one artifact, `segmenter.pt`, is plain tensors and numbers (`weights_only=True`), rebuilt from
the encoder and decoder registries, so it loads with only polypseg installed and no network. A
`PythonModel`, not `mlflow.pytorch`, whose default `torch.export` graph has a fixed input shape.
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
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from mlflow.utils.logging_utils import suppress_logs

from polypseg.errors import PolypsegError, first_line
from polypseg.models.decoder import Decoder, decoder_from_record, decoder_record
from polypseg.models.encoders import FrozenEncoder, encoder_architecture
from polypseg.models.segmenter import Segmenter
from polypseg.tracking.model_input import read_images

FORMAT = 1
# `segmenter.pt`'s names for keys of the decoder's record (`decoder_record`); models logged before
# a key was recorded lack it, and `decoder_from_record` reads them as a `simple` decoder.
FILE_KEYS = {"name": "decoder", "arguments": "decoder_arguments", "state": "decoder_state"}


def segmenter_state(encoder: FrozenEncoder, decoder: Decoder, image_size: int) -> dict:
    return {
        "format": FORMAT,
        "encoder": encoder.name,
        # The precision its features were computed at for training and evaluation ("fp32" or
        # "bf16" once `prepare` ran): served the same way, whatever the serving GPU would pick.
        "precision": encoder.precision,
        "encoder_state": encoder.backbone.state_dict(),
        **{FILE_KEYS.get(key, key): value for key, value in decoder_record(decoder).items()},
        "image_size": image_size,
        "threshold": 0.5,
    }


def load_segmenter(path: str | Path, device: str = "cpu") -> tuple[Segmenter, float]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    encoder = encoder_architecture(state["encoder"])
    encoder.backbone.load_state_dict(state["encoder_state"])
    encoder.weights_digest = ""  # not needed for prediction; skip rehashing the weights
    encoder.precision = state.get("precision", "auto")  # models logged before it was recorded
    names = {file_key: key for key, file_key in FILE_KEYS.items()}
    decoder = decoder_from_record({names.get(key, key): value for key, value in state.items()})
    segmenter = Segmenter(encoder, decoder, state["image_size"]).to(device).eval()
    return segmenter, float(state["threshold"])


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


def load_model(uri: str) -> mlflow.pyfunc.PyFuncModel:
    """`mlflow.pyfunc.load_model` with a missing model or alias as a one-line `PolypsegError`."""
    try:
        return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as err:
        raise PolypsegError(
            f"cannot load model {uri} ({first_line(err, 200)}); check the name, version or alias "
            "(e.g. models:/polypseg@champion) and MLFLOW_TRACKING_URI"
        ) from None
