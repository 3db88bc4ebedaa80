"""Outputs never land on inputs, nor on each other; a refused write is one line.

`predict` and `evaluate` know every output name before any work: an output folder that is, or
lies inside, a folder of inputs (an image folder, a data set's `masks/`, the maps scored) is
refused, and so are two outputs with one name. A full disk while writing the outputs of
`predict`, `evaluate`, `data synth` or `data split` is one line, exit 2, with nothing half
written; a target name near the 255-byte limit still gets its temporary; a negative `--seed` is
one line; `POLYPSEG_CACHE=""` means the default cache.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import one_error_line
from PIL import Image
from typer.testing import CliRunner

from polypseg.atomic import atomic_path
from polypseg.caches import cache_home
from polypseg.cli import app

NO_MODEL = "models:/no-such-model@champion"  # every refusal here comes before the model loads
MODEL = "models:/polypseg-eval@champion"  # conftest's `registered_model`


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _images(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _no_space(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def data_copy(synthetic_root: Path, tmp_path: Path) -> Path:
    """A private copy of the 12-pair set: a regression here must not spoil the shared one."""
    return Path(shutil.copytree(synthetic_root, tmp_path / "set"))


# --- predict: outputs among the inputs ----------------------------------------------------------


def test_predict_into_its_input_folder_is_refused_and_changes_nothing(
    runner: CliRunner, tmp_path: Path, mlflow_store: str
) -> None:
    inputs = _images(tmp_path / "in", "a.png", "b.jpg")
    before = _snapshot(inputs)
    args = ["predict", "--model", NO_MODEL, "--out", str(inputs), str(inputs)]
    line = one_error_line(runner.invoke(app, args))
    assert f"--out {inputs}" in line and "input images" in line
    assert _snapshot(inputs) == before


@pytest.mark.parametrize("out", ["masks", "masks/predicted", "images/predicted"])
def test_predict_into_a_data_sets_folders_is_refused(
    runner: CliRunner, data_copy: Path, mlflow_store: str, out: str
) -> None:
    before = _snapshot(data_copy)
    args = ["predict", "--model", NO_MODEL, "--out", str(data_copy / out)]
    line = one_error_line(runner.invoke(app, [*args, str(data_copy / "images")]))
    kind = out.split("/")[0]
    assert f"would write in {data_copy / kind}" in line
    assert _snapshot(data_copy) == before and not (data_copy / "images" / "predicted").exists()


def test_an_image_whose_overlay_is_another_image_is_refused_naming_both(
    runner: CliRunner, tmp_path: Path, mlflow_store: str
) -> None:
    inputs = _images(tmp_path / "in", "a.png", "a_overlay.png")
    out = tmp_path / "out"
    args = ["predict", "--model", NO_MODEL, "--out", str(out), "--overlay", str(inputs)]
    line = one_error_line(runner.invoke(app, args))
    assert str(inputs / "a.png") in line and str(inputs / "a_overlay.png") in line
    assert str(out / "a_overlay.png") in line and not out.exists()


def test_two_images_with_one_stem_are_refused_naming_both(
    runner: CliRunner, tmp_path: Path, mlflow_store: str
) -> None:
    inputs = _images(tmp_path / "in", "a.png", "a.jpg")
    out = tmp_path / "out"
    line = one_error_line(
        runner.invoke(app, ["predict", "--model", NO_MODEL, "--out", str(out), str(inputs)])
    )
    assert str(inputs / "a.png") in line and str(inputs / "a.jpg") in line and not out.exists()


def test_an_image_given_twice_is_predicted_once(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    inputs = _images(tmp_path / "in", "a.png", "a_overlay.png")
    out = tmp_path / "out"
    args = ["predict", "--model", MODEL, "--out", str(out), str(inputs), str(inputs / "a.png")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(out / "a.png"), str(out / "a_overlay.png")]


def test_an_output_name_over_the_limit_is_refused_before_any_work(
    runner: CliRunner, tmp_path: Path, mlflow_store: str
) -> None:
    stem = "x" * 250  # the mask's name fits in 255 bytes, the overlay's does not
    inputs = _images(tmp_path / "in", f"{stem}.png")
    out = tmp_path / "out"
    args = ["predict", "--model", NO_MODEL, "--out", str(out), "--overlay", str(inputs)]
    line = one_error_line(runner.invoke(app, args))
    assert "over 255 bytes" in line and "(--overlay)" in line and not out.exists()


# --- evaluate: reports among the inputs, or on each other ---------------------------------------


@pytest.mark.parametrize("out", ["masks/eval.json", "masks/sub/eval.json", "images/eval.json"])
def test_evaluate_into_a_data_sets_folders_is_refused(
    runner: CliRunner, data_copy: Path, mlflow_store: str, out: str
) -> None:
    before = _snapshot(data_copy)
    args = [
        "evaluate",
        "--model",
        NO_MODEL,
        "--root",
        str(data_copy),
        "--out",
        str(data_copy / out),
    ]
    line = one_error_line(runner.invoke(app, args))
    assert f"--out {data_copy / out}" in line and "polypseg never writes where" in line
    assert _snapshot(data_copy) == before


def test_evaluate_into_the_maps_it_scores_is_refused(
    runner: CliRunner, data_copy: Path, tmp_path: Path, mlflow_store: str
) -> None:
    maps = _images(tmp_path / "maps", "a.png")
    args = ["evaluate", "--predictions", str(maps), "--root", str(data_copy)]
    line = one_error_line(runner.invoke(app, [*args, "--out", str(maps / "eval.json")]))
    assert "--predictions" in line and sorted(p.name for p in maps.iterdir()) == ["a.png"]


@pytest.mark.parametrize(
    ("roots", "out", "clash"),
    [
        (["{root}"], "eval.csv", "eval.csv"),
        (["table={root}"], "tables", "tables/table.csv"),
    ],
)
def test_evaluate_outputs_with_one_name_are_refused_naming_both(
    runner: CliRunner,
    data_copy: Path,
    tmp_path: Path,
    mlflow_store: str,
    roots: list[str],
    out: str,
    clash: str,
) -> None:
    root_args = [a for r in roots for a in ("--root", r.format(root=data_copy))]
    args = ["evaluate", "--model", NO_MODEL, *root_args, "--out", str(tmp_path / out)]
    line = one_error_line(runner.invoke(app, args))
    assert "would both write" in line and str(tmp_path / clash) in line
    assert not (tmp_path / clash).exists()


def test_evaluate_may_write_beside_the_data_sets_folders(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    """The data set's own root is no input folder: a report there breaks nothing."""
    root = Path(shutil.copytree(model_env["root"], tmp_path / "set"))
    out = root / "eval.json"
    args = ["evaluate", "--model", MODEL, "--root", str(root), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["n_images"] > 0


# --- a full disk while writing outputs ----------------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith("."))


def test_a_full_disk_under_data_synth_is_one_line(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image.Image, "save", _no_space)
    out = tmp_path / "synth"
    line = one_error_line(runner.invoke(app, ["data", "synth", "--out", str(out), "--n", "2"]))
    assert line == (
        f"error: cannot write --out {out}: no space left on device; free space there, "
        "or choose another --out"
    )
    assert not out.exists() and _leftovers(tmp_path) == []


def test_a_full_disk_under_data_split_is_one_line(
    runner: CliRunner, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "split.json"
    out.write_text('{"kept": true}')
    monkeypatch.setattr(Path, "write_text", _no_space)
    args = ["data", "split", "--root", str(synthetic_root), "--out", str(out)]
    line = one_error_line(runner.invoke(app, args))
    assert f"cannot write --out {out}: no space left on device" in line
    assert out.read_bytes() == b'{"kept": true}' and _leftovers(tmp_path) == []


def test_a_full_disk_under_predict_is_one_line(
    runner: CliRunner, model_env: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = _images(tmp_path / "in", "a.png")
    out = tmp_path / "out"
    monkeypatch.setattr(Image.Image, "save", _no_space)
    args = ["predict", "--model", MODEL, "--out", str(out), str(inputs)]
    line = one_error_line(runner.invoke(app, args))
    assert f"cannot write --out {out / 'a.png'}: no space left on device" in line
    assert list(out.iterdir()) == []


def test_a_full_disk_under_evaluate_keeps_the_earlier_report_whole(
    runner: CliRunner, model_env: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure

    out = tmp_path / "report" / "eval.json"
    args = ["evaluate", "--model", MODEL, "--root", str(model_env["root"]), "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    before = _snapshot(out.parent)
    monkeypatch.setattr(Figure, "savefig", _no_space)  # the CSV is written by then
    line = one_error_line(runner.invoke(app, args))
    assert "cannot write --out" in line and "no space left on device" in line
    assert _snapshot(out.parent) == before and _leftovers(out.parent) == []


# --- names near the limit, seeds, the cache's place ---------------------------------------------


def test_a_target_name_near_the_limit_is_written(tmp_path: Path) -> None:
    target = tmp_path / ("n" * 250 + ".json")
    with atomic_path(target) as tmp:
        tmp.write_text("{}")
    assert target.read_text() == "{}" and _leftovers(tmp_path) == []


def test_predict_writes_a_mask_for_an_image_with_a_name_near_the_limit(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    stem = "m" * 250
    inputs = _images(tmp_path / "in", f"{stem}.jpg")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", "--model", MODEL, "--out", str(out), str(inputs)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [f"{stem}.png"]


@pytest.mark.parametrize(
    "args",
    [
        ["data", "synth", "--out", "{tmp}/s", "--seed", "-1"],
        ["data", "split", "--root", "{root}", "--seed", "-1"],
        ["data", "split", "--root", "{root}", "--seed", str(2**32)],
        ["evaluate", "--model", NO_MODEL, "--root", "{root}", "--seed", "-1"],
    ],
)
def test_a_seed_out_of_range_is_one_line(
    runner: CliRunner, synthetic_root: Path, tmp_path: Path, mlflow_store: str, args: list[str]
) -> None:
    filled = [a.format(tmp=tmp_path, root=synthetic_root) for a in args]
    line = one_error_line(runner.invoke(app, filled))
    assert line == f"error: --seed {filled[-1]}: expected a whole number from 0 to 4294967295"
    assert not (tmp_path / "s").exists()


def test_an_empty_polypseg_cache_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYPSEG_CACHE", "")
    assert cache_home() == Path.home() / ".cache" / "polypseg"
    monkeypatch.setenv("POLYPSEG_CACHE", "/somewhere/else")
    assert cache_home() == Path("/somewhere/else")


def test_unwritable_names_the_file_or_dangling_link_in_the_way(tmp_path: Path) -> None:
    from polypseg.outputs import unwritable

    (tmp_path / "file").write_text("x")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    assert (
        unwritable(tmp_path / "file" / "a" / "b") == f"{tmp_path / 'file'} is a file, not a folder"
    )
    assert unwritable(tmp_path / "gone") == f"{tmp_path / 'gone'} is a file, not a folder"
    assert unwritable(tmp_path / "fine" / "a") is None and (tmp_path / "fine" / "a").is_dir()
