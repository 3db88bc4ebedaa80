"""Experiment configuration: TOML files → frozen dataclasses, `--set` overrides, flat params.

A config has five sections (`data`, `encoder`, `decoder`, `train`, `tracking`); defaults live
here and nowhere else. Unknown sections or keys and values of the wrong type are `ConfigError`s,
never silently ignored. `flatten` turns a config into the `section.key` params MLflow logs and
Optuna's search space addresses.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from polypseg.errors import ConfigError

DATA_SOURCES = ("kaggle", "local", "synthetic")
ENCODER_PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class DataConfig:
    source: str = "kaggle"  # kaggle | local | synthetic
    root: str = ""  # the folder with images/ and masks/ (local); where to generate (synthetic)
    image_size: int = 512
    split_seed: int = 42
    ratios: tuple[float, ...] = (0.8, 0.1, 0.1)
    synthetic_n: int = 100
    synthetic_seed: int = 0
    # Larger images are refused, naming the file: a deliberate limit instead of Pillow's
    # decompression-bomb guard. Kvasir-SEG's largest frame is 2 MP, an 8K frame 33 MP.
    max_megapixels: float = 64.0


@dataclass(frozen=True)
class EncoderConfig:
    name: str = "sam_vit_b"
    checkpoint: str = "auto"  # a path, or "auto" (download the official file once)
    fallback: str = "resnet50"  # used when the checkpoint cannot be had; "" for none
    allow_random_weights: bool = False
    batch_size: int = 8  # images per encoder call while building the cache
    precision: str = "auto"  # auto (bf16 weights on a CUDA GPU, else fp32) | fp32 | bf16
    compile: bool = False  # torch.compile the encoder for the feature pass (never required)


@dataclass(frozen=True)
class DecoderConfig:
    width: int = 256


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dice_weight: float = 0.5
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    patience: int = 8  # epochs without a better val_dice before stopping; 0 disables


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str = "polypseg"
    registered_model: str = "polypseg"


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def with_overrides(self, overrides: dict[str, Any], origin: str = "--set") -> Config:
        """A copy with `section.key` values replaced, each checked like a file's value."""
        sections = {f.name: getattr(self, f.name) for f in fields(self)}
        for dotted, value in overrides.items():
            section, key = _split_key(dotted, origin)
            current = sections[section]
            hints = get_type_hints(type(current))
            if key not in hints:
                raise ConfigError(
                    f"{origin}: unknown key '{dotted}'; [{section}] has: {', '.join(hints)}"
                )
            coerced = _coerce(value, hints[key], f"{origin}: {dotted}")
            sections[section] = replace(current, **{key: coerced})
        config = Config(**sections)
        _validate(config, origin)
        return config


SECTIONS = {f.name: f.type for f in fields(Config)}


def _split_key(dotted: str, origin: str) -> tuple[str, str]:
    section, _, key = dotted.partition(".")
    if not key or section not in SECTIONS:
        raise ConfigError(
            f"{origin}: '{dotted}' is not section.key with a section among: {', '.join(SECTIONS)}"
        )
    return section, key


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a TOML value against a dataclass field's type; ints are accepted for floats."""
    text = "list of numbers" if str(hint).startswith("tuple") else hint.__name__
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif text == "list of numbers":
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        )
        value = tuple(float(v) for v in value) if ok else value
    else:  # pragma: no cover - every field type is handled above
        raise TypeError(f"unsupported config type {hint}")
    if not ok:
        raise ConfigError(f"{where} = {value!r} is not a valid {text}")
    return value


SEED_MAX = 2**32 - 1  # numpy and scikit-learn take seeds in [0, 2**32 - 1]
PATCH = 16  # the ViT encoders cut images into 16×16 patches
# Pillow's own hard limit (2 × its 89.5 MP warning): ours stays under it, so Pillow never decides.
MAX_MEGAPIXELS_CEILING = 178.0
# Every numeric key's range: (low, high, low excluded). Values must also be finite.
RANGES: dict[str, tuple[float, float, bool]] = {
    "data.image_size": (64, math.inf, False),
    "data.split_seed": (0, SEED_MAX, False),
    "data.synthetic_n": (1, math.inf, False),
    "data.synthetic_seed": (0, SEED_MAX, False),
    "data.max_megapixels": (0, MAX_MEGAPIXELS_CEILING, True),
    "encoder.batch_size": (1, math.inf, False),
    "decoder.width": (1, math.inf, False),
    "train.epochs": (1, math.inf, False),
    "train.batch_size": (1, math.inf, False),
    "train.lr": (0, math.inf, True),
    "train.weight_decay": (0, math.inf, False),
    "train.dice_weight": (0, 1, False),
    "train.seed": (0, SEED_MAX, False),
    "train.patience": (0, math.inf, False),
}
NAMES = ("encoder.name", "train.device", "tracking.experiment", "tracking.registered_model")


def _range_text(low: float, high: float, open_low: bool) -> str:
    if math.isinf(high):
        if (low, open_low) in ((0, True), (1, False)):
            return "positive"
        return f"> {low:g}" if open_low else f">= {low:g}"
    return f"in ({low:g}, {high:g}]" if open_low else f"in [{low:g}, {high:g}]"


def _check_numbers(flat: dict[str, Any], origin: str) -> None:
    size = flat["data.image_size"]
    if size % PATCH or size < RANGES["data.image_size"][0]:
        raise ConfigError(
            f"{origin}: data.image_size = {size} must be a multiple of {PATCH} (the encoders' "
            "patch size) and >= 64, like 256 or 512"
        )
    for key, (low, high, open_low) in RANGES.items():
        value = flat[key]
        below = value <= low if open_low else value < low
        if not math.isfinite(value) or below or value > high:
            finite = "" if math.isfinite(value) else "a finite number, "
            raise ConfigError(
                f"{origin}: {key} = {value} must be {finite}{_range_text(low, high, open_low)}"
            )
    ratios = flat["data.ratios"]
    if len(ratios) != 3 or not all(math.isfinite(r) and r >= 0 for r in ratios):
        raise ConfigError(
            f"{origin}: data.ratios = {list(ratios)} must be three finite fractions >= 0, "
            "like [0.8, 0.1, 0.1]"
        )
    if not math.isclose(sum(ratios), 1.0) or ratios[0] == 0:
        raise ConfigError(
            f"{origin}: data.ratios = {list(ratios)} must sum to 1 with a train part > 0"
        )


def _validate(config: Config, origin: str) -> None:
    flat = flatten(config)
    if config.data.source not in DATA_SOURCES:
        raise ConfigError(
            f"{origin}: data.source = {config.data.source!r}; use one of {', '.join(DATA_SOURCES)}"
        )
    if config.encoder.precision not in ENCODER_PRECISIONS:
        raise ConfigError(
            f"{origin}: encoder.precision = {config.encoder.precision!r}; use one of "
            f"{', '.join(ENCODER_PRECISIONS)}"
        )
    if config.data.source == "local" and not config.data.root:
        raise ConfigError(f"{origin}: data.source = 'local' needs data.root (the Kvasir folder)")
    for key in NAMES:
        if not flat[key].strip():
            raise ConfigError(f"{origin}: {key} is empty; give it a name")
    _check_numbers(flat, origin)


def parse_set(items: list[str]) -> dict[str, Any]:
    """Parse `section.key=value` strings; the value is TOML (`1e-3`, `true`, `"x"`), else text."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.lr=3e-4")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        overrides[key.strip()] = value
    return overrides


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load a TOML config (defaults when `path` is None), then apply `overrides`."""
    config = Config()
    if path is not None:
        path = Path(path)
        try:
            table = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found; see experiments/*.toml") from None
        except IsADirectoryError:
            raise ConfigError(f"config {path} is a folder; pass a TOML file") from None
        except OSError as err:
            raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
        flat: dict[str, Any] = {}
        for section, values in table.items():
            if section not in SECTIONS or not isinstance(values, dict):
                raise ConfigError(
                    f"{path}: unknown section [{section}]; sections are: {', '.join(SECTIONS)}"
                )
            flat.update({f"{section}.{key}": value for key, value in values.items()})
        config = config.with_overrides(flat, origin=str(path))
    if overrides:
        config = config.with_overrides(overrides)
    return config


def flatten(config: Config) -> dict[str, Any]:
    """`{"decoder.width": 256, "train.lr": 0.001, ...}`: the params MLflow logs."""
    return {
        f"{section}.{key}": value
        for section, values in dataclasses.asdict(config).items()
        for key, value in values.items()
    }
