"""`polypseg.atomic`: atomic writes appear whole, with the permissions the umask gives, also
where a user sees them: `evaluate`'s reports and `predict`'s masks."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from polypseg.atomic import atomic_path, umask, write_json
from polypseg.cli import app


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_umask_is_read_without_changing_it(umask_022: None) -> None:
    assert umask() == 0o022
    os.umask(0o077)
    assert umask() == 0o077 and umask() == 0o077


def test_atomic_files_and_folders_follow_the_umask(umask_022: None, tmp_path: Path) -> None:
    assert _mode(write_json(tmp_path / "a.json", {"x": 1})) == 0o644
    with atomic_path(tmp_path / "folder", directory=True) as tmp:
        (tmp / "inside.txt").write_text("x")
    assert _mode(tmp_path / "folder") == 0o755
    os.umask(0o077)
    assert _mode(write_json(tmp_path / "private.json", {})) == 0o600


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"old": True})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text().strip().startswith('{\n  "old"')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_evaluate_and_predict_outputs_follow_the_umask(
    umask_022: None, runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    """Files a user asks for are 0644 under umask 022 (atomic writes start private, 0600)."""
    model = "models:/polypseg-eval@champion"  # conftest's `registered_model`
    out = tmp_path / "report" / "eval.json"
    args = ["evaluate", "--model", model, "--root", str(model_env["root"]), "--out", str(out)]
    evaluated = runner.invoke(app, args)
    assert evaluated.exit_code == 0, evaluated.output
    images = sorted((model_env["root"] / "images").iterdir())[:2]
    masks = tmp_path / "masks"
    args = ["predict", "--model", model, "--out", str(masks), "--overlay", *map(str, images)]
    predicted = runner.invoke(app, args)
    assert predicted.exit_code == 0, predicted.output
    written = sorted(out.parent.iterdir()) + sorted(masks.iterdir())
    assert {p.suffix for p in written} >= {".json", ".csv", ".png"}
    assert len(list(masks.iterdir())) == 4  # a mask and an overlay per image
    assert {p.name: _mode(p) for p in written} == {p.name: 0o644 for p in written}
