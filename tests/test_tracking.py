"""`polypseg train` end to end into a real MLflow store; run states; the logged pyfunc model."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from polypseg.cli import app
from polypseg.tracking.runs import tracked_run
from polypseg.tracking.store import mask_password, setup


def _train(runner: CliRunner, config: Path, *extra: str) -> str:
    result = runner.invoke(app, ["train", "--config", str(config), *extra])
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"run_id=([0-9a-f]{32}) test_dice=(\d\.\d{4})", last)
    assert match, last
    return match.group(1)


def test_train_logs_a_complete_finished_run(
    runner: CliRunner, tiny_config: Path, mlflow_store: str
) -> None:
    run_id = _train(runner, tiny_config)
    client = mlflow.MlflowClient(mlflow_store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["decoder.width"] == "16" and run.data.params["train.lr"] == "0.003"
    assert run.data.tags["polypseg.encoder"] == "sam_tiny"
    assert "random weights" in run.data.tags["polypseg.fallback_reason"]
    history = client.get_metric_history(run_id, "val_dice")
    assert [m.step for m in history] == [1, 2, 3]
    for key in ("best_val_dice", "test_dice", "test_iou", "test_precision", "test_recall"):
        assert 0.0 <= run.data.metrics[key] <= 1.0
    artifacts = {f.path for f in client.list_artifacts(run_id)}
    artifacts |= {f.path for d in ("figures", "decoder") for f in client.list_artifacts(run_id, d)}
    assert {
        "split.json",
        "figures/val_masks.png",
        "figures/curves.png",
        "decoder/decoder.pt",
    } <= artifacts
    split = json.loads(Path(client.download_artifacts(run_id, "split.json")).read_text())
    assert len(split["train"]) + len(split["val"]) + len(split["test"]) == 12
    assert run.inputs.dataset_inputs[0].dataset.digest
    assert (Path.cwd() / "mlruns" / "mlflow.db").exists()


def test_logged_model_predicts_original_sizes_in_a_fresh_process(
    runner: CliRunner, tiny_config: Path, mlflow_store: str
) -> None:
    run_id = _train(runner, tiny_config)
    script = (
        "import mlflow, numpy as np\n"
        f"model = mlflow.pyfunc.load_model('runs:/{run_id}/model')\n"
        "for h, w in [(50, 37), (64, 90), (33, 33)]:\n"
        "    image = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)\n"
        "    mask = model.predict(image)\n"
        "    assert mask.shape == (h, w) and mask.dtype == np.uint8, (mask.shape, mask.dtype)\n"
        "    assert set(np.unique(mask)) <= {0, 1}\n"
        "print('ok')\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "POLYPSEG_CACHE": "/nonexistent"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def test_no_log_model_keeps_the_run_small(
    runner: CliRunner, tiny_config: Path, mlflow_store: str
) -> None:
    run_id = _train(runner, tiny_config, "--no-log-model")
    assert "model" not in {f.path for f in mlflow.MlflowClient().list_artifacts(run_id)}
    assert not mlflow.search_logged_models(
        filter_string=f"source_run_id = '{run_id}'", output_format="list"
    )


@pytest.mark.parametrize(
    ("error", "status"), [(KeyboardInterrupt, "KILLED"), (ValueError, "FAILED")]
)
def test_interrupted_or_crashed_runs_are_never_left_running(
    mlflow_store: str, error: type[BaseException], status: str
) -> None:
    setup("states")
    with pytest.raises(error), tracked_run() as run:
        raise error()
    assert mlflow.MlflowClient().get_run(run.info.run_id).info.status == status


def test_passwords_are_masked() -> None:
    assert (
        mask_password("postgresql://u:s3cret@db:5432/optuna") == "postgresql://u:***@db:5432/optuna"
    )
    assert mask_password("sqlite:///studies/optuna.db") == "sqlite:///studies/optuna.db"


def test_fallback_is_recorded_in_tags(
    runner: CliRunner,
    tiny_config: Path,
    mlflow_store: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import torch.hub

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    sets = [
        "encoder.name=sam_vit_b",
        f"encoder.checkpoint={tmp_path / 'none.pth'}",
        "train.epochs=1",
    ]
    run_id = _train(runner, tiny_config, "--no-log-model", *[a for s in sets for a in ("--set", s)])
    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    assert tags["polypseg.encoder"] == "resnet50"
    assert "none.pth not found" in tags["polypseg.fallback_reason"]


def test_logging_the_model_drops_mlflows_two_notes_and_nothing_else(
    mlflow_store: str, capfd: pytest.CaptureFixture
) -> None:
    from polypseg.models.decoder import SimpleDecoder
    from polypseg.models.encoders import encoder_architecture
    from polypseg.tracking.pyfunc import log_segmenter_model

    logger = logging.getLogger("mlflow.pyfunc")
    level, filters = logger.level, list(logger.filters)
    encoder = encoder_architecture("resnet_tiny")
    mlflow.set_experiment("notes")  # not the experiment an earlier test left active
    with mlflow.start_run():
        log_segmenter_model(encoder, SimpleDecoder(encoder.out_channels, 8), 64)
    err = capfd.readouterr().err
    assert "CloudPickle" not in err and "Validating input example" not in err
    assert (logger.level, logger.filters) == (level, filters)  # as other threads found it
