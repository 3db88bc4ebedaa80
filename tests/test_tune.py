"""`polypseg tune`: resumable studies, nested runs, pruning, failures, Ctrl-C, the registry."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import torch
from conftest import one_error_line
from typer.testing import CliRunner

import polypseg.tuning.objective as objective_module
from polypseg.cli import app
from polypseg.config import load_config
from polypseg.models.decoder import SimpleDecoder
from polypseg.models.encoders import encoder_architecture
from polypseg.tracking.ending import trial_run_end
from polypseg.tracking.registry import Score, register_trial
from polypseg.tracking.store import setup
from polypseg.tuning.spec import load_spec
from polypseg.tuning.study import tune


def _children(parent_id: str) -> list:
    return mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
        output_format="list",
    )


@pytest.mark.parametrize(
    ("error", "state", "status"),
    [
        (None, "COMPLETE", "FINISHED"),
        (optuna.TrialPruned(), "PRUNED", "FINISHED"),  # a pruned trial did what was asked
        (ValueError("x"), "FAIL", "FAILED"),
        (KeyboardInterrupt(), "FAIL", "KILLED"),  # Ctrl-C or SIGTERM
    ],
)
def test_a_trial_run_ends_as_its_trial_did(
    error: BaseException | None, state: str, status: str
) -> None:
    end = trial_run_end(error)
    reason = {"optuna.fail_reason": "ValueError: x"} if status == "FAILED" else {}
    assert end.status == status and end.tags == {"optuna.trial_state": state, **reason}


def test_second_invocation_resumes_the_study(
    tiny_config: Path, tmp_path: Path, mlflow_store: str, study_spec: Callable[..., Path]
) -> None:
    config = load_config(tiny_config)
    spec = load_spec(study_spec(), config)
    first = tune(config, spec, 4, progress=False)
    second = tune(config, spec, 4, progress=False)
    trials = second.study.get_trials()
    assert len(trials) == 8 and sorted(t.number for t in trials) == list(range(8))
    assert Path("studies/optuna.db").exists()
    assert (first.images_encoded, second.images_encoded) == (12, 0)  # once per image, in all
    params = {tuple(sorted(t.params.items())) for t in trials}
    assert len(params) == 8  # the resumed sampler does not repeat the first invocation's trials
    for number, result in enumerate((first, second), start=1):
        parent = mlflow.get_run(result.parent_run_id)
        assert parent.info.run_name == f"s #{number}" and parent.info.status == "FINISHED"
        assert "best.train.lr" in parent.data.params
        # This invocation's trials and the whole study's, each named for what it counts.
        assert parent.data.params["invocation.trials"] == "4"
        assert parent.data.metrics["invocation.trials_complete"] == 4
        assert parent.data.metrics["study.trials_complete"] == 4 * number
        children = _children(result.parent_run_id)
        assert len(children) == 4
        for run in children:
            assert run.info.status == "FINISHED"
            assert run.info.run_name == f"trial-{run.data.tags['optuna.trial_number']}"
            assert run.data.tags["optuna.study_name"] == "s"
            assert run.data.tags["optuna.trial_state"] == "COMPLETE"
            assert "test_dice" in run.data.metrics
    plots = {f.path for f in mlflow.MlflowClient().list_artifacts(second.parent_run_id, "figures")}
    assert "figures/optimization_history.png" in plots
    champion = mlflow.pyfunc.load_model("models:/polypseg-test@champion")
    mask = champion.predict(np.zeros((40, 70, 3), dtype=np.uint8))
    assert mask.shape == (40, 70)
    version = mlflow.MlflowClient().get_model_version_by_alias("polypseg-test", "champion")
    assert float(version.tags["val_dice"]) == pytest.approx(second.study.best_value, abs=1e-6)
    assert version.tags["polypseg.trial"] == str(second.study.best_trial.number)


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_pruned_trial_ends_finished_and_tagged_pruned(
    tiny_config: Path,
    tmp_path: Path,
    mlflow_store: str,
    monkeypatch: pytest.MonkeyPatch,
    study_spec: Callable[..., Path],
) -> None:
    monkeypatch.setattr(
        load_spec(study_spec()).__class__, "make_pruner", lambda self: _AlwaysPrune()
    )
    config = load_config(tiny_config)
    result = tune(config, load_spec(study_spec(), config), 2, progress=False)
    assert result.counts["PRUNED"] == 2 and result.registration is None
    for run in _children(result.parent_run_id):
        assert run.info.status == "FINISHED"
        assert run.data.tags["optuna.trial_state"] == "PRUNED"


def _fail_on_call(monkeypatch: pytest.MonkeyPatch, n: int, error: BaseException) -> Callable:
    """Make the n-th trial's training raise `error`; returns the real `train_and_log`."""
    real = objective_module.train_and_log
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(objective_module, "train_and_log", failing)
    return real


def test_failed_trial_is_recorded_and_the_study_goes_on(
    tiny_config: Path,
    tmp_path: Path,
    mlflow_store: str,
    monkeypatch: pytest.MonkeyPatch,
    study_spec: Callable[..., Path],
) -> None:
    _fail_on_call(monkeypatch, 1, RuntimeError("CUDA out of memory (simulated)"))
    config = load_config(tiny_config)
    result = tune(config, load_spec(study_spec(), config), 3, progress=False)
    failed = [t for t in result.study.get_trials() if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and "out of memory" in failed[0].user_attrs["fail_reason"]
    assert result.counts["COMPLETE"] == 2
    states = {
        r.data.tags["optuna.trial_state"]: r.info.status for r in _children(result.parent_run_id)
    }
    assert states == {"FAIL": "FAILED", "COMPLETE": "FINISHED"}


def test_ctrl_c_kills_runs_and_leaves_the_study_resumable(
    tiny_config: Path,
    tmp_path: Path,
    mlflow_store: str,
    monkeypatch: pytest.MonkeyPatch,
    study_spec: Callable[..., Path],
) -> None:
    real = _fail_on_call(monkeypatch, 2, KeyboardInterrupt())
    config = load_config(tiny_config)
    spec = load_spec(study_spec(), config)
    with pytest.raises(KeyboardInterrupt):
        tune(config, spec, 3, progress=False)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert "RUNNING" not in {r.info.status for r in runs}
    assert {r.info.status for r in runs} == {"FINISHED", "KILLED"}
    # The killed trial's run says what Optuna recorded for the trial, not RUNNING.
    study = optuna.load_study(study_name="s", storage="sqlite:///studies/optuna.db")
    killed = [r for r in runs if r.info.status == "KILLED" and "optuna.trial_number" in r.data.tags]
    assert len(killed) == 1
    recorded = study.trials[int(killed[0].data.tags["optuna.trial_number"])].state.name
    assert killed[0].data.tags["optuna.trial_state"] == recorded == "FAIL"
    monkeypatch.setattr(objective_module, "train_and_log", real)
    resumed = tune(config, spec, 1, progress=False)
    assert len(resumed.study.get_trials()) == 3 and resumed.counts["COMPLETE"] == 2


def test_sigterm_ends_the_trial_run_killed_with_the_state_optuna_recorded(
    tiny_config: Path, tmp_path: Path, mlflow_store: str, study_spec: Callable[..., Path]
) -> None:
    """`polypseg tune` killed by SIGTERM mid-trial: exit 130, the trial's run KILLED and tagged
    with the trial's state in the study (FAIL), the parent run KILLED too."""
    import os
    import signal
    import subprocess
    import sys
    import time

    mlflow.set_tracking_uri(mlflow_store)  # not the store an earlier test in this process set
    args = ["tune", "--trials", "1", "--config", str(tiny_config)]
    args += ["--study", str(study_spec(epochs=2000)), "--set", "train.patience=0"]
    worker = subprocess.Popen(
        [sys.executable, "-c", "from polypseg.cli import main; main()", *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        trial_run = None
        while trial_run is None or "val_dice" not in trial_run.data.metrics:
            assert worker.poll() is None and time.monotonic() < deadline, worker.stderr.read()
            time.sleep(0.5)
            trial_run = next(iter(_trial_runs()), None)
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=120)
    finally:
        worker.kill()
    assert worker.returncode == 130 and stderr.strip().endswith("interrupted"), stderr
    run = mlflow.get_run(trial_run.info.run_id)
    study = optuna.load_study(study_name="s", storage="sqlite:///studies/optuna.db")
    assert run.info.status == "KILLED"
    assert run.data.tags["optuna.trial_state"] == study.trials[0].state.name == "FAIL"
    assert mlflow.get_run(run.data.tags["mlflow.parentRunId"]).info.status == "KILLED"


def _trial_runs() -> list:
    """The trial runs in the store so far (none while the store is being created)."""
    try:
        return mlflow.search_runs(
            search_all_experiments=True,
            filter_string="attributes.run_name LIKE 'trial-%'",
            output_format="list",
        )
    except Exception:  # the worker is still creating the store
        return []


def _run_with_decoder(width: int) -> str:
    decoder = SimpleDecoder(64, width)
    with mlflow.start_run() as run:
        path = Path("decoder.pt")
        torch.save({"in_channels": 64, "width": width, "state": decoder.state_dict()}, path)
        mlflow.log_artifact(str(path), "decoder")
    return run.info.run_id


def test_champion_moves_only_when_val_dice_improves(mlflow_store: str) -> None:
    setup("registry")
    encoder = encoder_architecture("sam_tiny")
    runs = [_run_with_decoder(8) for _ in range(3)]
    register = partial(register_trial, "m", study="s", encoder=encoder, image_size=64)

    def dice(value: float) -> Score:
        return Score("val_dice", value, "maximize", "kvasir", "split-a")

    with mlflow.start_run():
        first = register(trial=0, run_id=runs[0], score=dice(0.50), test_dice=0.4)
        worse = register(trial=1, run_id=runs[1], score=dice(0.45), test_dice=0.4)
        again = register(trial=0, run_id=runs[0], score=dice(0.50), test_dice=0.4)
        better = register(trial=2, run_id=runs[2], score=dice(0.60), test_dice=0.5)
    assert first.champion and not worse.champion and better.new
    assert worse.kept == f"version {first.version} has val_dice 0.5000, this one 0.4500"
    assert (again.version, again.new) == (first.version, False)
    assert better.champion
    champion = mlflow.MlflowClient().get_model_version_by_alias("m", "champion")
    assert str(champion.version) == better.version and champion.tags["polypseg.trial"] == "2"


def _python_default_warning_filters() -> None:
    """The filters a plain `python` starts with: what a user's terminal would show."""
    warnings.resetwarnings()
    warnings.simplefilter("default")
    for hidden in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.filterwarnings("ignore", category=hidden)


def test_tune_cli_prints_best_trials_ui_command_and_summary_without_warnings(
    runner: CliRunner,
    tiny_config: Path,
    tmp_path: Path,
    mlflow_store: str,
    study_spec: Callable[..., Path],
) -> None:
    args = ["tune", "--trials", "3", "--config", str(tiny_config), "--study", str(study_spec())]
    with warnings.catch_warnings(record=True) as caught:
        _python_default_warning_filters()
        result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    lines = result.stdout.strip().splitlines()
    # The table of the best trials, best first, before the summary lines.
    study = optuna.load_study(study_name="s", storage="sqlite:///studies/optuna.db")
    ranked = sorted(study.trials, key=lambda t: (-t.value, t.number))
    assert lines[0] == "best 3 of 3 trials (by val_dice; data synthetic12, encoder sam_tiny):"
    assert lines[1].split() == ["trial", "state", "val_dice", *study.best_trial.params]
    for line, trial in zip(lines[2:5], ranked, strict=True):
        assert line.split()[:3] == [str(trial.number), "COMPLETE", f"{trial.value:.4f}"]
    assert len(lines) == 5 + 3
    # The exact command that serves this store, and the URL of the trials' view.
    assert f"mlflow ui --backend-store-uri {mlflow_store}\n" in result.stderr
    assert "then open http://127.0.0.1:5000/#/experiments/1/runs?viewStateShareKey=study-s" in (
        result.stderr
    )
    assert lines[-3].startswith("study s (sqlite:///")
    assert "studies/optuna.db): 3 trials, 3 complete" in lines[-3]
    assert lines[-2].startswith("best trial #")
    assert (
        lines[-1]
        == "registered model polypseg-test version 1 (champion: models:/polypseg-test@champion)"
    )


def test_bad_storage_is_one_line(
    runner: CliRunner,
    tiny_config: Path,
    tmp_path: Path,
    mlflow_store: str,
    study_spec: Callable[..., Path],
) -> None:
    args = [
        "tune",
        "--trials",
        "1",
        "--config",
        str(tiny_config),
        "--study",
        str(study_spec()),
        "--storage",
        "postgresql://u:hunter2@127.0.0.1:1/none",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "cannot open study storage postgresql://u:***@127.0.0.1:1/none" in result.stderr
    assert "hunter2" not in result.output


def test_a_pranet_tune_without_a_test_sets_folder_is_one_line_before_any_store(
    runner: CliRunner,
    tiny_config: Path,
    mlflow_store: str,
    study_spec: Callable[..., Path],
    synthetic_root: Path,
) -> None:
    args = ["tune", "--trials", "1", "--config", str(tiny_config), "--study", str(study_spec())]
    roots = f"data.roots=kvasir={synthetic_root},clinicdb={synthetic_root}"
    line = one_error_line(
        runner.invoke(app, [*args, "--set", "data.protocol=pranet", "--set", roots])
    )
    assert "no folder for colondb" in line and 'data.roots = {colondb = "DIR"}' in line
    assert not Path("mlruns").exists() and not Path("studies/optuna.db").exists()


def test_spec_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[space."decoder.widht"]\ntype = "categorical"\nchoices = [8]\n')
    with pytest.raises(Exception, match="decoder.widht"):
        load_spec(path)
