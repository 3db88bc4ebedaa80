"""The training losses, from logits: BCE + soft Dice (the default), or PraNet's structure loss.

BCE gives every pixel a gradient from the first step; Dice rewards overlap directly and is
insensitive to how small the polyp is relative to the image. `train.dice_weight` in the config
sets the mix. `train.loss = "structure"` takes the polyp literature's loss instead (PraNet,
Polyp-PVT, SAM2-UNet): BCE and IoU, both weighted towards the pixels near a boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

SMOOTH = 1.0


def bce_dice_loss(logits: Tensor, target: Tensor, dice_weight: float) -> Tensor:
    """`(1 − dice_weight)·BCE + dice_weight·(1 − soft Dice)` of B×1×H×W logits and 0/1 target.

    Soft Dice is per image, then averaged, so a small polyp counts as much as a large one.
    """
    # Under bf16/fp16 autocast the sums over 512×512 pixels lose most of their digits, and
    # sigmoid saturates early: compute the whole loss in float32 whatever the caller's dtype.
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = logits.float()
        target = target.float()
        bce = F.binary_cross_entropy_with_logits(logits, target)
        probs = torch.sigmoid(logits).flatten(1)
        truth = target.flatten(1)
        intersection = (probs * truth).sum(dim=1)
        dice = (2.0 * intersection + SMOOTH) / (probs.sum(dim=1) + truth.sum(dim=1) + SMOOTH)
        return (1.0 - dice_weight) * bce + dice_weight * (1.0 - dice.mean())


STRUCTURE_KERNEL = 31  # PraNet's window: the weight rises within ~15 px of a boundary
STRUCTURE_GAIN = 5.0


def structure_loss(logits: Tensor, target: Tensor) -> Tensor:
    """PraNet's structure loss, a scalar: weighted BCE + weighted IoU, averaged over images;
    a pixel weighs more near a boundary, where its local mean differs from it.

    This is the formula of PraNet's paper (Fan et al., MICCAI 2020, eq. 4–5), weighting both
    terms. PraNet's code (`MyTrain.py`) passes `reduce='none'` to BCE, PyTorch's legacy flag: a
    non-empty string is truthy, so it returns the plain mean BCE, and its weighting then acts on
    the IoU term only. Polyp-PVT and SAM2-UNet copy that line.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):  # as bce_dice_loss
        logits, target = logits.float(), target.float()
        pad = STRUCTURE_KERNEL // 2
        local = F.avg_pool2d(target, STRUCTURE_KERNEL, stride=1, padding=pad)
        weight = 1 + STRUCTURE_GAIN * torch.abs(local - target)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        wbce = (weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))
        probs = torch.sigmoid(logits)
        inter = (probs * target * weight).sum(dim=(2, 3))
        union = ((probs + target) * weight).sum(dim=(2, 3))
        wiou = 1 - (inter + 1) / (union - inter + 1)
        return (wbce + wiou).mean()


def training_loss(name: str, dice_weight: float) -> Callable[[Tensor, Tensor], Tensor]:
    """`train.loss` (a name the config checked) as a function of (logits, target)."""
    return (
        structure_loss if name == "structure" else partial(bce_dice_loss, dice_weight=dice_weight)
    )
