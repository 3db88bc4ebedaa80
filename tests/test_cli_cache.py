"""`polypseg cache`: builds once, then hits; config errors are one line."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from polypseg.cli import app


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
        "error: --set: unknown key 'decoder.depth'; [decoder] has: width"
    )
