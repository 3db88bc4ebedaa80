"""Training the decoder over cached features: `fit` is one plain loop, readable top to bottom.

`fit` takes feature tensors, never images (the encoder is not in the loop), and never knows
whether it runs in a study. With `decoder.deep_supervision` the loss is summed over every stage's
logits, as PraNet sums its side outputs'. The device is never waited for within an epoch: losses
stay on it until the epoch's mean is read, and scoring hands the host a few numbers. Randomness
comes from generators seeded with `train.seed`, never the global RNG, so trials in threads get
the weights a lone run gets. On CUDA: fused AdamW, channels-last and cuDNN's autotuner, the same
training up to summation order (`SPEEDUP_TOLERANCE`); CPU runs stay bit-reproducible.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial

import torch

from polypseg.config import DecoderConfig, TrainConfig
from polypseg.errors import PolypsegError
from polypseg.features.cache import FeatureSet
from polypseg.interrupts import deferred, interrupt_point
from polypseg.metrics import dice_iou, dice_over_thresholds, mean_scores, scores
from polypseg.models.decoder import Decoder, decoder_arguments, seeded_decoder
from polypseg.models.segmenter import upsample_logits
from polypseg.training.losses import training_loss

EpochCallback = Callable[[dict[str, float]], None]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# How far a run with `speedups` on may drift from one without (val_dice, losses), measured on
# CPU kernels over 6 epochs of the toy set: ~1e-6; the bound leaves room for CUDA's own order.
SPEEDUP_TOLERANCE = 1e-3


def speedups(device: torch.device) -> tuple[bool, torch.memory_format]:
    """(fused AdamW, memory format): both on CUDA only (cuDNN's NHWC kernels, no transposes)."""
    cuda = device.type == "cuda"
    return cuda, torch.channels_last if cuda else torch.contiguous_format


@dataclass
class FitResult:
    decoder: Decoder  # holding the best epoch's weights
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_dice: float = -math.inf


def _autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_step(
    decoder: Decoder,
    optimiser: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Loss,
    images: torch.Tensor | None = None,
    deep_supervision: bool = False,
) -> torch.Tensor:
    """One step; the loss stays on the device (reading it would wait for the GPU each step)."""
    size = tuple(y.shape[-2:])
    with _autocast(x.device):
        stages = decoder.stages(x, images) if deep_supervision else [decoder(x, images)]
    loss = sum(loss_fn(upsample_logits(logits, size), y) for logits in stages)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return loss.detach()


def _scoring_device(device: torch.device) -> torch.device:
    """MPS has no float64, which the exact per-image counts use: score there on the CPU."""
    return torch.device("cpu") if device.type == "mps" else device


@torch.no_grad()
def _logits(
    decoder: Decoder, data: FeatureSet, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(logits B×1×S×S, masks B×1×S×S) batches on `device`, in the set's order."""
    decoder.eval()
    for x, y, images in data.batches(batch_size, device, memory_format=speedups(device)[1]):
        with _autocast(device):  # left before the yield: autocast is the thread's, not ours
            logits = upsample_logits(decoder(x, images), tuple(y.shape[-2:]))
        yield logits, y


def predict_probs(
    decoder: Decoder, data: FeatureSet, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 probabilities N×1×S×S, masks N×1×S×S) on the CPU, in the set's order."""
    pairs = [
        (torch.sigmoid(z.float()).cpu(), y.cpu())
        for z, y in _logits(decoder, data, batch_size, device)
    ]
    return torch.cat([p for p, _ in pairs]), torch.cat([y for _, y in pairs])


@torch.no_grad()
def validate(
    decoder: Decoder, data: FeatureSet, batch_size: int, device: torch.device, loss_fn: Loss
) -> dict[str, float]:
    """`val_loss` (batches weighted by size: exact, images share a size), per-image `val_dice`
    and `val_iou` at 0.5, computed on the device; the host reads the three numbers once."""
    scoring = _scoring_device(device)
    loss = torch.zeros((), device=device)
    per_batch = []  # (dice, iou) per image of each batch
    for logits, y in _logits(decoder, data, batch_size, device):
        loss += loss_fn(logits, y) * len(y)
        predicted = torch.sigmoid(logits.float()) >= 0.5
        per_batch.append(dice_iou(predicted.to(scoring), y.to(scoring)))
    means = [torch.cat(values).double().mean() for values in zip(*per_batch, strict=True)]
    values = torch.stack([loss.double().to(scoring) / len(data), *means]).tolist()
    return dict(zip(("val_loss", "val_dice", "val_iou"), values, strict=True))


def fit(
    train: FeatureSet,
    val: FeatureSet,
    in_channels: int,
    width: int,
    config: TrainConfig,
    device: torch.device,
    callback: EpochCallback | None = None,
    decoder_config: DecoderConfig | None = None,
) -> FitResult:
    """Train a fresh decoder (`width` wins over `decoder_config`'s), early-stopping on
    `val_dice`; `train` and `val` are only read (a study's threads share them)."""
    spec = decoder_config or DecoderConfig()
    fused, memory_format = speedups(device)
    generator = torch.Generator().manual_seed(config.seed)  # the batch order, the variants
    sizes = (train.features.shape[-1], train.masks.shape[-1])
    arguments = decoder_arguments(spec.name, in_channels, width, spec.branch_width, *sizes)
    decoder = seeded_decoder(spec.name, arguments, config.seed)
    decoder = decoder.to(device, memory_format=memory_format)
    loss_fn = training_loss(config.loss, config.dice_weight)
    step = partial(train_step, loss_fn=loss_fn, deep_supervision=spec.deep_supervision)
    optimiser = torch.optim.AdamW(
        decoder.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused
    )
    if device.type == "cuda":  # fixed shapes (the batch size): autotuning pays off from epoch 1
        torch.backends.cudnn.benchmark = True
    train, val = train.to(device), val.to(device)
    result = FitResult(decoder)
    best_state = copy.deepcopy(decoder.state_dict())
    # On `device` (not the thread's current GPU): streams, cuDNN handles and the fused kernels
    # of a trial on cuda:1 all belong to cuda:1. Ctrl-C stops the loop between steps, never
    # inside the callback's writes.
    on_device = torch.cuda.device(device) if device.type == "cuda" else nullcontext()
    with on_device, deferred():
        for epoch in range(1, config.epochs + 1):
            started = time.perf_counter()
            decoder.train()
            losses = []
            for x, y, images in train.batches(config.batch_size, device, generator, memory_format):
                losses.append(step(decoder, optimiser, x, y, images=images))
                interrupt_point()
            train_loss = torch.stack(losses).mean().item()  # the epoch's one wait for the device
            trained = time.perf_counter()
            if not math.isfinite(train_loss):
                raise PolypsegError(
                    f"the training loss became {train_loss} in epoch {epoch} "
                    f"(train.lr = {config.lr}, train.weight_decay = {config.weight_decay}); "
                    "lower train.lr, or train.weight_decay"
                )
            metrics = {"epoch": epoch, "train_loss": train_loss}
            metrics.update(validate(decoder, val, config.batch_size, device, loss_fn))
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
    decoder: Decoder, data: FeatureSet, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Mean per-image `test_*` scores and `test_mdice_thr`, scored batch by batch on the device:
    no N×S×S map travels to the host, and the values equal scoring the split at once."""
    scoring = _scoring_device(device)
    per_image: dict[str, list[torch.Tensor]] = {}
    for logits, masks in _logits(decoder, data, batch_size, device):
        probs, masks = torch.sigmoid(logits.float()).to(scoring), masks.to(scoring)
        batch = {**scores(probs, masks), "mdice_thr": dice_over_thresholds(probs, masks)}
        for key, values in batch.items():
            per_image.setdefault(key, []).append(values)
    means = mean_scores({key: torch.cat(values) for key, values in per_image.items()})
    return {f"test_{key}": value for key, value in means.items()}
