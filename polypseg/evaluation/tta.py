"""Test-time augmentation: a model's probability map averaged over dihedral variants of the image.

nnU-Net's mirroring, for any engine: each variant of the image (`polypseg.dihedral`, on the
image as read) goes through the model's whole chain, its map is transformed back, and the maps
are averaged. `flip` adds the horizontal mirror (2 passes of the encoder per image), `dihedral`
all eight symmetries (8 passes); the threshold then applies to the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from polypseg.dihedral import TTA_VARIANTS, invert, transform
from polypseg.errors import DataError


def check_tta(tta: str) -> str:
    """`tta` when it is one of none, flip, dihedral; else a one-line `DataError`."""
    if tta not in TTA_VARIANTS:
        raise DataError(f"--tta {tta!r}: choose one of {', '.join(TTA_VARIANTS)}")
    return tta


class TTAPredictor:
    """A predictor (torch or ONNX) whose maps are the mean over `tta`'s variants of the image."""

    def __init__(self, predictor: Any, tta: str) -> None:
        self.predictor, self.variants = predictor, TTA_VARIANTS[check_tta(tta)]
        self.threshold = predictor.threshold

    def __getattr__(self, name: str) -> Any:  # describe, segmenter, uri, ...: the model's own
        return getattr(self.predictor, name)

    def proba(self, image: np.ndarray) -> np.ndarray:
        """H×W×3 uint8 → H×W float32: the mean of the variants' maps, each mapped back."""
        total = None
        for variant in self.variants:
            seen = np.ascontiguousarray(transform(image, variant, axes=(0, 1)))
            back = invert(self.predictor.proba(seen), variant, axes=(0, 1))
            total = back.copy() if total is None else total + back
        return total / len(self.variants)

    def mask(self, image: np.ndarray) -> np.ndarray:
        return (self.proba(image) >= self.threshold).astype(np.uint8)

    def proba_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """N frames of one size → N×H×W float32, each `proba`'s map."""
        total = None
        for variant in self.variants:
            seen = [
                np.ascontiguousarray(transform(image, variant, axes=(0, 1))) for image in images
            ]
            back = invert(self.predictor.proba_batch(seen), variant, axes=(1, 2))
            total = back.copy() if total is None else total + back
        return total / len(self.variants)
