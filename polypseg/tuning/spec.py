"""Study specs (`studies/*.toml`): objective, sampler, pruner and a search space over config keys.

The space maps parameter names straight onto config keys (`decoder.width`, `train.lr`,
`train.dice_weight`), so any config key can be searched by adding a `[space."section.key"]`
table; the objective applies a trial's suggestions with `Config.with_overrides`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from polypseg.config import Config
from polypseg.errors import ConfigError

PARAM_TYPES = ("categorical", "float", "int")
# The options each sampler takes from `[sampler]` (besides `name`), with their TOML types.
SAMPLER_OPTIONS: dict[str, dict[str, type]] = {
    "tpe": {
        "seed": int,
        "n_startup_trials": int,
        "n_ei_candidates": int,
        "multivariate": bool,
        "group": bool,
        "constant_liar": bool,
        "consider_prior": bool,
        "prior_weight": float,
        "consider_magic_clip": bool,
        "consider_endpoints": bool,
        "warn_independent_sampling": bool,
    },
    "random": {"seed": int},
}
# `[pruner]` may hold the options of every pruner, so one file switches by `name` alone.
PRUNER_OPTIONS = dict.fromkeys(
    ("n_startup_trials", "n_warmup_steps", "min_resource", "reduction_factor"), int
)


def _typed(value: Any, kind: type, where: str) -> Any:
    """`value` if it is a TOML value of `kind` (ints pass for floats), else a ConfigError."""
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise ConfigError(f"{where} = {value!r} is not a valid {kind.__name__}")
    return value


@dataclass(frozen=True)
class Param:
    key: str  # a config key, section.key
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def distribution(self) -> Any:
        """The Optuna distribution `suggest` draws from (what a stored trial records)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.type == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)

    def suggest(self, trial: Any) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)


@dataclass(frozen=True)
class StudySpec:
    name: str = "decoder_search"
    metric: str = "val_dice"
    direction: str = "maximize"
    epochs: int = 15
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": 42})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    space: tuple[Param, ...] = ()

    def make_sampler(self, seed_offset: int = 0) -> Any:
        import optuna

        options = dict(self.sampler)
        name = options.pop("name", "tpe")
        seed = options.pop("seed", None)
        seed = None if seed is None else int(seed) + seed_offset
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, **options)
        return optuna.samplers.RandomSampler(seed=seed)

    def make_pruner(self) -> Any:
        import optuna

        options = dict(self.pruner)
        name = options.pop("name", "median")
        if name == "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=options.get("n_startup_trials", 5),
                n_warmup_steps=options.get("n_warmup_steps", 0),
            )
        if name == "hyperband":
            return optuna.pruners.HyperbandPruner(
                min_resource=options.get("min_resource", 1),
                max_resource=self.epochs,
                reduction_factor=options.get("reduction_factor", 3),
            )
        return optuna.pruners.NopPruner()

    def check_resumable(self, study: Any) -> None:
        """Refuse a stored study whose finished trials drew a parameter from another space.

        Optuna would fail every new trial ("Cannot set different log configuration...") or mix
        two spaces in one history; either way the study is not the one the spec describes.
        """
        from optuna.trial import TrialState

        stored: dict[str, Any] = {}
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        for trial in finished:
            stored.update(trial.distributions)
        for param in self.space:
            before, now = stored.get(param.key), param.distribution()
            if before is not None and before != now:
                raise ConfigError(
                    f"study {study.study_name!r} searched {param.key} as {_describe(before)}, "
                    f"the spec now as {_describe(now)}; keep the stored space or start a new "
                    "study with --study-name"
                )

    def suggest(self, trial: Any) -> dict[str, Any]:
        """The trial's values, keyed by config key."""
        return {param.key: param.suggest(trial) for param in self.space}


def _describe(distribution: Any) -> str:
    """`float in [0.001, 0.01], log-scaled`: an Optuna distribution as a spec would write it."""
    if hasattr(distribution, "choices"):
        return f"one of {list(distribution.choices)}"
    kind = "int" if type(distribution).__name__.startswith("Int") else "float"
    scale = ", log-scaled" if distribution.log else ""
    return f"{kind} in [{distribution.low:g}, {distribution.high:g}]{scale}"


def _param(key: str, table: Any, where: str, config: Config) -> Param:
    if not isinstance(table, dict):
        raise ConfigError(
            f'{where}: space entry "{key}" = {table!r} is not a table; write '
            f'[space."{key}"] with type = "float", low = ..., high = ...'
        )
    kind = table.get("type")
    if kind not in PARAM_TYPES:
        raise ConfigError(
            f"{where}: space.{key}.type = {kind!r}; use one of {', '.join(PARAM_TYPES)}"
        )
    known = {"type", "low", "high", "log", "choices"}
    if unknown := set(table) - known:
        raise ConfigError(f"{where}: space.{key} has unknown fields {sorted(unknown)}")
    if kind == "categorical":
        choices = table.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: space.{key} (categorical) needs a non-empty choices list")
        param = Param(key, kind, choices=tuple(choices))
        probes = param.choices
    else:
        if "low" not in table or "high" not in table:
            raise ConfigError(f"{where}: space.{key} ({kind}) needs low and high")
        number = int if kind == "int" else float
        low, high = (
            _typed(table[end], number, f"{where}: space.{key}.{end}") for end in ("low", "high")
        )
        log = _typed(table.get("log", False), bool, f"{where}: space.{key}.log")
        if low >= high:
            raise ConfigError(f"{where}: space.{key} ({kind}) needs low < high")
        if log and low <= 0:
            raise ConfigError(f"{where}: space.{key} is log-scaled, so low must be > 0")
        param = Param(key, kind, low, high, log)
        probes = (low, high)
    for value in probes:  # every value the space can produce must be a valid config value
        config.with_overrides({key: value}, origin=f"{where}: space")
    return param


def _table(spec: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = spec.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {name} = {value!r} must be a [{name}] table")
    return value


def _check_options(section: str, options: dict[str, Any], allowed: dict, path: Path) -> None:
    for key, value in options.items():
        if key == "name":
            continue
        if key not in allowed:
            raise ConfigError(
                f"{path}: [{section}] {key} is not an option of {options.get('name', section)}; "
                f"use {', '.join(allowed)}"
            )
        _typed(value, allowed[key], f"{path}: [{section}] {key}")


def _check_sampler(options: dict[str, Any], path: Path) -> None:
    name = options.get("name", "tpe")
    if name not in SAMPLER_OPTIONS:
        raise ConfigError(f"{path}: [sampler] name = {name!r}; use tpe or random")
    _check_options("sampler", options, SAMPLER_OPTIONS[name], path)


def _check_pruner(options: dict[str, Any], path: Path) -> None:
    if options.get("name", "median") not in ("median", "hyperband", "none"):
        raise ConfigError(
            f"{path}: [pruner] name = {options['name']!r}; use median, hyperband or none"
        )
    _check_options("pruner", options, PRUNER_OPTIONS, path)  # ranges: Optuna's own checks


def _check_study(study: dict[str, Any], path: Path, config: Config) -> None:
    if unknown := set(study) - {"name", "metric", "direction", "epochs"}:
        raise ConfigError(f"{path}: [study] has unknown keys {sorted(unknown)}")
    if (
        not isinstance(study.get("name", path.stem), str)
        or not study.get("name", path.stem).strip()
    ):
        raise ConfigError(f"{path}: [study] name must be a non-empty string")
    if study.get("direction", "maximize") not in ("maximize", "minimize"):
        raise ConfigError(f"{path}: [study] direction must be maximize or minimize")
    if study.get("metric", "val_dice") not in ("val_dice", "val_iou", "val_loss"):
        raise ConfigError(f"{path}: [study] metric must be val_dice, val_iou or val_loss")
    epochs = _typed(study.get("epochs", 15), int, f"{path}: [study] epochs")
    if epochs < 1:
        raise ConfigError(f"{path}: [study] epochs = {epochs} must be at least 1")
    config.with_overrides({"train.epochs": epochs}, origin=f"{path}: [study] epochs")


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"study spec {path} not found; see studies/*.toml") from None
    except IsADirectoryError:
        raise ConfigError(f"study spec {path} is a folder; pass a TOML file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"study spec {path} is not valid TOML: {err}") from None
    except OSError as err:
        raise ConfigError(f"cannot read study spec {path}: {err.strerror}") from None


def load_spec(path: str | Path, config: Config | None = None) -> StudySpec:
    """Load and check a study spec against the config it will override."""
    path = Path(path)
    config = config or Config()
    table = _read(path)
    if unknown := set(table) - {"study", "sampler", "pruner", "space"}:
        raise ConfigError(
            f"{path}: unknown sections {sorted(unknown)}; use study, sampler, pruner, space"
        )
    study, sampler, pruner = (_table(table, name, path) for name in ("study", "sampler", "pruner"))
    _check_study(study, path, config)
    _check_sampler(sampler, path)
    _check_pruner(pruner, path)
    space = tuple(_param(k, v, str(path), config) for k, v in _table(table, "space", path).items())
    if not space:
        raise ConfigError(f'{path}: the search space is empty; add [space."train.lr"] etc.')
    spec = StudySpec(
        name=study.get("name", path.stem),
        metric=study.get("metric", "val_dice"),
        direction=study.get("direction", "maximize"),
        epochs=study.get("epochs", 15),
        sampler={"name": "tpe", "seed": 42, **sampler},
        pruner={"name": "median", **pruner},
        space=space,
    )
    try:  # Optuna's own range checks (n_ei_candidates = 0, ...)
        spec.make_sampler(), spec.make_pruner()
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from None
    return spec
