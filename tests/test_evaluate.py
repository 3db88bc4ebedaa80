"""`polypseg evaluate` and `predict` end to end on a model trained on synthetic data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from polypseg.cli import app
from polypseg.data.images import read_image
from polypseg.data.masks import read_mask
from polypseg.data.pairs import list_pairs
from polypseg.data.split import split_names
from polypseg.metrics import mean_scores, scores
from polypseg.uncertainty import bootstrap_interval

MODEL = "models:/polypseg-eval@champion"  # registered by conftest's `registered_model`


def _ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def _error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_evaluate_test_split_agrees_with_metrics(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    out = tmp_path / "report" / "eval.json"
    stdout = _ok(
        runner.invoke(
            app, ["evaluate", "--model", MODEL, "--root", str(model_env["root"]), "--out", str(out)]
        )
    )
    summary = json.loads(out.read_text())
    assert json.loads(stdout) == summary
    test_names = split_names([p.name for p in list_pairs(model_env["root"])]).test
    assert summary["n_images"] == len(test_names) == 2
    for key in ("dice", "iou", "precision", "recall", "specificity", "mae", "s_alpha", "e_measure"):
        assert 0.0 <= summary[key] <= 1.0 + 1e-3
    # The same predictions scored by metrics.py directly, at the original sizes.
    model = mlflow.pyfunc.load_model(MODEL)
    per_image = {"dice": [], "iou": []}
    for name in test_names:
        image = read_image(model_env["root"] / "images" / name)
        truth = read_mask(model_env["root"] / "masks" / name)
        pred = model.predict(image)
        assert pred.shape == truth.shape
        got = scores(torch.from_numpy(pred)[None].double(), torch.from_numpy(truth)[None].double())
        for key in per_image:
            per_image[key].append(got[key])
    means = mean_scores({k: torch.cat(v) for k, v in per_image.items()})
    assert summary["dice"] == pytest.approx(means["dice"], abs=1e-9)
    assert summary["iou"] == pytest.approx(means["iou"], abs=1e-9)
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [r["name"] for r in rows] == list(test_names)
    assert np.mean([float(r["dice"]) for r in rows]) == pytest.approx(summary["dice"], abs=1e-5)
    dice = torch.cat(per_image["dice"]).numpy()  # the interval of --split test's mDice
    assert summary["dice_ci"] == pytest.approx(list(bootstrap_interval(dice)), abs=1e-9)
    assert out.with_name("eval_worst.png").stat().st_size > 0
    card = mlflow.MlflowClient().get_model_version("polypseg-eval", model_env["version"])
    low, high = summary["dice_ci"]  # any evaluation of a version keeps its card current
    shown = f"{model_env['root'].name}: n=2, dice {summary['dice']:.3f} [{low:.2f}, {high:.2f}]"
    assert shown in card.description


def test_evaluate_all_on_png_and_tiff_set_logs_a_run(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    other = tmp_path / "cvc"
    (other / "images").mkdir(parents=True)
    (other / "masks").mkdir()
    for pair in list_pairs(model_env["root"])[:5]:
        Image.open(pair.image).save(other / "images" / f"{Path(pair.name).stem}.png")
        Image.fromarray(read_mask(pair.mask) * 255).save(
            other / "masks" / f"{Path(pair.name).stem}.tif"
        )
    out = tmp_path / "cvc.json"
    _ok(
        runner.invoke(
            app,
            [
                "evaluate",
                "--model",
                MODEL,
                "--root",
                str(other),
                "--split",
                "all",
                "--out",
                str(out),
            ],
        )
    )
    summary = json.loads(out.read_text())
    assert summary["n_images"] == 5 and summary["split"] == "all"
    runs = mlflow.search_runs(
        experiment_names=["polypseg-evaluation"],
        filter_string=f"tags.`polypseg.data_digest` = '{summary['data_digest']}'",
        output_format="list",
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    tags = runs[0].data.tags
    assert tags["polypseg.model_name"] == "polypseg-eval" and tags["polypseg.model_version"] == str(
        model_env["version"]
    )
    assert runs[0].data.metrics["dice"] == pytest.approx(summary["dice"])
    assert runs[0].data.metrics["iou_ci_high"] == pytest.approx(summary["iou_ci"][1])


def test_predict_writes_masks_at_original_sizes(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"wide": (40, 90), "tall": (75, 31), "square": (50, 50)}
    for stem, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            inputs / f"{stem}.jpg"
        )
    grey = rng.integers(0, 256, (33, 47), dtype=np.uint8)
    Image.fromarray(grey).save(inputs / "grey.png")
    Image.fromarray(rng.integers(0, 256, (21, 29, 4), dtype=np.uint8), "RGBA").save(
        inputs / "rgba.png"
    )
    Image.fromarray(grey.astype(np.uint16) * 257).save(inputs / "deep.png")
    sizes.update({"grey": (33, 47), "rgba": (21, 29), "deep": (33, 47)})
    out = tmp_path / "masks"
    stdout = _ok(
        runner.invoke(
            app, ["predict", "--model", MODEL, "--out", str(out), "--overlay", str(inputs)]
        )
    )
    listed = stdout.strip().splitlines()
    assert listed == [str(out / f"{s}.png") for s in sorted(sizes)] + [
        str(out / f"{s}_overlay.png") for s in sorted(sizes)
    ]
    for stem, (h, w) in sizes.items():
        mask = np.asarray(Image.open(out / f"{stem}.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert np.asarray(Image.open(out / f"{stem}_overlay.png")).shape == (h, w, 3)


def test_predict_accepts_globs(runner: CliRunner, model_env: dict, tmp_path: Path) -> None:
    pattern = str(model_env["root"] / "images" / "*_0000[0-2].jpg")
    stdout = _ok(
        runner.invoke(app, ["predict", "--model", MODEL, "--out", str(tmp_path / "o"), pattern])
    )
    assert len(stdout.strip().splitlines()) == 3


def test_missing_alias_is_one_line(runner: CliRunner, model_env: dict, tmp_path: Path) -> None:
    args = ["evaluate", "--model", "models:/polypseg-eval@nope", "--root", str(model_env["root"])]
    assert "cannot load model models:/polypseg-eval@nope" in _error_line(runner.invoke(app, args))


def test_missing_model_is_one_line(runner: CliRunner, model_env: dict, tmp_path: Path) -> None:
    args = [
        "predict",
        "--model",
        "models:/no-such-model/1",
        "--out",
        str(tmp_path),
        str(model_env["root"] / "images"),
    ]
    assert "cannot load model models:/no-such-model/1" in _error_line(runner.invoke(app, args))


def test_a_file_that_is_not_an_image_is_named(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    out = tmp_path / "o"
    line = _error_line(
        runner.invoke(app, ["predict", "--model", MODEL, "--out", str(out), str(bad)])
    )
    assert "notes.jpg" in line and not out.exists()


def test_a_folder_without_pairs_is_one_line(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    args = ["evaluate", "--model", MODEL, "--root", str(tmp_path / "empty"), "--split", "all"]
    assert "no image files" in _error_line(runner.invoke(app, args))


def test_a_missing_input_is_one_line(runner: CliRunner, model_env: dict, tmp_path: Path) -> None:
    args = ["predict", "--model", MODEL, "--out", str(tmp_path / "o"), str(tmp_path / "nope.jpg")]
    assert "nope.jpg does not exist" in _error_line(runner.invoke(app, args))


def test_evaluate_keeps_an_earlier_report_when_it_fails(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    out = tmp_path / "eval.json"
    out.write_text('{"kept": true}')
    broken = Path(shutil.copytree(model_env["root"], tmp_path / "broken"))
    victim = sorted((broken / "masks").iterdir())[0]
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(victim, format="JPEG")  # wrong size
    args = [
        "evaluate",
        "--model",
        MODEL,
        "--root",
        str(broken),
        "--split",
        "all",
        "--out",
        str(out),
    ]
    # refused when the folder is listed, before any work: `split` and `train` refuse it too
    assert "masks not the size of their images" in _error_line(runner.invoke(app, args))
    assert json.loads(out.read_text()) == {"kept": True}
