"""What a run does: how it starts and ends, what it logs, and the runs of workers that died.

Runs end FINISHED, FAILED (an exception) or KILLED (Ctrl-C, SIGTERM), never left RUNNING by a live
process. A worker that dies cannot end its own runs, so every run records its worker (host, pid,
process start time, machine: `polypseg.processes.Worker`) and renews a heartbeat tag while it
runs, and before a run starts, the runs of the store whose worker is gone are ended KILLED: on
this machine as soon as the process is gone, elsewhere once the heartbeat is stale. Whichever
worker notices a dead trial (a stale Optuna heartbeat, a trial already over whose run is still
RUNNING) ends its runs KILLED too.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow

from polypseg.data.split import Split
from polypseg.files import first_line
from polypseg.processes import WORKER_KEY, Worker, heartbeat_settings
from polypseg.tracking.store import store_error

log = logging.getLogger(__name__)

HEARTBEAT_TAG = "polypseg.heartbeat"  # Unix seconds of the run's last sign of life


@contextmanager
def tracked_run(
    finished_on: tuple[type[BaseException], ...] = (), **start_kwargs: Any
) -> Iterator[mlflow.ActiveRun]:
    """`mlflow.start_run` that ends KILLED on Ctrl-C, FAILED on errors, FINISHED otherwise.

    Exceptions in `finished_on` (a pruned trial) end the run FINISHED and are re-raised. The run
    records its worker and beats while it runs; before it starts, the runs of dead workers are
    ended. A write the store refused (a full disk, a read-only folder) becomes one `StoreError`.
    """
    end_runs_of_dead_workers()
    tags = {**Worker.current().tags(), **(start_kwargs.pop("tags", None) or {})}
    try:
        run = mlflow.start_run(tags=tags, **start_kwargs)
    except Exception as err:
        _raise_refused(err)
        raise
    try:
        with _beating(run.info.run_id):
            yield run
    except finished_on:
        _end("FINISHED")
        raise
    except KeyboardInterrupt:
        _end("KILLED")
        raise
    except BaseException as err:
        _end("FAILED")
        _raise_refused(err)
        raise
    try:
        mlflow.end_run("FINISHED")
    except Exception as err:
        _raise_refused(err)
        raise


def _raise_refused(err: BaseException) -> None:
    """Raise `err` as one `StoreError` line when it is a write the store refused."""
    refused = store_error(err)
    if refused is not None:
        raise refused from None


def _end(status: str) -> None:
    """End the active run after an error. When the store refuses even that (a full disk), the
    error that got us here is the one to report; the next invocation ends the run KILLED."""
    try:
        mlflow.end_run(status)
    except Exception as err:
        log.info("could not end the run %s: %s", status, first_line(err))


@contextmanager
def _beating(run_id: str) -> Iterator[None]:
    """Renew the run's heartbeat tag every interval while the block runs (a thread, so a long
    epoch never delays it): how workers on other machines tell a live run from a dead one's."""
    interval, _ = heartbeat_settings()
    client = mlflow.MlflowClient()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time():.3f}")
            except Exception as err:  # a missed beat is no failure: the next one may get through
                log.debug("heartbeat of run %s missed: %s", run_id, err)

    thread = threading.Thread(target=beat, name=f"run-heartbeat-{run_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()  # not joined: a beat stuck in a server's retries must not hold up the run


def _last_beat(run: mlflow.entities.Run) -> float:
    """Unix seconds of the run's last heartbeat, or of its start before the first one."""
    try:
        return float(run.data.tags[HEARTBEAT_TAG])
    except (KeyError, ValueError):
        return run.info.start_time / 1000


def end_runs_of_dead_workers() -> list[str]:
    """End KILLED every RUNNING run of the store whose worker is gone (`Worker.is_gone`); a
    trial's run is tagged `optuna.trial_state=FAIL`. Runs that record no worker (another tool's)
    are left alone. Returns the ids of the runs ended."""
    from mlflow.exceptions import MlflowException

    _, grace = heartbeat_settings()
    client = mlflow.MlflowClient()
    try:
        running = mlflow.search_runs(
            search_all_experiments=True,
            filter_string="attributes.status = 'RUNNING'",
            output_format="list",
        )
    except MlflowException as err:  # a flaky server: the next run's start sweeps again
        log.warning("could not look for runs of dead workers: %s", first_line(err))
        return []
    ended = []
    for run in running:
        worker = Worker.from_tags(run.data.tags)
        if worker is None or not worker.is_gone(_last_beat(run), grace):
            continue
        run_id = run.info.run_id
        try:
            if "optuna.trial_number" in run.data.tags:
                client.set_tag(run_id, "optuna.trial_state", "FAIL")
            client.set_terminated(run_id, "KILLED")
        except MlflowException as err:
            log.warning("could not end run %s of a dead worker: %s", run_id, first_line(err))
            continue
        log.warning("ended run %s KILLED: its worker %s is gone", run_id, worker.tags()[WORKER_KEY])
        ended.append(run_id)
    return ended


def log_dataset(root: Path, split: Split, sizes: dict[str, tuple[int, int]]) -> None:
    """The split's file lists as `split.json` and the data set as the run's input."""
    import pandas as pd

    mlflow.log_dict(split.manifest(), "split.json")
    rows = [
        {"name": name, "split": part, "height": sizes[name][0], "width": sizes[name][1]}
        for part in ("train", "val", "test")
        for name in getattr(split, part)
    ]
    with warnings.catch_warnings():
        # MLflow warns that a local path could be two kinds of source, and (from log_input, which
        # infers the table's schema) that integer columns cannot hold missing values: neither
        # matters for a file list.
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            pd.DataFrame(rows),
            source=str(root),
            name=root.name or "data",
            digest=split.digest(),
        )
        _log_input_once_more_on_a_race(dataset)


def _log_input_once_more_on_a_race(dataset: Any) -> None:
    """`mlflow.log_input`; workers logging the same data set at the same moment race on its row
    in the store (a server answers `duplicate key ... dataset_pk`): the loser logs it again, and
    finds the row the winner made."""
    from mlflow.exceptions import MlflowException

    try:
        mlflow.log_input(dataset, context="training")
    except MlflowException as err:
        if "dataset_pk" not in str(err):
            raise
        mlflow.log_input(dataset, context="training")


def log_figure(figure: Any, path: str) -> None:
    """Log a matplotlib figure and release it."""
    import matplotlib.pyplot as plt

    mlflow.log_figure(figure, path)
    plt.close(figure)


@contextmanager
def quiet_model_logging() -> Iterator[None]:
    """Silence MLflow's advice to log models from code while logging our pyfunc.

    The model is an importable class of this package, so cloudpickle stores a reference to it,
    not code: the advice does not apply.
    """
    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def truncate_tag(value: str, limit: int = 5000) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def end_dead_worker_runs(run_id: str, trial_state: str = "FAIL") -> None:
    """End a dead worker's trial run, and its parent run, KILLED (they cannot end themselves)."""
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
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


def end_runs_of_finished_trials(
    experiment_id: str, study_name: str, finished: dict[int, str]
) -> int:
    """Trial runs of a study left RUNNING whose trial is over: their worker died. End them.

    `finished` maps the numbers of the study's finished trials to their states. A live worker
    ends a trial's run before Optuna records the trial's end, so a RUNNING run of a finished
    trial can only belong to a dead worker. Returns how many were ended.
    """
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=(
            f"tags.`optuna.study_name` = '{study_name}' and attributes.status = 'RUNNING'"
        ),
        output_format="list",
    )
    ended = 0
    for run in runs:
        number = run.data.tags.get("optuna.trial_number")
        state = finished.get(int(number)) if number is not None else None
        if state is not None:
            end_dead_worker_runs(run.info.run_id, state)
            ended += 1
    return ended
