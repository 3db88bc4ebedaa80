"""One training run, logged: what `polypseg train` does and what every trial of a study does.

The decoder's weights are always logged (small); the pyfunc model with the encoder inside only
when asked (`train --log-model`, a study's best trial): a study does not copy a 375 MB encoder
into every trial. Epoch metrics go out in batches (`EpochLog`), at most every `FLUSH_S` seconds
and when training ends, however it ends.

Not MLflow's `log_metrics(..., synchronous=False)`: it measured no faster
(`benchmarks/bench_epoch_log.py`), and any run's end shuts down the one queue all of a process's
runs share, so with `--n-jobs` threads one trial's end makes another's `log_metrics` raise
("cannot schedule new futures after shutdown") and lose its epochs.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch

from polypseg.config import Config, flatten
from polypseg.errors import shortened
from polypseg.features.prepare import Prepared
from polypseg.features.sets import FeatureSet
from polypseg.figures import curves, mask_panel
from polypseg.metrics import scores
from polypseg.models.decoder import decoder_record
from polypseg.tracking.runs import log_dataset, log_figure, tracked_run
from polypseg.training.fit import EpochCallback, FitResult, fit, predict_probs, split_scores

PANEL_IMAGES = 4
SPREAD = {"val_dice": "best_val_dice", "test_dice": "test_dice"}  # figure: the metric it spreads
EPOCH_METRICS = ("train_loss", "val_loss", "val_dice", "val_iou", "epoch_train_s", "epoch_val_s")
FLUSH_S = 10.0  # a long run still shows its progress in the UI within this many seconds


class EpochLog:
    """A run's per-epoch metrics (step = epoch), sent to MLflow in batches."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.pending: list = []
        self.sent_at = time.monotonic()

    def add(self, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        stamp, step = int(time.time() * 1000), int(metrics["epoch"])
        self.pending += [Metric(key, float(metrics[key]), stamp, step) for key in EPOCH_METRICS]
        if time.monotonic() - self.sent_at >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        # MLflow splits a batch into calls the REST API takes (1000 metrics each) itself.
        mlflow.MlflowClient().log_batch(self.run_id, metrics=self.pending)
        self.pending, self.sent_at = [], time.monotonic()


@dataclass
class TrainOutcome:
    fit: FitResult
    metrics: dict[str, float]  # best_val_dice, best_epoch, test_*


def _log_panel(prepared: Prepared, fitted: FitResult) -> None:
    names = list(prepared.split.names("val"))[:PANEL_IMAGES]
    pixels = prepared.images(names)
    cached = prepared.features.feature_set(names)
    data = FeatureSet(cached.features, cached.masks, images=pixels)  # for a hires decoder
    probs, masks = predict_probs(fitted.decoder, data, len(names), prepared.device)
    images = [image.permute(1, 2, 0).numpy() for image in pixels]
    dice = scores(probs, masks)["dice"].tolist()
    figure = mask_panel(
        images,
        [m[0].numpy().astype(np.uint8) for m in masks],
        [p[0].numpy() for p in probs],
        titles=[f"{name}  Dice {d:.3f}" for name, d in zip(names, dice, strict=True)],
    )
    log_figure(figure, "figures/val_masks.png")


def train_and_log(
    prepared: Prepared,
    config: Config,
    on_epoch: EpochCallback | None = None,
    log_model: bool = False,
) -> TrainOutcome:
    """Fit a decoder on the prepared features, logging everything into the active run."""
    run = mlflow.active_run()
    mlflow.log_params(flatten(config))
    tags = {
        "polypseg.encoder": prepared.encoder.name,
        "polypseg.weights_digest": prepared.encoder.weights_digest[:16],
        "polypseg.precision": str(prepared.encoder.compute_dtype(prepared.device))[6:],
        "polypseg.split_digest": prepared.split.digest(),
    }
    if prepared.fallback_reason:
        tags["polypseg.fallback_reason"] = shortened(prepared.fallback_reason, 5000)
    mlflow.set_tags(tags)
    sizes = dict(
        zip(prepared.features.names, map(tuple, prepared.features.sizes.tolist()), strict=True)
    )
    log_dataset(prepared.root, prepared.split, sizes)

    epochs = EpochLog(run.info.run_id)

    def log_epoch(metrics: dict[str, float]) -> None:
        epochs.add(metrics)
        if on_epoch is not None:
            on_epoch(metrics)

    pixels = config.decoder.name == "hires"  # the one decoder that reads the images
    train = prepared.feature_set("train", config.data.augment, images=pixels)
    val = prepared.feature_set("val", images=pixels)
    try:
        fitted = fit(
            train,
            val,
            prepared.encoder.out_channels,
            config.decoder.width,
            config.train,
            prepared.device,
            callback=log_epoch,
            decoder_config=config.decoder,
        )
    finally:  # a pruned or failed run keeps the epochs it had
        epochs.flush()
    metrics = {"best_val_dice": fitted.best_val_dice, "best_epoch": float(fitted.best_epoch)}
    test = prepared.feature_set("test", images=pixels)
    metrics.update(split_scores(fitted.decoder, test, config.train.batch_size, prepared.device))
    mlflow.log_metrics(metrics)
    _log_panel(prepared, fitted)
    title = run.info.run_name or run.info.run_id
    if study := run.data.tags.get("optuna.study_name"):  # `trial-3 of study decoder_search`
        title = f"{title} of study {study}"
    log_figure(curves(fitted.history, title=title), "figures/curves.png")
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(decoder_record(fitted.decoder), Path(tmp) / "decoder.pt")
        mlflow.log_artifact(str(Path(tmp) / "decoder.pt"), "decoder")
    if log_model:
        from polypseg.tracking.pyfunc import log_segmenter_model

        log_segmenter_model(prepared.encoder, fitted.decoder.cpu(), config.data.image_size)
    return TrainOutcome(fitted, metrics)


@dataclass
class SeedsOutcome:
    run_id: str  # the parent's
    seeds: list[int]
    spread: dict[str, float]  # val_dice_mean, val_dice_sd, val_dice_min, ..., test_dice_max

    def lines(self) -> list[str]:
        s = self.spread
        return [
            f"{f} {s[f + '_mean']:.4f} ± {s[f + '_sd']:.4f} (min {s[f + '_min']:.4f}, max "
            f"{s[f + '_max']:.4f}) over seeds {self.seeds[0]}..{self.seeds[-1]}"
            for f in SPREAD
        ]


def train_seeds(
    prepared: Prepared,
    config: Config,
    n: int,
    on_epoch: EpochCallback | None = None,
    log_model: bool = False,
) -> SeedsOutcome:
    """`n` child runs from seed `train.seed`, their spread (sd: ddof 1) on the active run; only
    the first child logs the full model: one encoder copy, not `n`."""
    parent = mlflow.active_run().info.run_id
    seeds = list(range(config.train.seed, config.train.seed + n))
    children = []
    for seed in seeds:
        with tracked_run(run_name=f"seed-{seed}", parent_run_id=parent, nested=True):
            seeded = config.with_overrides({"train.seed": seed})
            children.append(train_and_log(prepared, seeded, on_epoch, log_model and not children))
    spread = {}
    for figure, metric in SPREAD.items():
        values = np.array([child.metrics[metric] for child in children])
        sd = values.std(ddof=1) if n > 1 else 0.0
        stats = {"mean": values.mean(), "sd": sd, "min": values.min(), "max": values.max()}
        spread.update({f"{figure}_{k}": float(v) for k, v in stats.items()})
    mlflow.log_params({**flatten(config), "seeds": n})
    mlflow.log_metrics(spread)
    return SeedsOutcome(parent, seeds, spread)
