"""`train.fit` over feature tensors: learning, early stopping, callbacks, divergence."""

from __future__ import annotations

import pytest
import torch

from polypseg.config import TrainConfig
from polypseg.errors import PolypsegError
from polypseg.training.fit import FeatureSet, fit, split_scores

CPU = torch.device("cpu")


def _toy(n: int, seed: int) -> FeatureSet:
    """Features whose first channel says where the mask is: learnable in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 1, 32, 32, dtype=torch.uint8)
    for i in range(n):
        y, x = torch.randint(0, 20, (2,), generator=g).tolist()
        masks[i, 0, y : y + 12, x : x + 12] = 1
    small = torch.nn.functional.avg_pool2d(masks.float(), 4)  # 8×8, the "feature" resolution
    noise = torch.randn(n, 7, 8, 8, generator=g)
    return FeatureSet(torch.cat([small * 4 - 2, noise], 1).half(), masks)


def test_fit_learns_and_keeps_the_best_epoch() -> None:
    config = TrainConfig(epochs=12, batch_size=8, lr=1e-2, patience=0)
    result = fit(_toy(32, 0), _toy(8, 1), 8, 16, config, CPU)
    assert len(result.history) == 12
    assert result.best_val_dice == max(h["val_dice"] for h in result.history)
    assert result.best_val_dice > 0.7
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    scores = split_scores(result.decoder, _toy(8, 1), 8, CPU)
    assert scores["test_dice"] == pytest.approx(result.best_val_dice, abs=1e-4)  # best weights
    assert set(scores) >= {
        "test_dice",
        "test_iou",
        "test_precision",
        "test_recall",
        "test_mdice_thr",
    }


def test_fit_is_deterministic_for_a_seed() -> None:
    config = TrainConfig(epochs=2, batch_size=8, lr=1e-2)
    a = fit(_toy(16, 0), _toy(4, 1), 8, 8, config, CPU).history
    b = fit(_toy(16, 0), _toy(4, 1), 8, 8, config, CPU).history
    timings = {"epoch_train_s", "epoch_val_s"}  # wall-clock: the one thing that may differ
    assert [{k: v for k, v in h.items() if k not in timings} for h in a] == [
        {k: v for k, v in h.items() if k not in timings} for h in b
    ]


def test_early_stopping_waits_patience_epochs_after_the_best() -> None:
    config = TrainConfig(epochs=50, batch_size=8, lr=0.0 + 1e-12, patience=2)
    result = fit(_toy(16, 0), _toy(4, 1), 8, 8, config, CPU)
    assert len(result.history) == result.best_epoch + 2


def test_callback_sees_every_epoch_and_can_stop_training() -> None:
    seen = []

    class Stop(Exception):
        pass

    def callback(metrics: dict[str, float]) -> None:
        seen.append(metrics)
        if metrics["epoch"] == 3:
            raise Stop

    with pytest.raises(Stop):
        fit(_toy(16, 0), _toy(4, 1), 8, 8, TrainConfig(epochs=10, lr=1e-2), CPU, callback)
    assert [m["epoch"] for m in seen] == [1, 2, 3]
    assert set(seen[0]) == {
        "epoch",
        "train_loss",
        "val_loss",
        "val_dice",
        "val_iou",
        "epoch_train_s",
        "epoch_val_s",
    }


def test_nan_loss_stops_with_a_clear_error() -> None:
    bad = _toy(16, 0)
    bad.features[:] = float("nan")
    with pytest.raises(PolypsegError, match="lower train.lr"):
        fit(bad, _toy(4, 1), 8, 8, TrainConfig(epochs=3, lr=1e-2), CPU)


def test_cuda_speedups_keep_results_within_the_stated_tolerance(monkeypatch) -> None:
    # Fused AdamW and channels-last, as fit uses them on CUDA, run here on CPU kernels.
    from polypseg.training import fit as fit_module

    config = TrainConfig(epochs=6, batch_size=8, lr=1e-2, patience=0)
    plain = fit(_toy(32, 0), _toy(8, 1), 8, 16, config, CPU).history
    monkeypatch.setattr(fit_module, "speedups", lambda device: (True, torch.channels_last))
    fast = fit(_toy(32, 0), _toy(8, 1), 8, 16, config, CPU).history
    for a, b in zip(plain, fast, strict=True):
        for key in ("train_loss", "val_loss", "val_dice", "val_iou"):
            assert b[key] == pytest.approx(a[key], abs=fit_module.SPEEDUP_TOLERANCE), key


def test_split_scores_in_batches_equal_scoring_the_whole_split_at_once() -> None:
    from polypseg.metrics import dice_over_thresholds, mean_scores, scores
    from polypseg.training.fit import predict_probs

    result = fit(_toy(16, 0), _toy(4, 1), 8, 8, TrainConfig(epochs=2, lr=1e-2), CPU)
    test = _toy(11, 2)  # 11 images in batches of 4: a partial batch too
    probs, masks = predict_probs(result.decoder, test, 4, CPU)
    expected = mean_scores(scores(probs, masks))
    expected["mdice_thr"] = float(dice_over_thresholds(probs, masks).mean())
    actual = split_scores(result.decoder, test, 4, CPU)
    assert actual == {f"test_{key}": value for key, value in expected.items()}
