"""The study's plots (history, importances, parallel coordinates), drawn by Optuna and made
readable: the metric named, pruned trials in the history, a caveat on importances from few
trials, and a parallel plot with plain ticks, visible lines and room for its colour bar. Optuna's
ggplot style is kept to these plots.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

log = logging.getLogger(__name__)

# Axes of the parallel-coordinate plot, in figure fractions: the plot, then the colour bar.
PARALLEL_AXES = (0.08, 0.26, 0.68, 0.6)
COLOUR_BAR_AXES = (0.88, 0.26, 0.025, 0.6)
# Margin above and below the parallel plot's lines, as a fraction of each axis's range.
PARALLEL_MARGIN = 0.06
FEW_TRIALS = 5  # importances from fewer complete trials carry a caveat in their title


def _readable_history(ax: Any, study: optuna.Study, metric: str) -> None:
    """Optuna draws complete trials only: pruned ones are added at their last reported value."""
    from matplotlib.ticker import MaxNLocator

    pruned = [t for t in study.get_trials(states=(TrialState.PRUNED,)) if t.intermediate_values]
    if pruned:
        values = [t.intermediate_values[t.last_step] for t in pruned]
        ax.scatter([t.number for t in pruned], values, marker="x", color="grey", zorder=3)
        ax.collections[-1].set_label("pruned (last reported)")
        ax.legend(bbox_to_anchor=(1.05, 1.0), loc="upper left")
    ax.set_title(f"study {study.study_name}: {metric} by trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.figure.tight_layout()


def _readable_importances(ax: Any, study: optuna.Study, metric: str) -> None:
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    caveat = f"\n(from {complete} complete trials: a rough guide)" if complete < FEW_TRIALS else ""
    ax.set_title("", loc="left")  # Optuna's, replaced by one centred over the bars
    ax.set_title(f"study {study.study_name}: param importances{caveat}")
    ax.set_xlabel(f"importance for {metric}")
    ax.set_ylabel("")
    right = ax.get_xlim()[1]
    for text in ax.texts:  # the values, clear of their bars' ends (and of the axis: "<0.01")
        text.set_x(text.get_position()[0] + right * 0.015)
    ax.set_xlim(right=right * 1.08)
    legend = ax.get_legend()
    if legend is not None and len(legend.get_texts()) == 1:
        legend.remove()
    ax.figure.tight_layout()


def _plain_axis(axes: Any) -> None:
    """Five ticks across the values searched, written plainly (Optuna's log axes wrote
    "×10⁻³" on each), then a margin of `PARALLEL_MARGIN` each side in the axis's own scale (a
    log axis in decades). A categorical axis keeps its choices' ticks."""
    from matplotlib.ticker import LogFormatter, ScalarFormatter

    low, high = axes.get_ylim()
    log = axes.get_yscale() == "log"
    if isinstance(axes.yaxis.get_major_formatter(), (LogFormatter, ScalarFormatter)):
        ticks = np.unique(np.geomspace(low, high, 5) if log else np.linspace(low, high, 5))
        axes.set_yticks(ticks, [f"{tick:.3g}" for tick in ticks])
        axes.set_yticks([], minor=True)
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
            _plain_axis(axes)
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
    """The study's figures by name; a plot it cannot draw yet (too few trials) is left out."""
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
                with warnings.catch_warnings():  # experimental; empty legends
                    warnings.simplefilter("ignore")
                    ax = plot(study, target_name=metric)
            except (ValueError, RuntimeError) as err:  # too few finished trials for this plot
                log.info("study plot %s skipped: %s", name, err)
                continue
            readable(ax, study, metric)
        figures[name] = ax.figure
    return figures
