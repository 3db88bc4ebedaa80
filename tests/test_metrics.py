"""Specification of the per-image metrics, checked against values computed by hand on 4×4 maps."""

import numpy as np
import pytest
import torch

from polypseg.metrics import (
    SCORE_NAMES,
    confusion,
    dice_over_thresholds,
    mean_scores,
    scores,
    structure_and_emeasure,
)


def _block(rows: slice, cols: slice, value: float = 1.0, fill: float = 0.0) -> torch.Tensor:
    x = torch.full((4, 4), fill)
    x[rows, cols] = value
    return x


# Target: the 2×2 block at the top left (4 pixels). Prediction: that block at 0.9 plus the two
# pixels below it at 0.6, the rest at 0.1. At 0.5: tp = 4, fp = 2, fn = 0, tn = 10.
TARGET = _block(slice(0, 2), slice(0, 2))
PROBS = _block(slice(0, 2), slice(0, 2), 0.9, fill=0.1)
PROBS[2, 0:2] = 0.6


def test_confusion_counts_each_image_separately():
    pred = torch.stack([PROBS >= 0.5, torch.zeros(4, 4, dtype=torch.bool)])
    target = torch.stack([TARGET, TARGET])
    tp, fp, fn, tn = confusion(pred, target)
    assert tp.tolist() == [4, 0]
    assert fp.tolist() == [2, 0]
    assert fn.tolist() == [0, 4]
    assert tn.tolist() == [10, 12]
    assert tp.dtype.is_floating_point and tp.shape == (2,)


def test_confusion_accepts_a_channel_dimension_on_either_side():
    pred = (PROBS >= 0.5).float()[None]
    with_channel = confusion(pred[:, None], TARGET[None, None])
    without = confusion(pred, TARGET[None])
    mixed = confusion(pred, TARGET[None, None])
    assert [t.tolist() for t in with_channel] == [t.tolist() for t in without]
    assert [t.tolist() for t in mixed] == [t.tolist() for t in without]


def test_confusion_rejects_maps_of_different_sizes():
    with pytest.raises(ValueError, match="differ"):
        confusion(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5))


def test_scores_match_hand_computed_values():
    s = scores(PROBS[None], TARGET[None])
    assert set(s) == set(SCORE_NAMES)
    assert s["dice"].item() == pytest.approx(2 * 4 / (2 * 4 + 2 + 0))  # 0.8
    assert s["iou"].item() == pytest.approx(4 / 6)
    assert s["precision"].item() == pytest.approx(4 / 6)
    assert s["recall"].item() == pytest.approx(1.0)
    assert s["specificity"].item() == pytest.approx(10 / 12)
    # |0.9 − 1|·4 + |0.6 − 0|·2 + |0.1 − 0|·10 = 2.6 over 16 pixels: MAE uses the probabilities.
    assert s["mae"].item() == pytest.approx(2.6 / 16)


def test_empty_prediction_on_empty_mask_is_perfect():
    s = scores(torch.full((1, 1, 4, 4), 0.2), torch.zeros(1, 1, 4, 4))
    for name in ("dice", "iou", "precision", "recall", "specificity"):
        assert s[name].item() == 1.0, name
    assert s["mae"].item() == pytest.approx(0.2)


def test_one_false_pixel_on_empty_mask_scores_zero_dice_but_full_recall():
    probs = _block(slice(0, 1), slice(0, 1))[None]
    s = scores(probs, torch.zeros(1, 4, 4))
    assert s["dice"].item() == 0.0
    assert s["iou"].item() == 0.0
    assert s["precision"].item() == 0.0
    assert s["recall"].item() == 1.0  # 0/0: nothing was there to miss
    assert s["specificity"].item() == pytest.approx(15 / 16)


def test_empty_prediction_on_a_polyp_scores_zero_dice_and_recall():
    s = scores(torch.zeros(1, 4, 4), TARGET[None])
    assert s["dice"].item() == 0.0
    assert s["recall"].item() == 0.0
    assert s["precision"].item() == 1.0  # 0/0: nothing predicted, nothing wrongly predicted
    assert s["specificity"].item() == 1.0


def test_probability_equal_to_threshold_counts_as_foreground():
    probs = _block(slice(0, 2), slice(0, 2), 0.5)[None]
    assert scores(probs, TARGET[None])["dice"].item() == 1.0
    assert scores(probs, TARGET[None], threshold=0.6)["dice"].item() == 0.0


def test_scores_are_per_image_and_mean_scores_averages_images():
    probs = torch.stack([PROBS, torch.zeros(4, 4)])
    target = torch.stack([TARGET, torch.zeros(4, 4)])
    per_image = scores(probs, target)
    assert per_image["dice"].tolist() == pytest.approx([0.8, 1.0])
    means = mean_scores(per_image)
    assert means["dice"] == pytest.approx(0.9)
    assert means["iou"] == pytest.approx((4 / 6 + 1.0) / 2)
    assert all(isinstance(v, float) for v in means.values())


def test_mean_scores_weighs_images_not_pixels():
    # A pooled Dice over both images would be 2·4/(2·4 + 2 + 1) = 8/11; mDice is (0.8 + 0)/2.
    probs = torch.stack([PROBS, torch.zeros(4, 4)])
    target = torch.stack([TARGET, _block(slice(3, 4), slice(3, 4))])
    assert mean_scores(scores(probs, target))["dice"] == pytest.approx(0.4)


def test_mean_scores_rejects_an_empty_set():
    with pytest.raises(ValueError, match="no images"):
        mean_scores({"dice": torch.empty(0)})


def test_dice_over_three_thresholds_matches_hand_computation():
    # Thresholds 0, 0.5, 1 on a 2×2 map with two true pixels:
    # t=0: all 4 predicted, tp 2 → 4/6; t=0.5: {0.6, 0.9}, tp 1 → 2/4; t=1: none → 0/2.
    probs = torch.tensor([[[0.2, 0.6], [0.9, 0.0]]])
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    expected = (4 / 6 + 2 / 4 + 0.0) / 3
    assert dice_over_thresholds(probs, target, n=3).item() == pytest.approx(expected)


def test_dice_over_256_thresholds_of_a_perfect_binary_map():
    # Every threshold in (0, 1] recovers the mask exactly; threshold 0 marks all 16 pixels,
    # Dice 2·4/(16 + 4) = 0.4. PraNet's mean Dice of a perfect mask is therefore below 1.
    expected = (255 * 1.0 + 0.4) / 256
    assert dice_over_thresholds(TARGET[None], TARGET[None]).item() == pytest.approx(expected)


def test_dice_over_thresholds_of_empty_prediction_on_empty_mask_is_perfect_above_zero():
    value = dice_over_thresholds(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)).item()
    # Only threshold 0 predicts the 16 pixels (Dice 0); the 255 others are 0/0 = 1.
    assert value == pytest.approx(255 / 256)


def test_dice_over_thresholds_equals_a_loop_over_thresholds():
    torch.manual_seed(0)
    probs = torch.rand(3, 1, 16, 16)
    probs[0, 0, :4] = torch.linspace(0, 1, 256)[:64].view(4, 16)  # values on the thresholds
    target = (torch.rand(3, 1, 16, 16) > 0.6).float()
    target[2] = 0
    expected = []
    for image, mask in zip(probs, target, strict=True):
        per_threshold = [
            scores(image[None], mask[None], float(t))["dice"] for t in torch.linspace(0, 1, 256)
        ]
        expected.append(torch.cat(per_threshold).mean().item())
    assert dice_over_thresholds(probs, target).tolist() == pytest.approx(expected)


def _uint8(x: torch.Tensor) -> np.ndarray:
    return (x.numpy() * 255).astype(np.uint8)


def test_structure_and_emeasure_of_empty_prediction_on_a_polyp():
    # Hand computation (S-α, α = 0.5): object part: foreground score 0, background score
    # 2·1/(1 + 1) = 1 on 3/4 of the image → 0.75. Region part: the centroid (0.5, 0.5) rounds
    # to (0, 0), so the quadrants split after row 1 and column 1: the 1×1 one (a single pixel,
    # zero variances) scores 1 with weight 1/16; the 1×3, 3×1 and 3×3 ones each hold a true
    # pixel but predict nothing and score 0 → 1/16. S = 0.5·0.75 + 0.5·0.0625 = 0.40625.
    # E-measure: every threshold's alignment is 0, enhanced value 1/4 on all 16 pixels: 1/4.
    result = structure_and_emeasure(np.zeros((4, 4), np.uint8), _uint8(TARGET))
    assert result["s_alpha"] == pytest.approx(0.40625)
    assert result["e_measure"] == pytest.approx(1 / 4)
    assert all(type(v) is float for v in result.values())


def test_perfect_prediction_has_s_alpha_of_one():
    result = structure_and_emeasure(_uint8(TARGET), _uint8(TARGET))
    assert result["s_alpha"] == pytest.approx(1.0)


def test_empty_mask_gives_finite_library_values():
    # Empty ground truth: S = 1 − mean(prediction); E = mean over the 256 thresholds of
    # (#pixels predicted background)/16 (the library divides by 16 − 1; we take the mean).
    # A 4-pixel prediction: S = 0.75, E = 255·12/(256·16); an empty one: S = 1, E = 255/256.
    four = _uint8(_block(slice(0, 2), slice(0, 2)))
    empty = np.zeros((4, 4), np.uint8)
    assert structure_and_emeasure(four, empty) == pytest.approx(
        {"s_alpha": 0.75, "e_measure": 255 * 12 / (256 * 16)}
    )
    assert structure_and_emeasure(empty, empty) == pytest.approx(
        {"s_alpha": 1.0, "e_measure": 255 / 256}
    )


@pytest.mark.filterwarnings("error")
def test_mask_on_the_last_column_gives_finite_s_alpha():
    # Its centroid lies on the last column, so one S-α quadrant is empty (NaN in the library).
    gt = _uint8(_block(slice(0, 4), slice(3, 4)))
    assert structure_and_emeasure(gt, gt)["s_alpha"] == pytest.approx(1.0)
    assert np.isfinite(structure_and_emeasure(np.zeros_like(gt), gt)["s_alpha"])


def test_structure_and_emeasure_rejects_float_maps():
    with pytest.raises(ValueError, match="uint8"):
        structure_and_emeasure(np.zeros((4, 4)), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="differ"):
        structure_and_emeasure(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))
