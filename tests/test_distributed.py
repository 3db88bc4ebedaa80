"""Many tune workers on one study: PostgreSQL and an MLflow server, SIGKILL mid-trial, SQLite.

Workers are real processes. The `services` tests need the engines `.ci/services.sh` starts
(`POLYPSEG_TEST_PG_URL`, `POLYPSEG_TEST_MLFLOW_URI`): skipped without them, failed in CI. The
others run anywhere: two workers on the embedded SQLite default, and the budget and stale-trial
mechanics on SQLite with a toy objective (seconds).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from conftest import unavailable
from mlflow import MlflowClient
from optuna.trial import TrialState

from polypseg.config import load_config
from polypseg.errors import PolypsegError
from polypseg.features.prepare import prepare
from polypseg.tracking.ending import kill_dead_runs
from polypseg.tracking.store import setup
from polypseg.tuning.storage import (
    fail_stale_trials,
    heartbeat_settings,
    make_storage,
)
from polypseg.tuning.workers import open_shared_study, run_worker

# One `polypseg tune` worker, through the library.
TUNE_WORKER = """
import json, sys
from polypseg.config import load_config
from polypseg.tuning.spec import load_spec
from polypseg.tuning.study import tune
a = json.loads(sys.argv[1])
config = load_config(a["config"], a["overrides"])
result = tune(config, load_spec(a["spec"], config), a["trials"], storage=a["storage"],
              progress=False, max_trials=a["max_trials"])
print("\\n".join(result.summary()), flush=True)
"""

# A worker with a toy objective: the storage, lock and budget mechanics without any training.
# Workers start their trials together (at `start_at`), so they race for the last ones.
TOY_WORKER = """
import pathlib, sys, time
import optuna
from polypseg.tuning.workers import open_shared_study, run_worker
url, name, n_trials, budget, hang, start_at = sys.argv[1:7]
study = open_shared_study(name, url, "minimize", lambda w: optuna.samplers.RandomSampler(w),
                          optuna.pruners.NopPruner(), int(budget))
time.sleep(max(0.0, float(start_at) - time.time()))
def objective(trial):
    x = trial.suggest_float("x", 0, 1)
    if hang != "-":
        pathlib.Path(hang).write_text(str(trial.number))
        time.sleep(600)
    return x
run_worker(study, objective, int(n_trials))
"""


@dataclass
class Services:
    pg_url: str
    mlflow_uri: str

    @property
    def password(self) -> str:
        from urllib.parse import urlsplit

        return urlsplit(self.pg_url).password or ""


@pytest.fixture
def services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Services:
    pg_url = os.environ.get("POLYPSEG_TEST_PG_URL")
    mlflow_uri = os.environ.get("POLYPSEG_TEST_MLFLOW_URI")
    if not (pg_url and mlflow_uri):
        reason = (
            "needs POLYPSEG_TEST_PG_URL and POLYPSEG_TEST_MLFLOW_URI: run under .ci/services.sh"
        )
        unavailable(reason)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return Services(pg_url, mlflow_uri)


_started: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _stop_leftover_workers():
    """A test that fails half-way leaves no worker of its own running."""
    yield
    while _started:
        worker = _started.pop()
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def _start(code: str, args: list[str], log: Path) -> subprocess.Popen:
    """A worker process with this test's environment (cache, tracking URI, heartbeat)."""
    with open(log, "w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-c", code, *args], stdout=out, stderr=subprocess.STDOUT
        )
    _started.append(worker)
    return worker


def _tune_worker(args: dict, log: Path) -> subprocess.Popen:
    return _start(TUNE_WORKER, [json.dumps(args)], log)


def _wait(worker: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    worker.wait(timeout=timeout)
    output = log.read_text()
    assert worker.returncode == 0, output[-3000:]
    return output


def _tune_args(tiny_config: Path, spec: Path, storage: str | None, name: str, budget: int) -> dict:
    overrides = {"tracking.experiment": name, "tracking.registered_model": name}
    return {
        "config": str(tiny_config),
        "spec": str(spec),
        "storage": storage,
        "trials": budget,  # each worker may run them all; the study-wide budget stops both
        "max_trials": budget,
        "overrides": overrides,
    }


def _study_runs(client: MlflowClient, experiment: str, study: str) -> tuple[list, list]:
    """(trial runs, parent runs) of a study."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs(
        [experiment_id], f"tags.`optuna.study_name` = '{study}'", max_results=1000
    )
    trials = [r for r in runs if "optuna.trial_number" in r.data.tags]
    parents = [r for r in runs if "optuna.trial_number" not in r.data.tags]
    return trials, parents


def _assert_one_run_per_trial(client: MlflowClient, name: str, trials: list) -> tuple[list, list]:
    trial_runs, parents = _study_runs(client, name, name)
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in trial_runs)
    assert numbers == sorted(t.number for t in trials)  # each trial exactly one run
    by_id = {r.info.run_id: r for r in trial_runs}
    for trial in trials:
        run = by_id[trial.user_attrs["mlflow_run_id"]]
        assert run.data.tags["optuna.trial_number"] == str(trial.number)
        assert run.data.tags["mlflow.parentRunId"] in {p.info.run_id for p in parents}
    return trial_runs, parents


def _assert_one_champion(client: MlflowClient, name: str, study: optuna.Study) -> None:
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.tags["polypseg.trial"] == str(study.best_trial.number)
    registered = [v.tags["polypseg.trial"] for v in client.search_model_versions(f"name='{name}'")]
    assert len(registered) == len(set(registered))  # workers ending together registered it once


@pytest.mark.services
def test_two_workers_share_one_study_on_postgres_and_an_mlflow_server(
    services: Services, tiny_config: Path, tmp_path: Path, study_spec: Callable[..., Path]
) -> None:
    name = f"two-workers-{uuid.uuid4().hex[:8]}"
    budget = 6
    args = _tune_args(tiny_config, study_spec(name, 40), services.pg_url, name, budget)
    prepare(load_config(tiny_config), progress=False)  # the workers share this feature cache
    start = time.monotonic()
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [_tune_worker(args, log) for log in logs]
    outputs = [_wait(worker, log) for worker, log in zip(workers, logs, strict=True)]
    wall = time.monotonic() - start

    study = optuna.load_study(study_name=name, storage=make_storage(services.pg_url))
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(budget))  # exact, no duplicates
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    client = MlflowClient(services.mlflow_uri)
    trial_runs, parents = _assert_one_run_per_trial(client, name, trials)
    assert {r.info.status for r in trial_runs + parents} == {"FINISHED"}
    assert len(parents) == 2  # one per worker, and both took trials
    per_worker = {p.info.run_id: 0 for p in parents}
    for run in trial_runs:
        per_worker[run.data.tags["mlflow.parentRunId"]] += 1
    assert min(per_worker.values()) >= 1, per_worker
    _assert_one_champion(client, name, study)
    # The storage password is in no output, param or tag; the parent's storage tag is masked.
    assert services.password not in "".join(outputs)
    for run in trial_runs + parents:
        recorded = json.dumps([run.data.params, run.data.tags])
        assert services.password not in recorded
    assert all(":***@" in p.data.tags["polypseg.storage"] for p in parents)
    figures = {"workers": 2, "trials": budget, "per_worker": sorted(per_worker.values())}
    print(json.dumps({**figures, "wall_s": round(wall, 1)}))


def _wait_for_training_run(client: MlflowClient, name: str, timeout: float, number: int = 1):
    """The RUNNING run of trial `number` once it has logged an epoch: the trial is mid-way."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            found = client.search_runs(
                [experiment.experiment_id],
                f"tags.`optuna.trial_number` = '{number}' and attributes.status = 'RUNNING'",
            )
            if found and "val_dice" in found[0].data.metrics:
                return found[0]
        time.sleep(0.2)
    raise AssertionError(f"trial {number} of {name} never ran")


def _assert_recovered(client: MlflowClient, name: str, study: optuna.Study, killed_run, budget):
    """The killed trial is FAIL, retried once with its params, its runs ended KILLED."""
    trials = study.get_trials()
    number = int(killed_run.data.tags["optuna.trial_number"])
    assert trials[number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == trials[number].params
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == budget and len(trials) == budget + 1
    trial_runs, parents = _assert_one_run_per_trial(client, name, trials)
    assert "RUNNING" not in {r.info.status for r in trial_runs + parents}
    killed = client.get_run(killed_run.info.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["optuna.trial_state"] == "FAIL"
    parent_status = {p.info.run_id: p.info.status for p in parents}
    assert parent_status.pop(killed.data.tags["mlflow.parentRunId"]) == "KILLED"
    assert set(parent_status.values()) == {"FINISHED"}
    _assert_one_champion(client, name, study)
    return retries[0]


@pytest.mark.services
def test_a_surviving_worker_retries_the_trial_of_a_killed_one(
    services: Services,
    tiny_config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    study_spec: Callable[..., Path],
) -> None:
    monkeypatch.setenv("POLYPSEG_HEARTBEAT", "1,3")
    name = f"survivor-{uuid.uuid4().hex[:8]}"
    budget = 4
    args = _tune_args(tiny_config, study_spec(name, 60), services.pg_url, name, budget)
    args["overrides"]["train.patience"] = 0
    prepare(load_config(tiny_config), progress=False)
    client = MlflowClient(services.mlflow_uri)
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = {}
    for log in logs:
        worker = _tune_worker(args, log)
        workers[worker.pid] = (worker, log)
    start = time.monotonic()
    killed_run = _wait_for_training_run(client, name, timeout=240)
    parent = client.get_run(killed_run.data.tags["mlflow.parentRunId"])
    victim, _ = workers.pop(int(parent.data.tags["polypseg.worker"].rsplit(":", 1)[1]))
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    [(survivor, log)] = workers.values()
    _wait(survivor, log)  # it noticed the dead trial, ended its runs and ran the retry
    study = optuna.load_study(study_name=name, storage=make_storage(services.pg_url))
    retry = _assert_recovered(client, name, study, killed_run, budget)
    figures = {"workers": 2, "killed": "one worker mid-trial", "retried_as": retry.number}
    print(json.dumps({**figures, "wall_s": round(time.monotonic() - start, 1)}))


def test_two_workers_on_the_embedded_sqlite_default(
    tiny_config: Path, tmp_path: Path, mlflow_store: str, study_spec: Callable[..., Path]
) -> None:
    """Fresh stores, two processes at once: no pre-created database, study or experiment."""
    name = "sqlite-workers"
    budget = 4
    args = _tune_args(tiny_config, study_spec(name, 20), None, name, budget)
    prepare(load_config(tiny_config), progress=False)
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [_tune_worker(args, log) for log in logs]
    for worker, log in zip(workers, logs, strict=True):
        _wait(worker, log)
    study = optuna.load_study(
        study_name=name, storage=make_storage(f"sqlite:///{tmp_path}/studies/optuna.db")
    )
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(budget))
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    client = MlflowClient(mlflow_store)
    trial_runs, parents = _assert_one_run_per_trial(client, name, trials)
    assert len(parents) == 2
    assert {r.info.status for r in trial_runs + parents} == {"FINISHED"}
    _assert_one_champion(client, name, study)


def _toy(
    url: str, name: str, n_trials: int, budget: int, hang: str, log: Path, start_at: float = 0
) -> subprocess.Popen:
    return _start(TOY_WORKER, [url, name, str(n_trials), str(budget), hang, str(start_at)], log)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_the_budget_is_exact_across_processes(tmp_path: Path, kind: str) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}" if kind == "sqlite" else f"journal:{tmp_path}/j.log"
    budget, logs = 30, [tmp_path / f"toy{i}.log" for i in range(3)]
    start_at = time.time() + 8  # after every worker imported and opened the study
    workers = [_toy(url, "budget", budget, budget, "-", log, start_at) for log in logs]
    for worker, log in zip(workers, logs, strict=True):
        _wait(worker, log, timeout=120)
    study = optuna.load_study(study_name="budget", storage=make_storage(url))
    trials = study.get_trials()
    # Without the study lock 4 runs in 6 overshot here (31 trials for a budget of 30).
    assert sorted(t.number for t in trials) == list(range(budget))
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    assert study.user_attrs["polypseg.workers"] == 3  # three sampler seeds
    assert len({t.params["x"] for t in trials}) == budget


def test_a_killed_workers_trial_becomes_fail_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYPSEG_HEARTBEAT", "1,2")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    marker = tmp_path / "running"
    victim = _toy(url, "stale", 5, 2, str(marker), tmp_path / "victim.log")
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    # Resumed at once, within the grace period: the dead trial still holds the budget of 1, so
    # the worker waits until it goes stale, then runs its retry.
    study = open_shared_study(
        "stale", url, "minimize", optuna.samplers.RandomSampler, optuna.pruners.NopPruner(), 1
    )
    assert [t.state for t in study.study.get_trials()] == [TrialState.RUNNING]
    objective = lambda trial: trial.suggest_float("x", 0, 1)  # noqa: E731
    assert run_worker(study, objective, 5) == {"COMPLETE": 1}  # then the budget is used up
    trials = study.study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].system_attrs["failed_trial"] == 0 and trials[1].params == trials[0].params


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_stale_trials_are_failed_when_a_worker_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYPSEG_HEARTBEAT", "1,2")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = open_shared_study(
        "stale", url, "minimize", optuna.samplers.RandomSampler, optuna.pruners.NopPruner()
    )
    trial = study.take_trial()
    with study.heartbeat(trial):
        pass  # its worker "dies" here: nobody beats for it any more
    time.sleep(3)
    fail_stale_trials(study.study)
    trials = study.study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].system_attrs["failed_trial"] == 0


def test_runs_left_running_by_a_dead_worker_are_ended(mlflow_store: str) -> None:
    experiment_id = setup("orphans")
    client = MlflowClient()
    study = optuna.create_study(study_name="s")
    dead, alive, done = study.ask(), study.ask(), study.ask()
    study.tell(dead, state=TrialState.FAIL)
    study.tell(done, 0.5)  # over, but its run left RUNNING
    parent = client.create_run(experiment_id, tags={"optuna.study_name": "s"}).info.run_id
    runs = {}
    for trial in (dead, alive, done):
        tags = {
            "optuna.study_name": "s",
            "optuna.trial_number": str(trial.number),
            "mlflow.parentRunId": parent,
        }
        runs[trial.number] = client.create_run(experiment_id, tags=tags).info.run_id
    ended_ids = [runs[dead.number], runs[done.number], parent]
    assert sorted(kill_dead_runs(experiment_id, study)) == sorted(ended_ids)
    ended = client.get_run(runs[dead.number])
    assert ended.info.status == "KILLED" and ended.data.tags["optuna.trial_state"] == "FAIL"
    ended = client.get_run(runs[done.number])
    assert ended.info.status == "KILLED" and ended.data.tags["optuna.trial_state"] == "COMPLETE"
    assert client.get_run(parent).info.status == "KILLED"
    assert client.get_run(runs[alive.number]).info.status == "RUNNING"  # its trial still runs


def test_heartbeat_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert heartbeat_settings() == (20, 60)
    monkeypatch.setenv("POLYPSEG_HEARTBEAT", "2,5")
    assert heartbeat_settings() == (2, 5)
    monkeypatch.setenv("POLYPSEG_HEARTBEAT", "5,2")
    with pytest.raises(PolypsegError, match="POLYPSEG_HEARTBEAT='5,2'"):
        heartbeat_settings()


def test_a_mistyped_storage_url_does_not_leak_its_password() -> None:
    with pytest.raises(PolypsegError) as error:
        make_storage("postgresql//u:hunter2@127.0.0.1/db")  # no colon: not a URL urllib reads
    assert "hunter2" not in str(error.value) and "u:***@" in str(error.value)
