"""Optuna: study specs, storages, the worker loop shared by many workers, the objective."""
