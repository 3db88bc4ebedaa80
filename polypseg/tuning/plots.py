"""The study's plots (history, importances), drawn by Optuna and made readable: the metric named,
pruned trials in the history, a caveat on importances from few trials. Optuna's ggplot style is
kept to these plots. Its parallel-coordinate plot is not drawn: the MLflow UI's saved view of the
study (`tracking.views`) draws the same chart live, over every trial's run.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState

log = logging.getLogger(__name__)

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


def study_figures(study: optuna.Study, metric: str) -> dict[str, Any]:
    """The study's figures by name; a plot it cannot draw yet (too few trials) is left out."""
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    plots = {
        "optimization_history": (vis.plot_optimization_history, _readable_history),
        "param_importances": (vis.plot_param_importances, _readable_importances),
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
