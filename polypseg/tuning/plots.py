"""The study's plots, logged to each invocation's parent run: history, importances, parallel
coordinates, drawn by Optuna and made readable at a glance.

Optuna labels the objective "Objective Value"; here it is the study's metric (`val_dice`), and
each title names the study. Its history counts trials in halves on a short study (trial 0.5):
the ticks are whole trials. Its importances carry a one-entry legend (the metric) over the
lowest bar: the axis label names the metric instead. Its parallel-coordinate plot colours trials
from white (worst) to blue, so the worst trial's line vanishes, puts the extreme tick labels of
each parameter on the frame's edge and the others over the lines, and runs the last parameter's
labels into the colour bar: the colours start at a visible blue, the axes leave a margin above
and below the lines, labels sit on a pale patch, and the layout leaves room for the last axis.
Optuna switches matplotlib's global style to ggplot; the switch is kept to these plots.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import optuna

from polypseg.tracking.runs import log_figure

log = logging.getLogger(__name__)

# Axes of the parallel-coordinate plot, in figure fractions: the plot, then the colour bar.
PARALLEL_AXES = (0.08, 0.26, 0.68, 0.6)
COLOUR_BAR_AXES = (0.88, 0.26, 0.025, 0.6)
# Margin above and below the parallel plot's lines, as a fraction of each axis's range.
PARALLEL_MARGIN = 0.06


def _readable_history(ax: Any, study: optuna.Study, metric: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(f"study {study.study_name}: {metric} by trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.figure.tight_layout()


def _readable_importances(ax: Any, study: optuna.Study, metric: str) -> None:
    ax.set_title("", loc="left")  # Optuna's, replaced by one centred over the bars
    ax.set_title(f"study {study.study_name}: param importances")
    ax.set_xlabel(f"importance for {metric}")
    ax.set_ylabel("")
    legend = ax.get_legend()
    if legend is not None and len(legend.get_texts()) == 1:
        legend.remove()
    ax.figure.tight_layout()


def _pad_limits(axes: Any) -> None:
    """Widen an axis's range by `PARALLEL_MARGIN` each side, in its own scale (a log axis in
    decades), so every axis of the plot still maps its range onto the same height; ticks stay
    within the values searched, so none sits on the frame's edge."""
    low, high = axes.get_ylim()
    slack = abs(high - low) * 1e-9
    for minor in (False, True):
        ticks = list(axes.get_yticks(minor=minor))
        inside = [tick for tick in ticks if low - slack <= tick <= high + slack]
        if inside != ticks:  # categorical axes' fixed ticks all lie inside: left as they are
            axes.set_yticks(inside, minor=minor)
    log = axes.get_yscale() == "log"
    if log:
        low, high = np.log10(low), np.log10(high)
    pad = (high - low) * PARALLEL_MARGIN
    low, high = low - pad, high + pad
    axes.set_ylim(*((10**low, 10**high) if log else (low, high)))


def _readable_parallel(ax: Any, study: optuna.Study, metric: str) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    figure = ax.figure
    figure.set_size_inches(8, 4.5)
    ax.set_title(f"study {study.study_name}: searched params and {metric}", y=1.03)
    if not ax.collections:  # no trial to draw
        return
    for axes in figure.axes:
        if axes is not ax.collections[0].colorbar.ax:
            _pad_limits(axes)
            if axes is not ax:  # one grid, the metric's: the twins' own doubled its lines
                axes.grid(False)
            for label in axes.get_yticklabels():
                label.set_bbox({"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1})
    lines = ax.collections[0]
    blues = plt.get_cmap("Blues")(np.linspace(0.35, 1.0, 256))
    reverse = study.direction == optuna.study.StudyDirection.MINIMIZE
    lines.set_cmap(
        LinearSegmentedColormap.from_list("visible_blues", blues[::-1] if reverse else blues)
    )
    lines.set_linewidth(2)
    colour_bar = lines.colorbar
    for axes in figure.axes:  # the plot and its per-parameter twins share one box
        axes.set_position(COLOUR_BAR_AXES if axes is colour_bar.ax else PARALLEL_AXES)


def study_figures(study: optuna.Study, metric: str) -> dict[str, Any]:
    """`optimization_history`, `param_importances`, `parallel_coordinate` figures; a plot the
    study cannot draw yet (too few finished trials) is left out."""
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    plots = {
        "optimization_history": (vis.plot_optimization_history, _readable_history),
        "param_importances": (vis.plot_param_importances, _readable_importances),
        "parallel_coordinate": (vis.plot_parallel_coordinate, _readable_parallel),
    }
    figures = {}
    for name, (plot, readable) in plots.items():
        # Optuna's `plt.style.use("ggplot")` would restyle every later figure of the process.
        with plt.style.context("ggplot"):
            try:
                with warnings.catch_warnings():
                    # Optuna marks these plots experimental and matplotlib warns of empty
                    # legends on a short study: neither tells a user anything.
                    warnings.simplefilter("ignore")
                    ax = plot(study, target_name=metric)
            except (ValueError, RuntimeError) as err:  # too few finished trials for this plot
                log.info("study plot %s skipped: %s", name, err)
                continue
            readable(ax, study, metric)
        figures[name] = ax.figure
    return figures


def log_study_plots(study: optuna.Study, metric: str) -> None:
    """Log the study's figures as `figures/<name>.png` into the active run."""
    for name, figure in study_figures(study, metric).items():
        log_figure(figure, f"figures/{name}.png")
