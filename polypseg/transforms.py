"""Image transforms shared by training data and prediction: the one resize both must agree on.

Standing apart from the data layer (as `segment_anything/utils/transforms.py` does for SAM), so
the segmenter resizes an image exactly as the feature cache did without knowing about data folders.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def resize_image(image: np.ndarray, size: int) -> torch.Tensor:
    """H×W×3 uint8 → 3×size×size uint8 tensor (bilinear; the aspect ratio is not kept)."""
    resized = Image.fromarray(image).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).contiguous()


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """H×W 0/1 uint8 → 1×size×size uint8 tensor (nearest, so it stays binary)."""
    resized = Image.fromarray(mask).resize((size, size), Image.NEAREST)
    return torch.from_numpy(np.asarray(resized).copy())[None]
