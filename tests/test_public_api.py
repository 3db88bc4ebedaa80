"""The package's public API: every name it lists resolves, and importing it stays cheap."""

from __future__ import annotations

import subprocess
import sys

import pytest

import polypseg


@pytest.mark.parametrize("name", sorted(set(polypseg.__all__) - {"__version__"}))
def test_every_public_name_resolves_to_its_module_object(name: str) -> None:
    value = getattr(polypseg, name)
    assert getattr(value, "__name__", name) == name


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        polypseg.nope  # noqa: B018


def test_importing_the_package_and_its_cli_imports_no_heavy_library() -> None:
    code = (
        "import sys, polypseg, polypseg.cli; "
        "print(sorted(m for m in ('torch', 'mlflow', 'optuna') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
