"""Study specs (`studies/*.toml`): objective, sampler, pruner and a search space over config keys.

A `[space."section.key"]` table searches that config key, unless a trial cannot change it
(`tuning.identity`); the metric decides the direction (`METRICS`); `[sampler]` takes what the
Optuna sampler's signature takes. Values Optuna accepts at first and fails on later are refused.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polypseg.config import SEED_MAX, Config
from polypseg.errors import PolypsegError
from polypseg.toml_checks import Bounds, check_range, read_toml, typed
from polypseg.tuning.identity import fixed_key_reason

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

PARAM_TYPES = ("categorical", "float", "int")
# Each metric a trial reports, and the direction that improves it (the default `direction`).
METRICS = {"val_dice": "maximize", "val_iou": "maximize", "val_loss": "minimize"}
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler"}  # name → optuna.samplers class
DEFAULT_SAMPLER = {"name": "tpe", "seed": 42}
# name → (optuna.pruners class, the options it takes from `[pruner]`). `[pruner]` may hold the
# options of every pruner, so one file switches by `name` alone.
PRUNERS = {
    "median": ("MedianPruner", ("n_startup_trials", "n_warmup_steps")),
    "hyperband": ("HyperbandPruner", ("min_resource", "reduction_factor")),
    "none": ("NopPruner", ()),
}
PRUNER_OPTIONS = dict.fromkeys((key for _, keys in PRUNERS.values() for key in keys), int)
# Values Optuna accepts when the sampler or pruner is made, then fails on (every trial, or
# every resume): prior_weight = nan, n_ei_candidates = 0, reduction_factor = 1 (log 1 = 0), ...
OPTION_RANGES: dict[str, Bounds] = {
    "seed": (0, SEED_MAX, False),
    "n_startup_trials": (0, math.inf, False),
    "n_ei_candidates": (1, math.inf, False),
    "prior_weight": (0, math.inf, True),
    "n_warmup_steps": (0, math.inf, False),
    "min_resource": (1, math.inf, False),
    "reduction_factor": (2, math.inf, False),
}
TOML_TYPES = {"bool": bool, "int": int, "float": float, "str": str}
SEEDS_MAX = 50  # trainings per seed spread (`train --seeds`, `[study] champion_seeds`)


def check_seeds(n: int, config: Config, where: str) -> None:
    """`n` seeds from `train.seed` on: at least one, at most SEEDS_MAX, the last a valid seed."""
    check_range(n, (1, SEEDS_MAX, False), where)
    config.with_overrides({"train.seed": config.train.seed + n - 1}, origin=where)


@functools.cache
def sampler_options(name: str) -> dict[str, type]:
    """The keyword arguments of sampler `name`'s Optuna class that TOML can give, with types."""
    import optuna

    options = {}
    sampler = getattr(optuna.samplers, SAMPLERS[name])
    for key, param in inspect.signature(sampler).parameters.items():
        annotation = getattr(param.annotation, "__name__", param.annotation)
        if kind := TOML_TYPES.get(str(annotation).removesuffix(" | None")):
            options[key] = kind
    return options


# The study user attribute holding the space its first worker drew from (`check_space`).
SPACE_ATTR = "polypseg.space"


@dataclass(frozen=True)
class StudySpec:
    name: str = "decoder_search"
    metric: str = "val_dice"
    direction: str = "maximize"
    epochs: int = 15
    champion_seeds: int = 1  # trainings of the best trial's values before it is registered
    sampler: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SAMPLER))
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    # config key → the Optuna distribution its value is drawn from (`Study.ask` draws them)
    space: dict[str, BaseDistribution] = field(default_factory=dict)

    def make_sampler(self, seed_offset: int = 0) -> Any:
        import optuna

        options = dict(self.sampler)
        name = options.pop("name", "tpe")
        seed = options.pop("seed", None)
        # Each invocation of a study adds its worker number: wrap, or a seed near the top of
        # the range would work once and fail on every resume.
        seed = None if seed is None else (int(seed) + seed_offset) % (SEED_MAX + 1)
        return getattr(optuna.samplers, SAMPLERS[name])(seed=seed, **options)

    def make_pruner(self) -> Any:
        import optuna

        name, keys = PRUNERS[self.pruner.get("name", "median")]
        options = {key: value for key, value in self.pruner.items() if key in keys}
        if name == "HyperbandPruner":  # a trial's budget is the study's epochs
            options["max_resource"] = self.epochs
        return getattr(optuna.pruners, name)(**options)  # Optuna's defaults for the rest

    def trial_config(self, config: Config, values: dict[str, Any]) -> Config:
        return config.with_overrides({**values, "train.epochs": self.epochs})


def check_space(study: optuna.Study, spec: StudySpec, record: bool = True) -> None:
    """Refuse a spec drawing a parameter from other values than the study's finished trials
    (Optuna would fail every new trial or mix two spaces in one history) or the space its first
    worker recorded (while the study runs no trial may have finished, and a worker with other
    choices would fail each trial in Optuna). `record`: store the space on a study that has none
    (under the study lock)."""
    from optuna.distributions import distribution_to_json, json_to_distribution
    from optuna.trial import TrialState

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    drawn = {k: d for trial in finished for k, d in trial.distributions.items()}
    stored = study.user_attrs.get(SPACE_ATTR)
    recorded = [(key, json_to_distribution(d)) for key, d in (stored or {}).items()]
    now = spec.space
    for key, before in [*drawn.items(), *recorded]:
        if key in now and before != now[key]:
            raise PolypsegError(
                f"study {study.study_name!r} searches {key} as {describe_distribution(before)}, "
                f"the spec now as {describe_distribution(now[key])}; keep the stored space or "
                "start a new study with --study-name"
            )
    if stored is None and record:
        study.set_user_attr(SPACE_ATTR, {k: distribution_to_json(d) for k, d in now.items()})


def describe_distribution(distribution: Any) -> str:
    """`float in [0.001, 0.01], log-scaled`: an Optuna distribution as a spec would write it."""
    if hasattr(distribution, "choices"):
        return f"one of {list(distribution.choices)}"
    kind = "int" if type(distribution).__name__.startswith("Int") else "float"
    scale = ", log-scaled" if distribution.log else ""
    return f"{kind} in [{distribution.low:g}, {distribution.high:g}]{scale}"


def _param(key: str, table: Any, where: str, config: Config) -> BaseDistribution:
    """A `[space."key"]` table, checked, as the Optuna distribution its values are drawn from."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not isinstance(table, dict):
        raise PolypsegError(
            f'{where}: space entry "{key}" = {table!r} is not a table; write '
            f'[space."{key}"] with type = "float", low = ..., high = ...'
        )
    kind = table.get("type")
    if kind not in PARAM_TYPES:
        raise PolypsegError(
            f"{where}: space.{key}.type = {kind!r}; use one of {', '.join(PARAM_TYPES)}"
        )
    if unknown := set(table) - {"type", "low", "high", "log", "choices"}:
        raise PolypsegError(f"{where}: space.{key} has unknown fields {sorted(unknown)}")
    if kind == "categorical":
        choices = table.get("choices")
        if not isinstance(choices, list) or not choices:
            raise PolypsegError(
                f"{where}: space.{key} (categorical) needs a non-empty choices list"
            )
        for choice in choices:  # Optuna stores numbers, strings and booleans, nothing else
            if not isinstance(choice, (bool, int, float, str)):
                raise PolypsegError(
                    f"{where}: space.{key}.choices holds {choice!r}; each choice must be a "
                    "number, a string or a boolean, like choices = [64, 128]"
                )
        distribution = CategoricalDistribution(choices)
        probes = choices
    else:
        if "low" not in table or "high" not in table:
            raise PolypsegError(f"{where}: space.{key} ({kind}) needs low and high")
        number = int if kind == "int" else float
        low, high = (
            typed(table[end], number, f"{where}: space.{key}.{end}") for end in ("low", "high")
        )
        log = typed(table.get("log", False), bool, f"{where}: space.{key}.log")
        if low >= high:
            raise PolypsegError(f"{where}: space.{key} ({kind}) needs low < high")
        if log and low <= 0:
            raise PolypsegError(f"{where}: space.{key} is log-scaled, so low must be > 0")
        distribution = (IntDistribution if kind == "int" else FloatDistribution)(low, high, log=log)
        probes = (low, high)
    if reason := fixed_key_reason(key):  # a value that would not act is refused, not shown
        raise PolypsegError(f"{where}: space.{key} cannot be searched: {reason}")
    for value in probes:  # every value the space can produce must be a valid config value
        config.with_overrides({key: value}, origin=f"{where}: space")
    return distribution


def _table(spec: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = spec.get(name, {})
    if not isinstance(value, dict):
        raise PolypsegError(f"{path}: {name} = {value!r} must be a [{name}] table")
    return value


def _check_options(section: str, options: dict[str, Any], allowed: dict, path: Path) -> None:
    for key, value in options.items():
        if key == "name":
            continue
        if key not in allowed:
            raise PolypsegError(
                f"{path}: [{section}] {key} is not an option of {options.get('name', section)}; "
                f"use {', '.join(allowed)}"
            )
        value = typed(value, allowed[key], f"{path}: [{section}] {key}")
        if key in OPTION_RANGES:
            check_range(value, OPTION_RANGES[key], f"{path}: [{section}] {key}")


def _check_study(study: dict[str, Any], path: Path, config: Config) -> dict[str, Any]:
    """`[study]` over the defaults (the name: the file's), checked."""
    if unknown := set(study) - {"name", "metric", "direction", "epochs", "champion_seeds"}:
        raise PolypsegError(f"{path}: [study] has unknown keys {sorted(unknown)}")
    defaults = {key: getattr(StudySpec, key) for key in ("metric", "epochs", "champion_seeds")}
    values = {"name": path.stem, **defaults, **study}
    if not isinstance(values["name"], str) or not values["name"].strip():
        raise PolypsegError(f"{path}: [study] name must be a non-empty string")
    if (metric := values["metric"]) not in METRICS:
        raise PolypsegError(f"{path}: [study] metric must be val_dice, val_iou or val_loss")
    if values.setdefault("direction", METRICS[metric]) != METRICS[metric]:
        raise PolypsegError(
            f"{path}: [study] metric = {metric!r} with direction = {values['direction']!r} "
            f"would pick the worst trial; set direction = {METRICS[metric]!r} or leave it out"
        )
    config.with_overrides({"train.epochs": values["epochs"]}, origin=f"{path}: [study] epochs")
    seeds = typed(values["champion_seeds"], int, f"{path}: [study] champion_seeds")
    check_seeds(seeds, config, f"{path}: [study] champion_seeds")
    return values


def load_spec(path: str | Path, config: Config | None = None) -> StudySpec:
    """Load and check a study spec against the config it will override."""
    path = Path(path)
    config = config or Config()
    table = read_toml(path, "study spec", "studies/*.toml")
    if unknown := set(table) - {"study", "sampler", "pruner", "space"}:
        raise PolypsegError(
            f"{path}: unknown sections {sorted(unknown)}; use study, sampler, pruner, space"
        )
    study, sampler, pruner = (_table(table, name, path) for name in ("study", "sampler", "pruner"))
    values = _check_study(study, path, config)
    if (name := sampler.get("name", "tpe")) not in SAMPLERS:
        raise PolypsegError(f"{path}: [sampler] name = {name!r}; use {' or '.join(SAMPLERS)}")
    _check_options("sampler", sampler, sampler_options(name), path)
    if (name := pruner.get("name", "median")) not in PRUNERS:
        raise PolypsegError(f"{path}: [pruner] name = {name!r}; use median, hyperband or none")
    _check_options("pruner", pruner, PRUNER_OPTIONS, path)
    space = {k: _param(k, v, str(path), config) for k, v in _table(table, "space", path).items()}
    if not space:
        raise PolypsegError(f'{path}: the search space is empty; add [space."train.lr"] etc.')
    spec = StudySpec(
        **values,
        sampler={**DEFAULT_SAMPLER, **sampler},
        pruner={"name": "median", **pruner},
        space=space,
    )
    try:  # Optuna's own checks, should a new version add some
        spec.make_sampler(), spec.make_pruner()
    except ValueError as err:
        raise PolypsegError(f"{path}: {err}") from None
    return spec
