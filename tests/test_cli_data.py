"""`polypseg data ...` on good and bad input: exit codes and one-line messages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
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
    assert "`polypseg tune --set data.source=local --set data.root=DIR`" in line
    assert "`polypseg data synth --out DIR`" in line


def test_synth_refuses_to_overwrite(runner: CliRunner, synthetic_root: Path) -> None:
    line = _error_line(runner.invoke(app, ["data", "synth", "--out", str(synthetic_root)]))
    assert "not empty" in line
