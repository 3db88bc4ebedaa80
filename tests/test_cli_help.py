"""`polypseg --help`, each command's `--help` and `polypseg --version`, as a new user reads them."""

from __future__ import annotations

import re
from importlib.metadata import version

import pytest
from typer.testing import CliRunner

import polypseg
from polypseg.cli import app

COMMANDS = [
    [],
    ["cache"],
    ["train"],
    ["tune"],
    ["evaluate"],
    ["predict"],
    ["data"],
    ["data", "download"],
    ["data", "synth"],
    ["data", "split"],
]
# The type labels typer's rich help prints beside options: `<bool>`, `<list[str]>`, `<path>`...
TYPE_LABEL = re.compile(r"<(?:bool|str|int|float|path|file|dir|list\[.*?\]|\w+ range)>")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "polypseg")
def test_help_names_values_not_python_types(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "--help" in result.output
    assert not TYPE_LABEL.search(result.output), result.output


def test_options_that_take_a_value_show_what_value(runner: CliRunner) -> None:
    tune = runner.invoke(app, ["tune", "--help"]).output
    for shown in ("--trials N", "--config FILE", "--storage URL", "--set SECTION.KEY=VALUE"):
        assert shown in tune
    assert "IMAGE" in runner.invoke(app, ["predict", "--help"]).output


def test_version_is_the_installed_one(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"polypseg {polypseg.__version__}\n"
    assert polypseg.__version__ == version("polypseg")
