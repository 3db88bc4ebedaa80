"""A study from start to end: `tune` is what `polypseg tune` runs, one worker of a study.

`tune` reads as its steps, in order: check the arguments; prepare the data, encoder and feature
cache once (first: a data set or encoder that is not there leaves no study, experiment or worker
number behind); open or resume the study, refusing one made for another objective, data set or
encoder (`tuning.identity`); open the experiment and end the runs dead workers left (their trials
fail and are queued again as this worker takes its first, `tuning.workers`); save the UI's view of
the trials (`tracking.views`); then, under a parent run named after the study and this invocation
(`decoder_search #2`), run trials (`tuning.workers`) and finish (`tuning.finish`).
Any number of such workers may share one study (docs/scaling-out.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
import optuna

from polypseg.config import Config
from polypseg.data.protocol import pranet_roots
from polypseg.errors import PolypsegError
from polypseg.features.prepare import prepare
from polypseg.progress import trial_progress
from polypseg.tracking.ending import kill_dead_runs
from polypseg.tracking.names import check_names
from polypseg.tracking.runs import tracked_run
from polypseg.tracking.store import (
    check_tracking_uri,
    default_tracking_uri,
    mask_password,
    open_experiment,
)
from polypseg.tracking.views import save_study_view
from polypseg.tuning.finish import TuneResult, champion_table, finish
from polypseg.tuning.identity import StudyBase, check_base
from polypseg.tuning.objective import make_objective
from polypseg.tuning.spec import StudySpec, check_space
from polypseg.tuning.storage import (
    check_storage_url,
    default_storage,
    make_storage,
    storage_file,
)
from polypseg.tuning.workers import (
    Objective,
    SharedStudy,
    open_shared_study,
    run_worker,
)

log = logging.getLogger(__name__)


def _check_arguments(
    name: str, timeout: float | None, storage_url: str, tracking_uri: str, config: Config
) -> None:
    """The door: each argument checked once, in the order `tune` reads them, before a store,
    study or cache is touched; nothing is created here."""
    if not name.strip():
        raise PolypsegError(
            "--study-name is empty; give the study a name, or leave the option out to use the "
            "spec's"
        )
    if timeout is not None and not timeout > 0:
        raise PolypsegError(f"--timeout {timeout:g} must be a positive number of seconds")
    check_storage_url(storage_url)
    check_tracking_uri(tracking_uri)
    check_names(config.tracking.experiment, config.tracking.registered_model, name)
    if config.data.protocol == "pranet":  # a missing test set: one line now, not after the study
        pranet_roots(config.data)


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
    """Run (or resume) a study for `n_trials` more trials of this worker and register its best
    model; `max_trials` is the whole study's budget, shared by every worker."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = spec.name if study_name is None else study_name
    storage_url = default_storage() if storage is None else storage
    uri = default_tracking_uri() if tracking_uri is None else tracking_uri
    _check_arguments(name, timeout, storage_url, uri, config)
    opened = _check_stored_space(name, storage_url, spec)
    prepared = prepare(_cache_config(config, spec), progress=progress)  # before any store
    images_encoded = prepared.encoder.images_encoded
    base = StudyBase.of(spec.metric, spec.direction, config, prepared)
    shared = _open_study(name, storage_url, spec, max_trials, base, opened)
    experiment_id = open_experiment(config.tracking.experiment, uri, shared.study)
    view = _save_view(shared, experiment_id, spec)
    with _parent_run(shared, storage_url, spec, n_trials, n_jobs) as parent_run_id:
        objective = make_objective(prepared, config, spec, parent_run_id, progress)
        _run_trials(shared, objective, n_trials, n_jobs, timeout, experiment_id, progress)
        counts, best, registration = finish(shared, prepared, config, base, spec)
    table = champion_table(config, registration, tracking_uri, progress)
    return TuneResult(
        study=shared.study,
        best=best,
        registration=registration,
        parent_run_id=parent_run_id,
        images_encoded=images_encoded,
        counts=counts,
        storage=mask_password(storage_url),
        experiment_id=experiment_id,
        metric=spec.metric,
        measured_on=f"data {base.data}, encoder {base.encoder}",
        view_key=view,
        champion_table=table,
    )


def _check_stored_space(
    name: str, storage_url: str, spec: StudySpec
) -> optuna.storages.BaseStorage | None:
    """A changed search space refused before the cache is built, when the study's file is here
    (a server's study is checked when it opens). Returns the storage it opened, if any."""
    path = storage_file(storage_url)
    if path is None or not path.is_file():
        return None
    opened = make_storage(storage_url)
    if name in optuna.get_all_study_names(opened):
        check_space(optuna.load_study(study_name=name, storage=opened), spec, record=False)
    return opened


def _open_study(
    name: str,
    storage_url: str,
    spec: StudySpec,
    max_trials: int | None,
    base: StudyBase,
    storage: optuna.storages.BaseStorage | None,
) -> SharedStudy:
    """Open (or create) the study and take a worker number; refused before it takes one when
    its space changed or it was made for another metric, data set or encoder."""

    def check(study: optuna.Study) -> None:
        check_space(study, spec)
        check_base(study, base)

    return open_shared_study(
        name,
        storage_url,
        spec.direction,
        spec.make_sampler,
        spec.make_pruner(),
        max_trials,
        on_open=check,
        storage=storage,
        space=spec.space,
    )


def _save_view(shared: SharedStudy, experiment_id: str, spec: StudySpec) -> str:
    """The UI's saved view of the trials, under the lock: workers starting together would each
    insert its tag, and a server refuses the second (a duplicate key on experiment_tag_pk)."""
    with shared.lock():
        return save_study_view(
            experiment_id, shared.study.study_name, list(spec.space), spec.metric, spec.direction
        )


@contextmanager
def _parent_run(
    shared: SharedStudy, storage_url: str, spec: StudySpec, n_trials: int, n_jobs: int
) -> Iterator[str]:
    """This invocation's parent run, numbered (`s #2`), with what it was asked; yields its id."""
    name = shared.study.study_name
    tags = {"optuna.study_name": name, "polypseg.storage": mask_password(storage_url)}
    with tracked_run(run_name=f"{name} #{shared.worker + 1}", tags=tags) as parent:
        shared.study.set_user_attr("mlflow_parent_run_id", parent.info.run_id)
        mlflow.log_params(
            {
                "invocation.trials": n_trials,  # asked of this invocation (--trials)
                "invocation.n_jobs": n_jobs,
                "invocation.worker": shared.worker,
                "study.max_trials": shared.max_trials,  # the whole study's budget
                "study.epochs": spec.epochs,
                "study.sampler": spec.sampler.get("name", "tpe"),
                "study.pruner": spec.pruner.get("name", "median"),
                "study.metric": spec.metric,
            }
        )
        yield parent.info.run_id


def _run_trials(
    shared: SharedStudy,
    objective: Objective,
    n_trials: int,
    n_jobs: int,
    timeout: float | None,
    experiment_id: str,
    progress: bool,
) -> None:
    left = shared.budget_left()
    total = n_trials if left is None else max(0, min(n_trials, left))
    with trial_progress(total, progress) as show:
        ran = run_worker(shared, objective, n_trials, n_jobs, timeout, callbacks=[show])
    kill_dead_runs(experiment_id, shared.study)  # left by workers that died meanwhile
    mlflow.log_metrics({f"invocation.trials_{k.lower()}": n for k, n in ran.items()})


def _cache_config(config: Config, spec: StudySpec) -> Config:
    """The config whose cache serves every trial: `data.augment` the union of the spec's
    choices and the config's own; a trial reads the variants it drew."""
    choices = getattr(spec.space.get("data.augment"), "choices", ())
    drawn = [config.with_overrides({"data.augment": c}).data.augment for c in choices]
    union = dict.fromkeys([*config.data.augment, *(v for variants in drawn for v in variants)])
    return config.with_overrides({"data.augment": list(union)})
