"""polypseg: a frozen SAM encoder and a small trainable decoder for polyp segmentation.

Features are computed once per image and cached; training, tuning (Optuna) and tracking
(MLflow) all run over that cache. The names below are the public API; each is imported on first
use, so importing the package (and `polypseg --help`) stays instant.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "Config": "polypseg.config",
    "load_config": "polypseg.config",
    "list_pairs": "polypseg.data.pairs",
    "split_names": "polypseg.data.split",
    "make_synthetic": "polypseg.data.synthetic",
    "ENCODERS": "polypseg.models.encoders",
    "build_encoder": "polypseg.models.encoders",
    "Segmenter": "polypseg.models.segmenter",
    "FeatureCache": "polypseg.features.cache",
    "prepare": "polypseg.features.prepare",
    "fit": "polypseg.training.fit",
    "train_and_log": "polypseg.training.run",
    "load_spec": "polypseg.tuning.spec",
    "tune": "polypseg.tuning.study",
    "evaluate": "polypseg.evaluation.evaluate",
    "predict": "polypseg.evaluation.predict",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'polypseg' has no attribute {name!r}")
    return getattr(import_module(_PUBLIC[name]), name)
