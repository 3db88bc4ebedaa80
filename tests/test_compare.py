"""`polypseg compare`: two methods' saved maps on the same images, held to direct NumPy/SciPy
computations; a side short of images refused in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import one_error_line
from PIL import Image
from scipy.stats import wilcoxon
from test_uncertainty import numpy_percentile_bootstrap
from typer.testing import CliRunner

from polypseg.cli import app
from polypseg.data.masks import read_mask
from polypseg.data.synthetic import make_synthetic


def _noisy_maps(root: Path, out: Path, noise: float, seed: int) -> Path:
    """8-bit maps: each mask with uniform noise of `noise` added, so thresholding at 0.5 flips
    pixels (more of them with more noise)."""
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for mask_path in sorted((root / "masks").iterdir()):
        mask = read_mask(mask_path).astype(np.float64)
        prob = np.clip(0.25 + 0.5 * mask + rng.uniform(-noise, noise, mask.shape), 0, 1)
        Image.fromarray(np.round(prob * 255).astype(np.uint8)).save(out / f"{mask_path.stem}.png")
    return out


def _dice(maps: Path, root: Path) -> np.ndarray:
    """Per-image Dice at 0.5 (polypseg's default protocol), written out."""
    values = []
    for mask_path in sorted((root / "masks").iterdir()):
        truth = read_mask(mask_path).astype(bool)
        pred = np.asarray(Image.open(maps / f"{mask_path.stem}.png")) / 255.0 >= 0.5
        values.append(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))
    return np.array(values)


@pytest.fixture(scope="module")
def two_methods(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("compare")
    root = make_synthetic(base / "data", n=10, seed=3)
    return {
        "root": root,
        "baseline": _noisy_maps(root, base / "results" / "baseline", 0.35, seed=1),
        "candidate": _noisy_maps(root, base / "results" / "candidate", 0.28, seed=2),
    }


def test_compare_two_folders_of_maps_against_a_direct_computation(
    runner: CliRunner, mlflow_store: str, two_methods: dict[str, Path], tmp_path: Path
) -> None:
    root, out = two_methods["root"], tmp_path / "cmp.json"
    args = [two_methods["baseline"], two_methods["candidate"], "--root", root, "--out", out]
    result = runner.invoke(app, ["compare", *map(str, args), "--resamples", "20000"])
    assert result.exit_code == 0, result.output
    found = json.loads(out.read_text())
    assert list(found) == [
        "n_images", "baseline", "candidate", "delta", "candidate_better", "baseline_better"
    ]  # fmt: skip
    baseline, candidate = (
        _dice(two_methods["baseline"], root),
        _dice(two_methods["candidate"], root),
    )
    difference = candidate - baseline
    assert found["n_images"] == 10
    assert found["baseline"]["mdice"] == pytest.approx(baseline.mean())
    assert found["candidate"]["mdice"] == pytest.approx(candidate.mean())
    delta = found["delta"]["mdice"]
    assert delta["mean"] == pytest.approx(difference.mean())
    direct = numpy_percentile_bootstrap(difference, 20_000, seed=5)
    assert [delta["ci_low"], delta["ci_high"]] == pytest.approx(direct, abs=0.005)
    assert delta["p_value"] == pytest.approx(wilcoxon(difference).pvalue)
    assert found["candidate_better"] == (difference > 0).sum()
    assert found["baseline_better"] == (difference < 0).sum()
    assert set(found["delta"]["miou"]) == {"mean", "ci_low", "ci_high", "p_value"}
    assert result.stdout.splitlines()[2].startswith(f"| {root.name} | 10 | ")

    run_id = re.search(r"comparison run ([0-9a-f]{32})", result.stderr).group(1)
    metrics = mlflow.get_run(run_id).data.metrics
    assert metrics["delta_mdice_mean"] == pytest.approx(delta["mean"])
    assert metrics["delta_mdice_ci_high"] == pytest.approx(delta["ci_high"])
    assert metrics["candidate_better"] == found["candidate_better"]


def test_compare_on_named_sets_reads_pranets_folder_per_set(
    runner: CliRunner, mlflow_store: str, two_methods: dict[str, Path], tmp_path: Path
) -> None:
    sides = []
    for side in ("baseline", "candidate"):  # PraNet's layout: results/<method>/<Set>/
        for folder in ("ETIS-LaribPolypDB", "CVC-300"):
            (tmp_path / side).mkdir(exist_ok=True)
            (tmp_path / side / folder).symlink_to(two_methods[side])
        sides.append(str(tmp_path / side))
    roots = [f"--root={name}={two_methods['root']}" for name in ("etis", "cvc300")]
    args = ["--sets", "etis,cvc300", *roots, "--out", str(tmp_path / "c.json")]
    result = runner.invoke(app, ["compare", *sides, *args])
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "c.json").read_text())
    assert list(found) == ["etis", "cvc300"] and found["etis"] == found["cvc300"]
    assert found["etis"]["n_images"] == 10
    run = mlflow.get_run(re.search(r"comparison run ([0-9a-f]{32})", result.stderr).group(1))
    assert run.data.tags["polypseg.protocol"] == "pranet"
    assert "cvc300/delta_miou_p_value" in run.data.metrics


def test_a_side_short_of_images_is_refused_in_one_line_naming_them(
    runner: CliRunner, mlflow_store: str, two_methods: dict[str, Path], tmp_path: Path
) -> None:
    short = tmp_path / "short"
    short.mkdir()
    for path in sorted(two_methods["candidate"].iterdir())[2:]:
        (short / path.name).symlink_to(path)
    args = [two_methods["baseline"], short, "--root", two_methods["root"]]
    line = one_error_line(runner.invoke(app, ["compare", *map(str, args)]))
    missing = [p.stem for p in sorted((two_methods["root"] / "masks").iterdir())[:2]]
    assert "both sides must score the same images" in line
    assert f"the candidate {short} has none for" in line
    assert all(stem in line for stem in missing), line
    assert not Path(mlflow_store.removeprefix("sqlite:///")).exists()  # refused before any run


def test_comparing_a_registered_version_puts_the_result_on_its_card(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    maps = _noisy_maps(model_env["root"], tmp_path / "maps", 0.3, seed=1)
    args = [
        "compare",
        str(maps),
        "models:/polypseg-eval@champion",
        "--root",
        str(model_env["root"]),
    ]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "c.json")])
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "c.json").read_text())
    version = mlflow.MlflowClient().get_model_version("polypseg-eval", model_env["version"])
    assert f"as the candidate, against {maps} (candidate − baseline)" in version.description
    wins = f"images won {found['candidate_better']} / {found['baseline_better']}"
    assert (
        f"(n {found['n_images']}) Δ mDice " in version.description and wins in version.description
    )
