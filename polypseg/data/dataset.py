"""A torch `Dataset` over a Kvasir-style folder: resized image and mask tensors, name, size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from polypseg.data.kvasir import Pair, list_pairs, read_image, read_mask
from polypseg.errors import DataError


def resize_image(image: np.ndarray, size: int) -> torch.Tensor:
    """H×W×3 uint8 → 3×size×size uint8 tensor (bilinear; the aspect ratio is not kept)."""
    resized = Image.fromarray(image).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).contiguous()


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """H×W 0/1 uint8 → 1×size×size uint8 tensor (nearest, so it stays binary)."""
    resized = Image.fromarray(mask).resize((size, size), Image.NEAREST)
    return torch.from_numpy(np.asarray(resized).copy())[None]


class KvasirDataset(Dataset):
    """Items are dicts: `image` (3×S×S uint8), `mask` (1×S×S uint8 0/1), `name`, `size` (H, W).

    `size` is the original (height, width), kept because predictions go back to it.
    """

    def __init__(self, root: str | Path, names: Sequence[str], image_size: int) -> None:
        by_name = {pair.name: pair for pair in list_pairs(root)}
        missing = [name for name in names if name not in by_name]
        if missing:
            raise DataError(f"{root}: split names not found: {', '.join(missing[:5])}")
        self.pairs: list[Pair] = [by_name[name] for name in names]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        image = read_image(pair.image)
        mask = read_mask(pair.mask)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"mask {pair.mask} is {mask.shape[1]}×{mask.shape[0]} but its image is "
                f"{image.shape[1]}×{image.shape[0]}; masks must match their images"
            )
        return {
            "image": resize_image(image, self.image_size),
            "mask": resize_mask(mask, self.image_size),
            "name": pair.name,
            "size": torch.tensor(image.shape[:2]),
        }
