"""Training the decoder over cached features: `fit` is one plain loop, readable top to bottom.

Epochs, shuffled batches, loss, step, validation, the epoch callback (logging, pruning), and the
best epoch's weights kept. `fit` never knows whether it runs inside a study or who listens to its
callback; it takes feature tensors, never images, so the encoder is not in the loop.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from polypseg.config import TrainConfig
from polypseg.errors import TrainingError
from polypseg.features.cache import FeatureSet
from polypseg.metrics import mean_scores, scores
from polypseg.models.decoder import SimpleDecoder
from polypseg.models.segmenter import upsample_logits
from polypseg.training.losses import bce_dice_loss

EpochCallback = Callable[[dict[str, float]], None]


@dataclass
class FitResult:
    decoder: SimpleDecoder  # holding the best epoch's weights
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_dice: float = -math.inf


def _autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_step(
    decoder: SimpleDecoder,
    optimiser: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    dice_weight: float,
) -> float:
    """One optimisation step of the decoder on a batch of features; returns the loss."""
    with _autocast(x.device):
        logits = upsample_logits(decoder(x), tuple(y.shape[-2:]))
    loss = bce_dice_loss(logits, y, dice_weight)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return loss.item()


@torch.no_grad()
def predict_probs(
    decoder: SimpleDecoder, data: FeatureSet, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities N×1×S×S, masks N×1×S×S) on the CPU, in the set's order."""
    decoder.eval()
    probs, masks = [], []
    for x, y in data.batches(batch_size, device):
        with _autocast(device):
            logits = upsample_logits(decoder(x), tuple(y.shape[-2:]))
        probs.append(torch.sigmoid(logits.float()).cpu())
        masks.append(y.cpu())
    return torch.cat(probs), torch.cat(masks)


def validate(
    decoder: SimpleDecoder,
    data: FeatureSet,
    batch_size: int,
    dice_weight: float,
    device: torch.device,
) -> dict[str, float]:
    probs, masks = predict_probs(decoder, data, batch_size, device)
    logits = torch.logit(probs.clamp(1e-6, 1 - 1e-6))
    per_image = scores(probs, masks)
    return {
        "val_loss": bce_dice_loss(logits, masks, dice_weight).item(),
        "val_dice": float(per_image["dice"].mean()),
        "val_iou": float(per_image["iou"].mean()),
    }


def fit(
    train: FeatureSet,
    val: FeatureSet,
    in_channels: int,
    width: int,
    config: TrainConfig,
    device: torch.device,
    callback: EpochCallback | None = None,
) -> FitResult:
    """Train a fresh `SimpleDecoder(in_channels, width)`; early-stop on `val_dice`."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    decoder = SimpleDecoder(in_channels, width).to(device)
    optimiser = torch.optim.AdamW(
        decoder.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    train, val = train.to(device), val.to(device)
    result = FitResult(decoder)
    best_state = copy.deepcopy(decoder.state_dict())
    for epoch in range(1, config.epochs + 1):
        decoder.train()
        losses = [
            train_step(decoder, optimiser, x, y, config.dice_weight)
            for x, y in train.batches(config.batch_size, device, generator)
        ]
        train_loss = sum(losses) / len(losses)
        if not math.isfinite(train_loss):
            raise TrainingError(
                f"the training loss became {train_loss} in epoch {epoch} (train.lr = {config.lr}); "
                "lower train.lr"
            )
        metrics = {"epoch": epoch, "train_loss": train_loss}
        metrics.update(validate(decoder, val, config.batch_size, config.dice_weight, device))
        result.history.append(metrics)
        if metrics["val_dice"] > result.best_val_dice:
            result.best_epoch, result.best_val_dice = epoch, metrics["val_dice"]
            best_state = copy.deepcopy(decoder.state_dict())
        if callback is not None:
            callback(metrics)  # may raise, e.g. optuna.TrialPruned
        if config.patience and epoch - result.best_epoch >= config.patience:
            break
    decoder.load_state_dict(best_state)
    decoder.eval()
    return result


def split_scores(
    decoder: SimpleDecoder, data: FeatureSet, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Mean per-image scores (`test_dice`, `test_iou`, ...) and `test_mdice_thr` of a split."""
    from polypseg.metrics import dice_over_thresholds

    probs, masks = predict_probs(decoder, data, batch_size, device)
    means = mean_scores(scores(probs, masks))
    means["mdice_thr"] = float(dice_over_thresholds(probs, masks).mean())
    return {f"test_{key}": value for key, value in means.items()}
