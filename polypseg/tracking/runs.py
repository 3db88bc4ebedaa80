"""What a run does: `tracked_run` starts one that records its worker and beats while it runs, and
ends it as its block ended (`tracking.ending`); the rest logs what runs share: data set, figures.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import mlflow

from polypseg.data.split import Split
from polypseg.errors import first_line
from polypseg.processes import Worker, beating, heartbeat_settings
from polypseg.tracking.ending import HEARTBEAT_TAG, RunEnd, run_end
from polypseg.tracking.store import store_error

log = logging.getLogger(__name__)


@contextmanager
def tracked_run(
    ending: Callable[[BaseException | None], RunEnd] = run_end, **start_kwargs: Any
) -> Iterator[mlflow.ActiveRun]:
    """`mlflow.start_run` that ends as `ending` says from what the block raised (re-raised); a
    write the store refused (a full disk, a read-only folder) becomes one `StoreError`."""
    tags = {**Worker.current().tags(), **(start_kwargs.pop("tags", None) or {})}
    try:
        run = mlflow.start_run(tags=tags, **start_kwargs)
        try:
            with _beating(run.info.run_id):
                yield run
        except BaseException as err:
            end = ending(err)
            try:
                _end_active(end)
            except Exception as refused:
                # The store refused even that (a full disk): the error that got us here is the
                # one to report, and the next invocation ends the run KILLED.
                log.info("could not end the run %s: %s", end.status, first_line(refused))
            raise
        _end_active(ending(None))
    except Exception as err:  # not Ctrl-C: that stays an interrupt, whatever it interrupted
        if (store := store_error(err)) is not None:
            raise store from None
        raise


def _end_active(end: RunEnd) -> None:
    if end.tags:
        mlflow.set_tags(end.tags)
    mlflow.end_run(end.status)


def _beating(run_id: str) -> AbstractContextManager[None]:
    """Renew the run's heartbeat tag every interval while the block runs: how workers on other
    machines tell a live run from a dead one's."""
    client = mlflow.MlflowClient()

    def beat() -> None:
        try:
            client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time():.3f}")
        except Exception as err:  # a missed beat is no failure: the next one may get through
            log.debug("heartbeat of run %s missed: %s", run_id, err)

    return beating(heartbeat_settings()[0], beat, f"run-heartbeat-{run_id[:8]}", join=False)


def log_dataset(root: Path, split: Split, sizes: dict[str, tuple[int, int]]) -> None:
    """The split's file lists as `split.json` and the data set as the run's input; a split of
    several folders (`split.sources`) names them all, as source and name."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

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
            source=", ".join(f"{k}={v}" for k, v in split.sources) or str(root),
            name="+".join(k for k, _ in split.sources) or root.name or "data",
            digest=split.digest(),
        )
        try:
            mlflow.log_input(dataset, context="training")
        except MlflowException as err:
            # Workers logging the same data set at the same moment race on its row in the store
            # (a server answers `duplicate key ... dataset_pk`): the loser logs it again, and
            # finds the row the winner made.
            if "dataset_pk" not in str(err):
                raise
            mlflow.log_input(dataset, context="training")


def log_figure(figure: Any, path: str) -> None:
    """Log a matplotlib figure and release it."""
    import matplotlib.pyplot as plt

    mlflow.log_figure(figure, path)
    plt.close(figure)
