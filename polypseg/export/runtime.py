"""An exported model run by onnxruntime, with the interface of the torch `Predictor`.

`OnnxPredictor(path)` opens a file written by `polypseg export` (CUDA provider when onnxruntime
has it, CPU otherwise) and answers `proba`, `mask`, `proba_batch` and `describe` as
`evaluation.predict.Predictor` does. The graph takes uint8 images B×3×S×S at the model's
training size S (resizing to S happens here, with the training data's own resize) and returns
the probabilities at S and the decoder's logits; the map at an image's own size comes from the
logits through the pyfunc's own upsampling (`upsample_logits`) and sigmoid, so the masks are the
torch path's, not a second interpolation of an already resized map.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from polypseg.errors import ExportError, ModelError, first_line

ONNX_EXTRA = "pip install -e '.[onnx]'"
INPUT, PROBABILITIES, LOGITS = "images", "probabilities", "logits"
# Metadata the export writes into the file (ONNX `metadata_props`): what `describe` reports.
META_PREFIX = "polypseg."


def require(module: str) -> ModuleType:
    """Import one of the `onnx` extra's modules, or say in one line how to install them."""
    try:
        return import_module(module)
    except ImportError:
        raise ExportError(
            f"{module} is not installed: `polypseg export` and `polypseg predict --engine onnx` "
            f"(or evaluate's) need the onnx extra ({ONNX_EXTRA})"
        ) from None


def providers() -> list[str]:
    """onnxruntime's CUDA provider when this install has it, then the CPU provider."""
    available = require("onnxruntime").get_available_providers()
    wanted = ("CUDAExecutionProvider", "CPUExecutionProvider")
    return [name for name in wanted if name in available]


def open_session(path: str | Path) -> Any:
    """An `onnxruntime.InferenceSession` over `path`; an unreadable file is a `ModelError`."""
    ort = require("onnxruntime")
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX model {path} does not exist; write one with `polypseg export`")
    try:
        return ort.InferenceSession(str(path), providers=providers())
    except Exception as err:  # onnxruntime raises its own Fail / InvalidProtobuf / ...
        # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from PATH failed:WHY": the why
        why = first_line(err, 1000).rpartition("failed:")[2].strip() or type(err).__name__
        raise ModelError(
            f"{path} is not an ONNX model onnxruntime can run ({why[:160]}); "
            "write one with `polypseg export`"
        ) from None


def batch_input(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """H×W×3 uint8 images of any sizes → B×3×`size`×`size` uint8, the training data's resize."""
    from polypseg.transforms import resize_image

    return np.stack([resize_image(image, size).numpy() for image in images])


class OnnxPredictor:
    """An exported model's probability maps and masks at an image's own size."""

    def __init__(self, path: str | Path) -> None:
        self.uri = str(path)
        self.session = open_session(path)
        names = {o.name for o in self.session.get_outputs()}
        shape = self.session.get_inputs()[0].shape
        if {PROBABILITIES, LOGITS} - names or not isinstance(shape[-1], int):
            raise ModelError(
                f"{path} is not a polypseg export (outputs {sorted(names)}); write one with "
                "`polypseg export`"
            )
        self.image_size = int(shape[-1])
        self.metadata = {
            key[len(META_PREFIX) :]: value
            for key, value in self.session.get_modelmeta().custom_metadata_map.items()
            if key.startswith(META_PREFIX)
        }
        self.threshold = float(self.metadata.get("threshold", 0.5))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """B×3×S×S uint8 → the decoder's B×1×h×w logits."""
        (logits,) = self.session.run([LOGITS], {INPUT: batch})
        return logits

    def proba_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """N H×W×3 uint8 images of one size → N×H×W float32 probabilities at that size."""
        import torch

        from polypseg.models.segmenter import upsample_logits

        h, w = images[0].shape[:2]
        logits = torch.from_numpy(self.logits(batch_input(images, self.image_size)))
        return torch.sigmoid(upsample_logits(logits, (h, w)))[:, 0].numpy()

    def proba(self, image: np.ndarray) -> np.ndarray:
        """H×W×3 uint8 image of any size → H×W float32 polyp probability at that size."""
        return self.proba_batch([image])[0]

    def mask(self, image: np.ndarray) -> np.ndarray:
        return (self.proba(image) >= self.threshold).astype(np.uint8)

    def describe(self) -> dict[str, str | None]:
        """The file, and the model it was exported from (as `Predictor.describe` names one)."""
        return {
            "model": str(Path(self.uri).resolve()),
            "model_name": self.metadata.get("model_name"),
            "model_version": self.metadata.get("model_version"),
            "model_run_id": self.metadata.get("model_run_id"),
            "engine": "onnx",
            "exported_from": self.metadata.get("model"),
        }
