"""Experiment configuration: TOML files → frozen dataclasses, `--set` overrides, flat params.

A config has five sections (`data`, `encoder`, `decoder`, `train`, `tracking`); defaults live
here and nowhere else. Unknown sections or keys and values of the wrong type are `PolypsegError`s,
never silently ignored. `flatten` turns a config into the `section.key` params MLflow logs and
Optuna's search space addresses.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

from polypseg.dihedral import check_variants
from polypseg.errors import DataError, PolypsegError
from polypseg.toml_checks import Bounds, check_range, parse_value, read_toml, typed

DATA_SOURCES = ("kaggle", "local", "synthetic")
DATA_PROTOCOLS = ("seed", "pranet")
# The names of data/sets.py's table (a test holds them equal): data.roots's keys.
POLYP_SETS = ("kvasir", "clinicdb", "colondb", "etis", "cvc300")
ENCODER_PRECISIONS = ("auto", "fp32", "bf16")
DECODERS = ("simple", "hires")  # models/decoder.py's registry holds these names
LOSSES = ("bce_dice", "structure")


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
    # Dihedral variants of the training images (polypseg.dihedral: hflip, vflip, rot90, ...),
    # each encoded once into the cache; every epoch each image is seen under one of them.
    augment: tuple[str, ...] = ()
    # seed: data.root's own split (data.ratios); pranet: the literature's (docs/literature.md),
    # training on data.roots' kvasir + clinicdb minus PraNet's test images.
    protocol: str = "seed"
    roots: dict[str, str] = field(default_factory=dict)  # set name → folder (POLYP_SETS)


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
    name: str = "simple"  # simple | hires (a trainable CNN over the pixels, fused to full size)
    width: int = 256
    branch_width: int = 16  # hires: channels of its full-resolution image branch
    deep_supervision: bool = False  # hires: a loss on every upsampling stage's logits too


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dice_weight: float = 0.5  # bce_dice only
    loss: str = "bce_dice"  # bce_dice | structure (PraNet's weighted BCE + weighted IoU)
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
        sections = {f.name: getattr(self, f.name) for f in fields(self)}
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if not key or section not in SECTIONS:
                raise PolypsegError(
                    f"{origin}: '{dotted}' is not section.key with a section among: "
                    f"{', '.join(SECTIONS)}"
                )
            current = sections[section]
            hints = get_type_hints(type(current))
            if key not in hints:
                raise PolypsegError(
                    f"{origin}: unknown key '{dotted}'; [{section}] has: {', '.join(hints)}"
                )
            coerced = typed(value, hints[key], f"{origin}: {dotted}")
            sections[section] = replace(current, **{key: coerced})
        config = Config(**sections)
        _validate(config, origin)
        return config


SECTIONS = {f.name: f.type for f in fields(Config)}


SEED_MAX = 2**32 - 1  # numpy, scikit-learn and Optuna's samplers take seeds in [0, 2**32 - 1]
PATCH = 16  # the ViT encoders cut images into 16×16 patches
# Pillow's own hard limit (2 × its 89.5 MP warning): ours stays under it, so Pillow never decides.
MAX_MEGAPIXELS_CEILING = 178.0
# Every numeric key's range: (low, high, low excluded). Values must also be finite.
RANGES: dict[str, Bounds] = {
    # The square every image is resized to. At 4096 a ViT encoder already sees 65536 tokens
    # (SAM's own 1024 gives 4096), past what a GPU holds; no polyp set has frames that large
    # (Kvasir-SEG's widest is 1920 px), and 16384 ended in a MemoryError.
    "data.image_size": (64, 4096, False),
    "data.split_seed": (0, SEED_MAX, False),
    "data.synthetic_n": (1, math.inf, False),
    "data.synthetic_seed": (0, SEED_MAX, False),
    "data.max_megapixels": (0, MAX_MEGAPIXELS_CEILING, True),
    "encoder.batch_size": (1, math.inf, False),
    "decoder.width": (1, math.inf, False),
    "decoder.branch_width": (1, math.inf, False),
    "train.epochs": (1, math.inf, False),
    "train.batch_size": (1, math.inf, False),
    "train.lr": (0, math.inf, True),
    # AdamW scales each weight by (1 - lr × weight_decay) per step: at 1 and above (lr ≤ 1) a
    # step can erase or flip the weights, so the loss diverges for a reason that is not lr.
    "train.weight_decay": (0, 1, False),
    "train.dice_weight": (0, 1, False),
    "train.seed": (0, SEED_MAX, False),
    "train.patience": (0, math.inf, False),
}
NAMES = ("encoder.name", "train.device", "tracking.experiment", "tracking.registered_model")
CHOICES = {
    "data.source": DATA_SOURCES,
    "encoder.precision": ENCODER_PRECISIONS,
    "decoder.name": DECODERS,
    "train.loss": LOSSES,
    "data.protocol": DATA_PROTOCOLS,
}


def ratios_problem(ratios: Sequence[float]) -> str | None:
    """Why `ratios` are not a train/val/test split (the config's and `data split --ratios`)."""
    if len(ratios) != 3 or not all(math.isfinite(r) and r >= 0 for r in ratios):
        return f"{list(ratios)} must be three finite fractions >= 0, like 0.8,0.1,0.1"
    if not math.isclose(sum(ratios), 1.0) or ratios[0] == 0:
        return f"{list(ratios)} must sum to 1 with a train part > 0"
    return None


def check_choice(option: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise DataError(f"{option} {value!r}: choose one of {', '.join(choices)}")
    return value


def check_seed(seed: int) -> None:
    """A seed numpy and Optuna take; checked at the door: numpy's refusal is a traceback."""
    if not 0 <= seed <= SEED_MAX:
        raise PolypsegError(f"--seed {seed}: expected a whole number from 0 to {SEED_MAX}")


def _check_protocol(data: DataConfig, origin: str) -> None:
    if unknown := [name for name in data.roots if name not in POLYP_SETS]:
        raise PolypsegError(
            f"{origin}: data.roots names {', '.join(unknown)}; the sets are {', '.join(POLYP_SETS)}"
        )
    if data.protocol == "pranet" and data.source == "synthetic":
        raise PolypsegError(f"{origin}: data.protocol = 'pranet' needs real sets, not synthetic")
    lacking = [n for n in ("kvasir", "clinicdb") if n not in data.roots]
    if data.protocol == "pranet" and data.source == "local" and lacking:
        raise PolypsegError(
            f"{origin}: data.protocol = 'pranet' with data.source = 'local' needs data.roots for "
            f"{' and '.join(lacking)} (or data.source = 'kaggle' to download them)"
        )


def _validate(config: Config, origin: str) -> None:
    flat = flatten(config)
    for key, choices in CHOICES.items():
        if flat[key] not in choices:
            raise PolypsegError(f"{origin}: {key} = {flat[key]!r}; use one of {', '.join(choices)}")
    check_variants(config.data.augment, f"{origin}: data.augment")
    _check_protocol(config.data, origin)
    if config.data.source == "local" and not config.data.root and config.data.protocol == "seed":
        raise PolypsegError(f"{origin}: data.source = 'local' needs data.root (the Kvasir folder)")
    for key in NAMES:
        if not flat[key].strip():
            raise PolypsegError(f"{origin}: {key} is empty; give it a name")
    size = flat["data.image_size"]
    if size % PATCH or size < RANGES["data.image_size"][0]:
        raise PolypsegError(
            f"{origin}: data.image_size = {size} must be a multiple of {PATCH} (the encoders' "
            "patch size) and >= 64, like 256 or 512"
        )
    for key, bounds in RANGES.items():
        check_range(flat[key], bounds, f"{origin}: {key}")
    if problem := ratios_problem(flat["data.ratios"]):
        raise PolypsegError(f"{origin}: data.ratios = {problem}")


def parse_set(items: list[str]) -> dict[str, Any]:
    """Parse `section.key=value` strings; the value is TOML (`1e-3`, `true`, `"x"`), else text."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise PolypsegError(f"--set {item!r}: expected section.key=value, e.g. train.lr=3e-4")
        overrides[key.strip()] = parse_value(raw.strip())
    return overrides


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    config = Config()
    if path is not None:
        path = Path(path)
        flat: dict[str, Any] = {}
        for section, values in read_toml(path, "config file", "experiments/*.toml").items():
            if section not in SECTIONS or not isinstance(values, dict):
                raise PolypsegError(
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
