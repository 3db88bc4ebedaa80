"""Specification of the logged figures: their layout, and that they render headless to PNG."""

import numpy as np
import pytest

from polypseg.figures import curves, mask_panel

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _sample(seed: int, size: tuple[int, int] = (24, 32)) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    mask = np.zeros(size, dtype=np.uint8)
    mask[6:18, 8:20] = 1
    probs = np.zeros(size, dtype=np.float32)
    probs[8:20, 10:22] = rng.uniform(0.3, 1.0, (12, 12))
    return image, mask, probs


def _assert_saves_png(figure, path):
    figure.savefig(path)
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_mask_panel_has_three_axes_per_image_and_saves_png(tmp_path):
    images, masks, preds = zip(*(_sample(seed) for seed in range(2)), strict=True)
    figure = mask_panel(list(images), list(masks), list(preds), titles=["a.jpg", "b.jpg"])
    assert len(figure.axes) == 6
    assert [ax.get_title() for ax in figure.axes[::3]] == ["a.jpg", "b.jpg"]
    assert not any(ax.axison for ax in figure.axes)
    _assert_saves_png(figure, tmp_path / "panel.png")


def test_mask_panel_accepts_binary_predictions_and_images_of_different_sizes(tmp_path):
    small = _sample(0)
    image, mask, probs = _sample(1, size=(40, 30))
    figure = mask_panel([small[0], image], [small[1], mask], [small[2] > 0.5, probs > 0.5])
    assert len(figure.axes) == 6
    _assert_saves_png(figure, tmp_path / "panel.png")


@pytest.mark.filterwarnings("error")
def test_mask_panel_draws_empty_masks_and_predictions_without_warnings(tmp_path):
    image, _, _ = _sample(0)
    empty = np.zeros(image.shape[:2], dtype=np.uint8)
    figure = mask_panel([image], [empty], [empty.astype(np.float32)])
    assert len(figure.axes) == 3
    _assert_saves_png(figure, tmp_path / "empty.png")


def test_mask_panel_rejects_mismatched_inputs():
    image, mask, probs = _sample(0)
    with pytest.raises(ValueError, match="as many"):
        mask_panel([image, image], [mask], [probs])
    with pytest.raises(ValueError, match="as many"):
        mask_panel([], [], [])
    with pytest.raises(ValueError, match="titles"):
        mask_panel([image], [mask], [probs], titles=["a", "b"])
    with pytest.raises(ValueError, match="differ in size"):
        mask_panel([image], [mask[:, :-1]], [probs])


def _history(epochs: int) -> list[dict[str, float]]:
    return [
        {
            "epoch": e,
            "train_loss": 1.0 / (e + 1),
            "val_loss": 1.2 / (e + 1),
            "val_dice": 0.5 + 0.04 * e,
            "val_iou": 0.4 + 0.04 * e,
        }
        for e in range(epochs)
    ]


def test_curves_has_a_loss_plot_and_a_score_plot_and_saves_png(tmp_path):
    figure = curves(_history(5))
    assert len(figure.axes) == 2
    loss_ax, score_ax = figure.axes
    assert {line.get_label() for line in loss_ax.get_lines()} >= {"train_loss", "val_loss"}
    assert {line.get_label() for line in score_ax.get_lines()} >= {"val_dice", "val_iou"}
    _assert_saves_png(figure, tmp_path / "curves.png")


@pytest.mark.filterwarnings("error")
def test_curves_of_one_epoch_or_none_still_render(tmp_path):
    for history in (_history(1), []):
        figure = curves(history)
        assert len(figure.axes) == 2
        _assert_saves_png(figure, tmp_path / f"curves{len(history)}.png")


def test_curves_leave_out_epochs_without_a_value():
    history = _history(4)
    del history[1]["val_dice"]
    score_ax = curves(history).axes[1]
    dice_line = next(line for line in score_ax.get_lines() if line.get_label() == "val_dice")
    assert list(dice_line.get_xdata()) == [0, 2, 3]
