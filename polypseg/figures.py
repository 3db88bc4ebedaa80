"""Figures logged with every run: image | ground truth | prediction panels, and training curves.

Built as plain `Figure`s (saved as PNG, matplotlib draws them with Agg), never through pyplot: no
display, no global backend, no shared figure list, so trials in threads can draw at once (pyplot
is not thread-safe) and figures are freed when dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PRED_COLOUR = (0.1, 0.9, 0.2)  # green: prediction fill and contour
TRUTH_COLOUR = (1.0, 0.15, 0.15)  # red: ground-truth contour
PANEL_INCHES = 2.4


def _contour(ax: Axes, mask: np.ndarray, colour: tuple[float, float, float]) -> None:
    # contour() warns when the level lies outside the data (an empty or full mask): skip those.
    if mask.min() < 0.5 < mask.max():
        ax.contour(mask, levels=[0.5], colors=[colour], linewidths=1.2)


def _draw_prediction(ax: Axes, image: np.ndarray, mask: np.ndarray, pred: np.ndarray) -> None:
    ax.imshow(image)
    probs = np.clip(pred.astype(np.float32), 0.0, 1.0)
    fill = np.zeros((*probs.shape, 4), dtype=np.float32)
    fill[..., :3] = PRED_COLOUR
    # Opacity follows the probability, so an unsure prediction shows as a faint haze.
    fill[..., 3] = 0.4 * probs
    ax.imshow(fill)
    _contour(ax, probs, PRED_COLOUR)
    _contour(ax, mask.astype(np.float32), TRUTH_COLOUR)


def mask_panel(
    images: list[np.ndarray],
    masks: list[np.ndarray],
    preds: list[np.ndarray],
    titles: list[str] | None = None,
    title: str | None = None,
) -> Figure:
    """One row per H×W×3 uint8 image: the image | its H×W 0/1 mask | the prediction (mask or
    probabilities), contoured green at 0.5 and red for the truth."""
    from matplotlib.figure import Figure

    n = len(images)
    if n == 0 or len(masks) != n or len(preds) != n:
        raise ValueError(
            f"need as many masks and predictions as images (≥ 1), got "
            f"{n} images, {len(masks)} masks, {len(preds)} predictions"
        )
    if titles is not None and len(titles) != n:
        raise ValueError(f"got {len(titles)} titles for {n} images")
    # Each row as tall as its own image's aspect needs (Kvasir images vary from portrait to
    # landscape), plus a line for the panel titles: a height sized for the tallest image left
    # bands of blank paper above and below a panel of wider images.
    aspects = [image.shape[0] / image.shape[1] for image in images]
    height = sum(PANEL_INCHES * aspect + 0.3 for aspect in aspects) + 0.35 + (0.35 if title else 0)
    figure = Figure(figsize=(3 * PANEL_INCHES, height), dpi=100, layout="compressed")
    if title:
        figure.suptitle(title, fontsize=10)
    axes = figure.subplots(n, 3, squeeze=False, height_ratios=aspects)
    for row, (image, mask, pred) in enumerate(zip(images, masks, preds, strict=True)):
        if not (image.shape[:2] == mask.shape == pred.shape):
            raise ValueError(
                f"row {row}: image {image.shape}, mask {mask.shape} and prediction "
                f"{pred.shape} differ in size"
            )
        image_ax, truth_ax, pred_ax = axes[row]
        image_ax.imshow(image)
        truth_ax.imshow(mask, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        _draw_prediction(pred_ax, image, mask, pred)
        name = titles[row] if titles is not None else "image"
        for ax, label in zip(axes[row], (name, "ground truth", "prediction"), strict=True):
            ax.set_title(label, fontsize=8)
            ax.set_axis_off()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [  # what the prediction column's colours mean, once, under the panel
        Patch(facecolor=(*PRED_COLOUR, 0.4), edgecolor=PRED_COLOUR, label="prediction (p ≥ 0.5)"),
        Line2D([0], [0], color=TRUTH_COLOUR, linewidth=1.2, label="ground truth"),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return figure


def _series(history: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    # An epoch without validation is a gap.
    rows = [row for row in history if key in row]
    return [row["epoch"] for row in rows], [row[key] for row in rows]


def curves(history: list[dict[str, float]], title: str | None = None) -> Figure:
    """Losses and validation Dice/IoU of `fit`'s `history`, the best `val_dice`'s epoch marked."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(9.0, 3.4 if title else 3.2), dpi=100, layout="tight")
    if title:
        figure.suptitle(title, fontsize=10)
    loss_ax, score_ax = figure.subplots(1, 2)
    for ax, keys in ((loss_ax, ("train_loss", "val_loss")), (score_ax, ("val_dice", "val_iou"))):
        for key in keys:
            epochs, values = _series(history, key)
            if epochs:
                ax.plot(epochs, values, marker="o", markersize=3, label=key)
    epochs, dice = _series(history, "val_dice")
    if epochs and not np.isnan(dice).all():
        best = epochs[int(np.nanargmax(dice))]
        for ax in (loss_ax, score_ax):
            ax.axvline(best, color="0.6", linestyle=":", linewidth=1, label="best val_dice")
    loss_ax.set_title("loss", fontsize=9)
    score_ax.set_title("validation", fontsize=9)
    score_ax.set_ylim(0.0, 1.0)
    for ax in (loss_ax, score_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a 3-epoch run has no epoch 1.5
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return figure
