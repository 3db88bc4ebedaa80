"""polypseg: a frozen SAM encoder and a small trainable decoder for polyp segmentation.

Features are computed once per image and cached; training, tuning (Optuna) and tracking
(MLflow) all run over that cache. Importing the package is cheap: heavy modules (torch, mlflow,
optuna) are imported by the modules that need them.
"""

__version__ = "0.1.0"

import warnings as _warnings

# MLflow 3 advises, for every PythonModel class (its own included, as `mlflow.pyfunc` is
# imported), to type-hint `predict`. Ours is unannotated on purpose (see pyfunc.py), so the
# advice is silenced by message, narrowly, before MLflow is first imported.
_warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")
_warnings.filterwarnings("ignore", message=".*Any type hint is inferred as AnyType")
