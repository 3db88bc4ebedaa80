"""What a run does: how it starts and ends, what it logs, and the runs of workers that died.

Runs end FINISHED, FAILED (an exception) or KILLED (Ctrl-C, SIGTERM), never left RUNNING by a live
process. A worker that dies cannot end its own runs: whichever worker notices (a stale trial's
heartbeat, or a trial already over whose run is still RUNNING) ends them KILLED.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow

from polypseg.data.split import Split

log = logging.getLogger(__name__)


@contextmanager
def tracked_run(
    finished_on: tuple[type[BaseException], ...] = (), **start_kwargs: Any
) -> Iterator[mlflow.ActiveRun]:
    """`mlflow.start_run` that ends KILLED on Ctrl-C, FAILED on errors, FINISHED otherwise.

    Exceptions in `finished_on` (a pruned trial) end the run FINISHED and are re-raised.
    """
    run = mlflow.start_run(**start_kwargs)
    try:
        yield run
    except finished_on:
        mlflow.end_run("FINISHED")
        raise
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


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
