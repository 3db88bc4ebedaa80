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


def test_mask_panel_has_a_legend_for_prediction_and_truth():
    image, mask, probs = _sample(0)
    figure = mask_panel([image], [mask], [probs], titles=["a.jpg  Dice 0.812"])
    labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    assert labels == ["prediction (p ≥ 0.5)", "ground truth"]
    assert figure.axes[0].get_title() == "a.jpg  Dice 0.812"


def test_curves_title_names_the_run():
    history = [{"epoch": 1, "train_loss": 0.9, "val_loss": 0.8, "val_dice": 0.3, "val_iou": 0.2}]
    assert curves(history, title="trial-3 of study s").get_suptitle() == "trial-3 of study s"


def _study_figures(n_trials: int) -> dict:
    """The study plots of a short toy study named `decoder-search` over the decoder's space."""
    import optuna

    from polypseg.tuning.plots import study_figures

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="decoder-search", direction="maximize", sampler=optuna.samplers.RandomSampler(0)
    )

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_categorical("decoder.width", [64, 128, 256, 512])
        weight = trial.suggest_float("train.dice_weight", 0.0, 1.0)
        return trial.suggest_float("train.lr", 1e-3, 1e-2, log=True) * 50 + weight / 10

    study.optimize(objective, n_trials=n_trials)
    return study_figures(study, "val_dice")


def _visible_ticks(ax) -> list[float]:
    low, high = ax.get_xlim()
    return [tick for tick in ax.get_xticks() if low <= tick <= high]


def test_curves_count_whole_epochs():
    history = _history(4)[1:]  # epochs 1..3: matplotlib alone would tick 1.5, 2.5
    for ax in curves(history).axes:
        ticks = _visible_ticks(ax)
        assert ticks and all(float(tick).is_integer() for tick in ticks), ticks


@pytest.mark.parametrize("n_trials", [3, 8])
def test_study_history_counts_whole_trials_under_the_study_name(n_trials):
    figures = _study_figures(n_trials)
    history = figures["optimization_history"].axes[0]
    ticks = _visible_ticks(history)
    assert ticks and all(float(tick).is_integer() for tick in ticks), ticks
    for name in ("optimization_history", "param_importances"):
        titles = [figures[name].axes[0].get_title(loc) for loc in ("left", "center")]
        assert any("decoder-search" in title for title in titles), (name, titles)


def test_param_importances_legend_leaves_every_bar_clear():
    figure = _study_figures(8)["param_importances"]
    ax = figure.axes[0]
    assert ax.get_xlabel() == "importance for val_dice"  # the metric, named once
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    bars = [patch.get_window_extent(renderer) for patch in ax.patches]
    assert len(bars) == 3
    for legend in (ax.get_legend(), *figure.legends):
        if legend is None:
            continue
        box = legend.get_window_extent(renderer)
        # A bar's whole row, label included, from the axis to the frame's right edge.
        for bar in bars:
            assert box.y1 <= bar.y0 or box.y0 >= bar.y1 or box.x0 >= frame.x1


def test_study_plots_leave_optunas_style_behind():
    import matplotlib

    before = matplotlib.rcParams["axes.facecolor"]
    _study_figures(3)
    assert matplotlib.rcParams["axes.facecolor"] == before


def test_study_plots_name_the_metric_and_leave_the_parallel_chart_to_the_ui():
    figures = _study_figures(8)
    history = figures["optimization_history"].axes[0]
    assert history.get_ylabel() == "val_dice"
    # The saved view's parallel chart (`tracking.views`) draws it: no PNG twin on the parent run.
    assert set(figures) == {"optimization_history", "param_importances"}


def _blank_rows(path) -> tuple[int, int]:
    """How many pure-white pixel rows the PNG has at its top and at its bottom."""
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB"))
    white = (pixels >= 250).all(axis=(1, 2))
    return int(np.argmin(white)), int(np.argmin(white[::-1]))


def test_mask_panel_of_portrait_and_landscape_images_leaves_no_blank_bands(tmp_path):
    # Kvasir's mix: one portrait image (the tallest) among landscape ones, as in a worst-cases
    # figure, which a height sized for the tallest row padded with ~190 and ~170 blank rows.
    sizes = [(476, 376), (361, 518), (474, 564), (503, 603)]
    images, masks, preds = zip(*(_sample(i, size) for i, size in enumerate(sizes)), strict=True)
    title = "kvasir: the 4 of 100 images with the lowest dice"
    figure = mask_panel(list(images), list(masks), list(preds), ["a", "b", "c", "d"], title)
    assert figure.get_suptitle() == title
    path = tmp_path / "worst.png"
    figure.savefig(path, format="png", dpi=100)  # as `report.write_set` writes it
    top, bottom = _blank_rows(path)
    assert top < 30 and bottom < 30, (top, bottom)


def test_study_plots_show_pruned_trials_and_a_caveat():
    import optuna

    from polypseg.tuning.plots import study_figures

    study = optuna.create_study(study_name="s", direction="maximize")
    for number in range(6):
        trial = study.ask()
        trial.suggest_categorical("decoder.width", [64, 128])
        value = trial.suggest_float("train.lr", 1e-4, 1e-2, log=True) * 50
        trial.report(value, 0)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED) if number % 2 else study.tell(
            trial, value
        )
    figures = study_figures(study, "val_dice")
    history = figures["optimization_history"].axes[0]
    pruned = [c for c in history.collections if c.get_label() == "pruned (last reported)"]
    assert len(pruned) == 1 and len(pruned[0].get_offsets()) == 3
    importances = figures["param_importances"].axes[0]
    assert "from 3 complete trials" in importances.get_title()
    importances.figure.canvas.draw()
    renderer = importances.figure.canvas.get_renderer()
    axis_x = importances.get_window_extent(renderer).x0
    for text in importances.texts:  # "<0.01" included: clear of the axis
        assert text.get_window_extent(renderer).x0 > axis_x + 2, text.get_text()
