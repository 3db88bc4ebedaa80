"""A study means one thing: one metric and direction, one data set and split, one encoder.

A spec whose search space could not act (the epochs, the encoder, the data) or whose direction
would pick the worst trial is refused at load; a study resumed, or joined by a second worker,
with another objective, data set or encoder is refused naming the difference; a registered
version is tagged with what it was scored by, and the champion moves only past a model scored
the same way. A run that fails at its first step (no data, no encoder) writes no store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from conftest import STUDY_SPEC, one_error_line
from typer.testing import CliRunner

from polypseg.cli import app
from polypseg.config import Config, load_config
from polypseg.data.synthetic import make_synthetic
from polypseg.errors import PolypsegError
from polypseg.models.decoder import SimpleDecoder
from polypseg.models.encoders import encoder_architecture
from polypseg.tracking.registry import Score, register_trial
from polypseg.tracking.store import setup
from polypseg.tracking.views import study_view_state
from polypseg.tuning.identity import BASE_ATTR, StudyBase, check_base
from polypseg.tuning.spec import check_space, load_spec
from polypseg.tuning.study import _cache_config, tune
from polypseg.tuning.workers import WORKERS_ATTR

LR_SPACE = '[space."train.lr"]\ntype = "float"\nlow = 1e-3\nhigh = 1e-2\n'


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("metric", "direction"), [("val_loss", "maximize"), ("val_dice", "minimize")]
)
def test_a_direction_that_would_pick_the_worst_trial_is_refused(
    tmp_path: Path, metric: str, direction: str
) -> None:
    head = f'[study]\nmetric = "{metric}"\ndirection = "{direction}"\n'
    path = _spec(tmp_path, head + LR_SPACE)
    with pytest.raises(PolypsegError) as refused:
        load_spec(path)
    right = "minimize" if metric == "val_loss" else "maximize"
    assert str(refused.value) == (
        f"{path}: [study] metric = '{metric}' with direction = '{direction}' would pick the worst "
        f"trial; set direction = '{right}' or leave it out"
    )


def test_the_direction_defaults_to_the_one_that_improves_the_metric(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, '[study]\nmetric = "val_loss"\n' + LR_SPACE))
    assert (spec.metric, spec.direction) == ("val_loss", "minimize")


@pytest.mark.parametrize(
    ("key", "space", "reason"),
    [
        ("train.epochs", "type = 'int'\nlow = 1\nhigh = 3", "the study's own [study] epochs"),
        ("encoder.name", "type = 'categorical'\nchoices = ['sam_tiny', 'resnet_tiny']", "encoder"),
        ("data.image_size", "type = 'int'\nlow = 64\nhigh = 128", "feature cache once"),
        ("data.root", "type = 'categorical'\nchoices = ['a', 'b']", "only data.augment"),
        ("tracking.registered_model", "type = 'categorical'\nchoices = ['a', 'b']", "one model"),
    ],
)
def test_a_key_a_trial_cannot_change_is_refused_with_the_reason(
    tmp_path: Path, key: str, space: str, reason: str
) -> None:
    path = _spec(tmp_path, f'[space."{key}"]\n{space}\n')
    with pytest.raises(PolypsegError) as refused:
        load_spec(path)
    assert str(refused.value).startswith(f"{path}: space.{key} cannot be searched: ")
    assert reason in str(refused.value)


def test_augmentation_may_still_be_searched(tmp_path: Path) -> None:
    space = '[space."data.augment"]\ntype = "categorical"\nchoices = ["", "hflip"]\n'
    assert list(load_spec(_spec(tmp_path, space)).space) == ["data.augment"]


def test_the_cache_holds_the_configs_variants_and_every_searched_one(tmp_path: Path) -> None:
    config = Config().with_overrides({"data.augment": ["vflip"]})
    space = '[space."data.augment"]\ntype = "categorical"\nchoices = ["", "hflip", "hflip,vflip"]\n'
    assert _cache_config(config, load_spec(_spec(tmp_path, space))).data.augment == (
        "vflip",
        "hflip",
    )
    assert _cache_config(config, load_spec(_spec(tmp_path, LR_SPACE))) == config


def _base(**changes: object) -> StudyBase:
    base = StudyBase(
        "val_dice", "maximize", "kvasir", "seed", 42, [0.8, 0.1, 0.1], 512, "sam_vit_b", "w1", "s1"
    )
    return replace(base, **changes)


def test_a_study_records_its_base_once_and_refuses_another() -> None:
    study = optuna.create_study(study_name="s", direction="maximize")
    check_base(study, _base())
    assert study.user_attrs[BASE_ATTR]["data"] == "kvasir"
    check_base(study, _base())  # the same base joins
    with pytest.raises(PolypsegError) as refused:
        check_base(study, _base(data="synthetic/n100-seed0", encoder="sam_tiny"))
    assert str(refused.value).startswith(
        "study 's' was made for data kvasir, encoder sam_vit_b; this run has data "
        "synthetic/n100-seed0, encoder sam_tiny: "
    )
    with pytest.raises(PolypsegError, match=r"made for metric val_dice, direction maximize; "):
        check_base(study, _base(metric="val_loss", direction="minimize"))
    with pytest.raises(PolypsegError, match=r"made for ratios 0.8/0.1/0.1; this run has ratios 0"):
        check_base(study, _base(ratios=[0.7, 0.2, 0.1]))


def test_a_study_made_before_bases_were_recorded_keeps_its_direction() -> None:
    study = optuna.create_study(study_name="old", direction="minimize")
    with pytest.raises(PolypsegError, match="made for direction minimize; this run has direction"):
        check_base(study, _base())
    assert BASE_ATTR not in study.user_attrs


def test_a_second_worker_on_other_data_is_refused_and_takes_no_worker_number(
    runner: CliRunner,
    tiny_config_text: str,
    tiny_config: Path,
    tmp_path: Path,
    mlflow_store: str,
    study_spec: Callable[..., Path],
) -> None:
    spec = study_spec()
    config = load_config(tiny_config)
    tune(config, load_spec(spec, config), 1, progress=False)
    other_root = make_synthetic(tmp_path / "other12", n=12, seed=8)
    other = tmp_path / "other.toml"
    other.write_text(tiny_config_text.replace(str(config.data.root), str(other_root)))
    args = ["tune", "--trials", "1", "--config", str(other), "--study", str(spec)]
    refused = runner.invoke(app, args)
    # Refused once the data and encoder are known (the new data's features are cached by then,
    # for the study the user starts next): exit 2, the reason as the last line.
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    line = refused.stderr.strip().splitlines()[-1]
    assert "study 's' was made for data synthetic12" in line
    assert "this run has data other12" in line and line.endswith("--study-name NAME")
    study = optuna.load_study(study_name="s", storage="sqlite:///studies/optuna.db")
    assert study.user_attrs[WORKERS_ATTR] == 1 and len(study.trials) == 1
    parents = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert sum("optuna.trial_number" not in run.data.tags for run in parents) == 1


@pytest.mark.parametrize("missing", ["data", "encoder"])
def test_a_run_that_fails_at_its_first_step_writes_no_store(
    runner: CliRunner,
    tiny_config_text: str,
    synthetic_root: Path,
    tmp_path: Path,
    mlflow_store: str,
    study_spec: Callable[..., Path],
    missing: str,
) -> None:
    """No data set, or no encoder weights: refused before the study, its worker number and the
    MLflow experiment exist (a failed download left an empty study and experiment behind)."""
    if missing == "data":
        text = tiny_config_text.replace(str(synthetic_root), str(tmp_path / "no-such-folder"))
    else:
        encoder = f'name = "sam_vit_b"\ncheckpoint = "{tmp_path / "no-such.pth"}"\nfallback = ""'
        text = tiny_config_text.replace('name = "sam_tiny"\nallow_random_weights = true', encoder)
    config = tmp_path / "broken.toml"
    config.write_text(text)
    args = ["tune", "--trials", "1", "--config", str(config), "--study", str(study_spec())]
    line = one_error_line(runner.invoke(app, args))
    assert "no-such" in line
    assert not (tmp_path / "studies").exists()
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def _run_with_decoder() -> str:
    with mlflow.start_run() as run:
        path = Path("decoder.pt")
        state = SimpleDecoder(64, 8).state_dict()
        torch.save({"in_channels": 64, "width": 8, "state": state}, path)
        mlflow.log_artifact(str(path), "decoder")
    return run.info.run_id


def test_the_champion_is_compared_only_by_the_same_metric_on_the_same_data(
    mlflow_store: str,
) -> None:
    setup("registry")
    encoder = encoder_architecture("sam_tiny")
    register = partial(register_trial, "m", study="s", encoder=encoder, image_size=64)
    loss = partial(Score, "val_loss", direction="minimize", data="kvasir", split="a")
    runs = [_run_with_decoder() for _ in range(5)]
    dice = Score("val_dice", 0.99, "maximize", "kvasir", "a")
    synthetic = loss(0.01, data="synthetic/n100-seed0", split="b")
    with mlflow.start_run():
        first = register(trial=0, run_id=runs[0], score=loss(0.40), test_dice=0.5)
        higher = register(trial=1, run_id=runs[1], score=loss(0.60), test_dice=0.5)
        by_dice = register(trial=2, run_id=runs[2], score=dice, test_dice=0.5)
        other_data = register(trial=3, run_id=runs[3], score=synthetic, test_dice=0.9)
        lower = register(trial=4, run_id=runs[4], score=loss(0.30), test_dice=0.5)
    assert first.champion and not higher.champion  # a loss: lower is better
    assert higher.kept == f"version {first.version} has val_loss 0.4000, this one 0.6000"
    assert not by_dice.champion and by_dice.kept == (
        f"version {first.version} was scored by val_loss, this one by val_dice, so they do not "
        "compare"
    )
    assert not other_data.champion and other_data.kept == (
        f"version {first.version} was scored on kvasir, this one on synthetic/n100-seed0, so they "
        "do not compare"
    )
    assert lower.champion and lower.kept == ""
    tags = mlflow.MlflowClient().get_model_version_by_alias("m", "champion").tags
    assert tags["val_loss"] == "0.300000" and "val_dice" not in tags
    assert (tags["polypseg.metric"], tags["polypseg.direction"]) == ("val_loss", "minimize")
    assert (tags["polypseg.data"], tags["polypseg.split"]) == ("kvasir", "a")
    assert (tags["polypseg.encoder"], tags["polypseg.image_size"]) == ("sam_tiny", "64")


def test_a_loss_study_registers_its_loss_and_writes_plain_progress(
    tiny_config: Path,
    tmp_path: Path,
    mlflow_store: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = STUDY_SPEC.format(name="loss", epochs=2, pruner="none")
    path = _spec(tmp_path, text.replace("[study]\n", '[study]\nmetric = "val_loss"\n'))
    config = load_config(tiny_config)
    result = tune(config, load_spec(path, config), 2, progress=True)
    study = result.study
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.best_value == min(t.value for t in study.trials)
    version = mlflow.MlflowClient().get_model_version_by_alias("polypseg-test", "champion")
    assert float(version.tags["val_loss"]) == pytest.approx(study.best_value, abs=1e-6)
    assert "val_dice" not in version.tags and version.tags["polypseg.data"] == "synthetic12"
    assert result.best_trials_table()[0] == (
        "best 2 of 2 trials (by val_loss; data synthetic12, encoder sam_tiny):"
    )
    best_run = mlflow.get_run(study.best_trial.user_attrs["mlflow_run_id"])
    assert best_run.data.metrics["best_val_loss"] == pytest.approx(study.best_value)
    assert study_view_state("loss", ["train.lr"], "val_loss", "minimize")["orderByAsc"] is True
    # Off a terminal (here, captured): a line per trial's epoch and one as each trial ends.
    err = capsys.readouterr().err
    assert "trial 0  epoch   1  train_loss " in err and "trial 1  epoch   1  " in err
    assert "trial 0 COMPLETE  value " in err and "trial 1 COMPLETE  value " in err


def test_a_worker_joining_a_running_study_with_other_choices_is_refused(tmp_path: Path) -> None:
    """No trial has finished while the first worker runs: the stored space decides, not them."""
    width = '[space."decoder.width"]\ntype = "categorical"\nchoices = {}\n'
    first = load_spec(_spec(tmp_path, width.format("[8, 16]")))
    study = optuna.create_study(study_name="s", direction="maximize")
    check_space(study, first)
    study.ask(first.space)  # the first worker's trial, RUNNING
    check_space(study, first)  # the same space joins
    with pytest.raises(PolypsegError) as refused:
        check_space(study, load_spec(_spec(tmp_path, width.format("[8, 32]"))))
    assert str(refused.value).startswith(
        "study 's' searches decoder.width as one of [8, 16], the spec now as one of [8, 32]; "
    )


def test_the_cli_refuses_a_second_worker_with_other_choices_in_one_line(
    runner: CliRunner, tiny_config: Path, mlflow_store: str, study_spec: Callable[..., Path]
) -> None:
    spec = study_spec()
    Path("studies").mkdir()
    storage = "sqlite:///studies/optuna.db"
    running = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    check_space(running, load_spec(spec))
    running.ask()  # its worker trains it; nothing has finished
    spec.write_text(spec.read_text().replace("choices = [8, 16]", "choices = [8, 32]"))
    args = ["tune", "--trials", "1", "--config", str(tiny_config), "--study", str(spec)]
    line = one_error_line(runner.invoke(app, args))
    assert line.startswith("error: study 's' searches decoder.width as one of [8, 16], the spec")
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 1
