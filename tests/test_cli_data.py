"""`polypseg data ...` on good and bad input: exit codes and one-line messages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import one_error_line
from typer.testing import CliRunner

from polypseg.cli import app


def test_synth_then_split_prints_40_5_5(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "D"
    assert (
        runner.invoke(
            app, ["data", "synth", "--out", str(out), "--n", "50", "--seed", "1"]
        ).exit_code
        == 0
    )
    result = runner.invoke(app, ["data", "split", "--root", str(out)])
    assert result.exit_code == 0
    assert result.stdout.strip().splitlines()[-1] == "train=40 val=5 test=5"


def test_split_writes_the_manifest(runner: CliRunner, synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "split.json"
    result = runner.invoke(app, ["data", "split", "--root", str(synthetic_root), "--out", str(out)])
    assert result.exit_code == 0
    manifest = json.loads(out.read_text())
    assert manifest["seed"] == 42 and manifest["ratios"] == [0.8, 0.1, 0.1]
    names = manifest["train"] + manifest["val"] + manifest["test"]
    assert sorted(names) == sorted(p.name for p in (synthetic_root / "images").iterdir())


def _error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def test_missing_folder_is_one_line_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    line = _error_line(runner.invoke(app, ["data", "split", "--root", str(tmp_path / "nope")]))
    assert "nope does not exist" in line


def test_empty_folder_is_one_line_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    line = _error_line(runner.invoke(app, ["data", "split", "--root", str(tmp_path)]))
    assert "no image files" in line


def test_unpaired_files_are_named(runner: CliRunner, synthetic_root: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(synthetic_root, tmp_path / "set"))
    orphan = sorted((root / "masks").iterdir())[0]
    orphan.unlink()
    line = _error_line(runner.invoke(app, ["data", "split", "--root", str(root)]))
    assert f"images without masks: {orphan.name}" in line


def test_corrupt_image_is_named(runner: CliRunner, synthetic_root: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(synthetic_root, tmp_path / "set"))
    bad = sorted((root / "images").iterdir())[0]
    bad.write_bytes(b"\x00" * 100)
    line = _error_line(runner.invoke(app, ["data", "split", "--root", str(root)]))
    assert bad.name in line


def test_bad_ratios_option_is_one_line(runner: CliRunner, synthetic_root: Path) -> None:
    args = ["data", "split", "--root", str(synthetic_root), "--ratios", "0.8,x"]
    assert "--ratios" in _error_line(runner.invoke(app, args))


def test_download_without_network_says_how_to_go_on(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kagglehub

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to establish a new connection: [Errno -3] name resolution")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    line = _error_line(runner.invoke(app, ["data", "download"]))
    assert "debeshjha1/kvasirseg" in line
    assert "add `--set data.source=local --set data.root=DIR` to cache, train or tune" in line
    assert "`polypseg tune --trials 4 --config experiments/synthetic.toml" in line


def test_synth_refuses_to_overwrite(runner: CliRunner, synthetic_root: Path) -> None:
    line = _error_line(runner.invoke(app, ["data", "synth", "--out", str(synthetic_root)]))
    assert "not empty" in line


def test_synth_pranet_layout_gives_the_protocols_split_offline(
    runner: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "pranet"
    args = ["data", "synth", "--layout", "pranet", "--n", "5", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    args = ["data", "split", "--protocol", "pranet"]
    args += [f"--root={name}={out}" for name in ("kvasir", "clinicdb", "colondb", "etis", "cvc300")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        "train=7 val=1 test.kvasir=1 test.clinicdb=1 test.colondb=5 test.etis=5 test.cvc300=5"
    )


def test_synth_video_writes_a_clip_predict_can_read(runner: CliRunner, tmp_path: Path) -> None:
    from polypseg.evaluation.video import FrameReader

    clip = tmp_path / "clip.mp4"
    result = runner.invoke(app, ["data", "synth", "--video", str(clip)])
    assert result.exit_code == 0, result.output
    frames = [frame for _, frame in FrameReader(clip)]
    assert len(frames) == 40 and frames[0].shape == (160, 192, 3)
    assert not np.array_equal(frames[0], frames[10])  # the camera moves


@pytest.mark.parametrize(
    "args",
    [
        ["--video", "x.mp4", "--out", "D"],
        [],
        ["--video", "x.avi"],
        ["--out", "D", "--layout", "x"],
        ["--video", "x.mp4", "--layout", "pranet"],
        ["--out", "D", "--layout", "pranet", "--n", "4"],
    ],
)
def test_synth_options_are_checked_in_one_line(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    one_error_line(runner.invoke(app, ["data", "synth", *args]))
    assert not list(tmp_path.iterdir())
