"""`polypseg export --format onnx` and `--engine onnx`: the exported file computes what the torch
model computes (tiny SAM and tiny ResNet), at any batch size, and is logged beside the pyfunc."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from conftest import one_error_line
from PIL import Image
from typer.testing import CliRunner

from polypseg.cli import app
from polypseg.data.images import read_image
from polypseg.data.pairs import list_pairs
from polypseg.errors import PolypsegError
from polypseg.evaluation.predictors import (
    INPUT,
    LOGITS,
    PROBABILITIES,
    OnnxPredictor,
    Predictor,
    batch_input,
)
from polypseg.export.onnx import PARITY_TOLERANCE, ExportGraph, export_onnx

MODEL = "models:/polypseg-eval@champion"  # the tiny SAM model of conftest's `registered_model`


@pytest.fixture(scope="module")
def sam_export(registered_model: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The registered tiny-SAM model exported once through the CLI, for every test here."""
    path = tmp_path_factory.mktemp("onnx") / "sam.onnx"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", registered_model["uri"])
        result = CliRunner().invoke(app, ["export", "--model", MODEL, "--out", str(path)])
    assert result.exit_code == 0, result.output
    return {"path": path, "stdout": result.stdout, "stderr": result.stderr, **registered_model}


def _reference(model_uri: str) -> ExportGraph:
    segmenter = Predictor(model_uri).segmenter.cpu().eval()
    return ExportGraph(segmenter.encoder, segmenter.decoder).eval()


def _images(root: Path, n: int) -> list[np.ndarray]:
    return [read_image(pair.image) for pair in list_pairs(root)[:n]]


def test_export_reports_its_parity_and_logs_the_file_to_the_models_run(
    sam_export: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sam_export["stdout"].strip() == str(sam_export["path"])
    found = re.search(r"max probability difference (\S+)", sam_export["stderr"])
    assert found is not None and float(found.group(1)) <= PARITY_TOLERANCE
    assert "batch sizes 8 and 1" in sam_export["stderr"]
    assert len(sam_export["stderr"].splitlines()) == 2  # and the logged file: no exporter noise
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sam_export["uri"])
    logged = mlflow.MlflowClient().list_artifacts(sam_export["run_id"], "onnx")
    assert [a.path for a in logged] == ["onnx/sam.onnx"]
    assert logged[0].file_size == sam_export["path"].stat().st_size


def test_sam_export_matches_torch_at_two_batch_sizes(
    sam_export: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sam_export["uri"])
    graph = _reference(MODEL)
    batch = batch_input(_images(sam_export["root"], 3), 64)
    session = OnnxPredictor(sam_export["path"]).session
    with torch.no_grad():
        want, want_logits = graph(torch.from_numpy(batch))
    for rows in (slice(0, 3), slice(1, 2)):
        got, logits = session.run([PROBABILITIES, LOGITS], {INPUT: batch[rows]})
        assert got.shape == (len(batch[rows]), 1, 64, 64)
        assert np.abs(got - want[rows].numpy()).max() <= PARITY_TOLERANCE
        assert np.abs(logits - want_logits[rows].numpy()).max() <= 1e-3


def test_onnx_predictor_gives_the_torch_predictors_maps_at_each_images_size(
    sam_export: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sam_export["uri"])
    torch_side, onnx_side = Predictor(MODEL), OnnxPredictor(sam_export["path"])
    assert onnx_side.threshold == torch_side.threshold
    assert onnx_side.describe()["model_run_id"] == sam_export["run_id"]
    for image in _images(sam_export["root"], 4):
        want, got = torch_side.proba(image), onnx_side.proba(image)
        assert got.shape == image.shape[:2]
        assert np.abs(got - want).max() <= PARITY_TOLERANCE
        threshold = torch_side.threshold
        differ = (got >= threshold) != (want >= threshold)
        assert np.all(np.abs(want[differ] - torch_side.threshold) <= PARITY_TOLERANCE)


def test_predict_with_the_onnx_engine_writes_the_torch_masks(
    runner: CliRunner, sam_export: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sam_export["uri"])
    monkeypatch.chdir(tmp_path)
    images = [str(p.image) for p in list_pairs(sam_export["root"])[:4]]
    torch_run = runner.invoke(app, ["predict", "--model", MODEL, "--out", "t", *images])
    onnx_args = ["--engine", "onnx", "--model", str(sam_export["path"]), "--out", "o"]
    onnx_run = runner.invoke(app, ["predict", *onnx_args, *images])
    assert torch_run.exit_code == 0 and onnx_run.exit_code == 0, onnx_run.output
    for image in images:
        name = f"{Path(image).stem}.png"
        want = np.asarray(Image.open(tmp_path / "t" / name))
        assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / name)), want)


def test_evaluate_with_the_onnx_engine_scores_as_torch_does(
    runner: CliRunner, sam_export: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sam_export["uri"])
    monkeypatch.chdir(tmp_path)
    summaries = {}
    for engine, model in (("torch", MODEL), ("onnx", str(sam_export["path"]))):
        args = ["evaluate", "--engine", engine, "--model", model, "--out", f"{engine}.json"]
        result = runner.invoke(app, [*args, "--root", str(sam_export["root"])])
        assert result.exit_code == 0, result.output
        summaries[engine] = json.loads(result.stdout)
    assert summaries["onnx"]["engine"] == "onnx"
    assert summaries["onnx"]["model_run_id"] == summaries["torch"]["model_run_id"]
    for key in ("dice", "iou", "mae"):
        assert summaries["onnx"][key] == pytest.approx(summaries["torch"][key], abs=1e-3)


@pytest.fixture
def resnet_model(mlflow_store: str, synthetic_root: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An untrained tiny-ResNet segmenter logged as a pyfunc (the export needs no training)."""
    from polypseg.models.decoder import SimpleDecoder
    from polypseg.models.encoders import encoder_architecture
    from polypseg.tracking.pyfunc import log_segmenter_model
    from polypseg.tracking.store import setup

    setup("export-tests", mlflow_store)
    torch.manual_seed(0)
    encoder = encoder_architecture("resnet_tiny")
    decoder = SimpleDecoder(encoder.out_channels, 8).eval()
    with mlflow.start_run() as run:
        log_segmenter_model(encoder, decoder, 64)
    return f"runs:/{run.info.run_id}/model"


def test_resnet_export_matches_torch_and_a_failed_parity_writes_nothing(
    resnet_model: str, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, images = tmp_path / "resnet.onnx", [str(synthetic_root / "images")]
    with (
        monkeypatch.context() as patch,
        pytest.raises(PolypsegError, match=r"differs .* by \d\.\d"),
    ):
        patch.setattr("polypseg.export.onnx.PARITY_TOLERANCE", -1.0)  # any difference fails
        export_onnx(resnet_model, out, images)
    assert not out.exists() and list(tmp_path.glob(".resnet.onnx*")) == []
    done = export_onnx(resnet_model, out, images, log=False)
    assert done.max_difference <= PARITY_TOLERANCE and done.artifact_uri is None
    graph, onnx_side = _reference(resnet_model), OnnxPredictor(out)
    for n in (1, 5):
        batch = batch_input(_images(synthetic_root, n), 64)
        with torch.no_grad():
            want = graph(torch.from_numpy(batch))[0].numpy()
        (got,) = onnx_side.session.run([PROBABILITIES], {INPUT: batch})
        assert np.abs(got - want).max() <= PARITY_TOLERANCE


def test_a_model_without_a_data_set_needs_check_images(
    runner: CliRunner, resnet_model: str, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["export", "--model", resnet_model, "--out", str(tmp_path / "m")])
    assert "--check-images" in one_error_line(result)
    assert not (tmp_path / "m").exists()


def test_a_file_that_is_not_onnx_is_one_line(
    runner: CliRunner, mlflow_store: str, synthetic_root: Path, tmp_path: Path
) -> None:
    from polypseg.tracking.store import setup

    setup("polypseg-prediction", mlflow_store)  # a first use of the store logs its creation
    fake = tmp_path / "model.onnx"
    fake.write_text("not a model")
    args = ["predict", "--engine", "onnx", "--model", str(fake), "--out", str(tmp_path / "o")]
    line = one_error_line(runner.invoke(app, [*args, str(synthetic_root / "images")]))
    assert str(fake) in line and "polypseg export" in line


def test_without_the_onnx_extra_export_names_it_in_one_line(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime → ImportError
    args = ["export", "--model", MODEL, "--out", str(tmp_path / "m.onnx")]
    line = one_error_line(runner.invoke(app, args))
    assert "pip install -e '.[onnx]'" in line and "onnxruntime" in line


def test_a_study_champion_finds_its_trials_data(model_env: dict) -> None:
    from polypseg.export.onnx import training_roots

    client = mlflow.MlflowClient()
    trial_run = model_env["run_id"]  # trained on model_env's root, logged as the run's input
    with mlflow.start_run(run_name="study #1") as parent:  # a study's parent: no data.* params
        pass
    client.create_registered_model("study-champion")
    source = client.get_model_version("polypseg-eval", model_env["version"]).source
    client.create_model_version(
        "study-champion",
        source,
        run_id=parent.info.run_id,
        tags={"polypseg.trial_run_id": trial_run},
    )
    roots = training_roots("models:/study-champion/1", parent.info.run_id)
    assert roots[0] == str(model_env["root"])
