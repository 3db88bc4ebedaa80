"""PraNet's evaluation protocol (`eval/main.m`, MICCAI 2020), the one polyp papers report.

Pure numpy over one image's prediction map and mask, then a reduction over a data set. The
MATLAB code, per image: the map's first channel as `im2double`, min-max stretched to [0, 1]
(`mapminmax`, which leaves a constant map as it is); for each threshold of `1:-1/255:0` (256 of
them, 1 down to 0) Dice and IoU of `map >= t`, scored 0 whenever no pixel is both predicted and
true; the E-measure of `map > t`; the weighted F-measure, S-α and MAE of the stretched map.
Over a data set: each per-threshold curve is averaged over images, then `mdice`/`miou`/`mean_em`
are the means of those curves and `max_dice`/`max_em` their maxima (the best single threshold
for the whole set, not per image); `wfm`, `s_alpha` and `mae` are plain means over images.

wFβ, S-α and E-φ come from `py_sod_metrics` (the maintained port of Fan's MATLAB code). It bins
E-measure thresholds as `>=` on a map floored to 8 bits, where PraNet binarises `>` on the
double map; `_emeasure_curve` feeds it levels that reproduce PraNet's sets exactly. One
deliberate difference: E-φ is the mean over the H·W pixels, where `main.m` divides by H·W − 1
(4.5e15 on a 1×1 image; a factor 1 − 1/(H·W), 3e-6 at 720×576, on real images).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

N_THRESHOLDS = 256
SUMMARY_KEYS = ("mdice", "miou", "max_dice", "wfm", "s_alpha", "mean_em", "max_em", "mae")
ROW_KEYS = ("mdice", "miou", "wfm", "s_alpha", "mean_em", "mae")


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


THRESHOLDS = matlab_thresholds()
_ASCENDING = THRESHOLDS[::-1].copy()


def min_max_stretch(values: np.ndarray) -> np.ndarray:
    """`mapminmax(x, 0, 1)` as MATLAB's Neural Network Toolbox computes it.

    `(x - xmin) * (1 / (xmax - xmin))`, in that order (the toolbox stores the gain, then
    multiplies). A constant map is returned unchanged: the toolbox sets the gain to 1 and the
    offset to 0 when the range is 0, so a map of 0.3 stays 0.3, not 0 or NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if high == low:
        return values.copy()
    return (values - low) * (1.0 / (high - low))


def _counts_per_threshold(levels: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true-positive pixel counts for each descending threshold index.

    `levels[i]` is how many of the 256 thresholds pixel i passes; those are always the last
    ones (the smallest thresholds), so threshold k keeps the pixels with level >= 256 - k.
    """
    per_level = np.bincount(levels, minlength=N_THRESHOLDS + 1)
    true_per_level = np.bincount(levels[truth], minlength=N_THRESHOLDS + 1)
    # Pixels with level >= 256 - k, for k = 0..255: a reversed cumulative sum over levels.
    predicted = np.cumsum(per_level[::-1])[:N_THRESHOLDS].astype(np.float64)
    true_positive = np.cumsum(true_per_level[::-1])[:N_THRESHOLDS].astype(np.float64)
    return predicted, true_positive


def dice_iou_curves(stretched: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU of `map >= t` at each of the 256 thresholds (PraNet's `Fmeasure_calu`).

    Both are 0 at a threshold where no pixel is both predicted and true, empty mask or not.
    """
    flat, truth = stretched.ravel(), truth.ravel().astype(bool)
    passed = np.searchsorted(_ASCENDING, flat, side="right")  # thresholds t with t <= value
    predicted, tp = _counts_per_threshold(passed, truth)
    positives = float(truth.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        dice = np.where(tp > 0, 2 * tp / (positives + predicted), 0.0)
        iou = np.where(tp > 0, tp / (positives + predicted - tp), 0.0)
    return dice, iou


def _emeasure_curve(stretched: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """E-measure of `map > t` at each of the 256 thresholds, computed by `py_sod_metrics`.

    The library's histogram version scores, at its index i, the pixels whose 8-bit level is at
    least 255 - i. Giving each pixel as level the number of thresholds strictly below its value
    makes index i hold PraNet's set `map > t` for threshold i + 1; PraNet's threshold 0 (t = 1,
    nothing is above it) is the library's score of an empty prediction.
    """
    from py_sod_metrics import Emeasure

    from polypseg.metrics import emeasure_over_pixels

    below = np.searchsorted(_ASCENDING, stretched, side="left")  # thresholds t with t < value
    emeasure = Emeasure()
    # The attributes `Emeasure.step` sets before it calls the two methods used here.
    emeasure.gt_fg_numel = int(np.count_nonzero(truth))
    emeasure.gt_size = truth.size
    empty = emeasure.cal_em_with_threshold(stretched, truth, threshold=np.inf)
    # (level + 0.5) / 255: the library floors value * 255, so the level survives rounding.
    curve = emeasure.cal_em_with_cumsumhistogram((below + 0.5) / 255.0, truth)
    return emeasure_over_pixels(np.concatenate([[empty], curve[: N_THRESHOLDS - 1]]), truth.size)


def _structure_and_weighted_f(stretched: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """S-α (α = 0.5) and the weighted F-measure (β = 1) of the stretched map."""
    from py_sod_metrics import WeightedFmeasure

    from polypseg.metrics import structure_measure

    smeasure, wfmeasure = structure_measure(), WeightedFmeasure()
    smeasure.step(stretched, truth, normalize=False)
    wfmeasure.step(stretched, truth, normalize=False)  # an empty mask scores 0, not NaN
    return float(smeasure.get_results()["sm"]), float(wfmeasure.get_results()["wfm"])


@dataclass(frozen=True)
class ImageScores:
    """One image under the protocol: its three 256-point curves and three scalars."""

    dice: np.ndarray
    iou: np.ndarray
    emeasure: np.ndarray
    wfm: float
    s_alpha: float
    mae: float

    def row(self) -> dict[str, float]:
        """The per-image CSV row: curve means over thresholds, and the scalars."""
        return {
            "mdice": float(self.dice.mean()),
            "miou": float(self.iou.mean()),
            "wfm": self.wfm,
            "s_alpha": self.s_alpha,
            "mean_em": float(self.emeasure.mean()),
            "mae": self.mae,
        }


def image_scores(prob_map: np.ndarray, mask: np.ndarray) -> ImageScores:
    """Score one map against its mask under PraNet's protocol.

    Args:
        prob_map: H×W float map as MATLAB's `im2double` gives it (any range of [0, 1]; the
            protocol stretches it), already at the mask's size.
        mask: H×W bool (or 0/1) ground truth.
    """
    prob_map = np.asarray(prob_map, dtype=np.float64)
    truth = np.asarray(mask).astype(bool)
    if prob_map.ndim != 2 or prob_map.shape != truth.shape or prob_map.size == 0:
        raise ValueError(f"map {prob_map.shape} and mask {truth.shape} must be the same H×W")
    if not np.isfinite(prob_map).all():
        raise ValueError("the map holds NaN or infinite values")
    stretched = min_max_stretch(prob_map)
    dice, iou = dice_iou_curves(stretched, truth)
    s_alpha, wfm = _structure_and_weighted_f(stretched, truth)
    mae = float(np.mean(np.abs(stretched - truth)))
    return ImageScores(dice, iou, _emeasure_curve(stretched, truth), wfm, s_alpha, mae)


def summarize(images: Sequence[ImageScores]) -> dict[str, float]:
    """The data set's figures: curves averaged over images first, then mean or max."""
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
