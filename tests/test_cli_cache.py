"""`polypseg cache`: builds once, then hits; `--verify` re-reads in full; errors are one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from polypseg.cli import app
from polypseg.features import encode, npy


def test_cache_builds_once_then_hits(runner: CliRunner, tiny_config: Path) -> None:
    first = runner.invoke(app, ["cache", "--config", str(tiny_config)])
    assert first.exit_code == 0, first.output
    assert "images=12" in first.stdout and "images_encoded=12" in first.stdout
    second = runner.invoke(app, ["cache", "--config", str(tiny_config)])
    assert "images_encoded=0" in second.stdout


def test_unknown_config_key_is_one_line(runner: CliRunner, tiny_config: Path) -> None:
    result = runner.invoke(app, ["cache", "--config", str(tiny_config), "--set", "decoder.depth=3"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: --set: unknown key 'decoder.depth'; [decoder] has: name, width, branch_width, "
        "deep_supervision"
    )


def _entry(tiny_config: Path, runner: CliRunner) -> Path:
    result = runner.invoke(app, ["cache", "--config", str(tiny_config)])
    assert result.exit_code == 0, result.output
    return Path(result.stdout.split()[0])


def test_verify_finds_damage_a_hit_does_not_read_and_rebuilds(
    runner: CliRunner,
    tiny_config: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(npy, "SAMPLE_BYTES", 1024)  # leave an unsampled middle in a small entry
    features = _entry(tiny_config, runner) / "features.npy"
    raw = bytearray(features.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    features.write_bytes(bytes(raw))
    hit = runner.invoke(app, ["cache", "--config", str(tiny_config)])
    assert "images_encoded=0" in hit.stdout
    verified = runner.invoke(app, ["cache", "--config", str(tiny_config), "--verify"])
    assert verified.exit_code == 0, verified.output
    assert "images_encoded=12 verified" in verified.stdout
    assert "does not match its recorded SHA-256" in caplog.text
    again = runner.invoke(app, ["cache", "--config", str(tiny_config), "--verify"])
    assert "images_encoded=0 verified" in again.stdout


def test_a_truncated_entry_is_rebuilt_without_verify(
    runner: CliRunner, tiny_config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    features = _entry(tiny_config, runner) / "features.npy"
    with features.open("r+b") as handle:
        handle.truncate(features.stat().st_size - 4096)
    result = runner.invoke(app, ["cache", "--config", str(tiny_config)])
    assert "images_encoded=12" in result.stdout and "is corrupt" in caplog.text


def test_a_full_disk_is_one_line_and_exit_2(
    runner: CliRunner, tiny_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = shutil.disk_usage(tiny_config.parent)
    monkeypatch.setattr(encode.shutil, "disk_usage", lambda _: usage._replace(free=0))
    result = runner.invoke(app, ["cache", "--config", str(tiny_config)])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "GB are free" in errors[0] and "Traceback" not in result.stderr
