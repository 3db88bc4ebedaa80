"""The eight symmetries of the square: what augmentation (`data.augment`) and TTA (`--tta`) use.

A variant acts on the last two (spatial) axes of a torch tensor (…×H×W) or, with `axes`, on any
two axes of a numpy array (an H×W×3 image: `axes=(0, 1)`). Each is a pure re-indexing of pixels,
so a mask stays binary and a transformed map transforms back exactly (`invert`). Augmentation
applies them to the image already resized to the training size, as the encoder sees it; TTA to
the image as read, before the segmenter resizes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np

from polypseg.errors import PolypsegError

if TYPE_CHECKING:  # config imports this module: importing it must not load torch
    import torch

IDENTITY = "identity"
# name → (quarter turns counter-clockwise, then a transpose?); hflip = a transpose of rot90.
VARIANTS: dict[str, tuple[int, bool]] = {
    IDENTITY: (0, False),
    "hflip": (1, True),
    "vflip": (3, True),
    "rot90": (1, False),
    "rot180": (2, False),
    "rot270": (3, False),
    "transpose": (0, True),
    "antitranspose": (2, True),
}
INVERSE = {**{name: name for name in VARIANTS}, "rot90": "rot270", "rot270": "rot90"}
TTA_VARIANTS = {
    "none": (IDENTITY,),
    "flip": (IDENTITY, "hflip"),
    "dihedral": tuple(VARIANTS),
}

Array = TypeVar("Array", "np.ndarray", "torch.Tensor")


def transform(x: Array, variant: str, axes: tuple[int, int] = (-2, -1)) -> Array:
    """`x` under `variant` over `axes` (rows, columns); rot90 turns counter-clockwise, like
    `np.rot90`. A numpy result is a view; a torch result a new tensor."""
    turns, transposed = VARIANTS[variant]
    if isinstance(x, np.ndarray):
        x = np.rot90(x, turns, axes) if turns else x
        return np.swapaxes(x, *axes) if transposed else x
    x = x.rot90(turns, axes) if turns else x
    return x.transpose(*axes) if transposed else x


def invert(x: Array, variant: str, axes: tuple[int, int] = (-2, -1)) -> Array:
    """Undo `transform(·, variant)`: `invert(transform(x, v), v)` is `x`, pixel for pixel."""
    return transform(x, INVERSE[variant], axes)


def check_variants(names: tuple[str, ...], where: str) -> None:
    """A PolypsegError naming `where` unless every name is a variant but the identity, once."""
    unknown = [name for name in names if name not in VARIANTS or name == IDENTITY]
    if unknown or len(set(names)) < len(names):
        choices = ", ".join(name for name in VARIANTS if name != IDENTITY)
        raise PolypsegError(f"{where} = {list(names)}: name each of {choices} at most once")
