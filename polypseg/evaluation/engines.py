"""Which engine runs a model for `predict` and `evaluate`: torch, or onnxruntime.

`torch` loads a logged or registered model (an MLflow URI) and runs the pyfunc's own segmenter;
`onnx` runs a file written by `polypseg export` with onnxruntime (`export/runtime.py`). Both
give the same interface: `proba`, `mask`, `proba_batch`, `threshold` and `describe`; either
may be wrapped in test-time augmentation (`tta.py`).
"""

from __future__ import annotations

from typing import Any

from polypseg.errors import DataError

ENGINES = ("torch", "onnx")


def check_engine(engine: str) -> str:
    """`engine` when it is one of `ENGINES`, else a one-line `DataError` listing them."""
    if engine not in ENGINES:
        raise DataError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    return engine


def load_predictor(model: str, engine: str = "torch", tta: str = "none") -> Any:
    """A `Predictor` (torch, `model` an MLflow URI) or an `OnnxPredictor` (`model` a file),
    averaging over `tta`'s variants of each image unless it is "none"."""
    from polypseg.evaluation.tta import TTAPredictor, check_tta

    if check_tta(tta) != "none":
        return TTAPredictor(load_predictor(model, engine), tta)
    if check_engine(engine) == "onnx":
        if ":/" in model:
            raise DataError(
                f"--engine onnx runs an .onnx file, not {model}; write one with "
                "`polypseg export --model URI --out FILE.onnx`"
            )
        from polypseg.export.runtime import OnnxPredictor

        return OnnxPredictor(model)
    from polypseg.evaluation.predict import Predictor

    return Predictor(model)
