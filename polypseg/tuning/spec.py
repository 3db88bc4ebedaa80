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


@dataclass(frozen=True)
class Param:
    key: str  # a config key, section.key
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

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
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        raise ConfigError(f"[sampler] name = {name!r}; use tpe or random")

    def make_pruner(self) -> Any:
        import optuna

        options = dict(self.pruner)
        name = options.pop("name", "median")
        if name == "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=int(options.get("n_startup_trials", 5)),
                n_warmup_steps=int(options.get("n_warmup_steps", 0)),
            )
        if name == "hyperband":
            return optuna.pruners.HyperbandPruner(
                min_resource=int(options.get("min_resource", 1)),
                max_resource=self.epochs,
                reduction_factor=int(options.get("reduction_factor", 3)),
            )
        if name == "none":
            return optuna.pruners.NopPruner()
        raise ConfigError(f"[pruner] name = {name!r}; use median, hyperband or none")

    def suggest(self, trial: Any) -> dict[str, Any]:
        """The trial's values, keyed by config key."""
        return {param.key: param.suggest(trial) for param in self.space}


def _param(key: str, table: dict[str, Any], where: str, config: Config) -> Param:
    kind = table.get("type")
    if kind not in PARAM_TYPES:
        raise ConfigError(
            f"{where}: space.{key}.type = {kind!r}; use one of {', '.join(PARAM_TYPES)}"
        )
    known = {"type", "low", "high", "log", "choices"}
    if unknown := set(table) - known:
        raise ConfigError(f"{where}: space.{key} has unknown fields {sorted(unknown)}")
    if kind == "categorical":
        if not table.get("choices"):
            raise ConfigError(f"{where}: space.{key} (categorical) needs a non-empty choices list")
        param = Param(key, kind, choices=tuple(table["choices"]))
        probes = param.choices
    else:
        if "low" not in table or "high" not in table or table["low"] >= table["high"]:
            raise ConfigError(f"{where}: space.{key} ({kind}) needs low < high")
        if table.get("log") and table["low"] <= 0:
            raise ConfigError(f"{where}: space.{key} is log-scaled, so low must be > 0")
        param = Param(key, kind, table["low"], table["high"], bool(table.get("log", False)))
        probes = (table["low"], table["high"])
    for value in probes:  # every value the space can produce must be a valid config value
        config.with_overrides({key: value}, origin=f"{where}: space")
    return param


def load_spec(path: str | Path, config: Config | None = None) -> StudySpec:
    """Load and check a study spec against the config it will override."""
    path = Path(path)
    config = config or Config()
    try:
        table = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"study spec {path} not found; see studies/*.toml") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"study spec {path} is not valid TOML: {err}") from None
    if unknown := set(table) - {"study", "sampler", "pruner", "space"}:
        raise ConfigError(
            f"{path}: unknown sections {sorted(unknown)}; use study, sampler, pruner, space"
        )
    study = table.get("study", {})
    if unknown := set(study) - {"name", "metric", "direction", "epochs"}:
        raise ConfigError(f"{path}: [study] has unknown keys {sorted(unknown)}")
    if study.get("direction", "maximize") not in ("maximize", "minimize"):
        raise ConfigError(f"{path}: [study] direction must be maximize or minimize")
    if study.get("metric", "val_dice") not in ("val_dice", "val_iou", "val_loss"):
        raise ConfigError(f"{path}: [study] metric must be val_dice, val_iou or val_loss")
    space = tuple(_param(k, v, str(path), config) for k, v in table.get("space", {}).items())
    if not space:
        raise ConfigError(f'{path}: the search space is empty; add [space."train.lr"] etc.')
    spec = StudySpec(
        name=study.get("name", path.stem),
        metric=study.get("metric", "val_dice"),
        direction=study.get("direction", "maximize"),
        epochs=int(study.get("epochs", 15)),
        sampler={"name": "tpe", "seed": 42, **table.get("sampler", {})},
        pruner={"name": "median", **table.get("pruner", {})},
        space=space,
    )
    spec.make_sampler()
    spec.make_pruner()
    return spec
