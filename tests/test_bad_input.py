"""Bad configs, study specs, output paths and oversized images: each is one line and exit 2.

The CLI's promise, checked case by case: one line on stderr naming the value or file and the
fix, exit code 2, no traceback, and nothing already stored lost.
"""

from __future__ import annotations

import math
import shutil
import struct
import warnings
import zlib
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from conftest import one_error_line
from PIL import Image
from typer.testing import CliRunner

from polypseg.cli import app
from polypseg.config import Config, load_config, parse_set
from polypseg.data.pairs import list_pairs
from polypseg.errors import PolypsegError
from polypseg.tuning.spec import load_spec


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("train.lr=nan", "train.lr"),
        ("train.lr=inf", "train.lr"),
        ("train.weight_decay=nan", "train.weight_decay"),
        ("train.weight_decay=-5", "train.weight_decay"),
        ("train.weight_decay=1e30", "train.weight_decay"),  # not blamed on train.lr
        ("data.image_size=16384", "data.image_size"),  # a MemoryError traceback before
        ("train.dice_weight=nan", "train.dice_weight"),
        ("data.ratios=[0.8, nan, 0.1]", "data.ratios"),
        ("data.split_seed=-1", "data.split_seed"),
        ("train.seed=-3", "train.seed"),
        ("tracking.experiment=''", "tracking.experiment"),
        ("tracking.registered_model=''", "tracking.registered_model"),
    ],
)
def test_bad_values_are_refused_naming_the_key(setting: str, key: str) -> None:
    with pytest.raises(PolypsegError, match=key.replace(".", r"\.")) as raised:
        load_config(None, parse_set([setting]))
    assert "\n" not in str(raised.value)


def test_a_bad_set_value_is_one_line_from_the_cli(
    runner: CliRunner, tiny_config: Path, mlflow_store: str
) -> None:
    args = ["train", "--config", str(tiny_config), "--set", "train.lr=nan"]
    assert "train.lr" in one_error_line(runner.invoke(app, args))
    assert not Path("mlruns").exists()  # refused before the store was opened


def _numeric_keys() -> list[tuple[str, type]]:
    return [
        (f"{section.name}.{f.name}", f.type)
        for section in fields(Config)
        for f in fields(section.default_factory())
        if f.type in ("int", "float", int, float)
    ]


@pytest.mark.parametrize(("key", "kind"), _numeric_keys())
def test_every_numeric_value_must_be_finite_and_in_range(key: str, kind: object) -> None:
    bad = [-1] if kind in ("int", int) else [math.nan, math.inf, -math.inf, -1.0]
    for value in bad:
        with pytest.raises(PolypsegError, match=key.replace(".", r"\.")):
            load_config(None, {key: value})


def test_config_that_is_a_folder_is_one_line(
    runner: CliRunner, tmp_path: Path, mlflow_store: str
) -> None:
    line = one_error_line(runner.invoke(app, ["train", "--config", str(tmp_path)]))
    assert str(tmp_path) in line and "folder" in line


def test_study_spec_that_is_a_folder_is_one_line(
    runner: CliRunner, tiny_config: Path, tmp_path: Path, mlflow_store: str
) -> None:
    args = ["tune", "--config", str(tiny_config), "--study", str(tmp_path), "--trials", "1"]
    line = one_error_line(runner.invoke(app, args))
    assert str(tmp_path) in line and "folder" in line


SPEC_HEAD = '[study]\nname = "s"\nepochs = 1\n'
LR_SPACE = '[space."train.lr"]\ntype = "float"\nlow = 1e-3\nhigh = 1e-2\n'


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[study]\nname = "s"\nepochs = "abc"\n' + LR_SPACE, "epochs"),
        ('[study]\nname = "s"\nepochs = 0\n' + LR_SPACE, "epochs"),
        (SPEC_HEAD + '[pruner]\nname = "median"\nn_startup_trials = "x"\n' + LR_SPACE, "n_startup"),
        (SPEC_HEAD + '[pruner]\nname = "median"\npatience = 3\n' + LR_SPACE, "patience"),
        (SPEC_HEAD + '[sampler]\nname = "tpe"\nseed = "x"\n' + LR_SPACE, "seed"),
        (SPEC_HEAD + '[sampler]\nname = "tpe"\nbogus = 1\n' + LR_SPACE, "bogus"),
        (SPEC_HEAD + '[sampler]\nname = "random"\nn_startup_trials = 4\n' + LR_SPACE, "n_startup"),
        (SPEC_HEAD + '[space."train.lr"]\ntype = "float"\nlow = "0.001"\nhigh = 1e-2\n', "low"),
        (
            SPEC_HEAD
            + '[space."train.lr"]\ntype = "float"\nlow = 1e-3\nhigh = 1e-2\nlog = "yes"\n',
            "log",
        ),
        (SPEC_HEAD + '[space."decoder.width"]\ntype = "categorical"\nchoices = 16\n', "choices"),
        (SPEC_HEAD + '[space]\n"train.lr" = 3\n', "train.lr"),
        (SPEC_HEAD + "space = 3\n", "space"),
        ("[study]\nname = 5\nepochs = 1\n" + LR_SPACE, "name"),
    ],
)
def test_study_spec_values_of_the_wrong_type_are_one_line(
    tiny_config: Path, tmp_path: Path, text: str, named: str
) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    with pytest.raises(PolypsegError) as raised:
        load_spec(spec, load_config(tiny_config))
    line = str(raised.value)
    assert "spec.toml" in line and named in line and "\n" not in line


def test_a_bad_study_spec_is_one_line_from_the_cli_before_any_study(
    runner: CliRunner, tiny_config: Path, tmp_path: Path, mlflow_store: str
) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text('[study]\nname = "s"\nepochs = 0\n' + LR_SPACE)
    args = ["tune", "--config", str(tiny_config), "--study", str(spec), "--trials", "1"]
    line = one_error_line(runner.invoke(app, args))
    assert "spec.toml" in line and "epochs" in line
    assert not (tmp_path / "studies").exists()  # refused before any study was created


def test_split_out_in_an_unwritable_place_is_one_line(
    runner: CliRunner, synthetic_root: Path
) -> None:
    args = ["data", "split", "--root", str(synthetic_root), "--out", "/proc/x.json"]
    assert "/proc/x.json" in one_error_line(runner.invoke(app, args))


def test_split_out_that_is_a_folder_is_one_line(
    runner: CliRunner, synthetic_root: Path, tmp_path: Path
) -> None:
    args = ["data", "split", "--root", str(synthetic_root), "--out", str(tmp_path)]
    line = one_error_line(runner.invoke(app, args))
    assert str(tmp_path) in line and "folder" in line


def test_split_out_under_a_file_is_one_line(
    runner: CliRunner, synthetic_root: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    args = ["data", "split", "--root", str(synthetic_root), "--out", str(blocker / "split.json")]
    assert "a-file" in one_error_line(runner.invoke(app, args))
    assert blocker.read_text() == "keep me"


NO_MODEL = "models:/no-such-model@champion"  # the output check must come before the model's


def _out_cases(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    return {
        "folder": folder,
        "under-a-file": blocker / "x" / "eval.json",
        "proc": Path("/proc/x/e.json"),
    }


@pytest.mark.parametrize("case", ["folder", "under-a-file", "proc"])
def test_evaluate_checks_out_before_any_work(
    runner: CliRunner, synthetic_root: Path, tmp_path: Path, mlflow_store: str, case: str
) -> None:
    out = _out_cases(tmp_path)[case]
    args = [
        "evaluate",
        "--model",
        NO_MODEL,
        "--root",
        str(synthetic_root),
        "--out",
        str(out),
    ]
    line = one_error_line(runner.invoke(app, args))
    assert "--out" in line and ("a-file" in line if case == "under-a-file" else str(out) in line)
    assert (tmp_path / "a-file").read_text() == "keep me"


@pytest.mark.parametrize("case", ["a-file", "proc"])
def test_predict_checks_out_before_any_work(
    runner: CliRunner, synthetic_root: Path, tmp_path: Path, mlflow_store: str, case: str
) -> None:
    out = (tmp_path / "a-file") if case == "a-file" else Path("/proc/x")
    if case == "a-file":
        out.write_text("keep me")
    args = [
        "predict",
        "--model",
        NO_MODEL,
        "--out",
        str(out),
        str(synthetic_root / "images"),
    ]
    line = one_error_line(runner.invoke(app, args))
    assert "--out" in line and str(out) in line


# --- images over the pixel limit ---------------------------------------------------------------


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares `width`×`height` but holds no pixels: enough for header checks."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def _set_with(tmp_path: Path, synthetic_root: Path, width: int, height: int) -> tuple[Path, str]:
    root = Path(shutil.copytree(synthetic_root, tmp_path / "set"))
    _png_header_only(root / "images" / "huge.png", width, height)
    _png_header_only(root / "masks" / "huge.png", width, height)
    return root, "huge.png"


@pytest.mark.parametrize(
    ("width", "height"),
    [(9_000, 9_000), (20_000, 20_000)],  # over our default limit; over Pillow's own error limit
)
def test_split_refuses_an_image_over_the_pixel_limit_naming_it(
    runner: CliRunner, synthetic_root: Path, tmp_path: Path, width: int, height: int
) -> None:
    root, name = _set_with(tmp_path, synthetic_root, width, height)
    result = runner.invoke(app, ["data", "split", "--root", str(root)])
    line = one_error_line(result)
    assert name in line and "megapixels" in line
    assert "DecompressionBomb" not in result.output


def test_the_pixel_limit_is_a_config_value(
    runner: CliRunner, tiny_config: Path, mlflow_store: str
) -> None:
    args = ["cache", "--config", str(tiny_config), "--set", "data.max_megapixels=0.01"]
    line = one_error_line(runner.invoke(app, args))
    assert "data.max_megapixels" in line and ".jpg" in line


@pytest.mark.parametrize("value", [0, -1, 1e6])
def test_the_pixel_limit_must_be_sane(value: float) -> None:
    with pytest.raises(PolypsegError, match="data.max_megapixels"):
        load_config(None, {"data.max_megapixels": value})


def test_an_image_under_a_raised_limit_gives_no_pillow_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between Pillow's warning (89.5 MP) and a deliberately raised limit: no word from Pillow.
    Pillow's limit is scaled down to 1 MP (its error at 2 MP): the same case, 90 times cheaper
    to write and decode than a 95 MP image."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    for kind in ("images", "masks"):
        (tmp_path / kind).mkdir()
        Image.fromarray(np.zeros((1, 1_100_000), dtype=np.uint8)).save(tmp_path / kind / "w.png")
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow's own warning, scaled down
        Image.open(tmp_path / "images" / "w.png").close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert [p.name for p in list_pairs(tmp_path, max_megapixels=2)] == ["w.png"]
