"""Segmentation metrics as the polyp literature reports them: pure functions, no state, no I/O.

polypseg's own figures (training, `--protocol default`) are per image, then averaged (mDice, ...),
as smp's `metrics.functional`: counts (`confusion`), ratios (`scores`), a reduction
(`mean_scores`); every ratio defines 0/0 as 1, so an empty prediction on an empty mask is perfect.
S-α, E-measure and wFβ come from `py_sod_metrics`, the maintained port of Fan's MATLAB code.
PraNet's `eval/main.m` (what published polyp tables report) is `pranet_image_scores`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

N_THRESHOLDS = 256

SCORE_NAMES = ("dice", "iou", "precision", "recall", "specificity", "mae")


def _check_pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """B×H×W or B×1×H×W maps → B×(H·W) each, refused when their images differ in size."""
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    if a.shape != b.shape:
        raise ValueError(
            f"prediction {tuple(a.shape)} and target {tuple(b.shape)} differ per image"
        )
    return a, b


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    # 0/0 = 1: the module's convention for empty sets (the x/0 that `where` drops raises nothing).
    return torch.where(denominator > 0, numerator / denominator, torch.ones_like(numerator))


def confusion(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-image pixel counts `(tp, fp, fn, tn)`, (B,) each, of 0/1 maps B×H×W or B×1×H×W."""
    pred, target = _check_pair(pred, target)
    # Counted on booleans (integer sums: exact at any size, and a few times cheaper than float
    # products), returned as float64 so that the ratios are exact too.
    pred, target = pred.bool(), target.bool()
    tp = (pred & target).sum(dim=1)
    fp = pred.sum(dim=1) - tp
    fn = target.sum(dim=1) - tp
    tn = pred.shape[1] - tp - fp - fn
    return tp.double(), fp.double(), fn.double(), tn.double()


def _dice_iou(tp: Tensor, fp: Tensor, fn: Tensor) -> tuple[Tensor, Tensor]:
    return _ratio(2 * tp, 2 * tp + fp + fn), _ratio(tp, tp + fp + fn)


def dice_iou(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image Dice and IoU of 0/1 maps, (B,) each: validation's, without `scores`' cost."""
    return _dice_iou(*confusion(pred, target)[:3])


def scores(probs: Tensor, target: Tensor, threshold: float = 0.5) -> dict[str, Tensor]:
    """Per-image `SCORE_NAMES`, (B,) each, of probabilities `probs >= threshold` against 0/1
    `target`; `mae` is of the probability map itself, as SOD tooling computes it."""
    probs, target = _check_pair(probs, target)
    probs, target = probs.double(), target.double()
    tp, fp, fn, tn = confusion(probs >= threshold, target)
    dice, iou = _dice_iou(tp, fp, fn)
    return {
        "dice": dice,
        "iou": iou,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "mae": (probs - target).abs().mean(dim=1),
    }


def mean_scores(per_image: dict[str, Tensor]) -> dict[str, float]:
    """Each per-image score's mean (mDice, ...): every image weighs the same."""
    means = {}
    for name, values in per_image.items():
        if values.numel() == 0:
            raise ValueError(f"no images to average for {name!r}")
        means[name] = float(values.double().mean())
    return means


def _counts_over_thresholds(
    probs: Tensor, truth: Tensor, ascending: Tensor
) -> tuple[Tensor, Tensor]:
    """Per row of B×N `probs` and 0/1 `truth`, the pixels with `p >= t` per ascending threshold
    and the true ones among them (B×n float64 each). Each pixel is binned once by how many
    thresholds it clears; a reverse cumsum gives the counts: memory O(B·N + B·n), not O(B·N·n)."""
    n, batch = len(ascending), probs.shape[0]
    cleared = torch.bucketize(probs, ascending, right=True)  # thresholds t with t <= p
    flat = (cleared + torch.arange(batch, device=probs.device).unsqueeze(1) * (n + 1)).flatten()
    per_bin = torch.bincount(flat, minlength=batch * (n + 1)).view(batch, n + 1).double()
    weights = truth.flatten().double()
    true_bin = torch.bincount(flat, weights=weights, minlength=batch * (n + 1)).view(batch, n + 1)
    # Threshold j keeps the pixels that clear more than j thresholds.
    return per_bin.flip(1).cumsum(1).flip(1)[:, 1:], true_bin.flip(1).cumsum(1).flip(1)[:, 1:]


def dice_over_thresholds(probs: Tensor, target: Tensor, n: int = N_THRESHOLDS) -> Tensor:
    """Per-image mean of Dice over `n` thresholds evenly spaced in [0, 1] (ends included), (B,).

    PraNet's evaluation tooling binarises each map at `1:-1/255:0` and averages the 256 Dice
    values; report it as `mdice_thr`, never as plain Dice. Differences from that MATLAB code,
    kept on purpose: the probability map is used as is (PraNet first min-max stretches each map),
    and 0/0 is 1 as elsewhere here (PraNet scores 0 whenever no pixel is both predicted and true).
    """
    if n < 2:
        raise ValueError(f"n must be at least 2 thresholds, got {n}")
    probs, target = _check_pair(probs, target)
    probs = probs.float()
    thresholds = torch.linspace(0.0, 1.0, n, device=probs.device)
    predicted, tp = _counts_over_thresholds(probs, target.float(), thresholds)
    positives = target.double().sum(dim=1, keepdim=True)
    return _ratio(2 * tp, predicted + positives).mean(dim=1)


def structure_measure() -> Any:
    """`py_sod_metrics.Smeasure` with a zero-area quadrant scoring 0 instead of NaN.

    S-α splits the map into four quadrants at the mask's centroid. When the centroid falls in
    the last row or column (a polyp sliver along the right or bottom border), one quadrant is
    empty: its weight is 0, but the library's SSIM of an empty array is NaN and NaN·0 = NaN
    (seen with py_sod_metrics 1.6.2). Zero is the weighted sum's intended term.
    """
    from py_sod_metrics import Smeasure

    class _Smeasure(Smeasure):
        def ssim(self, pred: np.ndarray, gt: np.ndarray) -> float:
            return 0.0 if pred.size == 0 else super().ssim(pred, gt)

    return _Smeasure(alpha=0.5)


def emeasure_over_pixels(values: Any, pixels: int) -> np.ndarray:
    """`py_sod_metrics` E-measure values as the mean over an image's H·W pixels.

    The library, like the MATLAB code, divides by H·W − 1 (+ eps): 4.5e15 on a 1×1 image. The mean
    stays in [0, 1]; at Kvasir's sizes the two differ by 3e-6. The clip absorbs float rounding.
    """
    from py_sod_metrics.utils import EPS

    return np.clip(np.asarray(values, dtype=np.float64) * ((pixels - 1 + EPS) / pixels), 0.0, 1.0)


def structure_and_emeasure(pred_prob_uint8: np.ndarray, gt_uint8: np.ndarray) -> dict[str, float]:
    """S-α and mean E-measure of an H×W uint8 map (the library min-max stretches it unless
    constant) against an H×W uint8 mask (foreground > 128)."""
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
    results = {"s_alpha": float(smeasure.get_results()["sm"]), "e_measure": float(np.mean(curve))}
    for name, value in results.items():
        if not math.isfinite(value):
            raise RuntimeError(f"py_sod_metrics returned {name}={value}: a case we did not know")
    return results


DEFAULT_KEYS = (*SCORE_NAMES, "mdice_thr", "s_alpha", "e_measure")


def quantize_map(proba: np.ndarray) -> np.ndarray:
    """A probability map as an 8-bit grey PNG stores it: `round(p * 255)` as uint8."""
    return np.round(np.clip(proba, 0.0, 1.0) * 255.0).astype(np.uint8)


def default_image_scores(proba: np.ndarray, mask: np.ndarray, threshold: float) -> dict:
    p = torch.from_numpy(np.ascontiguousarray(proba, dtype=np.float64))[None]
    m = torch.from_numpy(mask)[None].double()
    row = {k: float(v[0]) for k, v in scores(p, m, threshold).items()}
    row["mdice_thr"] = float(dice_over_thresholds(p, m)[0])
    row.update(structure_and_emeasure(quantize_map(proba), mask.astype(np.uint8) * 255))
    return row


# PraNet's `eval/main.m`, per image: the map's first channel as `im2double`, min-max stretched
# (`mapminmax`, which leaves a constant map as it is); for each threshold of `1:-1/255:0` Dice
# and IoU of `map >= t`, 0 whenever no pixel is both predicted and true; the E-measure of
# `map > t`; wFβ, S-α and MAE of the stretched map. Over a data set each curve is averaged over
# images, then `mdice`/`miou`/`mean_em` are the curves' means and `max_dice`/`max_em` their
# maxima (the best single threshold for the whole set); the scalars are plain means.
PRANET_SUMMARY_KEYS = ("mdice", "miou", "max_dice", "wfm", "s_alpha", "mean_em", "max_em", "mae")
PRANET_ROW_KEYS = ("mdice", "miou", "wfm", "s_alpha", "mean_em", "mae")


def matlab_thresholds() -> np.ndarray:
    """MATLAB's `1:-1/255:0`: 256 descending values, the first 1, the last 0.

    MATLAB builds `a:d:b` symmetrically (Cleve Moler's `colonop`, MATLAB Central): the first
    half as `a + k*d`, the second half as `b - k*d` from the end. 36 of the values then differ
    from `j/255` by one ulp, which decides whether a pixel of an 8-bit map sitting exactly on a
    threshold is in or out, so we build them the same way. (Not checked against MATLAB itself;
    with exact `j/255` thresholds instead, mDice of 8-bit maps moves by about 1e-4.)
    """
    a, d, b = 1.0, -1.0 / 255.0, 0.0
    n = N_THRESHOLDS - 1
    values = np.empty(N_THRESHOLDS)
    k = np.arange(n // 2 + 1, dtype=np.float64)
    values[: n // 2 + 1] = a + k * d
    values[n - np.arange(n // 2 + 1)] = b - k * d
    return values


PRANET_THRESHOLDS = matlab_thresholds()
_ASCENDING = PRANET_THRESHOLDS[::-1].copy()


def min_max_stretch(values: np.ndarray) -> np.ndarray:
    """`mapminmax(x, 0, 1)` as MATLAB computes it: the gain `1 / (xmax - xmin)` first, then
    multiplied; a constant map stays as it is (gain 1, offset 0), not 0 or NaN."""
    values = np.asarray(values, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    return values.copy() if high == low else (values - low) * (1.0 / (high - low))


def _pranet_emeasure(stretched: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """E-measure of `map > t` at each of PraNet's thresholds, computed by `py_sod_metrics`.

    The library's histogram version scores, at its index i, the pixels whose 8-bit level is at
    least 255 - i; it bins `>=` on a map floored to 8 bits. Giving each pixel as level the number
    of thresholds strictly below its value makes index i hold PraNet's set `map > t` for
    threshold i + 1; PraNet's threshold 0 (t = 1, nothing is above it) is the library's score
    of an empty prediction.
    """
    from py_sod_metrics import Emeasure

    below = np.searchsorted(_ASCENDING, stretched, side="left")  # thresholds t with t < value
    emeasure = Emeasure()
    # The attributes `Emeasure.step` sets before it calls the two methods used here.
    emeasure.gt_fg_numel = int(np.count_nonzero(truth))
    emeasure.gt_size = truth.size
    empty = emeasure.cal_em_with_threshold(stretched, truth, threshold=np.inf)
    # (level + 0.5) / 255: the library floors value * 255, so the level survives rounding.
    curve = emeasure.cal_em_with_cumsumhistogram((below + 0.5) / 255.0, truth)
    return emeasure_over_pixels(np.concatenate([[empty], curve[: N_THRESHOLDS - 1]]), truth.size)


@dataclass(frozen=True)
class PranetScores:
    """One image under PraNet's protocol: three curves over `PRANET_THRESHOLDS`, three scalars."""

    dice: np.ndarray
    iou: np.ndarray
    emeasure: np.ndarray
    wfm: float
    s_alpha: float
    mae: float

    def row(self) -> dict[str, float]:
        return {
            "mdice": float(self.dice.mean()),
            "miou": float(self.iou.mean()),
            "wfm": self.wfm,
            "s_alpha": self.s_alpha,
            "mean_em": float(self.emeasure.mean()),
            "mae": self.mae,
        }


def pranet_image_scores(prob_map: np.ndarray, mask: np.ndarray) -> PranetScores:
    """One H×W map (as `im2double` gives it; stretched here) against its H×W 0/1 mask."""
    from py_sod_metrics import WeightedFmeasure

    prob_map = np.asarray(prob_map, dtype=np.float64)
    truth = np.asarray(mask).astype(bool)
    if prob_map.ndim != 2 or prob_map.shape != truth.shape or prob_map.size == 0:
        raise ValueError(f"map {prob_map.shape} and mask {truth.shape} must be the same H×W")
    if not np.isfinite(prob_map).all():
        raise ValueError("the map holds NaN or infinite values")
    stretched = min_max_stretch(prob_map)
    flat = torch.from_numpy(stretched.ravel())[None]
    counts = _counts_over_thresholds(
        flat, torch.from_numpy(truth.ravel())[None], torch.from_numpy(_ASCENDING)
    )
    predicted, tp = (c[0].flip(0).numpy() for c in counts)  # PraNet's order: 1 down to 0
    positives = float(truth.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        dice = np.where(tp > 0, 2 * tp / (positives + predicted), 0.0)
        iou = np.where(tp > 0, tp / (positives + predicted - tp), 0.0)
    smeasure, wfmeasure = structure_measure(), WeightedFmeasure()
    smeasure.step(stretched, truth, normalize=False)
    wfmeasure.step(stretched, truth, normalize=False)  # an empty mask scores 0, not NaN
    s_alpha, wfm = float(smeasure.get_results()["sm"]), float(wfmeasure.get_results()["wfm"])
    mae = float(np.mean(np.abs(stretched - truth)))
    return PranetScores(dice, iou, _pranet_emeasure(stretched, truth), wfm, s_alpha, mae)


def pranet_summary(images: Sequence[PranetScores]) -> dict[str, float]:
    """Curves averaged over images first, then their mean or max."""
    if not images:
        raise ValueError("no images to summarize")
    dice = np.mean([s.dice for s in images], axis=0)
    emeasure = np.mean([s.emeasure for s in images], axis=0)
    return {
        "mdice": float(dice.mean()),
        "miou": float(np.mean([s.iou for s in images], axis=0).mean()),
        "max_dice": float(dice.max()),
        "wfm": float(np.mean([s.wfm for s in images])),
        "s_alpha": float(np.mean([s.s_alpha for s in images])),
        "mean_em": float(emeasure.mean()),
        "max_em": float(emeasure.max()),
        "mae": float(np.mean([s.mae for s in images])),
    }
