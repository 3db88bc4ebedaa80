"""The objective of a study: one trial is one nested training run on the shared feature cache,
reporting every epoch to the pruner. A trial's value is its metric at the epoch whose weights it
keeps, so the value a registered version is tagged with describes that model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import mlflow
import optuna
import torch

from polypseg.config import Config
from polypseg.features.prepare import Prepared
from polypseg.progress import epoch_lines
from polypseg.tracking.ending import trial_run_end, trial_run_tags
from polypseg.tracking.runs import tracked_run
from polypseg.training.run import train_and_log
from polypseg.tuning.spec import StudySpec


def _trial_device(prepared: Prepared, trial: optuna.Trial) -> torch.device:
    """With several GPUs and --n-jobs K, trial n runs on GPU n mod K."""
    if prepared.device.type == "cuda" and torch.cuda.device_count() > 1:
        return torch.device("cuda", trial.number % torch.cuda.device_count())
    return prepared.device


def _kept_value(history: list[dict[str, float]], best_epoch: int, metric: str) -> float:
    """`metric` at the epoch whose weights training kept (its last, if none was better)."""
    return next((h for h in history if int(h["epoch"]) == best_epoch), history[-1])[metric]


def make_objective(
    prepared: Prepared, config: Config, spec: StudySpec, parent_run_id: str, progress: bool
) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        trial_config = spec.trial_config(config, trial.params)  # drawn as it was taken
        trial_prepared = dataclasses.replace(prepared, device=_trial_device(prepared, trial))

        def report(metrics: dict[str, float]) -> None:
            trial.report(metrics[spec.metric], int(metrics["epoch"]))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {int(metrics['epoch'])}")

        with tracked_run(
            ending=trial_run_end,
            run_name=f"trial-{trial.number}",
            parent_run_id=parent_run_id,
            nested=True,  # needed when the parent is active in this thread; other threads
            # (n_jobs > 1) have no active run and rely on parent_run_id alone
            tags=trial_run_tags(trial.study.study_name, trial.number),
        ) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            on_epoch = epoch_lines(report, f"trial {trial.number}", enabled=progress)
            outcome = train_and_log(trial_prepared, trial_config, on_epoch=on_epoch)
            value = _kept_value(outcome.fit.history, outcome.fit.best_epoch, spec.metric)
            if spec.metric != "val_dice":  # the UI's view sorts the trials by best_<metric>
                mlflow.log_metric(f"best_{spec.metric}", value)
        trial.set_user_attr("test_dice", outcome.metrics["test_dice"])
        return value

    return objective
