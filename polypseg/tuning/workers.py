"""Many `polypseg tune` workers on one study, on Optuna's public ask-and-tell interface.

Each worker loops: under the study lock (`storage.study_lock`) it checks the study-wide budget
and takes a trial (`study.ask()`, which pops a queued retry first); it trains it with Optuna's
heartbeat beating, then tells the study. Each invocation takes the next worker number of the
study (a user attribute) to seed its sampler apart, and records itself on each trial it takes
(`polypseg.processes.Worker`), so that the next worker fails and retries, at once, a trial left
RUNNING by a worker killed on this machine (`storage.fail_dead_trials`).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from polypseg.errors import StoreError
from polypseg.interrupts import deferred, interrupt_point
from polypseg.processes import Worker, beating
from polypseg.tracking.ending import fail_reason
from polypseg.tuning.storage import (
    StudyLock,
    fail_dead_trials,
    fail_stale_trials,
    make_storage,
    storage_error,
    study_lock,
)

log = logging.getLogger(__name__)

# What uses up the budget: trials that ran to an end, are running, or wait in the queue
# (a stale trial's retry). FAIL trials do not, so their retries still run.
BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
WORKERS_ATTR = "polypseg.workers"

Objective = Callable[[optuna.Trial], float]


@dataclass
class SharedStudy:
    """An Optuna study with what its workers share: the storage, the lock and the budget."""

    study: optuna.Study
    storage: optuna.storages.BaseStorage
    lock: StudyLock
    max_trials: int | None = None
    worker: int = 0  # this invocation's number among the study's workers, from 0
    space: dict[str, optuna.distributions.BaseDistribution] | None = None  # drawn at `ask`

    def budget_left(self) -> int | None:
        if self.max_trials is None:
            return None
        return self.max_trials - len(self.study.get_trials(deepcopy=False, states=BUDGET_STATES))

    def _any(self, state: TrialState) -> bool:
        return bool(self.study.get_trials(deepcopy=False, states=(state,)))

    def heartbeat_interval(self) -> int | None:  # None: no heartbeats (Optuna 5's journal)
        return getattr(self.storage, "get_heartbeat_interval", lambda: None)()

    def take_trial(self) -> optuna.Trial | None:
        """The next trial, under the lock: a queued retry first, else a new one within budget;
        None when the study's budget is used up.

        `Study.optimize` would ask without the lock. Its `MaxTrialsCallback` checks only after
        a trial ends, so racing workers overshoot a study-wide budget, and on SQLite, which has no
        row locks (`SELECT ... FOR UPDATE` is ignored), two workers could pop one queued retry.
        When running trials hold what is left of the budget, wait: one may fail, or go stale and
        be queued for a retry. Without heartbeats a dead trial would never end, so leave at once.
        """
        interval = self.heartbeat_interval()
        while True:
            fail_stale_trials(self.study)  # FAIL, runs killed: as `Study.optimize` does each trial
            with self.lock():
                fail_dead_trials(self.study, self.storage, self.lock is not nullcontext)
                left = self.budget_left()
                if left is None or left > 0 or self._any(TrialState.WAITING):
                    with warnings.catch_warnings():
                        # Optuna expects heartbeats only under Study.optimize; `heartbeat` beats.
                        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
                        trial = self.study.ask(self.space)
                    for key, value in Worker.current().tags().items():
                        trial.set_user_attr(key, value)
                    return trial
                running = self._any(TrialState.RUNNING)
            if not running or interval is None:
                log.info("stopping: the study holds its %d trials", self.max_trials)
                return None
            time.sleep(min(interval, 5))
            interrupt_point()  # Ctrl-C while waiting here stops the worker at once

    @contextmanager
    def heartbeat(self, trial: optuna.Trial) -> Iterator[None]:
        """Optuna's heartbeat for `trial` while the block runs (`Study.optimize` beats only for
        the trials it asks for); a worker that dies stops beating and its trial goes stale."""
        if (interval := self.heartbeat_interval()) is None:
            yield
            return
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        self.storage.record_heartbeat(trial_id)
        with beating(interval, lambda: self.storage.record_heartbeat(trial_id), "trial", True):
            yield


def open_shared_study(
    name: str,
    storage_url: str,
    direction: str,
    make_sampler: Callable[[int], optuna.samplers.BaseSampler],
    pruner: optuna.pruners.BasePruner,
    max_trials: int | None = None,
    on_open: Callable[[optuna.Study], None] | None = None,
    storage: optuna.storages.BaseStorage | None = None,
    space: dict[str, optuna.distributions.BaseDistribution] | None = None,
) -> SharedStudy:
    """Create the study or load it; `make_sampler(worker number)` seeds each worker apart.
    `on_open` runs under the lock first: a study it refuses costs no worker number."""
    storage = storage or make_storage(storage_url)
    lock = study_lock(storage, storage_url, name)
    try:
        created = optuna.create_study(
            study_name=name, storage=storage, direction=direction, load_if_exists=True
        )
        with lock():
            if on_open is not None:
                on_open(created)
            worker = int(created.user_attrs.get(WORKERS_ATTR, 0))
            created.set_user_attr(WORKERS_ATTR, worker + 1)
    except Exception as err:  # Optuna words a full or read-only disk as an internal error
        if (refused := storage_error(err, storage_url)) is None:
            raise
        raise refused from None
    created.sampler, created.pruner = make_sampler(worker), pruner  # known once numbered
    return SharedStudy(created, storage, lock, max_trials, worker, space)


def _run_one(shared: SharedStudy, objective: Objective, trial: optuna.Trial) -> FrozenTrial:
    """Train one trial and tell the study how it ended, as `Study.optimize` would. The objective
    has ended the trial's MLflow run by then, with the state told here (`tuning.objective`)."""
    study = shared.study
    with shared.heartbeat(trial):
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            return study.tell(trial, state=TrialState.PRUNED)
        except KeyboardInterrupt:
            study.tell(trial, state=TrialState.FAIL)
            raise
        except StoreError as err:  # the store is full or read-only: every further trial would fail
            try:
                trial.set_user_attr("fail_reason", fail_reason(err))
                study.tell(trial, state=TrialState.FAIL)
            except Exception as told:  # the storage is full too: the next invocation fails it
                log.warning("could not fail trial %d: %s", trial.number, told)
            raise
        except Exception as err:
            log.warning("trial %d failed: %s", trial.number, fail_reason(err))
            trial.set_user_attr("fail_reason", fail_reason(err))
            return study.tell(trial, state=TrialState.FAIL)
    return study.tell(trial, value)


def run_worker(
    shared: SharedStudy,
    objective: Objective,
    n_trials: int,
    n_jobs: int = 1,
    timeout: float | None = None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
) -> Counter[str]:
    """Take, train and tell trials until this worker's `n_trials` (Optuna's: per process), the
    `timeout` (seconds, after which no trial starts) or the study's budget is used up; `n_jobs`
    threads at once. Returns the trials this worker ran, by the state they ended in."""
    started = time.monotonic()
    claimed = 0
    ran: Counter[str] = Counter()
    guard = threading.Lock()
    done = threading.Event()  # the budget is used up: no thread takes another trial

    def loop() -> None:
        nonlocal claimed
        while True:
            with guard:
                late = timeout is not None and time.monotonic() - started > timeout
                if done.is_set() or late or claimed >= n_trials:
                    return
                claimed += 1
            # Ctrl-C and SIGTERM wait for a safe point: a training step, or the trial told. One
            # raised inside a storage write can leave the study's database locked (see
            # `polypseg.interrupts`), and then failing the trial and ending its runs hang.
            with deferred():
                if (trial := shared.take_trial()) is None:
                    with guard:
                        claimed -= 1
                    done.set()
                    return
                frozen = _run_one(shared, objective, trial)
                with guard:
                    ran[frozen.state.name] += 1
                for callback in callbacks:
                    callback(shared.study, frozen)

    if n_jobs == 1:
        loop()
        return ran
    # Daemon threads: on Ctrl-C the process exits without waiting for their trials, which then
    # stop beating and are failed and retried like any dead worker's.
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(n_jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ran
