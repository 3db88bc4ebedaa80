"""Where a study lives: Optuna storages that workers on one machine or many share, and the lock
they take trials under.

Across machines: Optuna's RDB storage on PostgreSQL. On one machine: the embedded SQLite file
(the default, `studies/optuna.db`) or a journal file (`journal:PATH`, Optuna's `JournalStorage`).
RDB storages get Optuna's heartbeat (`POLYPSEG_HEARTBEAT`) and its
`RetryHeartbeatStaleTrialCallback` (Optuna 5's name for `RetryFailedTrialCallback`): a trial
whose worker stopped beating becomes FAIL and is queued again. Optuna's journal has no heartbeat,
so `fail_dead_trials` does the same at once for a worker of this machine whose process is gone.
"""

from __future__ import annotations

import hashlib
import logging
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

from polypseg.atomic import refused_write
from polypseg.errors import PolypsegError, StoreError, first_line
from polypseg.outputs import unwritable
from polypseg.processes import Worker, heartbeat_settings
from polypseg.sqlite_files import create_whole, file_lock, not_a_file, sqlite_file, sqlite_uri
from polypseg.tracking.store import mask_password, refused

log = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal:"
MAX_RETRY = 3
# How long a worker waits for another's SQLite lock; a lock held longer is refused.
SQLITE_LOCK_WAIT_S = 60.0

StudyLock = Callable[[], AbstractContextManager[Any]]


def default_storage() -> str:
    return sqlite_uri(Path.cwd() / "studies" / "optuna.db")


@contextmanager
def quiet_experimental() -> Iterator[None]:
    """Optuna marks heartbeats, retries and its plots experimental: noise for our users."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def storage_file(url: str) -> Path | None:
    """The file behind a SQLite or journal storage URL (None for a database server)."""
    if url.startswith(JOURNAL_PREFIX):
        return Path(url[len(JOURNAL_PREFIX) :]).expanduser()
    return sqlite_file(url)


def _open_rdb(url: str, **kwargs: Any) -> optuna.storages.RDBStorage:
    """Workers creating a fresh PostgreSQL database's tables at once: the losers try again. (A
    SQLite file is made whole under a lock first; one locked past SQLite's wait is refused.)"""
    import sqlalchemy.exc

    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except sqlalchemy.exc.DBAPIError as err:
            text = str(err).lower()
            if not (isinstance(err, sqlalchemy.exc.IntegrityError) or "already exists" in text):
                raise
            time.sleep(0.25 * 2**attempt * random.uniform(0.5, 1.5))
    return optuna.storages.RDBStorage(url, **kwargs)


def check_storage_url(url: str) -> None:
    """Refuse, before anything is opened, a storage URL that is empty or names no file a study
    can live in (`sqlite_files.not_a_file`)."""
    if not url.strip():
        raise PolypsegError(
            "--storage is empty; name a study storage, like sqlite:///studies/optuna.db, or "
            "leave the option out for that default"
        )
    journal = url.startswith(JOURNAL_PREFIX)
    if (kind := not_a_file(url, JOURNAL_PREFIX) if journal else not_a_file(url)) is not None:
        example = "journal:studies/optuna.journal" if journal else "sqlite:///studies/optuna.db"
        raise StoreError(
            f"study storage {mask_password(url)} names {kind}; name a file to keep the study "
            f"in, like {example}, or postgresql://... for workers on many machines"
        )


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """The storage of a URL that `check_storage_url` passed. Use PostgreSQL where workers on
    many machines may die: only RDB storages beat."""
    path = storage_file(url)
    if path is not None and (cause := unwritable(path.parent)) is not None:  # creates the folder
        raise _refused(url, cause)
    if url.startswith(JOURNAL_PREFIX):
        from optuna.storages.journal import JournalFileBackend

        try:
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        except OSError as err:  # a file it may not open
            raise _refused(url, (err.strerror or type(err).__name__).lower()) from None
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if path is not None:  # a fresh SQLite file made whole, as MLflow's store is
        create_whole(path, lambda aside: optuna.storages.RDBStorage(aside).engine.dispose())
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": SQLITE_LOCK_WAIT_S}  # wait for a lock, not fail
    interval, grace = heartbeat_settings()
    try:
        with quiet_experimental():
            return _open_rdb(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=RETRY_STALE_TRIAL,
            )
    except Exception as err:  # sqlalchemy raises many kinds for a bad URL or an unreachable DB
        if "database is locked" in str(err):  # held past SQLITE_LOCK_WAIT_S
            raise StoreError(
                f"study storage {mask_password(url)} is locked by another process (database "
                "is locked); let it finish or stop it, then run again, or choose another --storage"
            ) from None
        raise PolypsegError(
            f"cannot open study storage {mask_password(url)} ({type(err).__name__}: "
            f"{first_line(err)}); check --storage"
        ) from None


def _refused(url: str, cause: str) -> StoreError:
    path = storage_file(url)
    where = f" at {path.parent}" if path is not None else ""
    return refused(
        f"the study storage {mask_password(url)}{where}", cause, "choose another --storage"
    )


def storage_error(err: BaseException, url: str) -> StoreError | None:
    """`err` as one line naming the storage, when it is a write the storage's place refused."""
    return None if (cause := refused_write(err)) is None else _refused(url, cause)


@contextmanager
def _advisory_lock(engine: Any, key: int) -> Iterator[None]:
    import sqlalchemy

    with engine.begin() as conn:  # released when this transaction ends, or when the worker dies
        conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        yield


def study_lock(storage: optuna.storages.BaseStorage, url: str, name: str) -> StudyLock:
    """The lock a study's workers take trials (and register) under: on PostgreSQL an advisory
    lock keyed by the study's name, released when its worker dies; `flock` on a file beside a
    SQLite or journal file (`<journal>.polypseg.lock`: the journal uses `<journal>.lock`)."""
    if isinstance(storage, optuna.storages.RDBStorage) and storage.engine.name == "postgresql":
        digest = hashlib.sha256(f"polypseg-study:{name}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        return partial(_advisory_lock, storage.engine, key)
    if (path := storage_file(url)) is not None:
        suffix = ".polypseg.lock" if url.startswith(JOURNAL_PREFIX) else ".lock"
        return partial(file_lock, path.with_name(path.name + suffix))
    log.warning("no study lock for %s: a trial budget may overshoot", mask_password(url))
    return nullcontext


# Optuna's retry for a trial whose worker died: a WAITING copy with the same params, at most
# `MAX_RETRY` per original trial. The dead worker's runs are ended by `kill_dead_runs`.
with quiet_experimental():
    RETRY_STALE_TRIAL = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def fail_stale_trials(study: optuna.Study) -> None:
    """What `Study.optimize` does before each trial, for our ask-and-tell loop."""
    with quiet_experimental():
        optuna.storages.fail_stale_trials(study)


def fail_dead_trials(
    study: optuna.Study, storage: optuna.storages.BaseStorage, unowned_are_dead: bool = False
) -> list[int]:
    """Fail (runs killed, a retry queued, as for a stale trial) the RUNNING trials whose worker's
    process is gone from this machine; returns their numbers. Call it under the study lock.

    A worker records itself on a trial as it takes it, under the lock, so a holder of the lock
    that sees a RUNNING trial with no worker knows its taker died in between: `unowned_are_dead`.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = Worker.from_tags(trial.user_attrs)
        # No heartbeat here: a worker elsewhere is judged by Optuna's (RDB storages).
        if not (unowned_are_dead if worker is None else worker.is_gone(None, grace=0)):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # it ended a moment ago
            continue
        RETRY_STALE_TRIAL(study, storage.get_trial(trial_id))
        failed.append(trial.number)
    return failed
