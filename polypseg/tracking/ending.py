"""How a run ends, and the runs of workers that died.

A run ends FINISHED, FAILED (an exception) or KILLED (Ctrl-C, SIGTERM, its worker died), never
left RUNNING. A trial's run is tagged with its trial's final state, however the trial ended (the
shape of optuna-integration's `MLflowCallback`): by its worker through `trial_run_end`, or by
whoever ends a dead worker's runs. A dead worker cannot end its own runs: each run records its
worker (`polypseg.processes.Worker`) and renews a heartbeat tag, and whoever notices ends a dead
worker's runs KILLED: `kill_dead_runs` over one experiment, and the runs of a study's trials
that are already over (failed for their dead worker, say).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

import mlflow

from polypseg.errors import first_line
from polypseg.processes import Worker, heartbeat_settings

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

HEARTBEAT_TAG = "polypseg.heartbeat"  # Unix seconds of the run's last sign of life
STUDY_TAG, NUMBER_TAG, STATE_TAG = "optuna.study_name", "optuna.trial_number", "optuna.trial_state"


class RunEnd(NamedTuple):
    status: str  # FINISHED, FAILED or KILLED
    tags: dict[str, str]  # written as the run ends


def run_end(err: BaseException | None) -> RunEnd:
    """A run's end from what its block raised (None: nothing): Ctrl-C or SIGTERM is KILLED."""
    if err is None:
        return RunEnd("FINISHED", {})
    return RunEnd("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", {})


def trial_run_tags(study_name: str, number: int) -> dict[str, str]:
    """The tags a trial's run starts with: its state says RUNNING until `trial_run_end`."""
    return {STUDY_TAG: study_name, NUMBER_TAG: str(number), STATE_TAG: "RUNNING"}


def trial_run_end(err: BaseException | None) -> RunEnd:
    """`run_end`, tagged with the state the worker then tells the study (`Study.optimize`'s
    rule): a pruned trial did what was asked (FINISHED), a failed one records why."""
    import optuna

    if isinstance(err, optuna.TrialPruned):
        return RunEnd("FINISHED", {STATE_TAG: "PRUNED"})
    end = run_end(err)
    if end.status == "FAILED":
        return RunEnd(end.status, {STATE_TAG: "FAIL", "optuna.fail_reason": fail_reason(err)})
    return RunEnd(end.status, {STATE_TAG: "COMPLETE" if err is None else "FAIL"})


def fail_reason(err: BaseException) -> str:
    """Why a trial failed, short enough for a tag or a trial attribute."""
    return f"{type(err).__name__}: {err}"[:500]


def _last_beat(run: mlflow.entities.Run) -> float:
    """Unix seconds of the run's last heartbeat, or of its start before the first one."""
    try:
        return float(run.data.tags[HEARTBEAT_TAG])
    except (KeyError, ValueError):
        return run.info.start_time / 1000


def kill_dead_runs(experiment_id: str, study: optuna.Study | None = None) -> list[str]:
    """End KILLED the experiment's RUNNING runs whose worker is gone (`Worker.is_gone`), a trial's
    tagged FAIL, and those of the `study`'s trials that are over, tagged with the trial's state,
    with their parent runs: a live worker ends a trial's run before it tells the study, so these
    are a dead worker's, even one that recorded no worker. Other runs that record no worker
    (another tool's) and other experiments (other people's, on a shared server) are left alone.
    Returns the ids of the runs ended."""
    from mlflow.exceptions import MlflowException

    _, grace = heartbeat_settings()
    over = {  # (study, trial number): the state of each trial that is over
        (study.study_name, str(t.number)): t.state.name
        for t in (study.get_trials(deepcopy=False) if study is not None else ())
        if t.state.is_finished()
    }
    try:
        found = mlflow.search_runs(
            experiment_ids=[experiment_id],
            filter_string="attributes.status = 'RUNNING'",
            output_format="list",
        )
    except MlflowException as err:  # a flaky server: the next invocation sweeps again
        log.warning("could not look for runs of dead workers: %s", first_line(err))
        return []
    running = {run.info.run_id: run for run in found}
    dead: dict[str, str | None] = {}  # run id: its trial's state (None: not a trial's run)
    for run_id, run in running.items():
        tags, worker = run.data.tags, Worker.from_tags(run.data.tags)
        if (state := over.get((tags.get(STUDY_TAG), tags.get(NUMBER_TAG)))) is not None:
            dead[run_id] = state
            if (parent := tags.get("mlflow.parentRunId")) in running:
                dead.setdefault(parent, None)
        elif worker is not None and worker.is_gone(_last_beat(run), grace):
            dead[run_id] = "FAIL" if NUMBER_TAG in tags else None
    client, ended = mlflow.MlflowClient(), []
    for run_id, state in dead.items():
        try:
            if state is not None:
                client.set_tag(run_id, STATE_TAG, state)
            client.set_terminated(run_id, "KILLED")
        except MlflowException as err:
            log.warning("could not end run %s of a dead worker: %s", run_id, first_line(err))
            continue
        log.warning("ended run %s of a dead worker KILLED", run_id)
        ended.append(run_id)
    return ended
