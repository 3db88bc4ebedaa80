"""A study from start to end: `tune` is what `polypseg tune` runs, one worker of a study.

It prepares the data and feature cache once, opens (or resumes) the named study in its storage,
saves the MLflow UI view that compares the study's trials (`tracking.views`), starts a parent
MLflow run named after the study and this invocation (`decoder_search #2`) and runs trials
(`tuning.objective`) in the worker loop (`tuning.workers`). At the end the parent gets the best
params, the trial counts (`invocation.trials_*`: this invocation's; `study.trials_*`: the whole
study's) and the study plots, and the best trial is registered (`champion` moves when it beats
the current one).

Any number of such workers may share one study: they take trials under a study lock, up to an
optional study-wide budget (`max_trials`), and the trial of a worker that died is failed, its
runs ended KILLED and the trial retried by whichever worker notices.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import mlflow
import optuna

from polypseg.config import Config
from polypseg.errors import ConfigError
from polypseg.features.prepare import Prepared, prepare
from polypseg.tracking.registry import Registration, register_trial
from polypseg.tracking.runs import tracked_run
from polypseg.tracking.store import mask_password, setup
from polypseg.tracking.views import save_study_view
from polypseg.tuning.objective import make_objective
from polypseg.tuning.plots import log_study_plots
from polypseg.tuning.report import TuneResult
from polypseg.tuning.spec import StudySpec
from polypseg.tuning.storage import default_storage, fail_stale_trials, refuse_in_memory
from polypseg.tuning.workers import (
    SharedStudy,
    WorkerOptions,
    end_orphaned_runs,
    open_shared_study,
    run_worker,
)

log = logging.getLogger(__name__)


def _counts(study: optuna.Study) -> dict[str, int]:
    counts = {state.name: 0 for state in optuna.trial.TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    return counts


class _Progress:
    """A rich progress bar over the trials of this invocation: n/N, best so far, pruned, failed."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        from rich.progress import MofNCompleteColumn, Progress, TimeElapsedColumn

        from polypseg.progress import progress_bar

        columns = (*Progress.get_default_columns()[:-1], MofNCompleteColumn(), TimeElapsedColumn())
        self.bar = progress_bar(*columns, enabled=enabled)
        self.task = self.bar.add_task("trials", total=total)
        self.ran: Counter[str] = Counter()  # this invocation's trials, by state

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.ran[trial.state.name] += 1
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


def _check_arguments(name: str, timeout: float | None, storage_url: str) -> None:
    """What the command line can get wrong, refused before a store, study or cache is touched."""
    if not name.strip():
        raise ConfigError(
            "--study-name is empty; give the study a name, or leave the option out to use the "
            "spec's"
        )
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"--timeout {timeout:g} must be a positive number of seconds")
    refuse_in_memory(storage_url)


def tune(
    config: Config,
    spec: StudySpec,
    n_trials: int,
    *,
    max_trials: int | None = None,
    n_jobs: int = 1,
    timeout: float | None = None,
    study_name: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    progress: bool = True,
) -> TuneResult:
    """Run (or resume) a study for `n_trials` more trials and register its best model.

    `n_trials` counts this worker's trials (Optuna's meaning); `max_trials` is a budget for the
    whole study, shared by every worker: this one stops taking trials once the study holds
    `max_trials` finished, running or queued ones, so several workers (or a re-run after a crash)
    end with exactly `max_trials` COMPLETE + PRUNED trials.
    """
    workers = WorkerOptions(n_trials, max_trials, n_jobs, timeout)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = spec.name if study_name is None else study_name
    storage_url = storage or default_storage()
    _check_arguments(name, timeout, storage_url)
    shared = open_shared_study(
        name, storage_url, spec.direction, spec.make_sampler, spec.make_pruner(), max_trials
    )
    spec.check_resumable(shared.study)  # before any work: a changed space fails every trial
    experiment_id = setup(config.tracking.experiment, tracking_uri)
    prepared = prepare(config, progress=progress)
    images_encoded = prepared.encoder.images_encoded
    # A dead worker's trial: FAIL, its runs KILLED, a retry queued (at once on this machine).
    fail_stale_trials(shared.study)
    with shared.lock():
        shared.fail_dead_workers_trials()
        # Under the lock: workers starting together would each insert the view's tag, and a
        # tracking server refuses the second insert (a duplicate key on experiment_tag_pk).
        view = save_study_view(experiment_id, name, [p.key for p in spec.space], spec.metric)
    end_orphaned_runs(shared.study, experiment_id)
    parent_tags = {"optuna.study_name": name, "polypseg.storage": mask_password(storage_url)}
    # One parent run per invocation, numbered: a resumed study's runs are told apart.
    with tracked_run(run_name=f"{name} #{shared.worker + 1}", tags=parent_tags) as parent:
        shared.study.set_user_attr("mlflow_parent_run_id", parent.info.run_id)
        mlflow.log_params(
            {
                "invocation.trials": n_trials,  # asked of this invocation (--trials)
                "invocation.n_jobs": n_jobs,
                "invocation.worker": shared.worker,
                "study.max_trials": max_trials,  # the whole study's budget
                "study.epochs": spec.epochs,
                "study.sampler": spec.sampler.get("name", "tpe"),
                "study.pruner": spec.pruner.get("name", "median"),
                "study.metric": spec.metric,
            }
        )
        objective = make_objective(prepared, config, spec, parent.info.run_id)
        try:
            ran = _run_trials(shared, objective, workers, progress)
        except KeyboardInterrupt:
            _tag_interrupted_trials(shared.study, experiment_id)
            raise
        end_orphaned_runs(shared.study, experiment_id)
        mlflow.log_metrics({f"invocation.trials_{k.lower()}": n for k, n in ran.items()})
        best, registration = _finish(shared, prepared, config, spec.metric)
    return TuneResult(
        shared.study,
        best,
        registration,
        parent.info.run_id,
        images_encoded,
        _counts(shared.study),
        mask_password(storage_url),
        experiment_id,
        metric=spec.metric,
        view_key=view,
        ran=dict(ran),
    )


def _tag_interrupted_trials(study: optuna.Study, experiment_id: str) -> None:
    """After Ctrl-C or SIGTERM, give the trial runs ended KILLED the state Optuna recorded.

    The objective tags a run when its trial ends on its own; an interrupted one leaves the
    objective before Optuna is told (the worker loop tells it FAIL), so its tag still says
    RUNNING. Runs still RUNNING belong to other threads or workers and are left alone.
    """
    states = {
        t.number: t.state.name for t in study.get_trials(deepcopy=False) if t.state.is_finished()
    }
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`optuna.study_name` = '{study.study_name}' "
        "AND tags.`optuna.trial_state` = 'RUNNING'",
        output_format="list",
    )
    client = mlflow.MlflowClient()
    for run in runs:
        number = int(run.data.tags.get("optuna.trial_number", -1))
        if run.info.status != "RUNNING" and number in states:
            client.set_tag(run.info.run_id, "optuna.trial_state", states[number])


def _run_trials(
    shared: SharedStudy, objective: Any, workers: WorkerOptions, progress: bool
) -> Counter[str]:
    """This worker's trials, with a progress bar sized to what it may still take; returns how
    many it ran, by state."""
    left = shared.budget_left()
    total = workers.n_trials if left is None else max(0, min(workers.n_trials, left))
    tracker = _Progress(total, progress)
    with tracker.bar:
        run_worker(shared, objective, workers, callbacks=[tracker])
    return tracker.ran


def _finish(
    shared: SharedStudy, prepared: Prepared, config: Config, metric: str
) -> tuple[optuna.trial.FrozenTrial | None, Registration | None]:
    """Log the best trial and study plots to the parent run; register the best model.

    Registration runs under the study lock: workers that end together register the best trial
    once, and the champion alias moves in order.
    """
    study = shared.study
    counts = _counts(study)
    # The whole study's trials, every worker's (this invocation's: `invocation.trials_*`).
    mlflow.log_metrics({f"study.trials_{state.lower()}": n for state, n in counts.items() if n})
    log_study_plots(study, metric)
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        return None, None
    best = study.best_trial
    mlflow.log_params({f"best.{key}": value for key, value in best.params.items()})
    mlflow.log_metrics({"best_value": best.value, "best_trial": best.number})
    with shared.lock():
        registration = register_trial(
            config.tracking.registered_model,
            study=study.study_name,
            trial=best.number,
            run_id=best.user_attrs["mlflow_run_id"],
            encoder=prepared.encoder,
            image_size=config.data.image_size,
            val_dice=best.value,
            test_dice=best.user_attrs.get("test_dice"),
        )
    return best, registration
