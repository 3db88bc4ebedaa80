"""`evaluate --sets`: a model's table on PraNet's test sets by name, in the terminal, in its
evaluation run and on its registered model version; missing and unknown sets in one line."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import mlflow
import pytest
from conftest import one_error_line
from typer.testing import CliRunner

from polypseg.cli import app
from polypseg.data.synthetic import make_synthetic

# Stems that PraNet tests on (its lists), and one that it trains on, for the two training sets.
STEMS = {
    "kvasir": ["cju0u82z3cuma0835wlxrnrjv", "cju15wdt3zla10801odjiw7sy", "cjtrainonly"],
    "clinicdb": ["100", "14", "1"],
}


def _as_set(folder: Path, stems: list[str] | None) -> Path:
    """A synthetic set whose files are renamed to `stems` (Kvasir, ClinicDB), or as made."""
    if stems is None:
        return folder
    for kind in ("images", "masks"):
        files = sorted((folder / kind).iterdir())
        for file, stem in zip(files, stems, strict=True):
            shutil.move(file, file.with_name(f"{stem}{file.suffix}"))
    return folder


@pytest.fixture(scope="module")
def five_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("five")
    names = ("kvasir", "clinicdb", "colondb", "etis", "cvc300")
    return {
        name: _as_set(make_synthetic(base / name, n=3, seed=10 + i), STEMS.get(name))
        for i, name in enumerate(names)
    }


def test_sets_pranet_gives_the_table_the_metrics_and_the_versions_record(
    runner: CliRunner, model_env: dict, five_sets: dict[str, Path], tmp_path: Path
) -> None:
    args = ["evaluate", "--model", "models:/polypseg-eval@champion", "--sets", "pranet"]
    args += [f"--root={name}={folder}" for name, folder in five_sets.items()]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "table")])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "table" / "table.csv").open()))
    assert [(r["dataset"], r["n_images"]) for r in rows] == [
        ("kvasir", "2"),  # PraNet's two test images, not the training one
        ("clinicdb", "2"),
        ("colondb", "3"),
        ("etis", "3"),
        ("cvc300", "3"),
    ]
    assert result.stdout.splitlines()[0].startswith("| Data set | n | mDice | mIoU |")
    assert (tmp_path / "table" / "table.md").read_text().rstrip("\n") == result.stdout.rstrip("\n")

    client = mlflow.MlflowClient()
    version = client.get_model_version("polypseg-eval", model_env["version"])
    run = client.get_run(version.tags["pranet.evaluation_run"])
    for row in rows:
        name = row["dataset"]
        assert version.tags[f"pranet.{name}.mdice"] == row["mdice"]
        interval = f"[{row['mdice_ci_low']}, {row['mdice_ci_high']}]"
        assert version.tags[f"pranet.{name}.mdice_ci"] == interval
        assert f"{run.data.metrics[f'{name}/mdice']:.3f}" == row["mdice"]
    assert run.data.tags["polypseg.protocol"] == "pranet"
    card = version.description  # the model card holds the table with its intervals
    assert f"| kvasir | {rows[0]['n_images']} | {version.tags['pranet.kvasir.mdice']} [" in card
    assert "not a medical device" in card
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"table.md", "table.csv", "kvasir", "cvc300"} <= artifacts


def test_a_set_without_a_root_is_one_line(
    runner: CliRunner, model_env: dict, five_sets: dict[str, Path]
) -> None:
    args = ["evaluate", "--model", "models:/polypseg-eval@champion", "--sets", "kvasir,etis"]
    line = one_error_line(runner.invoke(app, [*args, "--root", f"kvasir={five_sets['kvasir']}"]))
    assert "no folder for etis: pass --root etis=DIR" in line


def test_an_unknown_set_is_one_line(runner: CliRunner, model_env: dict) -> None:
    args = ["evaluate", "--model", "models:/polypseg-eval@champion", "--sets", "kvasir,polypgen"]
    line = one_error_line(runner.invoke(app, args))
    assert "unknown data set 'polypgen'; use pranet (all five) or names among kvasir" in line


def test_roots_come_from_the_configs_data_roots(
    runner: CliRunner, model_env: dict, five_sets: dict[str, Path], tmp_path: Path
) -> None:
    config = tmp_path / "five.toml"
    config.write_text(f'[data]\nroots = {{etis = "{five_sets["etis"]}"}}\n')
    args = ["evaluate", "--model", "models:/polypseg-eval@champion", "--sets", "etis"]
    result = runner.invoke(app, [*args, "--config", str(config), "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert "| etis | 3 |" in result.stdout


def test_a_pranet_tune_ends_with_the_champions_table(
    model_env: dict, five_sets: dict[str, Path]
) -> None:
    from polypseg.config import load_config
    from polypseg.evaluation.literature import evaluate_champion

    roots = {name: str(folder) for name, folder in five_sets.items()}
    config = load_config(
        None, {"data.source": "local", "data.protocol": "pranet", "data.roots": roots}
    )
    result = evaluate_champion(config, "polypseg-eval", model_env["version"], progress=False)
    assert [r.name for r in result.sets] == list(roots)
    folder = Path("evaluation") / f"polypseg-eval-v{model_env['version']}"
    assert result.tables == (folder / "table.md", folder / "table.csv")


def test_a_second_evaluation_replaces_the_folder_and_the_versions_table_whole(
    runner: CliRunner, model_env: dict, five_sets: dict[str, Path], tmp_path: Path
) -> None:
    args = ["evaluate", "--model", "models:/polypseg-eval@champion", "--out", str(tmp_path / "F")]
    roots = [f"--root={name}={folder}" for name, folder in five_sets.items()]
    assert runner.invoke(app, [*args, "--sets", "kvasir,etis", *roots]).exit_code == 0
    result = runner.invoke(app, [*args, "--sets", "etis", "--tta", "flip", *roots])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "F").iterdir()) == [
        "etis.csv",
        "etis.json",
        "etis_worst.png",
        "table.csv",
        "table.md",
    ]
    tags = mlflow.MlflowClient().get_model_version("polypseg-eval", model_env["version"]).tags
    assert not any(key.startswith("pranet.kvasir.") for key in tags)
    assert tags["pranet.tta"] == "flip" and "pranet.etis.mdice" in tags


def test_sets_refuse_a_protocol_they_would_not_honour(
    runner: CliRunner, model_env: dict, five_sets: dict[str, Path]
) -> None:
    args = ["evaluate", "--model", "models:/polypseg-eval@champion", "--sets", "etis"]
    args += ["--root", f"etis={five_sets['etis']}", "--protocol", "default"]
    line = one_error_line(runner.invoke(app, args))
    assert "--protocol default: --sets scores each set's PraNet test images" in line
