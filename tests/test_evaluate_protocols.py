"""`evaluate --predictions`, `--protocol pranet`, several data sets, and what the runs record.

The model is conftest's `registered_model` (sam_tiny on 16 synthetic pairs).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from polypseg.cli import app
from polypseg.data.masks import read_mask
from polypseg.data.pairs import list_pairs
from polypseg.data.split import split_names
from polypseg.metrics import PRANET_SUMMARY_KEYS
from polypseg.uncertainty import bootstrap_interval

MODEL = "models:/polypseg-eval@champion"
THRESHOLDED = ("dice", "iou", "precision", "recall", "specificity")


def _run(runner: CliRunner, *args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def _one_error_line(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _evaluate(runner: CliRunner, out: Path, *args: str) -> dict:
    _run(runner, "evaluate", "--out", out, *args)
    return json.loads(out.read_text())


def _test_images(root: Path) -> list[Path]:
    """The images of the model's --split test (2 of 16): predicting only those keeps it quick."""
    names = split_names([p.name for p in list_pairs(root)]).test
    return [root / "images" / name for name in names]


def test_saved_maps_score_like_the_model_under_pranet(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    root, maps = model_env["root"], tmp_path / "maps"
    _run(runner, "predict", "--model", MODEL, "--maps", "--out", maps, *_test_images(root))
    args = ("--root", root, "--protocol", "pranet")
    model = _evaluate(runner, tmp_path / "m.json", "--model", MODEL, *args)
    saved = _evaluate(runner, tmp_path / "p.json", "--predictions", maps, *args)
    assert model["protocol"] == saved["protocol"] == "pranet"
    assert model["n_images"] == saved["n_images"] == 2
    assert len(saved["missing_predictions"]) == 14  # masks of the other images: left out
    for key in PRANET_SUMMARY_KEYS:
        assert saved[key] == pytest.approx(model[key], abs=1e-12), key
    assert 0 < model["mdice"] <= model["max_dice"] <= 1
    # Grey maps, not masks: the model's map has more than two levels somewhere.
    levels = np.unique(np.asarray(Image.open(sorted(maps.iterdir())[0])))
    assert len(levels) > 2
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [r["name"] for r in rows] == [p.name for p in _test_images(root)]
    assert list(rows[0])[3:] == ["mdice", "miou", "wfm", "s_alpha", "mean_em", "mae"]


def test_saved_masks_score_like_the_model_under_the_default_protocol(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    root, masks = model_env["root"], tmp_path / "masks"
    _run(runner, "predict", "--model", MODEL, "--out", masks, *_test_images(root))
    model = _evaluate(runner, tmp_path / "m.json", "--model", MODEL, "--root", root)
    saved = _evaluate(runner, tmp_path / "p.json", "--predictions", masks, "--root", root)
    assert saved["protocol"] == "default" and saved["threshold"] == 0.5
    # A 0/255 mask is the model's map thresholded: every thresholded figure agrees exactly.
    for key in THRESHOLDED:
        assert saved[key] == pytest.approx(model[key], abs=1e-12), key


def _tiff_set(source: Path, target: Path, count: int) -> Path:
    """A CVC-ClinicDB-like copy: float RGB TIFF frames and 16-bit TIFF masks."""
    (target / "images").mkdir(parents=True)
    (target / "masks").mkdir()
    for pair in list_pairs(source)[:count]:
        stem = Path(pair.name).stem
        rgb = np.asarray(Image.open(pair.image).convert("RGB"), dtype=np.float32) / 255
        tifffile.imwrite(target / "images" / f"{stem}.tif", rgb, photometric="rgb")
        mask16 = read_mask(pair.mask).astype(np.uint16) * 65535
        tifffile.imwrite(target / "masks" / f"{stem}.tif", mask16)
    return target


def test_several_data_sets_give_the_papers_table(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    kvasir, clinic = model_env["root"], _tiff_set(model_env["root"], tmp_path / "cvc", 3)
    with pytest.raises(OSError):
        Image.open(next((clinic / "images").iterdir())).load()  # Pillow cannot read them
    results = tmp_path / "results"  # PraNet's layout: results/<method>/<data set>/
    for name, images in (("Kvasir", _test_images(kvasir)), ("CVC-ClinicDB", [clinic / "images"])):
        _run(runner, "predict", "--model", MODEL, "--maps", "--out", results / name, *images)
    out = tmp_path / "table"
    roots = ("--root", f"Kvasir={kvasir}", "--root", f"CVC-ClinicDB={clinic}")
    result = _run(
        runner, "evaluate", "--predictions", results, *roots, "--protocol", "pranet", "--out", out
    )
    table = (out / "table.md").read_text()
    assert result.stdout.strip() == table.strip()
    lines = table.strip().splitlines()
    assert lines[0].startswith("| Data set | n | mDice | mIoU | max Dice | wFβ | S-α |")
    assert lines[2].startswith("| Kvasir | 2 | ") and lines[3].startswith("| CVC-ClinicDB | 3 | ")
    cells = [cell.strip() for cell in lines[3].split("|")[3:-1]]
    interval = r"\d\.\d{3} \[\d\.\d{2}, \d\.\d{2}\]"  # mDice, mIoU: 0.899 [0.87, 0.92]
    assert all(re.fullmatch(interval, cell) for cell in cells[:2]), cells
    assert all(re.fullmatch(r"\d\.\d{3}", cell) for cell in cells[2:]), cells
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["dataset"] for r in rows] == ["Kvasir", "CVC-ClinicDB"]
    with_ci = ["mdice", "mdice_ci_low", "mdice_ci_high", "miou", "miou_ci_low", "miou_ci_high"]
    assert list(rows[0]) == ["dataset", "n_images", *with_ci, *PRANET_SUMMARY_KEYS[2:]]
    per_set = {
        name: json.loads((out / f"{name}.json").read_text()) for name in ("Kvasir", "CVC-ClinicDB")
    }
    clinic = per_set["CVC-ClinicDB"]
    assert float(rows[1]["mdice"]) == round(clinic["mdice"], 3)
    # The interval is the bootstrap's over the per-image rows (held to NumPy in test_uncertainty).
    per_image = [float(r["mdice"]) for r in csv.DictReader((out / "CVC-ClinicDB.csv").open())]
    low, high = bootstrap_interval(per_image)
    assert clinic["mdice_ci"] == pytest.approx([low, high], abs=1e-5)
    assert [float(rows[1]["mdice_ci_low"]), float(rows[1]["mdice_ci_high"])] == pytest.approx(
        clinic["mdice_ci"], abs=5e-4
    )
    run_id = re.search(r"evaluation run ([0-9a-f]{32})", result.stderr).group(1)
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["polypseg.protocol"] == "pranet"
    assert run.data.metrics["CVC-ClinicDB/n_images"] == 3
    assert run.data.metrics["Kvasir/mdice"] == pytest.approx(per_set["Kvasir"]["mdice"])
    assert run.data.metrics["CVC-ClinicDB/miou_ci_low"] == pytest.approx(clinic["miou_ci"][0])
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    assert {"table.md", "table.csv", "Kvasir", "CVC-ClinicDB"} <= logged


def test_the_model_on_tiff_data_and_its_identity_in_the_json(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    clinic = _tiff_set(model_env["root"], tmp_path / "cvc", 4)
    out = tmp_path / "e.json"
    result = _run(
        runner, "evaluate", "--model", MODEL, "--root", clinic, "--split", "all", "--out", out
    )
    summary = json.loads(out.read_text())
    assert summary["n_images"] == 4 and summary["protocol"] == "default"
    assert summary["model"] == MODEL and summary["model_name"] == "polypseg-eval"
    assert summary["model_version"] == str(model_env["version"])
    assert summary["model_run_id"] == model_env["run_id"]
    printed = re.search(r"evaluation run ([0-9a-f]{32}): (\S+)", result.stderr)
    run = mlflow.get_run(printed.group(1))
    assert printed.group(2).endswith(
        f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    )
    assert run.data.tags["polypseg.model_version"] == summary["model_version"]
    assert run.data.tags["polypseg.model_uri"] == MODEL


def test_predict_logs_a_run_and_reads_tiff(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    clinic = _tiff_set(model_env["root"], tmp_path / "cvc", 2)
    result = _run(runner, "predict", "--model", MODEL, "--out", tmp_path / "o", clinic / "images")
    assert len(result.stdout.strip().splitlines()) == 2
    run_id = re.search(r"prediction run ([0-9a-f]{32}): http", result.stderr).group(1)
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["n_images"] == "2"
    assert run.data.tags["polypseg.model_run_id"] == model_env["run_id"]


def test_maps_without_masks_and_masks_without_maps(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    root, maps = model_env["root"], tmp_path / "maps"
    maps.mkdir()
    for pair in list_pairs(root)[:3]:  # grey maps of any size: resized to their masks
        Image.fromarray(np.full((20, 30), 200, np.uint8)).save(maps / f"{Path(pair.name).stem}.bmp")
    result = _run(
        runner, "evaluate", "--predictions", maps, "--root", root, "--out", tmp_path / "e.json"
    )
    summary = json.loads((tmp_path / "e.json").read_text())
    assert summary["n_images"] == 3 and len(summary["missing_predictions"]) == 13
    assert "masks without a map, left out: " in result.stderr
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(maps / "stray.png")
    line = _one_error_line(runner, "evaluate", "--predictions", maps, "--root", root)
    assert "maps without a mask" in line and "stray.png" in line
    (maps / "stray.png").unlink()
    victim = sorted(maps.iterdir())[0]
    victim.write_text("not a map")
    assert victim.name in _one_error_line(runner, "evaluate", "--predictions", maps, "--root", root)


def test_evaluate_needs_one_source_and_known_options(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    root = str(model_env["root"])
    assert "either --model" in _one_error_line(runner, "evaluate", "--root", root)
    both = ("--model", MODEL, "--predictions", str(tmp_path))
    assert "either --model" in _one_error_line(runner, "evaluate", *both, "--root", root)
    line = _one_error_line(runner, "evaluate", "--model", MODEL, "--root", root, "--protocol", "x")
    assert "--protocol 'x'" in line
    two = ("--root", f"A={root}", "--root", root)
    assert "NAME=DIR" in _one_error_line(runner, "evaluate", "--model", MODEL, *two)
    named = ("--root", f"A={root}", "--out", str(tmp_path / "x.json"))
    assert "is a folder" in _one_error_line(runner, "evaluate", "--model", MODEL, *named)
    several = ("--root", f"A={root}", "--root", f"B={root}")
    line = _one_error_line(runner, "evaluate", "--predictions", str(tmp_path), *several)
    assert f"no folder {tmp_path / 'A'}" in line


def test_a_model_uri_is_resolved_to_its_version_and_run(model_env: dict) -> None:
    from polypseg.evaluation.predictors import Predictor

    run_id, version = model_env["run_id"], str(model_env["version"])
    for uri in ("models:/polypseg-eval/latest", f"models:/polypseg-eval/{version}"):
        described = Predictor(uri).describe()
        assert described == {
            "model": uri,
            "model_name": "polypseg-eval",
            "model_version": version,
            "model_run_id": run_id,
        }
    described = Predictor(f"runs:/{run_id}/model").describe()
    assert described["model_run_id"] == run_id and described["model_version"] is None
