"""Seed spreads (`train --seeds N`, `[study] champion_seeds`) and the model card on a version."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import one_error_line
from typer.testing import CliRunner

import polypseg.features.prepare
from polypseg.cli import app
from polypseg.errors import PolypsegError
from polypseg.tuning.spec import load_spec


def _children(client: mlflow.MlflowClient, run_id: str) -> list:
    experiment = client.get_run(run_id).info.experiment_id
    found = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{run_id}'")
    return sorted(found, key=lambda run: int(run.data.params["train.seed"]))


def test_train_seeds_runs_children_on_one_encoder_pass_and_logs_their_spread(
    runner: CliRunner, tiny_config: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = []
    real_prepare = polypseg.features.prepare.prepare
    monkeypatch.setattr(
        polypseg.features.prepare,
        "prepare",
        lambda *a, **k: prepared.append(real_prepare(*a, **k)) or prepared[-1],
    )
    args = ["train", "--config", str(tiny_config), "--seeds", "3", "--set", "train.seed=7"]
    result = runner.invoke(app, [*args, "--no-log-model"])
    assert result.exit_code == 0, result.output
    parent, mean = re.fullmatch(
        r"run_id=(\w{32}) test_dice=(\d\.\d{4})", result.stdout.split("\n")[-2]
    ).groups()
    assert len(prepared) == 1 and prepared[0].encoder.images_encoded == 12  # the encoder ran once

    client = mlflow.MlflowClient(mlflow_store)
    children = _children(client, parent)
    assert [run.data.params["train.seed"] for run in children] == ["7", "8", "9"]
    test_dice = np.array([run.data.metrics["test_dice"] for run in children])
    val_dice = np.array([run.data.metrics["best_val_dice"] for run in children])
    metrics = client.get_run(parent).data.metrics
    assert metrics["test_dice_mean"] == pytest.approx(test_dice.mean())
    assert metrics["test_dice_sd"] == pytest.approx(test_dice.std(ddof=1))
    assert (metrics["test_dice_min"], metrics["test_dice_max"]) == (
        test_dice.min(),
        test_dice.max(),
    )
    assert metrics["val_dice_sd"] == pytest.approx(val_dice.std(ddof=1))
    assert mean == f"{test_dice.mean():.4f}"
    assert result.stdout.startswith("val_dice ") and "over seeds 7..9" in result.stdout


@pytest.mark.parametrize(("seeds", "says"), [("0", "must be in [1, 50]"), ("51", "[1, 50]")])
def test_a_seed_count_out_of_range_is_one_line(
    runner: CliRunner, tiny_config: Path, seeds: str, says: str
) -> None:
    result = runner.invoke(app, ["train", "--config", str(tiny_config), "--seeds", seeds])
    assert result.exit_code == 2
    assert says in one_error_line(result) and "--seeds" in one_error_line(result)


def test_champion_seeds_is_checked_with_the_spec(tmp_path: Path) -> None:
    space = '[space."train.lr"]\ntype = "float"\nlow = 0.001\nhigh = 0.01\n'
    path = tmp_path / "s.toml"
    path.write_text(f"[study]\nchampion_seeds = 3\n{space}")
    assert load_spec(path).champion_seeds == 3
    path.write_text(f"[study]\nchampion_seeds = 0\n{space}")
    with pytest.raises(PolypsegError, match=r"\[study\] champion_seeds = 0 must be in \[1, 50\]"):
        load_spec(path)


def test_tune_registers_a_version_with_its_seed_spread_and_a_card(
    runner: CliRunner, tiny_config: Path, mlflow_store: str, study_spec: Callable[..., Path]
) -> None:
    spec = study_spec()
    spec.write_text(spec.read_text().replace("[study]\n", "[study]\nchampion_seeds = 2\n"))
    args = ["tune", "--trials", "2", "--config", str(tiny_config), "--study", str(spec)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(mlflow_store)
    version = client.get_model_version("polypseg-test", "1")
    children = _children(client, version.tags["polypseg.seeds_run"])
    test_dice = [run.data.metrics["test_dice"] for run in children]
    assert version.tags["polypseg.seeds"] == "2" and len(children) == 2
    assert version.tags["polypseg.test_dice_sd"] == f"{np.std(test_dice, ddof=1):.4f}"
    card = version.description
    for named in ("synthetic12", "sam_tiny", "precision float32", "decoder.width=", "train.lr="):
        assert named in card
    assert "test_dice " + version.tags["polypseg.test_dice_mean"] in card
    assert "not a medical device" in card and "Not evaluated yet" in card


def test_a_pranet_tune_prints_the_champions_table_and_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from polypseg.config import Config
    from polypseg.tracking.registry import Registration
    from polypseg.tuning.finish import champion_table

    monkeypatch.chdir(tmp_path)
    table = Path("evaluation") / "m-v3" / "table.md"
    table.parent.mkdir(parents=True)
    table.write_text("| Data set | n | mDice |\n| kvasir | 2 | 0.5 |\n")
    champion = Registration("m", "3", champion=True, new=False)  # its table already written
    pranet = Config().with_overrides({"data.protocol": "pranet"})
    assert champion_table(pranet, champion, None, False) == [
        "| Data set | n | mDice |",
        "| kvasir | 2 | 0.5 |",
        f"the champion's table: {table}",
    ]
    assert champion_table(Config(), champion, None, False) == []  # the default protocol has none
