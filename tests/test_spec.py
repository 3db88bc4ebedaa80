"""Study specs: what `[sampler]` and `[pruner]` take, and the values refused when loaded.

Each refused value here is one Optuna accepts when the sampler or pruner is made and then fails
on, every trial or every resume; the spec refuses it first, in one line naming the file, the key,
the value and the valid range.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import optuna
import pytest
from conftest import one_error_line
from typer.testing import CliRunner

from polypseg.cli import app
from polypseg.config import SEED_MAX
from polypseg.errors import PolypsegError
from polypseg.tuning.spec import load_spec, sampler_options

HEAD = '[study]\nname = "s"\nepochs = 4\n'
LR_SPACE = '[space."train.lr"]\ntype = "float"\nlow = 1e-3\nhigh = 1e-2\n'


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def test_tpe_options_are_the_samplers_own_keywords_with_toml_types() -> None:
    options = sampler_options("tpe")
    keywords = inspect.signature(optuna.samplers.TPESampler).parameters
    assert set(options) <= set(keywords)
    assert options["seed"] is int and options["multivariate"] is bool
    assert options["prior_weight"] is float and options["n_ei_candidates"] is int
    assert "gamma" not in options and "constraints_func" not in options  # callables
    assert sampler_options("random") == {"seed": int}


def test_a_callable_keyword_is_not_a_sampler_option(tmp_path: Path) -> None:
    path = _spec(tmp_path, HEAD + '[sampler]\nname = "tpe"\ngamma = 3\n' + LR_SPACE)
    with pytest.raises(
        PolypsegError, match=r"\[sampler\] gamma is not an option of tpe; use .*seed"
    ):
        load_spec(path)


@pytest.mark.parametrize(
    ("section", "setting", "named"),
    [
        ("sampler", "prior_weight = nan", "prior_weight = nan must be a finite number, positive"),
        ("sampler", "prior_weight = inf", "prior_weight = inf must be a finite number, positive"),
        ("sampler", "prior_weight = 0.0", "prior_weight = 0.0 must be positive"),
        ("sampler", "prior_weight = -1", "prior_weight = -1.0 must be positive"),
        ("sampler", "n_startup_trials = -3", "n_startup_trials = -3 must be >= 0"),
        ("sampler", "n_ei_candidates = 0", "n_ei_candidates = 0 must be positive"),
        ("sampler", "seed = -1", f"seed = -1 must be in [0, {SEED_MAX}]"),
        ("sampler", f"seed = {SEED_MAX + 1}", f"seed = {SEED_MAX + 1} must be in [0, {SEED_MAX}]"),
        ("pruner", "n_startup_trials = -3", "n_startup_trials = -3 must be >= 0"),
        ("pruner", "n_warmup_steps = -1", "n_warmup_steps = -1 must be >= 0"),
        ("pruner", "reduction_factor = 1", "reduction_factor = 1 must be >= 2"),
        ("pruner", "min_resource = 0", "min_resource = 0 must be positive"),
    ],
)
def test_option_values_that_fail_later_are_refused_at_load(
    tmp_path: Path, section: str, setting: str, named: str
) -> None:
    name = "tpe" if section == "sampler" else "hyperband"
    path = _spec(tmp_path, f'{HEAD}[{section}]\nname = "{name}"\n{setting}\n{LR_SPACE}')
    with pytest.raises(PolypsegError) as refused:
        load_spec(path)
    assert str(refused.value) == f"{path}: [{section}] {named}"


@pytest.mark.parametrize("choice", ["[8, 16]", "{ width = 8 }"])
def test_categorical_choices_must_be_scalars(tmp_path: Path, choice: str) -> None:
    space = f'[space."data.ratios"]\ntype = "categorical"\nchoices = [{choice}]\n'
    with pytest.raises(PolypsegError, match=r"space\.data\.ratios\.choices holds .* must be a num"):
        load_spec(_spec(tmp_path, HEAD + space))


def test_a_refused_option_is_one_line_and_exit_2_on_the_command_line(
    runner: CliRunner, tiny_config: Path, tmp_path: Path, mlflow_store: str
) -> None:
    path = _spec(tmp_path, HEAD + '[pruner]\nname = "hyperband"\nreduction_factor = 1\n' + LR_SPACE)
    args = ["tune", "--config", str(tiny_config), "--study", str(path), "--trials", "1"]
    line = one_error_line(runner.invoke(app, args))
    assert str(path) in line and "reduction_factor = 1 must be >= 2" in line


def _first_draw(sampler: optuna.samplers.BaseSampler) -> float:
    return optuna.create_study(sampler=sampler).ask().suggest_float("x", 0, 1)


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_the_top_seed_still_seeds_every_later_worker(tmp_path: Path, name: str) -> None:
    """Each invocation of a study adds its worker number to the seed: past 2**32 - 1 Optuna
    refused it, so a seed that worked for the first run failed on every resume."""
    spec = load_spec(
        _spec(tmp_path, f'{HEAD}[sampler]\nname = "{name}"\nseed = {SEED_MAX}\n{LR_SPACE}')
    )
    draws = [_first_draw(spec.make_sampler(worker)) for worker in (0, 1, 2)]
    assert len(set(draws)) == 3  # still seeded apart
    assert draws == [_first_draw(spec.make_sampler(worker)) for worker in (0, 1, 2)]


@pytest.mark.parametrize(
    ("name", "kind"),
    [("median", "MedianPruner"), ("hyperband", "HyperbandPruner"), ("none", "NopPruner")],
)
def test_one_pruner_table_switches_by_name_alone(tmp_path: Path, name: str, kind: str) -> None:
    options = "n_startup_trials = 2\nn_warmup_steps = 1\nmin_resource = 1\nreduction_factor = 2\n"
    path = _spec(tmp_path, f'{HEAD}[pruner]\nname = "{name}"\n{options}{LR_SPACE}')
    assert type(load_spec(path).make_pruner()).__name__ == kind


def test_study_defaults_fill_what_the_file_leaves_out(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, LR_SPACE))
    assert (spec.name, spec.metric, spec.direction, spec.epochs) == (
        "spec",
        "val_dice",
        "maximize",
        15,
    )
    assert spec.sampler == {"name": "tpe", "seed": 42} and spec.pruner == {"name": "median"}


@pytest.mark.parametrize(
    ("bounds", "named"),
    [
        ("low = 1e-2\nhigh = 1e-3", r"space\.train\.lr \(float\) needs low < high"),
        (
            "low = 0.0\nhigh = 1e-2\nlog = true",
            r"space\.train\.lr is log-scaled, so low must be > 0",
        ),
    ],
)
def test_a_range_optuna_cannot_draw_from_is_refused(
    tmp_path: Path, bounds: str, named: str
) -> None:
    path = _spec(tmp_path, HEAD + f'[space."train.lr"]\ntype = "float"\n{bounds}\n')
    with pytest.raises(PolypsegError, match=named):
        load_spec(path)
