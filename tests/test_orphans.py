"""Nothing is left RUNNING by a process that is gone: runs and trials record their worker (host,
pid, process start time), and the next invocation on the same store ends a dead worker's runs
KILLED and fails its trials. On this machine the process table decides at once; a run of
another machine is judged by its heartbeat.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import psutil
import pytest
import sqlalchemy.exc
from mlflow import MlflowClient
from optuna.trial import TrialState

from polypseg.config import load_config
from polypseg.features.prepare import prepare
from polypseg.processes import Worker
from polypseg.tracking.ending import kill_dead_runs
from polypseg.tracking.runs import tracked_run
from polypseg.tracking.store import setup
from polypseg.tuning.storage import fail_dead_trials, make_storage

CLI = "import sys; from polypseg.cli import main; sys.argv[0] = 'polypseg'; main()"


@pytest.fixture
def dead_worker() -> Worker:
    """A worker of this machine whose process has ended."""
    process = subprocess.Popen(["sleep", "60"])
    started = psutil.Process(process.pid).create_time()
    worker = dataclasses.replace(Worker.current(), pid=process.pid, started=started)
    process.kill()
    process.wait()
    return worker


def _create_run(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> str:
    return client.create_run(experiment_id, tags=tags).info.run_id


def test_runs_of_a_dead_process_on_this_machine_are_ended_at_once(
    mlflow_store: str, dead_worker: Worker
) -> None:
    experiment_id = setup("orphans")
    client = MlflowClient()
    parent = _create_run(client, experiment_id, dead_worker.tags())
    trial_tags = {"optuna.trial_number": "0", "mlflow.parentRunId": parent}
    trial = _create_run(client, experiment_id, {**dead_worker.tags(), **trial_tags})
    alive = _create_run(client, experiment_id, Worker.current().tags())
    unowned = _create_run(client, experiment_id, {})  # another tool's run: not ours to judge
    # A process that got a dead worker's pid (here: ours) is not that worker.
    reused = dataclasses.replace(Worker.current(), started=Worker.current().started - 100.0)

    assert sorted(kill_dead_runs(experiment_id)) == sorted([parent, trial])
    assert client.get_run(parent).info.status == "KILLED"
    ended = client.get_run(trial)
    assert ended.info.status == "KILLED" and ended.data.tags["optuna.trial_state"] == "FAIL"
    assert client.get_run(alive).info.status == "RUNNING"
    assert client.get_run(unowned).info.status == "RUNNING"
    assert reused.is_gone(last_beat=None, grace=60)


def test_runs_of_another_machine_end_when_their_heartbeat_is_stale(mlflow_store: str) -> None:
    experiment_id = setup("orphans")
    client = MlflowClient()
    elsewhere = Worker("another-machine", os.getpid(), Worker.current().started, "elsewhere")
    beating = _create_run(client, experiment_id, elsewhere.tags())
    silent = _create_run(client, experiment_id, elsewhere.tags())
    client.set_tag(silent, "polypseg.heartbeat", f"{time.time() - 3600:.3f}")
    assert kill_dead_runs(experiment_id) == [silent]
    assert client.get_run(silent).info.status == "KILLED"
    assert client.get_run(beating).info.status == "RUNNING"  # it started a moment ago


def test_a_running_run_beats_and_records_its_worker(
    mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYPSEG_HEARTBEAT", "1,3")
    setup("orphans")
    with tracked_run(run_name="beating") as run:
        time.sleep(2.5)
        tags = MlflowClient().get_run(run.info.run_id).data.tags
    assert Worker.from_tags(tags) == Worker.current()
    assert time.time() - float(tags["polypseg.heartbeat"]) < 2.5
    assert MlflowClient().get_run(run.info.run_id).info.status == "FINISHED"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_trials_of_a_dead_worker_fail_and_are_retried_without_waiting(
    tmp_path: Path, dead_worker: Worker, kind: str
) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}" if kind == "sqlite" else f"journal:{tmp_path}/j"
    storage = make_storage(url)
    study = optuna.create_study(study_name="s", storage=storage)
    dead, alive, unowned = study.ask(), study.ask(), study.ask()
    dead.suggest_float("x", 0, 1)
    for trial, worker in ((dead, dead_worker), (alive, Worker.current())):
        for key, value in worker.tags().items():
            trial.set_user_attr(key, value)
    assert fail_dead_trials(study, storage) == [dead.number]
    # Seen under the study lock, a trial with no worker lost its taker between ask and record.
    assert fail_dead_trials(study, storage, unowned_are_dead=True) == [unowned.number]
    fail, running, waiting = TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING
    assert [t.state for t in study.get_trials()] == [fail, running, fail, waiting, waiting]
    assert study.trials[3].params == study.trials[0].params  # the retry a heartbeat would queue


def _start_cli(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-c", CLI, *args], stdout=out, stderr=out)


def _running_runs(client: MlflowClient) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=1000)


def test_a_killed_train_run_is_ended_by_the_next_invocation(
    tiny_config: Path, mlflow_store: str, tmp_path: Path
) -> None:
    prepare(load_config(tiny_config), progress=False)
    args = ["train", "--config", str(tiny_config), "--no-log-model", "--set", "train.epochs=200"]
    victim = _start_cli(args, tmp_path / "victim.log")
    client = MlflowClient(mlflow_store)
    deadline = time.monotonic() + 120
    while not _running_runs(client) and time.monotonic() < deadline:
        time.sleep(0.2)
    [killed] = _running_runs(client)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    next_run = subprocess.run(
        [sys.executable, "-c", CLI, *args[:-2], "--set", "train.epochs=1"],
        capture_output=True,
        text=True,
    )
    assert next_run.returncode == 0, next_run.stderr[-3000:]
    assert client.get_run(killed.info.run_id).info.status == "KILLED"
    assert _running_runs(client) == []


def test_a_tune_killed_starting_training_or_registering_leaves_nothing_running(
    tiny_config: Path, mlflow_store: str, study_spec: Callable[..., Path], tmp_path: Path
) -> None:
    """One worker killed at the three moments that leave different work behind: starting (the
    parent run open, no trial yet), mid-trial (a RUNNING trial and its run) and registering
    (every trial over, the parent run open); each kill followed by the next invocation, which
    must clean up after it."""
    prepare(load_config(tiny_config), progress=False)
    args = [
        "tune",
        "--trials",
        "2",
        "--config",
        str(tiny_config),
        "--study",
        str(study_spec(epochs=1)),
    ]
    client = MlflowClient(mlflow_store)
    database = tmp_path / "studies" / "optuna.db"
    storage = f"sqlite:///{database}"
    left_runs: set[str] = set()
    left_trials: set[int] = set()

    def trials(*states: TrialState) -> set[int]:
        if not database.exists():
            return set()
        try:
            study = optuna.load_study(study_name="s", storage=storage)
        except (KeyError, sqlalchemy.exc.OperationalError):  # not made yet, or being made
            return set()
        return {t.number for t in study.get_trials(states=states)}

    def running() -> tuple[set[str], set[int]]:
        return {r.info.run_id for r in _running_runs(client)}, trials(TrialState.RUNNING)

    def ended_trials() -> int:
        return len(trials(TrialState.COMPLETE, TrialState.PRUNED))

    # Each moment is seen, not timed: how long start-up takes depends on the machine's load.
    moments = {
        "starting": lambda runs, trials, done: bool(runs) and not trials,
        "training": lambda runs, trials, done: bool(runs) and bool(trials),
        "registering": lambda runs, trials, done: bool(runs) and not trials and done >= 2,
    }
    finished = 0
    for moment, seen in moments.items():
        before_runs, before_trials = running()
        victim = _start_cli(args, tmp_path / f"victim-{moment}.log")
        deadline = time.monotonic() + 180
        while victim.poll() is None and time.monotonic() < deadline:
            runs, taken = running()
            done = ended_trials() - finished if runs - before_runs else 0
            if seen(runs - before_runs, taken - before_trials, done):
                break
            time.sleep(0.05)
        assert victim.poll() is None, f"{moment}: the worker ended before it could be killed"
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        runs, taken = running()
        left_runs |= runs
        left_trials |= taken
        finished = ended_trials()
    last = subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True)
    assert last.returncode == 0, last.stderr[-3000:]

    assert left_runs and left_trials  # the kills did leave work behind for the rule to end
    assert _running_runs(client) == []
    assert {client.get_run(run).info.status for run in left_runs} == {"KILLED"}
    study = optuna.load_study(study_name="s", storage=storage)
    assert study.get_trials(states=(TrialState.RUNNING,)) == []
    assert {study.trials[n].state for n in left_trials} == {TrialState.FAIL}
