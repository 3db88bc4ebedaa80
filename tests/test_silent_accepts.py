"""Inputs the tool used to accept in silence or turn into wrong figures: refused, or right.

Tiny images must give in-range metrics; a study must not be resumed with another search space;
in-memory storage, empty names, impossible sizes, symlink loops, damaged stores and bad output
paths are one line and exit 2 before any work; `split` and `train` agree on what a valid pair is
and on which folder is the data set.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from conftest import one_error_line
from PIL import Image
from typer.testing import CliRunner

from polypseg.cli import app
from polypseg.config import load_config
from polypseg.errors import PolypsegError
from polypseg.metrics import dice_over_thresholds, scores, structure_and_emeasure

MISSING_MODEL = "models:/no-such-model@champion"


def final_error_line(result) -> str:
    """The error of a command that may first create its MLflow store (MLflow logs that)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and not any("error" in x for x in lines[:-1]), lines
    return lines[-1]


# --- tiny images --------------------------------------------------------------------------------


def _all_scores(proba: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    p, m = torch.from_numpy(proba)[None], torch.from_numpy(mask)[None]
    row = {k: float(v[0]) for k, v in scores(p, m).items()}
    row["mdice_thr"] = float(dice_over_thresholds(p, m)[0])
    row.update(structure_and_emeasure((proba * 255).round().astype(np.uint8), mask * 255))
    return row


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_every_metric_stays_in_range_on_tiny_images(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    cases = [
        (np.full(shape, v), np.full(shape, m, np.uint8)) for v in (0.0, 0.4, 1.0) for m in (0, 1)
    ]
    cases += [(rng.random(shape), (rng.random(shape) > 0.5).astype(np.uint8)) for _ in range(20)]
    for proba, mask in cases:
        for name, value in _all_scores(proba, mask).items():
            assert 0.0 <= value <= 1.0, (shape, name, value, proba, mask)


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (3, 5), (64, 48)])
def test_a_perfect_map_scores_an_emeasure_near_one_never_above(shape: tuple[int, int]) -> None:
    mask = np.zeros(shape, np.uint8)
    mask[: max(1, shape[0] // 2)] = 1
    result = structure_and_emeasure(mask * 255, mask * 255)
    assert 0.99 < result["e_measure"] <= 1.0  # the mean over thresholds: 0 counts all pixels in


@pytest.mark.parametrize("protocol", ["default", "pranet"])
def test_evaluate_on_a_1x1_pair_stores_in_range_figures(
    runner: CliRunner, model_env: dict, tmp_path: Path, protocol: str
) -> None:
    for kind, value in (("images", (200, 30, 30)), ("masks", (255, 255, 255))):
        (tmp_path / "tiny" / kind).mkdir(parents=True)
        Image.new("RGB", (1, 1), value).save(tmp_path / "tiny" / kind / "dot.png")
    args = ["evaluate", "--model", "models:/polypseg-eval@champion", "--root", "tiny"]
    args += ["--split", "all", "--out", "eval.json", "--protocol", protocol]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(Path("eval.json").read_text())
    figures = {k: v for k, v in summary.items() if isinstance(v, float) and k != "threshold"}
    assert ("mean_em" if protocol == "pranet" else "e_measure") in figures
    for key, value in figures.items():
        assert 0.0 <= value <= 1.0, (key, value)


# --- studies ------------------------------------------------------------------------------------


def _tune(runner: CliRunner, config: Path, spec: Path, *extra: str):
    return runner.invoke(
        app, ["tune", "--config", str(config), "--study", str(spec), "--trials", "1", *extra]
    )


def test_resuming_with_a_changed_space_names_the_parameter(
    runner: CliRunner, tiny_config: Path, mlflow_store: str, study_spec: Callable[..., Path]
) -> None:
    spec = study_spec(name="s", epochs=1)
    Path("studies").mkdir()
    storage = f"sqlite:///{Path.cwd() / 'studies' / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            params={"train.lr": 0.005},
            distributions={"train.lr": optuna.distributions.FloatDistribution(1e-3, 1e-2)},
            value=0.5,
        )
    )  # stored with a linear train.lr; the spec now searches it on a log scale
    line = one_error_line(_tune(runner, tiny_config, spec))
    assert "train.lr" in line and "--study-name" in line
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE]  # nothing lost or added


@pytest.mark.parametrize("storage", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_storage_is_refused(
    runner: CliRunner, tiny_config: Path, mlflow_store: str, study_spec: Callable, storage: str
) -> None:
    line = one_error_line(_tune(runner, tiny_config, study_spec(), "--storage", storage))
    assert storage in line and "memory" in line


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (("--study-name", ""), "--study-name"),
        (("--study-name", "  "), "--study-name"),
        (("--timeout", "-1"), "--timeout"),
        (("--timeout", "0"), "--timeout"),
    ],
)
def test_empty_study_name_and_bad_timeout_are_refused_up_front(
    runner: CliRunner,
    tiny_config: Path,
    mlflow_store: str,
    study_spec: Callable,
    extra: tuple[str, ...],
    named: str,
) -> None:
    assert named in one_error_line(_tune(runner, tiny_config, study_spec(), *extra))
    assert not Path("studies").exists() and not Path("mlruns").exists()


@pytest.mark.parametrize("size", [1, 7, 48, 100])
def test_image_size_must_suit_the_encoder_patches(size: int) -> None:
    with pytest.raises(PolypsegError, match=r"data\.image_size.*multiple of 16"):
        load_config(None, {"data.image_size": size})


@pytest.mark.parametrize("size", [64, 80, 1024])
def test_image_sizes_the_encoders_can_patch_are_accepted(size: int) -> None:
    assert load_config(None, {"data.image_size": size}).data.image_size == size


# --- symlink loops, damaged stores, output paths ------------------------------------------------


@pytest.fixture(params=["loop", "dangling"])
def linked_set(request: pytest.FixtureRequest, synthetic_root: Path, tmp_path: Path) -> Path:
    """The 12-pair set plus a pair whose two files are symlink loops or dangling links."""
    root = Path(shutil.copytree(synthetic_root, tmp_path / "set"))
    for kind in ("images", "masks"):
        link = root / kind / "linked.jpg"
        link.symlink_to(link if request.param == "loop" else root / "gone.jpg")
    return root


def _with_root(config: Path, root: Path, tmp_path: Path) -> Path:
    """A copy of `config` reading its data from `root`."""
    path = tmp_path / "moved.toml"
    path.write_text(config.read_text().replace(load_config(config).data.root, str(root)))
    return path


def test_symlink_loops_are_refused_by_every_command(
    runner: CliRunner, linked_set: Path, tiny_config: Path, tmp_path: Path, mlflow_store: str
) -> None:
    commands = [
        ["data", "split", "--root", str(linked_set)],
        ["train", "--config", str(_with_root(tiny_config, linked_set, tmp_path))],
        ["evaluate", "--model", MISSING_MODEL, "--root", str(linked_set), "--split", "all"],
        [
            "predict",
            "--model",
            MISSING_MODEL,
            "--out",
            str(tmp_path / "o"),
            str(linked_set / "images"),
        ],
    ]
    for args in commands:
        line = final_error_line(runner.invoke(app, args))
        assert "linked.jpg" in line and "symlink" in line, (args, line)


@pytest.fixture(scope="module")
def truncated_store(tmp_path_factory: pytest.TempPathFactory, migrated_store: Path) -> Path:
    """A real MLflow SQLite store cut to a third of its size, as a full disk or a bad copy does."""
    database = tmp_path_factory.mktemp("store") / "mlflow.db"
    database.write_bytes(migrated_store.read_bytes()[: migrated_store.stat().st_size // 3])
    return database


def test_a_truncated_mlflow_store_is_one_line(
    runner: CliRunner, truncated_store: Path, tiny_config: Path, synthetic_root: Path
) -> None:
    before = truncated_store.read_bytes()
    uri = f"sqlite:///{truncated_store}"
    for args in (
        ["train", "--config", str(tiny_config), "--tracking-uri", uri],
        [
            "evaluate",
            "--model",
            MISSING_MODEL,
            "--root",
            str(synthetic_root),
            "--tracking-uri",
            uri,
        ],
    ):
        line = one_error_line(runner.invoke(app, args))
        assert str(truncated_store) in line, line
    assert truncated_store.read_bytes() == before  # left as it was, for the user to rescue


# --- split and train agree ----------------------------------------------------------------------


def _damage(root: Path, kind: str) -> str:
    if kind == "mask-size":
        mask = sorted((root / "masks").iterdir())[0]
        Image.open(mask).resize((20, 10)).save(mask)
        return mask.name
    image = sorted((root / "images").iterdir())[1]
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    return image.name


@pytest.mark.parametrize("kind", ["mask-size", "truncated-jpeg"])
def test_split_and_train_refuse_the_same_damaged_pair(
    runner: CliRunner,
    synthetic_root: Path,
    tiny_config: Path,
    tmp_path: Path,
    mlflow_store: str,
    kind: str,
) -> None:
    root = Path(shutil.copytree(synthetic_root, tmp_path / "set"))
    name = _damage(root, kind)
    split = one_error_line(runner.invoke(app, ["data", "split", "--root", str(root)]))
    train = final_error_line(
        runner.invoke(app, ["train", "--config", str(_with_root(tiny_config, root, tmp_path))])
    )
    assert name in split and name in train


# --- which folder is the data set ---------------------------------------------------------------


def test_a_folder_with_two_data_sets_is_refused_the_same_way_by_every_command(
    runner: CliRunner, synthetic_root: Path, tiny_config: Path, tmp_path: Path, mlflow_store: str
) -> None:
    """Once `train` took the first by name while `data split` refused: now one verdict."""
    both = tmp_path / "both"
    for name in ("CVC", "Kvasir"):
        shutil.copytree(synthetic_root, both / name)
    config = str(_with_root(tiny_config, both, tmp_path))
    commands = [
        ["data", "split", "--root", str(both)],
        ["cache", "--config", config],
        ["train", "--config", config],
        ["evaluate", "--model", MISSING_MODEL, "--root", str(both)],
        ["evaluate", "--predictions", str(both / "CVC" / "masks"), "--root", str(both)],
    ]
    lines = {final_error_line(runner.invoke(app, args)) for args in commands}
    assert len(lines) == 1, lines
    line = lines.pop()
    assert f"{both} holds 2 data sets" in line and "CVC, Kvasir" in line
    assert "pass one of them as the root" in line


def test_one_nested_data_set_is_found_by_split_as_by_train(
    runner: CliRunner, synthetic_root: Path, tmp_path: Path
) -> None:
    shutil.copytree(synthetic_root, tmp_path / "download" / "Kvasir-SEG")
    result = runner.invoke(app, ["data", "split", "--root", str(tmp_path / "download")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "train=9 val=1 test=2"
