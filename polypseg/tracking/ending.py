"""How a run ends, and the runs of workers that died.

A run ends FINISHED, FAILED (an exception) or KILLED (Ctrl-C, SIGTERM, its worker died), never
left RUNNING. A trial's run ends as its trial does, through one mapping, `trial_run_end` (the
shape of optuna-integration's `MLflowCallback`: the record written in one place, from the trial's
final state), whichever way the trial ended: told, pruned, failed, interrupted, or swept after its
worker died. A worker that dies cannot end its own runs: each run records its worker
(`polypseg.processes.Worker`) and renews a heartbeat tag, and whoever notices ends the runs of a
dead worker KILLED ("kills" them): `kill_dead_runs` when an invocation opens its experiment, over
that experiment only (on this machine as soon as the process is gone, elsewhere once the
heartbeat is stale), `kill_trial_run` when a trial is failed for its dead worker,
`kill_orphaned_runs` for runs whose trial is already over.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

import mlflow

from polypseg.errors import first_line
from polypseg.processes import WORKER_KEY, Worker, heartbeat_settings

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

HEARTBEAT_TAG = "polypseg.heartbeat"  # Unix seconds of the run's last sign of life
STUDY_TAG, NUMBER_TAG, STATE_TAG = "optuna.study_name", "optuna.trial_number", "optuna.trial_state"


class RunEnd(NamedTuple):
    """How a run ends: its MLflow status, and the tags written as it ends."""

    status: str  # FINISHED, FAILED or KILLED
    tags: dict[str, str]


KILLED = RunEnd("KILLED", {})  # a run that is not a trial's, of a worker that died


def run_end(err: BaseException | None) -> RunEnd:
    """A plain run's end, from what its block raised (None: nothing): KILLED on Ctrl-C or
    SIGTERM, FAILED on an error, FINISHED otherwise."""
    if err is None:
        return RunEnd("FINISHED", {})
    return RunEnd("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", {})


def trial_run_tags(study_name: str, number: int) -> dict[str, str]:
    """The tags a trial's run starts with: its state says RUNNING until `trial_run_end`."""
    return {STUDY_TAG: study_name, NUMBER_TAG: str(number), STATE_TAG: "RUNNING"}


def trial_run_end(state: str, *, killed: bool = False, reason: str | None = None) -> RunEnd:
    """A trial's run end, from the trial's final state (an Optuna `TrialState` name).

    Every path a trial ends by goes through here. COMPLETE and PRUNED end FINISHED (a pruned
    trial did what was asked), FAIL ends FAILED, tagged with the `reason`; `killed` (Ctrl-C,
    SIGTERM, a worker that died) ends KILLED whatever the state. The state is always tagged.
    """
    status = "KILLED" if killed else "FAILED" if state == "FAIL" else "FINISHED"
    tags = {STATE_TAG: state}
    if reason is not None:
        tags["optuna.fail_reason"] = reason
    return RunEnd(status, tags)


def fail_reason(err: BaseException) -> str:
    """Why a trial failed, short enough for a tag or a trial attribute."""
    return f"{type(err).__name__}: {err}"[:500]


def _end_other(client: mlflow.MlflowClient, run_id: str, end: RunEnd) -> None:
    """End a run that is not this thread's active one (a dead worker's)."""
    for key, value in end.tags.items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, end.status)


def _last_beat(run: mlflow.entities.Run) -> float:
    """Unix seconds of the run's last heartbeat, or of its start before the first one."""
    try:
        return float(run.data.tags[HEARTBEAT_TAG])
    except (KeyError, ValueError):
        return run.info.start_time / 1000


def kill_dead_runs(experiment_id: str) -> list[str]:
    """End KILLED every RUNNING run of the experiment whose worker is gone (`Worker.is_gone`), a
    trial's run tagged FAIL: its trial is failed too, by a heartbeat or `fail_dead_trials`. Runs
    that record no worker (another tool's) and other experiments (other people's, on a shared
    server) are left alone. Returns the ids of the runs ended."""
    from mlflow.exceptions import MlflowException

    _, grace = heartbeat_settings()
    client = mlflow.MlflowClient()
    try:
        running = mlflow.search_runs(
            experiment_ids=[experiment_id],
            filter_string="attributes.status = 'RUNNING'",
            output_format="list",
        )
    except MlflowException as err:  # a flaky server: the next invocation sweeps again
        log.warning("could not look for runs of dead workers: %s", first_line(err))
        return []
    ended = []
    for run in running:
        worker = Worker.from_tags(run.data.tags)
        if worker is None or not worker.is_gone(_last_beat(run), grace):
            continue
        run_id = run.info.run_id
        is_trial = NUMBER_TAG in run.data.tags
        try:
            _end_other(client, run_id, trial_run_end("FAIL", killed=True) if is_trial else KILLED)
        except MlflowException as err:
            log.warning("could not end run %s of a dead worker: %s", run_id, first_line(err))
            continue
        log.warning("ended run %s KILLED: its worker %s is gone", run_id, worker.tags()[WORKER_KEY])
        ended.append(run_id)
    return ended


def kill_trial_run(run_id: str, state: str = "FAIL") -> None:
    """End a dead worker's trial run KILLED, tagged with its trial's `state`, and its parent run
    KILLED too: neither will end by itself."""
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
        if run.info.status == "RUNNING":
            _end_other(client, run_id, trial_run_end(state, killed=True))
            log.warning("ended run %s of a dead worker KILLED", run_id)
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent and client.get_run(parent).info.status == "RUNNING":
            _end_other(client, parent, KILLED)
    except MlflowException as err:  # the tracking server is down: the sweep will retry later
        log.warning("could not end run %s of a dead worker: %s", run_id, err)


def kill_orphaned_runs(study: optuna.Study, experiment_id: str) -> int:
    """End the trial runs of `study` left RUNNING although their trial is over (`kill_trial_run`,
    with the state the study recorded). A live worker ends a trial's run before it tells the
    study, so such a run can only be a dead worker's. Returns how many were ended."""
    finished = {
        t.number: t.state.name for t in study.get_trials(deepcopy=False) if t.state.is_finished()
    }
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=(
            f"tags.`{STUDY_TAG}` = '{study.study_name}' and attributes.status = 'RUNNING'"
        ),
        output_format="list",
    )
    ended = 0
    for run in runs:
        number = run.data.tags.get(NUMBER_TAG)
        state = finished.get(int(number)) if number is not None else None
        if state is not None:
            kill_trial_run(run.info.run_id, state)
            ended += 1
    return ended
