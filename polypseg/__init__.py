"""polypseg: a frozen SAM encoder and a small trainable decoder for polyp segmentation.

Features are computed once per image and cached; training, tuning (Optuna) and tracking
(MLflow) all run over that cache. Importing the package is cheap: heavy modules (torch, mlflow,
optuna) are imported by the modules that need them.
"""

__version__ = "0.1.0"
