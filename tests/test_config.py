"""Config files, `--set` overrides and flattening."""

from __future__ import annotations

from pathlib import Path

import pytest

from polypseg.config import load_config, parse_set
from polypseg.errors import PolypsegError

EXPERIMENTS = Path(__file__).parent.parent / "experiments"


@pytest.mark.parametrize("name", ["sam_vit_b", "resnet50", "synthetic"])
def test_shipped_experiments_load(name: str) -> None:
    config = load_config(EXPERIMENTS / f"{name}.toml")
    assert config.train.batch_size == 8 and config.data.split_seed == 42


def test_baseline_is_the_seed_notebooks() -> None:
    config = load_config(EXPERIMENTS / "sam_vit_b.toml")
    assert (config.data.image_size, config.decoder.width, config.train.seed) == (512, 256, 42)
    assert (config.encoder.name, config.encoder.fallback) == ("sam_vit_b", "resnet50")
    assert config.data.ratios == (0.8, 0.1, 0.1)


def test_set_overrides_parse_toml_values() -> None:
    overrides = parse_set(["train.lr=3e-4", "encoder.allow_random_weights=true", "data.root=/x y"])
    config = load_config(None, overrides)
    assert config.train.lr == 3e-4 and config.encoder.allow_random_weights is True
    assert config.data.root == "/x y"


def test_ints_are_accepted_for_floats() -> None:
    assert load_config(None, {"train.lr": 1}).train.lr == 1.0


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text("[optimizer]\nlr = 1\n")
    with pytest.raises(PolypsegError, match=r"unknown section \[optimizer\]"):
        load_config(path)


def test_unknown_key_is_an_error_naming_the_valid_ones(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text("[train]\nlearning_rate = 1e-3\n")
    with pytest.raises(PolypsegError, match=r"unknown key 'train.learning_rate'.*lr"):
        load_config(path)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("train.epochs", "ten"),
        ("train.epochs", 2.5),
        ("encoder.allow_random_weights", 1),
        ("data.ratios", [0.8, "x"]),
        ("decoder.width", True),
    ],
)
def test_wrong_types_are_errors(key: str, value: object) -> None:
    with pytest.raises(PolypsegError, match=key):
        load_config(None, {key: value})


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("train.dice_weight", 1.5, "dice_weight"),
        ("decoder.width", 0, "positive"),
        ("data.source", "ftp", "source"),
        ("train.lr", -1.0, "positive"),
    ],
)
def test_invalid_values_are_errors(key: str, value: object, match: str) -> None:
    with pytest.raises(PolypsegError, match=match):
        load_config(None, {key: value})


def test_malformed_set_is_an_error() -> None:
    with pytest.raises(PolypsegError, match="section.key=value"):
        parse_set(["train.lr"])


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolypsegError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[train\n")
    with pytest.raises(PolypsegError, match="not valid TOML"):
        load_config(path)


def test_a_seed_out_of_range_names_the_exact_bounds() -> None:
    with pytest.raises(PolypsegError, match=r"data\.split_seed = -1 must be in \[0, 4294967295\]$"):
        load_config(None, {"data.split_seed": -1})
