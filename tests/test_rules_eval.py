"""The project's rules on evaluation, serving, video and export, one test per class of fault:
a report folder holds one evaluation; the pixel limit holds for frames and served images;
a model or file that is not polypseg's is refused in one line."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import one_error_line
from matplotlib.figure import Figure
from PIL import Image
from typer.testing import CliRunner

from polypseg.atomic import umask
from polypseg.cli import app
from polypseg.errors import PolypsegError
from polypseg.evaluation.predictors import OnnxPredictor, Predictor
from polypseg.evaluation.report import SetReport, check_report_folder, write_folder
from polypseg.tracking.model_input import ModelInputError, read_images


def _report(folder: Path, name: str) -> SetReport:
    summary = {"n_images": 1, "dice": 0.5}
    rows = [{"name": "a", "height": 2, "width": 2, "dice": 0.5}]
    paths = (folder / f"{name}.json", folder / f"{name}.csv", folder / f"{name}_worst.png")
    return SetReport(name, summary, rows, ("dice",), ("dice",), *paths, figure=Figure())


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout)


def test_a_report_folder_is_replaced_whole_and_a_killed_ones_leftovers_go(tmp_path: Path) -> None:
    folder = tmp_path / "F"
    write_folder([_report(folder, "kvasir"), _report(folder, "etis")], folder, tables=True)
    left = tmp_path / f".F.{_dead_pid()}.abc.staged"  # what a kill -9 mid-write leaves
    left.mkdir()
    (left / "colondb.csv").write_text("stale")
    write_folder([_report(folder, "etis")], folder, tables=True)
    assert sorted(p.name for p in folder.iterdir()) == [
        "etis.csv",
        "etis.json",
        "etis_worst.png",
        "table.csv",
        "table.md",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["F"]
    assert oct(folder.stat().st_mode & 0o777) == oct(0o777 & ~umask())  # not mkdtemp's 0700


@pytest.mark.parametrize("held", ["notes.py", "images/", "mlflow.db"])
def test_a_folder_holding_what_no_evaluation_wrote_is_never_replaced(
    tmp_path: Path, held: str
) -> None:
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / held.rstrip("/")).mkdir() if held.endswith("/") else (tmp_path / held).touch()
    with pytest.raises(PolypsegError, match=f"holds {held.rstrip('/')}, which no evaluation wrote"):
        check_report_folder(tmp_path)


class Echo(mlflow.pyfunc.PythonModel):
    """A registered model that is not polypseg's."""

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        return model_input


@pytest.fixture
def echo_model(mlflow_store: str) -> str:
    mlflow.set_experiment("echo")  # not the experiment an earlier test left active
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="m", python_model=Echo(), pip_requirements=[])
    mlflow.register_model(info.model_uri, "echo")
    return "models:/echo/1"


def test_a_model_that_is_not_polypseg_is_one_line(echo_model: str) -> None:
    with pytest.raises(PolypsegError, match="models:/echo/1 is not a polypseg model .it is a Echo"):
        Predictor(echo_model)


def test_predict_with_a_model_that_is_not_polypseg_is_one_line(
    runner: CliRunner, echo_model: str, synthetic_root: Path
) -> None:
    image = next((synthetic_root / "images").iterdir())
    args = ["predict", "--model", echo_model, "--out", "o", str(image)]
    assert "is not a polypseg model" in one_error_line(runner.invoke(app, args))


def test_an_onnx_file_without_polypsegs_metadata_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    shape = ["batch", 3, 64, 64]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], [name]) for name in ("probabilities", "logits")],
        "named-like-ours",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, shape)],
        [
            helper.make_tensor_value_info(n, TensorProto.UINT8, shape)
            for n in ("probabilities", "logits")
        ],
    )
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    with pytest.raises(PolypsegError, match="is not a polypseg export .no encoder, image_size"):
        OnnxPredictor(path)


def test_a_served_image_of_fractions_is_scaled_not_rounded_to_black() -> None:
    (image,), _ = read_images([np.full((4, 5, 3), 0.5)])
    assert image.dtype == np.uint8 and (image == 128).all()
    (image,), _ = read_images([np.full((4, 5, 3), 200.0)])  # 0–255 floats stay as they are
    assert (image == 200).all()


def test_a_served_image_over_the_pixel_limit_is_refused_from_its_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("polypseg.data.images.DEFAULT_MAX_MEGAPIXELS", 0.001)
    encoded = io.BytesIO()
    Image.new("RGB", (50, 40)).save(encoded, format="PNG")
    sent = base64.b64encode(encoded.getvalue()).decode()
    with pytest.raises(ModelInputError, match="50x40 is 0.002 megapixels, over the 0.001-mega"):
        read_images([sent])
    with pytest.raises(ModelInputError, match="over the 0.001-megapixel limit"):
        read_images(np.zeros((40, 50, 3), np.uint8))
