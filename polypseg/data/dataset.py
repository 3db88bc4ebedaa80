"""A torch `Dataset` over image/mask pairs: resized image and mask tensors, name, original size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from polypseg.data.images import read_image
from polypseg.data.masks import read_mask
from polypseg.data.pairs import Pair
from polypseg.transforms import resize_image, resize_mask


class KvasirDataset(Dataset):
    """Items are dicts: `image` (3×S×S uint8), `mask` (1×S×S uint8 0/1), `name`, and `size`,
    the original (H, W) that predictions go back to. The pairs come checked (`pairs.py`): a mask
    is its image's size."""

    def __init__(self, pairs: Sequence[Pair], image_size: int) -> None:
        self.pairs = list(pairs)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        image = read_image(pair.image)
        mask = read_mask(pair.mask)
        return {
            "image": resize_image(image, self.image_size),
            "mask": resize_mask(mask, self.image_size),
            "name": pair.name,
            "size": torch.tensor(image.shape[:2]),
        }
