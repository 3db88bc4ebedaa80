"""What `predict` and `evaluate` run a model with: torch, onnxruntime, or either under TTA.

Every predictor maps N images of one size to N probability maps at that size (`proba_batch`).
`Predictor` runs a logged or registered model's own segmenter; `OnnxPredictor` runs a `polypseg
export` file at the training size and upsamples the decoder's logits as the pyfunc does, so its
masks are the torch path's, not a second interpolation of a resized map; `TTAPredictor` averages
any predictor's maps over dihedral variants of the image (nnU-Net's mirroring).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from polypseg.config import check_choice
from polypseg.dihedral import TTA_VARIANTS, invert, transform
from polypseg.errors import DataError, PolypsegError, first_line

ENGINES = ("torch", "onnx")
ONNX_EXTRA = "pip install -e '.[onnx]'"
INPUT, PROBABILITIES, LOGITS = "images", "probabilities", "logits"  # the exported graph's names
META_PREFIX = "polypseg."  # the export's ONNX `metadata_props`: what `describe` reports


class MapPredictor(ABC):
    """The shared half of every predictor: one image's map and mask from `proba_batch`."""

    threshold = 0.5

    @abstractmethod
    def proba_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """N H×W×3 uint8 images of one size → N×H×W float32 probabilities at that size."""

    def proba(self, image: np.ndarray) -> np.ndarray:
        """H×W×3 uint8 image of any size → H×W float32 polyp probability at that size."""
        return self.proba_batch([image])[0]


class Predictor(MapPredictor):
    """A logged or registered model's segmenter, loaded from its MLflow URI."""

    def __init__(self, uri: str) -> None:
        import mlflow.pyfunc
        from mlflow.exceptions import MlflowException

        self.uri = uri
        try:
            self.model = mlflow.pyfunc.load_model(uri)
        except (MlflowException, OSError) as err:  # a missing model, version or alias
            raise PolypsegError(
                f"cannot load model {uri} ({first_line(err, 200)}); check the name, version or "
                "alias (e.g. models:/polypseg@champion) and MLFLOW_TRACKING_URI"
            ) from None
        try:
            wrapped = self.model.unwrap_python_model()
        except MlflowException:  # another flavour's model: sklearn, pytorch, ...
            wrapped = None
        if not hasattr(wrapped, "segmenter"):
            what = type(wrapped).__name__ if wrapped is not None else self.model.loader_module
            raise PolypsegError(
                f"{uri} is not a polypseg model (it is a {what}); give a model that polypseg "
                "train or tune logged, e.g. models:/polypseg@champion"
            )
        self.segmenter, self.threshold = wrapped.segmenter, wrapped.threshold

    def proba_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.segmenter.predict_proba_batch(images)

    def describe(self) -> dict[str, str | None]:
        """Registered name, version (an alias resolved now: reports outlive it), logging run."""
        name, version, run_id = None, None, self.model.metadata.run_id
        if found := registered_version(self.uri):
            name, version, run_id = found[0], found[1], found[2] or run_id
        elif self.uri.startswith("models:/"):  # MLflow 3's `models:/m-<id>`: logged, unregistered
            import mlflow

            logged = mlflow.MlflowClient().get_logged_model(self.uri[len("models:/") :])
            run_id = logged.source_run_id or run_id
        return {
            "model": self.uri,
            "model_name": name,
            "model_version": version,
            "model_run_id": run_id,
        }


def registered_version(uri: str, strict: bool = True) -> tuple[str, str, str | None] | None:
    """(name, version, run id) of `models:/NAME/N`, `NAME/latest` or `NAME@ALIAS`, else None;
    also None, unless `strict`, for a model the registry lacks (`Predictor` refuses it on load)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name, _, alias = uri.removeprefix("models:/").partition("@")
    if not uri.startswith("models:/") or (not alias and "/" not in name):
        return None
    client = mlflow.MlflowClient()
    try:
        if alias:
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = name.partition("/")
            if number == "latest":
                found = client.search_model_versions(f"name = '{name}'")
                number = str(max(int(v.version) for v in found))
            version = client.get_model_version(name, number)
    except (MlflowException, ValueError):
        if strict:
            raise
        return None
    return name, str(version.version), version.run_id


def require(module: str) -> ModuleType:
    """Import one of the `onnx` extra's modules, or say in one line how to install them."""
    try:
        return import_module(module)
    except ImportError:
        raise PolypsegError(
            f"{module} is not installed: `polypseg export` and `polypseg predict --engine onnx` "
            f"(or evaluate's) need the onnx extra ({ONNX_EXTRA})"
        ) from None


def open_session(path: str | Path) -> Any:
    """An `onnxruntime.InferenceSession` over `path`; an unreadable file is a `PolypsegError`."""
    ort = require("onnxruntime")
    path = Path(path)
    if not path.is_file():
        raise PolypsegError(f"ONNX model {path} does not exist; write one with `polypseg export`")
    available = ort.get_available_providers()  # CUDA when this install has it, then the CPU
    chosen = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        return ort.InferenceSession(str(path), providers=chosen)
    except Exception as err:  # onnxruntime raises its own Fail / InvalidProtobuf / ...
        # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from PATH failed:WHY": the why
        why = first_line(err, 1000).rpartition("failed:")[2].strip() or type(err).__name__
        raise PolypsegError(
            f"{path} is not an ONNX model onnxruntime can run ({why[:160]}); "
            "write one with `polypseg export`"
        ) from None


def batch_input(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """H×W×3 uint8 images of any sizes → B×3×`size`×`size` uint8, the training data's resize."""
    from polypseg.transforms import resize_image

    return np.stack([resize_image(image, size).numpy() for image in images])


class OnnxPredictor(MapPredictor):
    """A file written by `polypseg export`, run by onnxruntime."""

    def __init__(self, path: str | Path) -> None:
        self.uri = str(path)
        self.session = open_session(path)
        names = {o.name for o in self.session.get_outputs()}
        shape = self.session.get_inputs()[0].shape
        self.metadata = {
            key[len(META_PREFIX) :]: value
            for key, value in self.session.get_modelmeta().custom_metadata_map.items()
            if key.startswith(META_PREFIX)
        }
        # Names can match by chance (an identity graph named like ours); the metadata export
        # writes cannot.
        missing = {PROBABILITIES, LOGITS} - names or {"encoder", "image_size"} - set(self.metadata)
        if missing or not isinstance(shape[-1], int):
            raise PolypsegError(
                f"{path} is not a polypseg export (no {', '.join(sorted(missing)) or 'fixed size'}"
                "); write one with `polypseg export`"
            )
        self.image_size = int(shape[-1])
        self.threshold = float(self.metadata.get("threshold", 0.5))

    def proba_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        from polypseg.models.segmenter import upsample_logits

        h, w = images[0].shape[:2]
        batch = batch_input(images, self.image_size)
        (logits,) = self.session.run([LOGITS], {INPUT: batch})
        return torch.sigmoid(upsample_logits(torch.from_numpy(logits), (h, w)))[:, 0].numpy()

    def describe(self) -> dict[str, str | None]:
        """The file, and the model it was exported from (as `Predictor.describe` names one)."""
        meta = self.metadata.get
        return {
            "model": str(Path(self.uri).resolve()),
            **{key: meta(key) for key in ("model_name", "model_version", "model_run_id")},
            "engine": "onnx",
            "exported_from": meta("model"),
        }


class TTAPredictor(MapPredictor):
    """Maps averaged over `tta`'s variants: `flip` the mirror too (2 passes), `dihedral` 8."""

    def __init__(self, predictor: MapPredictor, tta: str) -> None:
        self.predictor = predictor
        self.variants = TTA_VARIANTS[check_choice("--tta", tta, tuple(TTA_VARIANTS))]
        self.threshold = predictor.threshold  # applied to the mean map

    def __getattr__(self, name: str) -> Any:  # describe, segmenter, uri, ...: the model's own
        return getattr(self.predictor, name)

    def proba_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        total = None
        for variant in self.variants:
            seen = [np.ascontiguousarray(transform(im, variant, axes=(0, 1))) for im in images]
            back = invert(self.predictor.proba_batch(seen), variant, axes=(1, 2))
            total = back.copy() if total is None else total + back
        return total / len(self.variants)


def load_predictor(model: str, engine: str = "torch", tta: str = "none") -> MapPredictor:
    """A `Predictor` (an MLflow URI) or an `OnnxPredictor` (a file), under `tta` unless none."""
    if check_choice("--tta", tta, tuple(TTA_VARIANTS)) != "none":
        return TTAPredictor(load_predictor(model, engine), tta)
    if check_choice("--engine", engine, ENGINES) == "torch":
        return Predictor(model)
    if ":/" in model:
        raise DataError(
            f"--engine onnx runs an .onnx file, not {model}; write one with "
            "`polypseg export --model URI --out FILE.onnx`"
        )
    return OnnxPredictor(model)
