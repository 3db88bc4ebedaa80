"""The registered model: an MLflow pyfunc that segments H×W×3 uint8 images of any size.

The model carries one artifact, `segmenter.pt` (encoder name and weights, decoder weights,
input size, threshold), loaded with `torch.load(weights_only=True)` and rebuilt from the encoder
registry with no download, so it loads in a fresh process with only polypseg installed and no
network. We use a `PythonModel` rather than `mlflow.pytorch`, whose default `torch.export`
graph has a fixed input shape.
"""

from __future__ import annotations

import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch

from polypseg.errors import ModelError
from polypseg.files import first_line
from polypseg.models.decoder import SimpleDecoder
from polypseg.models.encoders import FrozenEncoder, encoder_architecture
from polypseg.models.segmenter import Segmenter
from polypseg.tracking.runs import quiet_model_logging

FORMAT = 1
ARTIFACT = "segmenter.pt"


def segmenter_state(encoder: FrozenEncoder, decoder: SimpleDecoder, image_size: int) -> dict:
    """Everything needed to rebuild the segmenter, as plain tensors and numbers."""
    return {
        "format": FORMAT,
        "encoder": encoder.name,
        "encoder_state": encoder.backbone.state_dict(),
        "in_channels": decoder.in_channels,
        "width": decoder.width,
        "decoder_state": decoder.state_dict(),
        "image_size": image_size,
        "threshold": 0.5,
    }


def load_segmenter(path: str | Path, device: str = "cpu") -> tuple[Segmenter, float]:
    """Rebuild a `Segmenter` from a `segmenter.pt`; returns it with its threshold."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    encoder = encoder_architecture(state["encoder"])
    encoder.backbone.load_state_dict(state["encoder_state"])
    encoder.weights_digest = ""  # not needed for prediction; skip rehashing the weights
    decoder = SimpleDecoder(state["in_channels"], state["width"])
    decoder.load_state_dict(state["decoder_state"])
    segmenter = Segmenter(encoder, decoder, state["image_size"]).to(device).eval()
    return segmenter, float(state["threshold"])


class SegmenterModel(mlflow.pyfunc.PythonModel):
    """pyfunc: an H×W×3 uint8 image (or a list of them) → an H×W uint8 mask of 0/1 each."""

    def load_context(self, context: Any) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.segmenter, self.threshold = load_segmenter(context.artifacts["segmenter"], device)

    # The `np.ndarray` hint is one MLflow 3 infers no schema from: our schema is the explicit
    # signature given at logging time (images of any size), and without a hint MLflow warns.
    def predict(self, context, model_input: np.ndarray, params=None):  # noqa: ANN001, ANN201
        if isinstance(model_input, list):
            return [self.predict(context, image, params) for image in model_input]
        image = np.asarray(model_input)
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H×W×3 uint8 image, got shape {image.shape}")
        return self.segmenter.predict_mask(image.astype(np.uint8), self.threshold)


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
    encoder: FrozenEncoder, decoder: SimpleDecoder, image_size: int, name: str = "model"
) -> mlflow.models.model.ModelInfo:
    """Log the whole segmenter as a pyfunc model into the active run."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1))]),
    )
    example = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ARTIFACT
        torch.save(segmenter_state(encoder.cpu(), decoder.cpu(), image_size), path)
        with quiet_model_logging():
            return mlflow.pyfunc.log_model(
                name=name,
                python_model=SegmenterModel(),
                artifacts={"segmenter": str(path)},
                signature=signature,
                input_example=example,
                pip_requirements=_requirements(),
            )


def load_model(uri: str) -> mlflow.pyfunc.PyFuncModel:
    """`mlflow.pyfunc.load_model` with a missing model or alias as a one-line `ModelError`."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as err:
        raise ModelError(
            f"cannot load model {uri} ({first_line(err, 200)}); check the name, version or alias "
            "(e.g. models:/polypseg@champion) and MLFLOW_TRACKING_URI"
        ) from None
