"""The package's public API: every name it lists is its module's own object, and importing it
stays cheap."""

from __future__ import annotations

import subprocess
import sys
from importlib import import_module

import pytest

import polypseg


@pytest.mark.parametrize("name", sorted(set(polypseg.__all__) - {"__version__"}))
def test_every_public_name_is_the_object_its_module_defines(name: str) -> None:
    module = import_module(polypseg._PUBLIC[name])
    value = getattr(polypseg, name)
    assert value is getattr(module, name)
    if callable(value):  # defined there, not imported there from somewhere else
        assert (value.__module__, value.__qualname__) == (module.__name__, name)


def test_the_public_encoder_registry_is_the_one_encoders_are_built_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from polypseg.models.encoders import EncoderEntry, encoder_architecture

    assert {"sam_vit_b", "resnet50", "sam_tiny", "resnet_tiny"} <= set(polypseg.ENCODERS)
    assert all(isinstance(entry, EncoderEntry) for entry in polypseg.ENCODERS.values())
    monkeypatch.setitem(polypseg.ENCODERS, "my_encoder", polypseg.ENCODERS["resnet_tiny"])
    assert encoder_architecture("my_encoder").name == "my_encoder"


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
