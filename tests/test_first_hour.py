"""A newcomer's first hour (issue 23): the offline demo sized for a CPU and kept apart from the
real job, progress that reaches a log file, refusals that answer at once, quiet output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from polypseg.cli import app
from polypseg.config import load_config
from polypseg.progress import EpochLines, epoch_lines, track, trial_progress
from polypseg.tuning.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
EPOCH_LINE = re.compile(
    r"epoch +(\d+)  train_loss \S+  val_loss \S+  val_dice \d\.\d{4}  elapsed \d+s"
)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _metrics(epoch: int) -> dict[str, float]:
    return {"epoch": epoch, "train_loss": 0.5, "val_loss": 0.4, "val_dice": 0.25 + epoch / 100}


def test_the_demo_study_is_sized_for_a_cpu_and_apart_from_the_real_job() -> None:
    demo = load_config(REPO / "experiments/synthetic.toml")
    real = load_config(REPO / "experiments/sam_vit_b.toml")
    spec = load_spec(REPO / "studies/demo_search.toml", demo)
    main = load_spec(REPO / "studies/decoder_search.toml", real)
    widths = spec.space["decoder.width"].choices
    assert max(widths) <= demo.decoder.width  # no width-512 trial on a CPU
    assert spec.epochs < main.epochs
    assert spec.name != main.name  # a demo run never resumes the real study
    assert demo.tracking.registered_model != real.tracking.registered_model
    assert demo.tracking.experiment != real.tracking.experiment


def test_train_in_a_log_writes_a_line_per_epoch_and_how_to_open_the_run(
    runner: CliRunner, tiny_config: Path, tiny_cache: Path, mlflow_store: str
) -> None:
    result = runner.invoke(app, ["train", "--config", str(tiny_config), "--no-log-model"])
    assert result.exit_code == 0, result.output
    run_id = re.fullmatch(r"run_id=([0-9a-f]{32}) test_dice=\S+", result.stdout.strip())[1]
    lines = result.stderr.splitlines()
    epochs = [int(m[1]) for line in lines if (m := EPOCH_LINE.fullmatch(line))]
    assert epochs == [1, 2, 3]  # the tiny config's 3 epochs, none skipped in a log
    assert f"the run: mlflow ui --backend-store-uri {mlflow_store}" in lines
    assert any(line.endswith(f"/runs/{run_id}") for line in lines)
    assert "" not in lines


def test_on_a_tracking_server_the_run_is_one_url_and_no_command() -> None:
    from polypseg.tracking.views import ui_instructions

    lines = ui_instructions("the run", "7", "/abc", "http://tracking:5000/")
    assert lines == ["the run: http://tracking:5000/#/experiments/7/runs/abc"]


def test_epoch_lines_come_at_most_every_interval(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    lines = EpochLines("trial 3", interval_s=30, clock=clock)
    for epoch, seconds in enumerate((0, 10, 25, 31, 40, 75), start=1):
        clock.now = 1000.0 + seconds
        lines(_metrics(epoch))
    said = capsys.readouterr().err.splitlines()
    assert [int(re.search(r"epoch +(\d+)", line)[1]) for line in said] == [1, 4, 6]
    assert said[1].startswith("trial 3  epoch   4  train_loss 0.5000  val_loss 0.4000")
    assert said[1].endswith("val_dice 0.2900  elapsed 31s")
    assert said[2].endswith("elapsed 1m15s")


def test_epoch_lines_write_only_off_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []

    def report(metrics: dict[str, float]) -> None:
        seen.append(int(metrics["epoch"]))
        raise optuna.TrialPruned()  # the line is written before the callback may stop training

    with pytest.raises(optuna.TrialPruned):
        epoch_lines(report, "trial 0")(_metrics(1))
    assert capsys.readouterr().err.startswith("trial 0  epoch   1  ")
    assert epoch_lines(report, "trial 0", enabled=False) is report
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # a terminal, as rich tells one: the bars show
    assert epoch_lines(report, "trial 0") is report
    assert seen == [1]


def test_trial_lines_say_how_each_trial_ended(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    values = iter((0.5, 0.8, 0.1, None))

    def objective(trial: optuna.Trial) -> float:
        clock.now += 65
        value = next(values)
        if value is None:
            raise ValueError("diverged")
        trial.report(value, 4)
        if value < 0.2:
            raise optuna.TrialPruned()
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    with trial_progress(4, clock=clock) as show:
        study.optimize(objective, n_trials=4, callbacks=[show], catch=(ValueError,))
    assert capsys.readouterr().err.splitlines() == [
        "trial 0 COMPLETE  value 0.5000  best 0.5000 (trial 0)  elapsed 1m05s",
        "trial 1 COMPLETE  value 0.8000  best 0.8000 (trial 1)  elapsed 2m10s",
        "trial 2 PRUNED  at epoch 4, value 0.1000  best 0.8000 (trial 1)  elapsed 3m15s",
        "trial 3 FAIL  best 0.8000 (trial 1)  elapsed 4m20s",
    ]


def test_a_terminal_gets_a_bar_of_the_trials_not_lines(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    study = optuna.create_study()
    with trial_progress(2) as show:
        study.optimize(lambda trial: 1.0, n_trials=1, callbacks=[show])
    err = capsys.readouterr().err
    assert "trials  best 1.0000  pruned 0  failed 0" in err and "1/2" in err
    assert "trial 0 COMPLETE" not in err


def test_a_finished_bar_leaves_no_blank_line_in_a_log(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(track([1, 2, 3], "scoring")) == [1, 2, 3]
    assert capsys.readouterr().err == ""


def test_evaluate_starts_with_what_it_wrote_not_a_blank_line(
    runner: CliRunner, synthetic_root: Path, mlflow_store: str
) -> None:
    args = ["evaluate", "--predictions", str(synthetic_root / "masks"), "--root"]
    result = runner.invoke(app, [*args, str(synthetic_root)])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert "" not in lines  # the scoring bar, off a terminal, left a blank line here
    folder = Path("evaluation") / "maps-masks"  # named for what made it, not loose in the cwd
    assert (
        f"per-image: {folder / 'evaluation.csv'}  worst cases: {folder / 'evaluation_worst.png'}"
        in " ".join(lines)
    )


REFUSALS = {
    "train": ["train", "--config", "missing.toml"],
    "cache": ["cache", "--config", "missing.toml"],
    "tune": ["tune", "--config", "missing.toml"],
    "evaluate": ["evaluate", "--model", "x", "--root", "/nonexistent"],
    "evaluate-named": ["evaluate", "--model", "x", "--root", "Kvasir=/nonexistent"],
    "predict": ["predict", "--model", "x", "--out", "out", "/nonexistent.jpg"],
}
PROBE = """
import sys
from typer.testing import CliRunner
from polypseg.cli import app
result = CliRunner().invoke(app, sys.argv[1:])
print(result.exit_code, result.stderr.strip())
print(*sorted(m for m in ("torch", "mlflow", "optuna") if m in sys.modules))
"""


@pytest.mark.parametrize("args", REFUSALS.values(), ids=REFUSALS.keys())
def test_a_refusal_answers_before_torch_and_mlflow_load(args: list[str], tmp_path: Path) -> None:
    probe = [sys.executable, "-c", PROBE, *args]
    done = subprocess.run(probe, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    status, loaded = done.stdout.splitlines()
    assert re.fullmatch(r"2 error: .*(missing|nonexistent).*", status), status
    assert "torch" not in loaded and "mlflow" not in loaded
    assert not (tmp_path / "mlruns").exists()  # and no tracking store was made for nothing


def test_predict_usage_names_its_images_plainly(runner: CliRunner) -> None:
    usage = runner.invoke(app, ["predict", "--help"]).output.splitlines()[0]
    assert usage.endswith(" predict [OPTIONS] [IMAGE]...")  # not typer's `{IMAGE}...`


def test_polypseg_experiments_are_of_the_machine_learning_kind(mlflow_store: str) -> None:
    import mlflow

    from polypseg.tracking.store import setup

    experiment_id = setup("kind", mlflow_store)
    tags = mlflow.get_experiment(experiment_id).tags
    # MLflow 3's UI labels it "Machine learning"; it opens on the GenAI overview all the same.
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def _after_the_demo() -> list[str]:
    section = (REPO / "README.md").read_text().split("\n## After the demo\n", 1)[1]
    return section.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()


def test_the_demo_prints_the_readme_lines_after_it_and_each_runs_as_written(
    tmp_path: Path,
) -> None:
    """A newcomer's next hour: the demo (one trial of one epoch here) ends by printing the
    README's "After the demo" lines, and each runs as written, `~` the home folder."""
    for folder, name in (("experiments", "synthetic.toml"), ("studies", "demo_search.toml")):
        (tmp_path / folder).mkdir()
        text = (REPO / folder / name).read_text().replace("epochs = 8 ", "epochs = 1 ")
        (tmp_path / folder / name).write_text(text)
    env = {
        k: v for k, v in os.environ.items() if k not in ("POLYPSEG_CACHE", "MLFLOW_TRACKING_URI")
    }
    env |= {"HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # polypseg, python

    def run(line: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{line}\n{done.stderr[-2000:]}"
        return done

    demo = "polypseg tune --trials 1 --config experiments/synthetic.toml"
    printed = run(f"{demo} --study studies/demo_search.toml").stderr.splitlines()
    after = printed[printed.index("# next, with models:/polypseg-demo@champion and its data:") :]
    assert after[1:] == _after_the_demo()
    for line in _after_the_demo():
        run(line)
    assert (tmp_path / "polypseg-demo.onnx").is_file()
    assert len(list((tmp_path / "predictions" / "polypseg-demo").glob("*_overlay.png"))) == 3


def test_next_commands_name_a_real_jobs_version_data_and_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from polypseg.cli.app import next_commands
    from polypseg.export import onnx
    from polypseg.tracking.registry import Registration

    monkeypatch.setattr(onnx, "training_roots", lambda model, run_id: ["/data/Kvasir-SEG"])
    kept = Registration("polypseg", "7", champion=False, new=True)  # the champion stayed put
    lines = next_commands(kept, "http://tracking:5000")
    store = " --tracking-uri http://tracking:5000"  # not this shell's default store
    assert (
        lines[1] == f"polypseg evaluate --model models:/polypseg/7 --root /data/Kvasir-SEG{store}"
    )
    assert lines[2].endswith(f"--overlay /data/Kvasir-SEG{store}")  # its folder: not here
    assert "mlflow.set_tracking_uri('http://tracking:5000')" in lines[-1]
