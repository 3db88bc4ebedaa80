"""The Optuna study: many `train_and_log` calls on one feature cache, each a nested MLflow run.

`tune` prepares the data and cache once, opens (or resumes) the named study in its storage, starts
a parent MLflow run named after the study, and runs trials: each suggests values for config keys,
trains over the cached features, reports `val_dice` every epoch for the pruner, and is logged as
run `trial-<n>` under the parent. At the end the parent gets the best params and the study plots,
and the best trial is registered (`champion` moves when it beats the current one).

Any number of such workers may share one study (`polypseg.distributed`): they take trials under
a study lock, up to an optional study-wide budget (`max_trials`), and the trial of a worker that
died is failed, its runs ended KILLED and the trial retried by whichever worker notices.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import warnings
from dataclasses import dataclass
from typing import Any

import mlflow
import optuna
import torch

from polypseg.config import Config
from polypseg.distributed import (
    BudgetReached,
    SharedStudy,
    default_storage,
    end_orphaned_runs,
    fail_stale_trials,
    open_shared_study,
)
from polypseg.experiment import train_and_log
from polypseg.prepare import Prepared, prepare
from polypseg.registry import Registration, register_trial
from polypseg.studyspec import StudySpec
from polypseg.tracking import log_figure, mask_password, setup, tracked_run

log = logging.getLogger(__name__)

TERMINAL = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@dataclass
class TuneResult:
    study: optuna.Study
    best: optuna.trial.FrozenTrial | None
    registration: Registration | None
    parent_run_id: str
    encoder_calls: int  # images the encoder processed in this invocation (0 on a cache hit)
    counts: dict[str, int]
    storage: str  # the storage URL, password masked
    experiment_id: str

    def summary(self) -> list[str]:
        """What `polypseg tune` prints: the study, the best trial, the registered version."""
        c = self.counts
        lines = [
            f"study {self.study.study_name} ({self.storage}): {sum(c.values())} trials, "
            f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed; "
            f"encoder ran on {self.encoder_calls} images now"
        ]
        if self.best is not None:
            params = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in self.best.params.items()
            )
            lines.append(f"best trial #{self.best.number}: val_dice={self.best.value:.4f} {params}")
        if self.registration is not None:
            reg = self.registration
            champion = f" (champion: models:/{reg.name}@champion)" if reg.champion else ""
            lines.append(f"registered model {reg.name} version {reg.version}{champion}")
        return lines


def _trial_device(prepared: Prepared, trial: optuna.Trial) -> torch.device:
    """With several GPUs and --n-jobs K, trial n runs on GPU n mod K."""
    if prepared.device.type == "cuda" and torch.cuda.device_count() > 1:
        return torch.device("cuda", trial.number % torch.cuda.device_count())
    return prepared.device


def make_objective(prepared: Prepared, config: Config, spec: StudySpec, parent_run_id: str):
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


def _counts(study: optuna.Study) -> dict[str, int]:
    counts = {state.name: 0 for state in optuna.trial.TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    return counts


def _log_study_plots(study: optuna.Study) -> None:
    import optuna.visualization.matplotlib as vis

    plots = {
        "optimization_history": vis.plot_optimization_history,
        "param_importances": vis.plot_param_importances,
        "parallel_coordinate": vis.plot_parallel_coordinate,
    }
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                ax = plot(study)
        except (ValueError, RuntimeError) as err:  # too few finished trials for this plot
            log.info("study plot %s skipped: %s", name, err)
            continue
        figure = ax.flat[0].figure if hasattr(ax, "flat") else ax.figure
        figure.tight_layout()  # Optuna's rotated axis labels are cut off otherwise
        log_figure(figure, f"figures/{name}.png")


class _Progress:
    """A rich progress bar over the trials of this invocation: n/N, best so far, pruned, failed."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        from rich.progress import MofNCompleteColumn, Progress, TimeElapsedColumn

        from polypseg.progress import progress_bar

        columns = (*Progress.get_default_columns()[:-1], MofNCompleteColumn(), TimeElapsedColumn())
        self.bar = progress_bar(*columns, enabled=enabled)
        self.task = self.bar.add_task("trials", total=total)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        counts = _counts(study)
        try:
            best = f"{study.best_value:.4f}"
        except ValueError:
            best = "-"
        self.bar.update(
            self.task,
            advance=1,
            description=f"trials  best {best}  pruned {counts['PRUNED']}  failed {counts['FAIL']}",
        )


def open_study(
    spec: StudySpec, name: str, storage_url: str, max_trials: int | None = None
) -> SharedStudy:
    """Create the study or load it (resume), with a sampler seeded for this worker."""
    return open_shared_study(
        name, storage_url, spec.direction, spec.make_sampler, spec.make_pruner(), max_trials
    )


def tune(
    config: Config,
    spec: StudySpec,
    n_trials: int,
    study_name: str | None = None,
    storage: str | None = None,
    n_jobs: int = 1,
    timeout: float | None = None,
    tracking_uri: str | None = None,
    progress: bool = True,
    max_trials: int | None = None,
) -> TuneResult:
    """Run (or resume) a study for `n_trials` more trials and register its best model.

    `n_trials` counts this worker's trials (Optuna's meaning); `max_trials` is a budget for the
    whole study, shared by every worker: this one stops taking trials once the study holds
    `max_trials` finished, running or queued ones, so several workers (or a re-run after a crash)
    end with exactly `max_trials` COMPLETE + PRUNED trials.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    prepared = prepare(config, progress=progress)
    encoder_calls = prepared.encoder.images_encoded
    experiment_id = setup(config.tracking.experiment, tracking_uri)
    name = study_name or spec.name
    storage_url = storage or default_storage()
    study = open_study(spec, name, storage_url, max_trials)
    fail_stale_trials(study)  # a dead worker's trial: FAIL, its runs KILLED, a retry queued
    end_orphaned_runs(study, experiment_id)
    parent_tags = {
        "optuna.study_name": name,
        "polypseg.storage": mask_password(storage_url),
        "polypseg.worker": f"{socket.gethostname()}:{os.getpid()}",  # which process, where
    }
    with tracked_run(run_name=name, tags=parent_tags) as parent:
        study.set_user_attr("mlflow_parent_run_id", parent.info.run_id)
        mlflow.log_params(
            {
                "study.trials": n_trials,
                "study.max_trials": max_trials,
                "study.n_jobs": n_jobs,
                "study.epochs": spec.epochs,
                "study.sampler": spec.sampler.get("name", "tpe"),
                "study.pruner": spec.pruner.get("name", "median"),
                "study.metric": spec.metric,
            }
        )
        objective = make_objective(prepared, config, spec, parent.info.run_id)
        _optimize(study, objective, n_trials, timeout, n_jobs, progress)
        end_orphaned_runs(study, experiment_id)
        best, registration = _finish(study, prepared, config, name)
    return TuneResult(
        study,
        best,
        registration,
        parent.info.run_id,
        encoder_calls,
        _counts(study),
        mask_password(storage_url),
        experiment_id,
    )


def _optimize(
    study: SharedStudy,
    objective: Any,
    n_trials: int,
    timeout: float | None,
    n_jobs: int,
    progress: bool,
) -> None:
    """`study.optimize`, until this worker's `n_trials` are done or the study's budget is."""
    left = study.budget_left()
    tracker = _Progress(n_trials if left is None else max(0, min(n_trials, left)), progress)
    with tracker.bar:
        try:
            study.optimize(
                objective,
                n_trials=n_trials,
                timeout=timeout,
                n_jobs=n_jobs,
                catch=(Exception,),
                callbacks=[tracker],
            )
        except BudgetReached as reached:
            log.info("stopping: %s", reached)


def _finish(
    study: SharedStudy, prepared: Prepared, config: Config, name: str
) -> tuple[optuna.trial.FrozenTrial | None, Registration | None]:
    """Log the best trial and study plots to the parent run; register the best model.

    Registration runs under the study lock: workers that end together register the best trial
    once, and the champion alias moves in order.
    """
    counts = _counts(study)
    mlflow.log_metrics({f"trials_{state.lower()}": n for state, n in counts.items() if n})
    _log_study_plots(study)
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        return None, None
    best = study.best_trial
    mlflow.log_params({f"best.{key}": value for key, value in best.params.items()})
    mlflow.log_metrics({"best_value": best.value, "best_trial": best.number})
    with study.lock():
        registration = register_trial(
            config.tracking.registered_model,
            name,
            best.number,
            best.user_attrs["mlflow_run_id"],
            prepared.encoder,
            config.data.image_size,
            best.value,
            best.user_attrs.get("test_dice"),
        )
    return best, registration
