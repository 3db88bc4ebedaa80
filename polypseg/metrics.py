"""Segmentation metrics as the polyp literature reports them: pure functions, no state, no I/O.

Everything is computed per image and then averaged over images (mDice, mIoU, ...), which is what
published polyp tables mean by Dice and IoU. The path is the one smp's `metrics.functional`
takes: per-image confusion counts first (`confusion`), then ratios (`scores`), then an explicit
reduction (`mean_scores`). Two figures follow other conventions and are kept apart under their
own names: `dice_over_thresholds` (PraNet's evaluation tooling, reported as `mdice_thr`) and
`structure_and_emeasure` (S-α and mean E-measure from `py_sod_metrics`, the maintained
implementation checked against the original MATLAB code).

Convention for empty denominators: every ratio defines 0/0 as 1. An empty prediction on an empty
mask is perfect (dice = iou = precision = recall = 1); a non-empty prediction on an empty mask
scores dice = iou = precision = 0 but recall = 1 (nothing was there to miss).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

SCORE_NAMES = ("dice", "iou", "precision", "recall", "specificity", "mae")


def _per_image(x: Tensor) -> Tensor:
    """B×H×W or B×1×H×W → B×(H·W)."""
    return x.reshape(x.shape[0], -1)


def _check_pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    a, b = _per_image(a), _per_image(b)
    if a.shape != b.shape:
        raise ValueError(
            f"prediction {tuple(a.shape)} and target {tuple(b.shape)} differ per image"
        )
    return a, b


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator with 0/0 = 1 (the module's convention for empty sets)."""
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, numerator / safe, torch.ones_like(numerator))


def confusion(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-image pixel counts `(tp, fp, fn, tn)`, each a float tensor of shape (B,).

    `pred` and `target` are 0/1 (or bool) maps, B×H×W or B×1×H×W.
    """
    pred, target = _check_pair(pred, target)
    # Counted on booleans (integer sums: exact at any size, and a few times cheaper than float
    # products), returned as float64 so that the ratios are exact too.
    pred, target = pred.bool(), target.bool()
    tp = (pred & target).sum(dim=1)
    fp = pred.sum(dim=1) - tp
    fn = target.sum(dim=1) - tp
    tn = pred.shape[1] - tp - fp - fn
    return tp.double(), fp.double(), fn.double(), tn.double()


def _dice(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _iou(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    return _ratio(tp, tp + fp + fn)


def dice_iou(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image Dice and IoU of 0/1 (or bool) maps, (B,) each, as `scores` defines them.

    What validation needs every epoch, without the other four scores' cost.
    """
    tp, fp, fn, _ = confusion(pred, target)
    return _dice(tp, fp, fn), _iou(tp, fp, fn)


def scores(probs: Tensor, target: Tensor, threshold: float = 0.5) -> dict[str, Tensor]:
    """Per-image `dice`, `iou`, `precision`, `recall`, `specificity`, `mae`, each a (B,) tensor.

    `probs` is a probability map in [0, 1] (B×H×W or B×1×H×W) and is binarised as
    `probs >= threshold`; `target` is 0/1. `mae` is the mean absolute difference between the
    probability map itself (not the binarised one) and the target, as SOD tooling computes it.
    Ratios with an empty denominator are 1 (see the module docstring).
    """
    probs, target = _check_pair(probs, target)
    probs, target = probs.double(), target.double()
    tp, fp, fn, tn = confusion(probs >= threshold, target)
    return {
        "dice": _dice(tp, fp, fn),
        "iou": _iou(tp, fp, fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "mae": (probs - target).abs().mean(dim=1),
    }


def mean_scores(per_image: dict[str, Tensor]) -> dict[str, float]:
    """Average each per-image score over images (mDice, mIoU, ...) as plain floats.

    Batches are concatenated by the caller (`torch.cat`) before the mean, so every image weighs
    the same whatever batch it came in.
    """
    means = {}
    for name, values in per_image.items():
        if values.numel() == 0:
            raise ValueError(f"no images to average for {name!r}")
        means[name] = float(values.double().mean())
    return means


def dice_over_thresholds(probs: Tensor, target: Tensor, n: int = 256) -> Tensor:
    """Per-image mean of Dice over `n` thresholds evenly spaced in [0, 1] (ends included), (B,).

    PraNet's evaluation tooling (the one most polyp papers copy) binarises each map at
    `1:-1/255:0` and averages the 256 Dice values; report it as `mdice_thr`, never as plain
    Dice. Differences from that MATLAB code, kept on purpose: the probability map is used as is
    (PraNet first min-max stretches each map to [0, 1]), and 0/0 is 1 as elsewhere in this module
    (PraNet scores 0 whenever no pixel is both predicted and true).

    Each pixel is counted once into the bin of how many thresholds it clears, then a reverse
    cumulative sum gives every threshold's counts: memory O(B·H·W + B·n), not O(B·H·W·n).
    """
    if n < 2:
        raise ValueError(f"n must be at least 2 thresholds, got {n}")
    probs, target = _check_pair(probs, target)
    probs = probs.float()
    truth = target.float()
    thresholds = torch.linspace(0.0, 1.0, n, device=probs.device)
    # cleared[i] = number of thresholds t_k with t_k <= p_i, so p_i >= t_k exactly for k < cleared.
    cleared = torch.bucketize(probs, thresholds, right=True)
    batch = probs.shape[0]
    offsets = torch.arange(batch, device=probs.device).unsqueeze(1) * (n + 1)
    flat = (cleared + offsets).flatten()
    per_bin = torch.bincount(flat, minlength=batch * (n + 1)).view(batch, n + 1)
    per_bin_tp = torch.bincount(flat, weights=truth.flatten().double(), minlength=batch * (n + 1))
    per_bin_tp = per_bin_tp.view(batch, n + 1)
    # Predicted-foreground count at threshold k = pixels that clear more than k thresholds.
    predicted = per_bin.double().flip(1).cumsum(1).flip(1)[:, 1:]
    tp = per_bin_tp.flip(1).cumsum(1).flip(1)[:, 1:]
    positives = truth.double().sum(dim=1, keepdim=True)
    dice = _ratio(2 * tp, predicted + positives)
    return dice.mean(dim=1)


def structure_measure() -> Any:
    """`py_sod_metrics.Smeasure` with a zero-area quadrant scoring 0 instead of NaN.

    S-α splits the map into four quadrants at the mask's centroid. When the centroid falls in
    the last row or column (a polyp sliver along the right or bottom border), one quadrant is
    empty: its weight is 0, but the library's SSIM of an empty array is NaN and NaN·0 = NaN
    (seen with py_sod_metrics 1.6.2). Zero is the weighted sum's intended term, so no other
    value changes.
    """
    from py_sod_metrics import Smeasure

    class _Smeasure(Smeasure):
        def ssim(self, pred: np.ndarray, gt: np.ndarray) -> float:
            return 0.0 if pred.size == 0 else super().ssim(pred, gt)

    return _Smeasure(alpha=0.5)


def emeasure_over_pixels(values: Any, pixels: int) -> np.ndarray:
    """`py_sod_metrics` E-measure values as the mean over an image's H·W pixels.

    The library, like the MATLAB code, divides the enhanced-alignment sum by H·W − 1 (+ eps):
    4.5e15 on a 1×1 image, up to 2 on 1×2, above 1 for good maps on small images. The mean stays
    in [0, 1] for any size; at Kvasir's 720×576 frames the two differ by a factor
    1 − 1/(H·W) (3e-6), below the decimals tables report. The clip only absorbs float rounding.
    """
    from py_sod_metrics.utils import EPS

    return np.clip(np.asarray(values, dtype=np.float64) * ((pixels - 1 + EPS) / pixels), 0.0, 1.0)


def structure_and_emeasure(pred_prob_uint8: np.ndarray, gt_uint8: np.ndarray) -> dict[str, float]:
    """S-α (`s_alpha`, α = 0.5) and mean E-measure (`e_measure`) of one image, via `py_sod_metrics`.

    Definitions: Fan, Cheng, Liu, Li & Borji, "Structure-measure: A new way to evaluate
    foreground maps", ICCV 2017 (S-α); Fan, Gong, Cao, Ren, Cheng & Borji, "Enhanced-alignment
    Measure for Binary Foreground Map Evaluation", IJCAI 2018 (E-measure; the mean is over the
    library's 256 binarisation thresholds, what polyp tables report as "meanEm").

    Args:
        pred_prob_uint8: H×W uint8 probability map in 0–255. The library min-max stretches it
            (MATLAB's `mapminmax`) unless it is constant, as the original code does.
        gt_uint8: H×W uint8 mask in 0–255; foreground is > 128.

    Empty ground truth: we return what the library returns, which is well defined there:
    S-α = 1 − mean(prediction) and E-measure = the mean fraction of pixels predicted background.
    The E-measure is the mean of the enhanced-alignment matrix over the H·W pixels
    (`emeasure_over_pixels`), in [0, 1] for any image size. The one NaN the library can produce
    (a mask whose centroid lies on the last row or column) is removed by `structure_measure`.
    """
    # Imported here: it pulls in scipy, and only evaluation needs it.
    from py_sod_metrics import Emeasure

    for name, array in (("pred_prob_uint8", pred_prob_uint8), ("gt_uint8", gt_uint8)):
        if array.dtype != np.uint8 or array.ndim != 2 or array.size == 0:
            raise ValueError(
                f"{name} must be a non-empty H×W uint8 array, got {array.dtype} {array.shape}"
            )
    if pred_prob_uint8.shape != gt_uint8.shape:
        raise ValueError(f"prediction {pred_prob_uint8.shape} and mask {gt_uint8.shape} differ")
    smeasure, emeasure = structure_measure(), Emeasure()
    smeasure.step(pred=pred_prob_uint8, gt=gt_uint8)
    emeasure.step(pred=pred_prob_uint8, gt=gt_uint8)
    curve = emeasure_over_pixels(emeasure.get_results()["em"]["curve"], gt_uint8.size)
    results = {
        "s_alpha": float(smeasure.get_results()["sm"]),
        "e_measure": float(np.mean(curve)),
    }
    for name, value in results.items():
        if not math.isfinite(value):
            raise RuntimeError(f"py_sod_metrics returned {name}={value}: a case we did not know")
    return results
