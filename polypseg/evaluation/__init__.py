"""Scoring and using a logged or registered model: `evaluate` and `predict`."""
