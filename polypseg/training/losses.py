"""The training loss: a weighted sum of binary cross-entropy and soft Dice, from logits.

BCE gives every pixel a gradient from the first step; Dice rewards overlap directly and is
insensitive to how small the polyp is relative to the image. `train.dice_weight` in the config
sets the mix. There is one implementation, `bce_dice_loss`; `BCEDiceLoss` is the `nn.Module`
wrapper for code that wants a loss object.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SMOOTH = 1.0


def bce_dice_loss(logits: Tensor, target: Tensor, dice_weight: float) -> Tensor:
    """`(1 − dice_weight)·BCE + dice_weight·(1 − soft Dice)`, a scalar.

    Args:
        logits: B×1×H×W raw decoder outputs (any float dtype).
        target: B×1×H×W, 0/1 floats (or bool), same shape as `logits`.
        dice_weight: in [0, 1]; 0 is pure BCE, 1 pure soft Dice.

    BCE is the mean over all pixels of the batch. Soft Dice is
    `(2·Σ p·t + 1) / (Σ p + Σ t + 1)` over each image's sigmoid probabilities `p`, then averaged
    over the batch, so that a small polyp counts as much as a large one (as mDice does).
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    if not 0.0 <= dice_weight <= 1.0:
        raise ValueError(f"dice_weight must be in [0, 1], got {dice_weight}")
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


class BCEDiceLoss(nn.Module):
    """`bce_dice_loss` as a module: `BCEDiceLoss(dice_weight)(logits, target)` → scalar."""

    def __init__(self, dice_weight: float) -> None:
        super().__init__()
        if not 0.0 <= dice_weight <= 1.0:
            raise ValueError(f"dice_weight must be in [0, 1], got {dice_weight}")
        self.dice_weight = float(dice_weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return bce_dice_loss(logits, target, self.dice_weight)

    def extra_repr(self) -> str:
        return f"dice_weight={self.dice_weight}"
