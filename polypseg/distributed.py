"""Many `polypseg tune` workers on one study: shared storage, heartbeats, a global trial budget,
and the MLflow runs of workers that died.

Across machines the workers share Optuna's RDB storage on PostgreSQL and an MLflow tracking
server; on one machine they may share the embedded SQLite file or a journal file
(`journal:PATH`: `JournalStorage` with `JournalFileBackend`, Optuna's recommendation for several
processes on one machine). On top of Optuna this module adds:

- storages that several processes can open at once on a fresh database (the table-creation race
  is retried), with heartbeats (`POLYPSEG_HEARTBEAT`), so that a trial whose worker died
  (SIGKILL, a lost machine) becomes FAIL and is retried;
- a study lock (a PostgreSQL advisory lock, or `flock` on a file beside a SQLite or journal
  file) under which a worker takes its next trial and registers the best model: `max_trials`
  is an exact study-wide budget, and a retried trial is never taken by two workers;
- ending the MLflow runs of a dead worker (KILLED, tagged `optuna.trial_state=FAIL`) in whichever
  worker notices, and a sweep for runs left RUNNING whose trial is over.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from polypseg.errors import ConfigError
from polypseg.tracking import file_lock, mask_password

log = logging.getLogger(__name__)

STUDIES_DIR = "studies"
HEARTBEAT_ENV = "POLYPSEG_HEARTBEAT"
# Seconds between a running trial's heartbeats, and without one before the trial is stale.
# Epochs never block the heartbeat (it is a thread), so a minute of silence means a dead worker.
DEFAULT_HEARTBEAT = (20, 60)
MAX_RETRY = 3
# What uses up the budget: trials that ran to an end, are running, or wait in the queue
# (a stale trial's retry). FAIL trials do not, so their retries still run.
BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)

StudyLock = Callable[[], AbstractContextManager[Any]]


def default_storage() -> str:
    return f"sqlite:///{(Path.cwd() / STUDIES_DIR / 'optuna.db').resolve()}"


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace period) in seconds: `POLYPSEG_HEARTBEAT=interval,grace`, else 20,60."""
    text = os.environ.get(HEARTBEAT_ENV)
    if not text:
        return DEFAULT_HEARTBEAT
    try:
        interval, grace = (int(part) for part in text.split(","))
    except ValueError:
        interval = grace = 0
    if not 0 < interval < grace:
        raise ConfigError(
            f"{HEARTBEAT_ENV}={text!r}: expected interval,grace in whole seconds with "
            f"0 < interval < grace, like 20,60"
        )
    return interval, grace


def _with_installed_driver(url: str) -> str:
    """SQLAlchemy 2.1 reads `postgresql://` as psycopg 3; polypseg installs psycopg2."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def _is_creation_race(err: Exception) -> bool:
    """Two processes creating the tables of a fresh database at once: one loses, harmlessly."""
    import sqlalchemy.exc

    if isinstance(err, sqlalchemy.exc.IntegrityError):
        return True
    text = str(err).lower()
    return isinstance(err, sqlalchemy.exc.DBAPIError) and (
        "already exists" in text or "database is locked" in text
    )


def _open_rdb(url: str, **kwargs: Any) -> optuna.storages.RDBStorage:
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except Exception as err:
            if not _is_creation_race(err):
                raise
            time.sleep(0.25 * 2**attempt * random.uniform(0.5, 1.5))
    return optuna.storages.RDBStorage(url, **kwargs)


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """RDB storage with heartbeats: a trial whose worker died becomes FAIL and is retried.

    `journal:PATH` selects `JournalStorage` on a file. Optuna 5's journal has no heartbeats: a
    killed worker's trial stays RUNNING there, so use SQLite or PostgreSQL where workers may die.
    """
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal:") :]).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}  # wait for a lock instead of failing
    interval, grace = heartbeat_settings()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _open_rdb(
                _with_installed_driver(url),
                engine_kwargs=kwargs,
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=RetryStaleTrial(MAX_RETRY),
            )
    except Exception as err:  # sqlalchemy raises many kinds for a bad URL or an unreachable DB
        raise ConfigError(
            f"cannot open study storage {mask_password(url)} ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:120]}); check --storage"
        ) from None


def _storage_file(url: str) -> Path | None:
    if url.startswith("journal:"):
        return Path(url[len("journal:") :]).expanduser()
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url[len("sqlite:///") :])
    return None


@contextmanager
def _advisory_lock(engine: Any, key: int) -> Iterator[None]:
    import sqlalchemy

    with engine.begin() as conn:  # released when this transaction ends, or when the worker dies
        conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        yield


def study_lock(storage: optuna.storages.BaseStorage, url: str, name: str) -> StudyLock:
    """The lock that serialises taking trials (and registering) among the workers of a study.

    PostgreSQL: an advisory lock keyed by the study name, held by a transaction, so a worker
    that dies releases it. SQLite or journal file: `flock` on `<file>.lock` beside it (one
    machine; `<journal>.polypseg.lock`, as Optuna's journal uses `<journal>.lock` itself).
    Other databases get no lock: a budget may then overshoot by up to one trial per worker.
    """
    if isinstance(storage, optuna.storages.RDBStorage) and storage.engine.name == "postgresql":
        digest = hashlib.sha256(f"polypseg-study:{name}".encode()).digest()
        return partial(
            _advisory_lock, storage.engine, int.from_bytes(digest[:8], "big", signed=True)
        )
    path = _storage_file(url)
    if path is not None:
        suffix = ".polypseg.lock" if url.startswith("journal:") else ".lock"
        return partial(file_lock, path.with_name(path.name + suffix))
    log.warning("no study lock for %s: a trial budget may overshoot", mask_password(url))
    return nullcontext


class BudgetReached(Exception):
    """`SharedStudy.ask` found the study's budget used up: the worker stops taking trials."""


class SharedStudy(optuna.Study):
    """A study whose workers take trials one at a time under the study lock, up to a budget.

    `max_trials` is study-wide: it counts the trials that finished (COMPLETE, PRUNED), run or
    wait in the queue, whichever worker ran them. Taking a trial (popping a queued one or
    creating one) happens under the lock, so concurrent workers never overshoot it and never
    pop the same queued trial (SQLite ignores `SELECT ... FOR UPDATE`, so Optuna's own pop is
    not atomic there).

    When what is left of the budget is held by running trials, a worker waits instead of
    leaving: one of them may fail, or go stale (its worker died) and be queued for a retry,
    which the waiting worker then runs. So re-running a crashed worker's command completes the
    budget even when it starts before the dead trial's grace period is over. Without heartbeats
    (the journal storage) a dead trial would never end, so the worker leaves at once.
    """

    def __init__(
        self,
        study_name: str,
        storage: optuna.storages.BaseStorage,
        sampler: optuna.samplers.BaseSampler,
        pruner: optuna.pruners.BasePruner,
        lock: StudyLock,
        max_trials: int | None = None,
    ) -> None:
        super().__init__(study_name, storage, sampler, pruner)
        self.lock = lock
        self.max_trials = max_trials

    def budget_left(self) -> int | None:
        if self.max_trials is None:
            return None
        used = self.get_trials(deepcopy=False, states=BUDGET_STATES)
        return self.max_trials - len(used)

    def _any(self, state: TrialState) -> bool:
        return bool(self.get_trials(deepcopy=False, states=(state,)))

    def ask(self, fixed_distributions: dict | None = None) -> optuna.Trial:
        # RDB storages beat (`get_heartbeat_interval`); Optuna 5's journal storage does not.
        interval = getattr(self._storage, "get_heartbeat_interval", lambda: None)()
        while True:
            with self.lock():
                left = self.budget_left()
                if left is None or left > 0 or self._any(TrialState.WAITING):
                    return super().ask(fixed_distributions)
                running = self._any(TrialState.RUNNING)
            if not running or interval is None:
                if self._thread_local.in_optimize_loop:
                    self.stop()
                raise BudgetReached(f"the study holds its {self.max_trials} trials")
            time.sleep(min(interval, 5))
            fail_stale_trials(self)


def _claim_worker_number(storage: optuna.storages.BaseStorage, study_id: int) -> int:
    """0 for the study's first invocation, 1 for the next...: unique, even for simultaneous ones."""
    number = int(storage.get_study_user_attrs(study_id).get("polypseg.workers", 0))
    storage.set_study_user_attr(study_id, "polypseg.workers", number + 1)
    return number


def open_shared_study(
    name: str,
    storage_url: str,
    direction: str,
    make_sampler: Callable[[int], optuna.samplers.BaseSampler],
    pruner: optuna.pruners.BasePruner,
    max_trials: int | None = None,
) -> SharedStudy:
    """Create the study or load it; `make_sampler(worker number)` seeds each worker apart.

    Workers with the same sampler seed would suggest the same trials, so each invocation gets
    the next worker number of the study (taken under the lock) as its seed offset.
    """
    storage = make_storage(storage_url)
    created = optuna.create_study(
        study_name=name, storage=storage, direction=direction, load_if_exists=True
    )
    lock = study_lock(storage, storage_url, name)
    with lock():
        worker = _claim_worker_number(created._storage, created._study_id)
    return SharedStudy(name, storage, make_sampler(worker), pruner, lock, max_trials)


def end_dead_worker_runs(run_id: str, trial_state: str = "FAIL") -> None:
    """End a dead worker's trial run, and its parent run, KILLED (they cannot end themselves)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        run = client.get_run(run_id)
        if run.info.status == "RUNNING":
            client.set_tag(run_id, "optuna.trial_state", trial_state)
            client.set_terminated(run_id, "KILLED")
            log.warning("ended run %s of a dead worker KILLED", run_id)
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent and client.get_run(parent).info.status == "RUNNING":
            client.set_terminated(parent, "KILLED")
    except MlflowException as err:  # the tracking server is down: the sweep will retry later
        log.warning("could not end run %s of a dead worker: %s", run_id, err)


class RetryStaleTrial:
    """Optuna's heartbeat-stale callback: end the dead worker's runs, then queue a retry.

    A trial goes stale only when its worker stopped beating (killed, machine lost), so neither
    its trial run nor the worker's parent run will ever end by itself. The retry is a WAITING
    copy with the same params (`RetryHeartbeatStaleTrialCallback`), run by the next free worker,
    at most `max_retry` times per original trial.
    """

    def __init__(self, max_retry: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        log.warning(
            "trial %d of study %s is stale: its worker died", trial.number, study.study_name
        )
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            end_dead_worker_runs(run_id)
        self._retry(study, trial)


def fail_stale_trials(study: optuna.Study) -> None:
    """What Optuna does before each trial; done at start too, so a resumed run recovers first."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def end_orphaned_runs(study: optuna.Study, experiment_id: str) -> int:
    """Trial runs of this study left RUNNING whose trial is over: their worker died. End them.

    A live worker ends a trial's run before Optuna records the trial's end, so a RUNNING run of
    a finished trial can only belong to a dead worker. Returns how many were ended.
    """
    import mlflow

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=(
            f"tags.`optuna.study_name` = '{study.study_name}' and attributes.status = 'RUNNING'"
        ),
        output_format="list",
    )
    ended = 0
    for run in runs:
        number = run.data.tags.get("optuna.trial_number")
        trial = trials.get(int(number)) if number is not None else None
        if trial is not None and trial.state.is_finished():
            end_dead_worker_runs(run.info.run_id, trial.state.name)
            ended += 1
    return ended
