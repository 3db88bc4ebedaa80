"""Scoring one data set under a protocol: per-image rows, then the set's summary.

Two protocols, kept apart under their own names. `default` is polypseg's own: masks read as grey
≥ 128, the probability map binarised at the model's threshold (0.5 for saved maps), means over
images of `metrics.py`'s figures. `pranet` is PraNet's `eval/main.m` (`metrics.pranet_*`): masks
read `> 128` after `rgb2gray`, maps min-max stretched, 256 thresholds. Under `pranet` a model's
map is scored as PraNet's pipeline sees any method's map, an 8-bit grey PNG (`quantize_map`),
which is exactly what `polypseg predict --maps` saves; so both routes give the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from polypseg.data.masks import read_mask
from polypseg.errors import DataError
from polypseg.evaluation.maps import read_pranet_mask
from polypseg.metrics import (
    DEFAULT_KEYS,
    PRANET_ROW_KEYS,
    PRANET_SUMMARY_KEYS,
    PranetScores,
    default_image_scores,
    pranet_image_scores,
    pranet_summary,
    quantize_map,
)
from polypseg.uncertainty import RESAMPLES, bootstrap_interval

# Per protocol: the per-image CSV's columns (after name, height, width), the summary's keys, and
# mDice and mIoU under its names: the figures given a 95 % interval, mDice ranking the worst cases.
KEYS = {
    "default": (DEFAULT_KEYS, DEFAULT_KEYS, ("dice", "iou")),
    "pranet": (PRANET_ROW_KEYS, PRANET_SUMMARY_KEYS, ("mdice", "miou")),
}


class SetScorer:
    """Accumulates one data set's per-image rows (and PraNet curves) under a protocol."""

    def __init__(self, protocol: str, threshold: float = 0.5) -> None:
        self.protocol = protocol  # one of KEYS, checked at the door (evaluate, compare)
        self.columns, self.summary_keys, self.interval_keys = KEYS[protocol]
        self.threshold = threshold
        self.rows: list[dict] = []
        self._curves: list[PranetScores] = []

    def read_mask(self, path: Path) -> np.ndarray:
        """The protocol's ground truth: an H×W 0/1 uint8 array."""
        if self.protocol == "default":
            return read_mask(path)
        return read_pranet_mask(path).astype(np.uint8)

    def model_map(self, proba: np.ndarray) -> np.ndarray:
        """A model's probability map as this protocol scores it (see the module docstring)."""
        return proba if self.protocol == "default" else quantize_map(proba) / 255.0

    def add(self, name: str, prob_map: np.ndarray, mask: np.ndarray) -> None:
        """Score one image (map and mask at the same H×W) and keep its row."""
        if self.protocol == "default":
            figures = default_image_scores(prob_map, mask, self.threshold)
        else:
            curves = pranet_image_scores(prob_map, mask)
            self._curves.append(curves)
            figures = curves.row()
        self.rows.append({"name": name, "height": mask.shape[0], "width": mask.shape[1], **figures})

    def summary(self, resamples: int = RESAMPLES) -> dict:
        """`n_images` and the set's figures, in `summary_keys` order, each of `interval_keys`
        followed by its percentile-bootstrap interval over images (`<key>_ci`: [low, high], None
        for one image). Under `pranet` too a set's mDice is the mean of its images' (the mean
        over thresholds is linear), so resampling the rows is resampling the set."""
        if not self.rows:
            raise DataError("no images were scored")
        if self.protocol == "default":
            figures = {k: float(np.mean([r[k] for r in self.rows])) for k in DEFAULT_KEYS}
        else:
            figures = pranet_summary(self._curves)
        summary: dict = {"n_images": len(self.rows)}
        for key, value in figures.items():
            summary[key] = value
            if key in self.interval_keys:
                interval = bootstrap_interval([r[key] for r in self.rows], resamples)
                summary[f"{key}_ci"] = list(interval) if interval else None
        return summary
