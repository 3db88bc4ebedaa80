"""Where an epoch's time goes: `fit` times training and validation, runs log both per epoch, and
validation computed in batches on the device gives the numbers the per-image path gives."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import mlflow
import pytest
import torch
from typer.testing import CliRunner

from polypseg.cli import app
from polypseg.config import TrainConfig, load_config
from polypseg.features.cache import FeatureSet
from polypseg.features.prepare import prepare
from polypseg.metrics import scores
from polypseg.models.decoder import SimpleDecoder
from polypseg.tracking.runs import tracked_run
from polypseg.tracking.store import setup
from polypseg.training.fit import fit, predict_probs, validate
from polypseg.training.losses import bce_dice_loss
from polypseg.training.run import train_and_log

CPU = torch.device("cpu")


def _random_set(n: int, seed: int) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(n, 1, 32, 32, generator=g) > 0.7).to(torch.uint8)
    masks[0] = 0  # an empty mask: the 0/0 = 1 convention must hold in batches too
    return FeatureSet(torch.randn(n, 8, 8, 8, generator=g).half(), masks)


def test_batched_validation_equals_the_whole_set_metrics() -> None:
    torch.manual_seed(0)
    decoder = SimpleDecoder(8, 8)
    data = _random_set(11, 1)  # batches of 4, 4 and 3
    got = validate(decoder, data, 4, CPU, partial(bce_dice_loss, dice_weight=0.3))
    probs, masks = predict_probs(decoder, data, 11, CPU)
    per_image = scores(probs, masks)
    logits = torch.logit(probs.double()).float()
    assert got["val_dice"] == pytest.approx(float(per_image["dice"].mean()), abs=1e-6)
    assert got["val_iou"] == pytest.approx(float(per_image["iou"].mean()), abs=1e-6)
    assert got["val_loss"] == pytest.approx(bce_dice_loss(logits, masks, 0.3).item(), abs=1e-4)


def test_every_epoch_reports_its_train_and_val_seconds() -> None:
    config = TrainConfig(epochs=3, batch_size=4, lr=1e-2, patience=0)
    history = fit(_random_set(12, 0), _random_set(5, 1), 8, 8, config, CPU).history
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for metrics in history:
        assert 0 < metrics["epoch_train_s"] < 60 and 0 < metrics["epoch_val_s"] < 60


def test_train_logs_epoch_timings_with_step_epoch(
    runner: CliRunner, tiny_config: Path, tiny_cache: Path, mlflow_store: str
) -> None:
    result = runner.invoke(app, ["train", "--config", str(tiny_config), "--no-log-model"])
    assert result.exit_code == 0, result.output
    run_id = result.stdout.strip().splitlines()[-1].split()[0].removeprefix("run_id=")
    client = mlflow.MlflowClient(mlflow_store)
    for key in ("epoch_train_s", "epoch_val_s", "train_loss", "val_dice"):
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == [1, 2, 3], key
    assert all(m.value > 0 for m in client.get_metric_history(run_id, "epoch_val_s"))


def test_epochs_before_a_stop_are_logged_even_when_training_is_cut_short(
    tiny_config: Path, tiny_cache: Path, mlflow_store: str
) -> None:
    config = load_config(tiny_config)
    prepared = prepare(config, progress=False)
    setup(config.tracking.experiment)

    class Pruned(Exception):
        pass

    def stop_at_two(metrics: dict[str, float]) -> None:
        if metrics["epoch"] == 2:
            raise Pruned

    with pytest.raises(Pruned), tracked_run(run_name="cut-short") as run:
        train_and_log(prepared, config, on_epoch=stop_at_two)
    history = mlflow.MlflowClient(mlflow_store).get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2]
