"""Training the decoder over cached features: `fit` is one plain loop, readable top to bottom.

Epochs, shuffled batches, loss, step, validation, the epoch callback (logging, pruning), and the
best epoch's weights kept. `fit` never knows whether it runs inside a study or who listens to its
callback; it takes feature tensors, never images, so the encoder is not in the loop.

The device is never waited for within an epoch: losses stay on it until the epoch's mean is
read, and validation (`validate`) scores every image in batches on the device and hands the host
three numbers. Each epoch's metrics include how long its training and its validation took
(`epoch_train_s`, `epoch_val_s`, wall-clock seconds up to those reads).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from polypseg.config import TrainConfig
from polypseg.errors import TrainingError
from polypseg.features.cache import FeatureSet
from polypseg.interrupts import deferred, interrupt_point
from polypseg.metrics import dice_iou, mean_scores, scores
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
) -> torch.Tensor:
    """One optimisation step of the decoder on a batch of features; returns the loss, detached
    and on the device (reading it would make the host wait for the GPU at every step)."""
    with _autocast(x.device):
        logits = upsample_logits(decoder(x), tuple(y.shape[-2:]))
    loss = bce_dice_loss(logits, y, dice_weight)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return loss.detach()


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


@torch.no_grad()
def validate(
    decoder: SimpleDecoder,
    data: FeatureSet,
    batch_size: int,
    dice_weight: float,
    device: torch.device,
) -> dict[str, float]:
    """`val_loss`, `val_dice`, `val_iou` over the whole set, computed in batches on the device.

    The loss is `bce_dice_loss` of the whole set (BCE over every pixel, soft Dice averaged over
    images): each batch's loss weighted by its size, which is exact since images share a size.
    Dice and IoU are per image, as `metrics.scores` defines them at the 0.5 threshold. The host
    reads the three numbers once.
    """
    decoder.eval()
    # MPS has no float64, which the exact per-image counts use: score there on the CPU.
    scoring = torch.device("cpu") if device.type == "mps" else device
    loss = torch.zeros((), device=device)
    dice, iou = [], []
    for x, y in data.batches(batch_size, device):
        with _autocast(device):
            logits = upsample_logits(decoder(x), tuple(y.shape[-2:]))
        loss += bce_dice_loss(logits, y, dice_weight) * len(x)
        predicted = torch.sigmoid(logits.float()) >= 0.5
        image_dice, image_iou = dice_iou(predicted.to(scoring), y.to(scoring))
        dice.append(image_dice)
        iou.append(image_iou)
    values = torch.stack([loss.double().to(scoring) / len(data), *map(_mean, (dice, iou))])
    val_loss, val_dice, val_iou = values.tolist()
    return {"val_loss": val_loss, "val_dice": val_dice, "val_iou": val_iou}


def _mean(per_batch: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(per_batch).double().mean()


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
    with deferred():  # Ctrl-C stops the loop between steps, never inside the callback's writes
        for epoch in range(1, config.epochs + 1):
            started = time.perf_counter()
            decoder.train()
            losses = []
            for x, y in train.batches(config.batch_size, device, generator):
                losses.append(train_step(decoder, optimiser, x, y, config.dice_weight))
                interrupt_point()
            train_loss = torch.stack(losses).mean().item()  # the epoch's one wait for the device
            trained = time.perf_counter()
            if not math.isfinite(train_loss):
                raise TrainingError(
                    f"the training loss became {train_loss} in epoch {epoch} "
                    f"(train.lr = {config.lr}); lower train.lr"
                )
            metrics = {"epoch": epoch, "train_loss": train_loss}
            metrics.update(validate(decoder, val, config.batch_size, config.dice_weight, device))
            metrics["epoch_train_s"] = trained - started
            metrics["epoch_val_s"] = time.perf_counter() - trained
            result.history.append(metrics)
            if metrics["val_dice"] > result.best_val_dice:
                result.best_epoch, result.best_val_dice = epoch, metrics["val_dice"]
                best_state = copy.deepcopy(decoder.state_dict())
            if callback is not None:
                callback(metrics)  # may raise, e.g. optuna.TrialPruned
            interrupt_point()
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
