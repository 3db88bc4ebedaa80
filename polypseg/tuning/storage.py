"""Where a study lives: Optuna storages that many workers, on one machine or many, can share.

Across machines the workers share Optuna's RDB storage on PostgreSQL; on one machine they may
share the embedded SQLite file (the default, `studies/optuna.db`) or a journal file
(`journal:PATH`: `JournalStorage` with `JournalFileBackend`, Optuna's recommendation for several
processes on one machine). RDB storages get heartbeats (`POLYPSEG_HEARTBEAT`), so that a trial
whose worker died (SIGKILL, a lost machine) becomes FAIL, its MLflow runs are ended and it is
retried; several processes may open a fresh database at once (the table-creation race is retried).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna

from polypseg.errors import ConfigError
from polypseg.files import first_line, sqlite_file, sqlite_uri
from polypseg.tracking.runs import end_dead_worker_runs
from polypseg.tracking.store import mask_password

log = logging.getLogger(__name__)

STUDIES_DIR = "studies"
JOURNAL_PREFIX = "journal:"
HEARTBEAT_ENV = "POLYPSEG_HEARTBEAT"
# Seconds between a running trial's heartbeats, and without one before the trial is stale.
# Epochs never block the heartbeat (it is a thread), so a minute of silence means a dead worker.
DEFAULT_HEARTBEAT = (20, 60)
MAX_RETRY = 3


def default_storage() -> str:
    return sqlite_uri(Path.cwd() / STUDIES_DIR / "optuna.db")


@contextmanager
def quiet_experimental() -> Iterator[None]:
    """Optuna marks heartbeats, stale-trial retries and its matplotlib plots experimental; we
    rely on them on purpose, so their warnings would only be noise for users."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


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
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except Exception as err:
            if not _is_creation_race(err):
                raise
            time.sleep(0.25 * 2**attempt * random.uniform(0.5, 1.5))
    return optuna.storages.RDBStorage(url, **kwargs)


def refuse_in_memory(url: str) -> None:
    """An in-memory study vanishes at exit and no other worker can see it: never what tune wants."""
    if url.rstrip("/") == "sqlite:" or ":memory:" in url or "mode=memory" in url:
        raise ConfigError(
            f"--storage {url} is an in-memory database: the study would vanish at exit and no "
            "other worker could share it; use sqlite:///studies/optuna.db or postgresql://..."
        )


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """RDB storage with heartbeats: a trial whose worker died becomes FAIL and is retried.

    `journal:PATH` selects `JournalStorage` on a file. Optuna 5's journal has no heartbeats: a
    killed worker's trial stays RUNNING there, so use SQLite or PostgreSQL where workers may die.
    """
    refuse_in_memory(url)
    path = storage_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith(JOURNAL_PREFIX):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}  # wait for a lock instead of failing
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
    except Exception as err:  # sqlalchemy raises many kinds for a bad URL or an unreachable DB
        raise ConfigError(
            f"cannot open study storage {mask_password(url)} ({type(err).__name__}: "
            f"{first_line(err)}); check --storage"
        ) from None


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
        log.warning(
            "trial %d of study %s is stale: its worker died", trial.number, study.study_name
        )
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            end_dead_worker_runs(run_id)
        self._retry(study, trial)


def fail_stale_trials(study: optuna.Study) -> None:
    """What Optuna does before each trial; done at start too, so a resumed run recovers first."""
    with quiet_experimental():
        optuna.storages.fail_stale_trials(study)
