"""Where a study lives: Optuna storages that many workers, on one machine or many, can share.

Across machines the workers share Optuna's RDB storage on PostgreSQL; on one machine they may
share the embedded SQLite file (the default, `studies/optuna.db`) or a journal file
(`journal:PATH`: `JournalStorage` with `JournalFileBackend`, Optuna's recommendation for several
processes on one machine). RDB storages get heartbeats (`POLYPSEG_HEARTBEAT`), so that a trial
whose worker died (SIGKILL, a lost machine) becomes FAIL, its MLflow runs are ended and it is
retried; several processes may open a fresh database at once (the table-creation race is retried).
On one machine a dead worker's trial is failed and retried sooner, with any storage: trials record
their worker, and the next worker to take a trial sees that its process is gone
(`fail_dead_trials`). The study lock that its workers take trials under depends on the storage
too (`study_lock`).
"""

from __future__ import annotations

import hashlib
import importlib.util
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

from polypseg.atomic import refused_write, remedy
from polypseg.errors import ConfigError, StoreError, first_line
from polypseg.outputs import unwritable
from polypseg.processes import Worker, heartbeat_settings
from polypseg.sqlite_files import file_lock, sqlite_file, sqlite_uri
from polypseg.tracking.ending import kill_trial_run
from polypseg.tracking.store import mask_password

log = logging.getLogger(__name__)

STUDIES_DIR = "studies"
JOURNAL_PREFIX = "journal:"
MAX_RETRY = 3
# How long a worker waits for another's SQLite write lock; a lock held longer is refused, not
# retried as the table-creation race of a fresh database is.
SQLITE_LOCK_WAIT_S = 60.0

StudyLock = Callable[[], AbstractContextManager[Any]]


def default_storage() -> str:
    return sqlite_uri(Path.cwd() / STUDIES_DIR / "optuna.db")


@contextmanager
def quiet_experimental() -> Iterator[None]:
    """Optuna marks heartbeats, stale-trial retries and its matplotlib plots experimental; we
    rely on them on purpose, so their warnings would only be noise for users."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def storage_file(url: str) -> Path | None:
    """The file behind a SQLite or journal storage URL (None for a database server)."""
    if url.startswith(JOURNAL_PREFIX):
        return Path(url[len(JOURNAL_PREFIX) :]).expanduser()
    return sqlite_file(url)


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
        started = time.monotonic()
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except Exception as err:
            if not _is_creation_race(err):
                raise
            if time.monotonic() - started >= SQLITE_LOCK_WAIT_S:  # held all along: no race
                raise StoreError(
                    f"study storage {mask_password(url)} is locked by another process (database "
                    "is locked); let it finish or stop it, then run again, or choose another "
                    "--storage"
                ) from None
            time.sleep(0.25 * 2**attempt * random.uniform(0.5, 1.5))
    return optuna.storages.RDBStorage(url, **kwargs)


def check_storage_url(url: str) -> None:
    """What a storage URL can get wrong, refused before anything is opened or written: empty; in
    memory (the study would vanish at exit, no other worker could share it); a file storage
    naming no usable file. A device (`journal:/dev/null`) takes the study's first write and
    fails at the `fsync` of the next, in the middle of a trial."""
    if not url.strip():
        raise ConfigError(
            "--storage is empty; name a study storage, like sqlite:///studies/optuna.db, or "
            "leave the option out for that default"
        )
    if url.rstrip("/") == "sqlite:" or ":memory:" in url or "mode=memory" in url:
        raise ConfigError(
            f"--storage {url} is an in-memory database: the study would vanish at exit and no "
            "other worker could share it; use sqlite:///studies/optuna.db or postgresql://..."
        )
    path = storage_file(url)
    if path is None:
        return
    journal = url.startswith(JOURNAL_PREFIX)
    named = url[len(JOURNAL_PREFIX) :] if journal else url[len("sqlite:///") :]
    if not named.strip():
        kind = "no file"
    elif path.is_dir():
        kind = f"{path}, a folder"
    elif path.exists() and not path.is_file():
        kind = f"{path}, a device or special file"
    else:
        return
    example = "journal:studies/optuna.journal" if journal else "sqlite:///studies/optuna.db"
    raise StoreError(
        f"study storage {mask_password(url)} names {kind}; name a file to keep the study in, "
        f"like {example}"
    )


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """The storage of a URL that `check_storage_url` passed: RDB with heartbeats (a trial whose
    worker died becomes FAIL and is retried), or `journal:PATH`, `JournalStorage` on a file.

    Optuna 5's journal has no heartbeats: a killed worker's trial is failed only by a worker on
    the same machine (`fail_dead_trials`), so use PostgreSQL where workers on many machines may
    die. The folder of a file storage must take writes: a read-only or full one is one line here.
    """
    path = storage_file(url)
    if path is not None and (cause := unwritable(path.parent)) is not None:  # creates the folder
        raise _refused(url, path.parent, cause)
    if url.startswith(JOURNAL_PREFIX):
        from optuna.storages.journal import JournalFileBackend

        try:
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        except OSError as err:  # a file it may not open
            raise _refused(url, path, (err.strerror or type(err).__name__).lower()) from None
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": SQLITE_LOCK_WAIT_S}  # wait for a lock, not fail
    interval, grace = heartbeat_settings()
    try:
        with quiet_experimental():
            return _open_rdb(
                _with_installed_driver(url),
                engine_kwargs=kwargs,
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=RetryStaleTrial(MAX_RETRY),
            )
    except StoreError:
        raise
    except Exception as err:  # sqlalchemy raises many kinds for a bad URL or an unreachable DB
        raise ConfigError(
            f"cannot open study storage {mask_password(url)} ({type(err).__name__}: "
            f"{first_line(err)}); check --storage"
        ) from None


def _refused(url: str, place: Path | None, cause: str) -> StoreError:
    where = f" at {place}" if place is not None else ""
    return StoreError(
        f"cannot write the study storage {mask_password(url)}{where}: {cause}; "
        f"{remedy(cause)}, or choose another --storage"
    )


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
    path = storage_file(url)
    if path is not None:
        suffix = ".polypseg.lock" if url.startswith(JOURNAL_PREFIX) else ".lock"
        return partial(file_lock, path.with_name(path.name + suffix))
    log.warning("no study lock for %s: a trial budget may overshoot", mask_password(url))
    return nullcontext


def storage_error(err: BaseException, url: str) -> StoreError | None:
    """`err` as one line naming the storage, when it is a write the storage's place refused."""
    cause = refused_write(err)
    if cause is None:
        return None
    path = storage_file(url)
    return _refused(url, path.parent if path is not None else None, cause)


class RetryStaleTrial:
    """Optuna's heartbeat-stale callback: end the dead worker's runs, then queue a retry.

    A trial goes stale only when its worker stopped beating (killed, machine lost), so neither
    its trial run nor the worker's parent run will ever end by itself. The retry is a WAITING
    copy with the same params (`RetryHeartbeatStaleTrialCallback`), run by the next free worker,
    at most `max_retry` times per original trial.
    """

    def __init__(self, max_retry: int) -> None:
        with quiet_experimental():
            self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        log.warning("trial %d of study %s: its worker died", trial.number, study.study_name)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            kill_trial_run(run_id)
        self._retry(study, trial)


def fail_stale_trials(study: optuna.Study) -> None:
    """What Optuna does before each trial; done at start too, so a resumed run recovers first."""
    with quiet_experimental():
        optuna.storages.fail_stale_trials(study)


def fail_dead_trials(
    study: optuna.Study, storage: optuna.storages.BaseStorage, unowned_are_dead: bool = False
) -> list[int]:
    """RUNNING trials whose worker's process is gone from this machine: FAIL, their runs killed
    and a retry queued, as for a trial whose heartbeat went stale. Call it under the
    study lock (a retry is queued once). Returns the numbers of the trials failed.

    A worker takes a trial and records itself on it under the study lock, so a holder of the
    lock that sees a RUNNING trial with no worker recorded knows its taker died in between:
    `unowned_are_dead` says so (False where the storage has no lock).
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = Worker.from_tags(trial.user_attrs)
        # No heartbeat here: a worker elsewhere is judged by Optuna's (RDB storages).
        dead = unowned_are_dead if worker is None else worker.is_gone(last_beat=None, grace=0)
        if not dead:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # it ended a moment ago
            continue
        RetryStaleTrial(MAX_RETRY)(study, storage.get_trial(trial_id))
        failed.append(trial.number)
    return failed
