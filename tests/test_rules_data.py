"""The data rules every command inherits (issue 28): an output never lands on an input, a data
set or a store; data sets are identified, not assumed; masks are judged as they will be scored;
the limits and the cache home are checked in one line. Each rule: a unit test of its checker
over several cases, and one CLI test that a refusal is one line, exit 2, nothing written."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import one_error_line
from typer.testing import CliRunner

from polypseg.cli import app
from polypseg.errors import OutputError
from polypseg.outputs import check_output_dir, check_output_file, check_outputs


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def data_copy(synthetic_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synthetic_root, tmp_path / "set"))


# --- §1 an output never lands on an input, a data set or a store --------------------------------


@pytest.mark.parametrize(
    "place",
    ["images/new.json", "masks/14.png", "masks/deeper/x.onnx", "images"],
)
def test_no_output_lands_in_any_data_set_found_by_layout(data_copy: Path, place: str) -> None:
    with pytest.raises(OutputError, match="holds the (images|masks) of data set"):
        if place == "images":
            check_output_dir(data_copy / place)
        else:
            check_output_file(data_copy / place)


def test_other_folder_names_of_a_data_set_count_too(tmp_path: Path) -> None:
    for folder in ("Original", "Ground Truth"):
        (tmp_path / "clinic" / folder).mkdir(parents=True)
    with pytest.raises(OutputError, match="Ground Truth"):
        check_output_file(tmp_path / "clinic" / "Ground Truth" / "1.tif")
    assert check_output_file(tmp_path / "clinic" / "split.json")  # beside a set, not in it


def test_no_output_lands_in_a_store_or_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    database = tmp_path / "elsewhere" / "mlflow.db"
    database.parent.mkdir()
    sqlite3.connect(database).execute("create table t (x)").connection.close()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    for path, reason in [
        (database, "SQLite database"),
        (tmp_path / "mlruns" / "artifacts" / "x.onnx", "MLflow store"),
        (database.parent / "artifacts" / "1" / "x.png", "store's artifacts"),
        (isolated_cache / "features" / "x.json", "feature cache"),
    ]:
        with pytest.raises(OutputError, match=reason):
            check_output_file(path)
    assert check_output_file(tmp_path / "out" / "x.onnx")


def test_an_output_never_replaces_an_input(tmp_path: Path) -> None:
    image = tmp_path / "in" / "x.jpg"
    image.parent.mkdir()
    image.write_bytes(b"jpeg")
    link = tmp_path / "in" / "link.jpg"
    link.symlink_to(image)
    for out in (image, link):
        with pytest.raises(OutputError, match="one of the inputs"):
            check_outputs([(out, "the ONNX model")], out, "choose another", inputs=[image])
    check_outputs([(tmp_path / "in" / "x.onnx", "the ONNX model")], image, "", inputs=[image])


def test_data_split_pranet_never_writes_into_a_data_set(runner: CliRunner, data_copy: Path) -> None:
    before = _snapshot(data_copy)
    out = data_copy / "masks" / "14.png"
    args = ["data", "split", "--protocol", "pranet", "--root", f"kvasir={data_copy}"]
    line = one_error_line(runner.invoke(app, [*args, "--out", str(out)]))
    assert "never writes" in line and "masks" in line
    assert _snapshot(data_copy) == before
