"""PraNet's protocol (`eval/main.m`) on small maps whose values are worked out by hand here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polypseg.evaluation.maps import read_map
from polypseg.metrics import (
    N_THRESHOLDS,
    PRANET_THRESHOLDS,
    PranetScores,
    min_max_stretch,
    pranet_image_scores,
    pranet_summary,
)

H, W = 8, 10
N = H * W


def _blob(top: int, left: int, height: int = 3, width: int = 4) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[top : top + height, left : left + width] = True
    return mask


def _matlab_emeasure(binary: np.ndarray, truth: np.ndarray) -> float:
    """`Enhancedmeasure.m`, pixel by pixel, as a reference independent of py_sod_metrics, but
    as the mean over H·W pixels (MATLAB divides by H·W − 1; see `emeasure_over_pixels`)."""
    fm, gt = binary.astype(np.float64), truth.astype(np.float64)
    if gt.sum() == 0:
        enhanced = 1.0 - fm
    elif (1 - gt).sum() == 0:
        enhanced = fm
    else:
        a, b = fm - fm.mean(), gt - gt.mean()
        align = 2 * a * b / (a * a + b * b + np.spacing(1))
        enhanced = (align + 1) ** 2 / 4
    return float(enhanced.sum() / gt.size)


def _reference_curves(prob_map: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """main.m's loop over thresholds, transcribed literally (Fmeasure_calu and Enhancedmeasure)."""
    stretched = min_max_stretch(prob_map)
    dice, iou, em = [], [], []
    for t in PRANET_THRESHOLDS:
        pred = stretched >= t
        tp = np.count_nonzero(pred & truth)
        dice.append(0.0 if tp == 0 else 2 * tp / (truth.sum() + pred.sum()))
        iou.append(0.0 if tp == 0 else tp / np.count_nonzero(pred | truth))
        em.append(_matlab_emeasure(stretched > t, truth))
    return {"dice": np.array(dice), "iou": np.array(iou), "em": np.array(em)}


def test_thresholds_are_matlabs_1_to_0_in_steps_of_1_over_255() -> None:
    assert PRANET_THRESHOLDS.shape == (N_THRESHOLDS,) == (256,)
    assert PRANET_THRESHOLDS[0] == 1.0 and PRANET_THRESHOLDS[-1] == 0.0
    assert np.all(np.diff(PRANET_THRESHOLDS) < 0)
    exact = (255 - np.arange(256)) / 255
    assert np.all(np.abs(PRANET_THRESHOLDS - exact) <= np.spacing(exact) + 1e-300)


def test_a_perfect_map() -> None:
    truth = _blob(2, 3)
    g = truth.sum()
    scores = pranet_image_scores(truth.astype(np.float64), truth)
    # Every threshold in (0, 1] keeps exactly the blob; threshold 0 keeps every pixel.
    expected_dice = np.r_[np.ones(255), 2 * g / (g + N)]
    np.testing.assert_allclose(scores.dice, expected_dice)
    np.testing.assert_allclose(scores.iou, np.r_[np.ones(255), g / N])
    # E-measure binarises `map > t`: nothing at t = 1 (score 1/4), the blob elsewhere (1).
    np.testing.assert_allclose(scores.emeasure, np.r_[1 / 4, np.ones(255)])
    assert scores.s_alpha == pytest.approx(1.0) and scores.wfm == pytest.approx(1.0)
    assert scores.mae == 0.0
    summary = pranet_summary([scores])
    assert summary["mdice"] == pytest.approx((255 + 2 * g / (g + N)) / 256)
    assert summary["max_dice"] == pytest.approx(1.0)
    assert summary["max_em"] == pytest.approx(1.0)


def test_an_empty_map_scores_zero_except_at_threshold_zero() -> None:
    truth = _blob(2, 3)
    g = truth.sum()
    scores = pranet_image_scores(np.zeros((H, W)), truth)
    np.testing.assert_allclose(scores.dice, np.r_[np.zeros(255), 2 * g / (g + N)])
    np.testing.assert_allclose(scores.iou, np.r_[np.zeros(255), g / N])
    # `0 > t` never holds: an empty binary map at every threshold.
    np.testing.assert_allclose(scores.emeasure, np.full(256, 1 / 4))
    assert scores.mae == pytest.approx(g / N)
    # S-α: object part 0.5 * (1 - g/N) from the background alone; every quadrant around the
    # centroid (row 3, column 4.5 -> 4) holds both classes, so each SSIM and the region part is 0.
    assert scores.s_alpha == pytest.approx(0.5 * (1 - g / N))
    assert pranet_summary([scores])["mdice"] == pytest.approx(2 * g / (g + N) / 256)


def test_an_empty_mask_follows_the_librarys_rules() -> None:
    empty = np.zeros((H, W), dtype=bool)
    scores = pranet_image_scores(np.zeros((H, W)), empty)
    # No pixel is both predicted and true, so Dice is 0 even for this correct empty map.
    assert not scores.dice.any() and not scores.iou.any()
    assert scores.s_alpha == 1.0  # 1 - mean(map)
    assert scores.wfm == 0.0  # py_sod_metrics' rule for an empty mask (MATLAB gives NaN)


def test_a_shifted_blob() -> None:
    truth, shifted = _blob(2, 3), _blob(3, 4)  # one row down, one column right
    g, p = truth.sum(), shifted.sum()
    overlap = np.count_nonzero(truth & shifted)
    assert (g, p, overlap) == (12, 12, 6)
    scores = pranet_image_scores(shifted.astype(np.float64), truth)
    dice, iou = 2 * overlap / (g + p), overlap / (g + p - overlap)
    np.testing.assert_allclose(scores.dice, np.r_[np.full(255, dice), 2 * g / (g + N)])
    np.testing.assert_allclose(scores.iou, np.r_[np.full(255, iou), g / N])
    shifted_em = _matlab_emeasure(shifted, truth)
    np.testing.assert_allclose(scores.emeasure, np.r_[1 / 4, np.full(255, shifted_em)])
    assert scores.mae == pytest.approx((g + p - 2 * overlap) / N)
    summary = pranet_summary([scores])
    assert summary["mdice"] == pytest.approx((255 * 0.5 + 24 / 92) / 256)
    assert summary["max_dice"] == pytest.approx(0.5)


def test_a_constant_map_is_not_stretched() -> None:
    truth = _blob(2, 3)
    g = truth.sum()
    scores = pranet_image_scores(np.full((H, W), 0.3), truth)
    # mapminmax leaves a constant map at 0.3: thresholds 76/255 .. 0 (77 of them) keep it all.
    kept = np.count_nonzero(PRANET_THRESHOLDS <= 0.3)
    assert kept == 77
    np.testing.assert_allclose(scores.dice, np.r_[np.zeros(256 - kept), np.full(kept, 24 / 92)])
    assert scores.mae == pytest.approx((g * 0.7 + (N - g) * 0.3) / N)
    # Everything or nothing predicted: the E-measure's alignment term is 0 either way.
    np.testing.assert_allclose(scores.emeasure, np.full(256, 1 / 4))


def test_a_map_is_min_max_stretched_first() -> None:
    truth = _blob(2, 3)
    dim = np.where(truth, 0.2, 0.1)  # a faint but perfectly ordered map
    assert pranet_image_scores(dim, truth).dice[:255] == pytest.approx(np.ones(255))
    np.testing.assert_allclose(min_max_stretch(dim), truth.astype(float))


def test_a_16_bit_map_keeps_its_precision(tmp_path: Path) -> None:
    truth = _blob(2, 3)
    ring = _blob(1, 2, 5, 6) & ~truth
    g, r = truth.sum(), ring.sum()
    levels = np.where(truth, 65535, np.where(ring, 32768, 0)).astype(np.uint16)
    Image.fromarray(levels).save(tmp_path / "map.png")  # a 16-bit grey PNG
    scores = pranet_image_scores(read_map(tmp_path / "map.png"), truth)
    # 32768/65535 = 0.500008 passes thresholds 127/255 .. 0 (128 of them), but not 128/255;
    # cut to 8 bits (128/255) it would pass one more.
    assert np.count_nonzero(PRANET_THRESHOLDS <= 32768 / 65535) == 128
    with_ring = 2 * g / (2 * g + r)
    expected = np.r_[np.ones(128), np.full(127, with_ring), 2 * g / (g + N)]
    np.testing.assert_allclose(scores.dice, expected)


def test_fast_curves_equal_main_m_loop_on_8_bit_maps() -> None:
    rng = np.random.default_rng(4)
    for trial in range(4):
        truth = rng.random((H, W)) < 0.3
        levels = rng.integers(0, 256, (H, W))
        levels.flat[:2] = (0, 255)  # full range: every level sits exactly on a threshold
        if trial == 3:
            levels = rng.integers(40, 90, (H, W))  # a narrow map, stretched
        prob_map = levels / 255
        fast, slow = pranet_image_scores(prob_map, truth), _reference_curves(prob_map, truth)
        np.testing.assert_allclose(fast.dice, slow["dice"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(fast.iou, slow["iou"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(fast.emeasure, slow["em"], rtol=0, atol=1e-12)


def test_max_dice_is_the_best_threshold_for_the_whole_set() -> None:
    def image(dice: np.ndarray) -> PranetScores:
        zeros = np.zeros(256)
        return PranetScores(dice, zeros, zeros, 0.0, 0.0, 0.0)

    first, second = np.zeros(256), np.zeros(256)
    first[10], second[200] = 1.0, 1.0  # each image is perfect at a different threshold
    summary = pranet_summary([image(first), image(second)])
    assert summary["max_dice"] == pytest.approx(0.5)  # not 1.0, the mean of per-image maxima
    assert summary["mdice"] == pytest.approx(1 / 256)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="same H×W"):
        pranet_image_scores(np.zeros((4, 4)), np.zeros((4, 5), dtype=bool))
    with pytest.raises(ValueError, match="NaN"):
        pranet_image_scores(np.full((4, 4), np.nan), np.zeros((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="no images"):
        pranet_summary([])
