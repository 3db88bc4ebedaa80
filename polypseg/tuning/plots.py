"""The study's plots, logged to each invocation's parent run: history, importances, parallel
coordinates, drawn by Optuna and made readable at a glance.

Optuna labels the objective "Objective Value"; here it is the study's metric (`val_dice`). Its
parallel-coordinate plot colours trials from white (worst) to blue, so the worst trial's line
vanishes, and the last parameter's tick labels run into the colour bar: the colours start at a
visible blue and the axes are laid out with room for those labels.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna

from polypseg.tracking.runs import log_figure

log = logging.getLogger(__name__)

# Axes of the parallel-coordinate plot, in figure fractions: the plot, then the colour bar.
PARALLEL_AXES = (0.08, 0.26, 0.68, 0.6)
COLOUR_BAR_AXES = (0.88, 0.26, 0.025, 0.6)


def _readable_parallel(ax: Any, study: optuna.Study, metric: str) -> None:
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LinearSegmentedColormap

    figure = ax.figure
    figure.set_size_inches(8, 4.5)
    ax.set_title(f"study {study.study_name}: searched params and {metric}", y=1.03)
    if not ax.collections:  # no trial to draw
        return
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
    import optuna.visualization.matplotlib as vis

    plots = {
        "optimization_history": vis.plot_optimization_history,
        "param_importances": vis.plot_param_importances,
        "parallel_coordinate": vis.plot_parallel_coordinate,
    }
    figures = {}
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                # Optuna marks these plots experimental and matplotlib warns of empty legends
                # on a short study: neither tells a user anything.
                warnings.simplefilter("ignore")
                ax = plot(study, target_name=metric)
        except (ValueError, RuntimeError) as err:  # too few finished trials for this plot
            log.info("study plot %s skipped: %s", name, err)
            continue
        figure = ax.flat[0].figure if hasattr(ax, "flat") else ax.figure
        if name == "parallel_coordinate":
            _readable_parallel(ax, study, metric)
        else:
            figure.tight_layout()  # Optuna's rotated axis labels are cut off otherwise
        figures[name] = figure
    return figures


def log_study_plots(study: optuna.Study, metric: str) -> None:
    """Log the study's figures as `figures/<name>.png` into the active run."""
    for name, figure in study_figures(study, metric).items():
        log_figure(figure, f"figures/{name}.png")
