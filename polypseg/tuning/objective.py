"""The objective of a study: one trial is one logged training run on the shared feature cache.

It reads top to bottom, as optuna-examples' objectives do: suggest config values from the study
spec, start the trial's nested MLflow run, train on the cached features (the encoder never runs
here), report the study's metric every epoch and stop when the pruner says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import mlflow
import optuna
import torch

from polypseg.config import Config
from polypseg.features.prepare import Prepared
from polypseg.tracking.runs import tracked_run
from polypseg.training.run import train_and_log
from polypseg.tuning.spec import StudySpec


def _trial_device(prepared: Prepared, trial: optuna.Trial) -> torch.device:
    """With several GPUs and --n-jobs K, trial n runs on GPU n mod K."""
    if prepared.device.type == "cuda" and torch.cuda.device_count() > 1:
        return torch.device("cuda", trial.number % torch.cuda.device_count())
    return prepared.device


def make_objective(
    prepared: Prepared, config: Config, spec: StudySpec, parent_run_id: str
) -> Callable[[optuna.Trial], float]:
    """The objective: suggest, train on the cache, report every epoch, prune when told."""

    def objective(trial: optuna.Trial) -> float:
        values = spec.suggest(trial)
        trial_config = config.with_overrides({**values, "train.epochs": spec.epochs})
        trial_prepared = dataclasses.replace(prepared, device=_trial_device(prepared, trial))
        tags = {
            "optuna.study_name": trial.study.study_name,
            "optuna.trial_number": str(trial.number),
            "optuna.trial_state": "RUNNING",
        }
        with tracked_run(
            finished_on=(optuna.TrialPruned,),
            run_name=f"trial-{trial.number}",
            parent_run_id=parent_run_id,
            nested=True,  # needed when the parent is active in this thread; other threads
            # (n_jobs > 1) have no active run and rely on parent_run_id alone
            tags=tags,
        ) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)

            def report(metrics: dict[str, float]) -> None:
                trial.report(metrics[spec.metric], int(metrics["epoch"]))
                if trial.should_prune():
                    mlflow.set_tag("optuna.trial_state", "PRUNED")
                    raise optuna.TrialPruned(f"pruned at epoch {int(metrics['epoch'])}")

            try:
                outcome = train_and_log(trial_prepared, trial_config, on_epoch=report)
            except Exception as err:
                if not isinstance(err, optuna.TrialPruned):
                    mlflow.set_tags(
                        {"optuna.trial_state": "FAIL", "optuna.fail_reason": str(err)[:500]}
                    )
                    trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}"[:500])
                raise
            mlflow.set_tag("optuna.trial_state", "COMPLETE")
        trial.set_user_attr("test_dice", outcome.metrics["test_dice"])
        history = [h[spec.metric] for h in outcome.fit.history]
        return max(history) if spec.direction == "maximize" else min(history)

    return objective
