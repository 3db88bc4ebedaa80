"""Test-time augmentation (`--tta`): the mean of a model's maps over variants of the image."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from polypseg.cli import app
from polypseg.evaluation.predictors import TTAPredictor, load_predictor


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(4).integers(0, 256, (37, 53, 3), dtype=np.uint8)


def test_flip_is_the_mean_of_the_map_and_the_mirrored_map_mirrored_back(
    model_env: dict, image: np.ndarray
) -> None:
    uri = "models:/polypseg-eval@champion"
    plain = load_predictor(uri)
    flipped = load_predictor(uri, tta="flip")
    assert isinstance(flipped, TTAPredictor)
    expected = (plain.proba(image) + plain.proba(image[:, ::-1].copy())[:, ::-1]) / 2
    np.testing.assert_array_equal(flipped.proba(image), expected)
    assert not np.array_equal(expected, plain.proba(image))  # the mirror changed something
    assert flipped.threshold == plain.threshold  # applied to the mean map


def test_dihedral_averages_eight_maps_at_the_images_own_size(
    model_env: dict, image: np.ndarray
) -> None:
    predictor = load_predictor("models:/polypseg-eval@champion", tta="dihedral")
    assert len(predictor.variants) == 8
    proba = predictor.proba(image)
    assert proba.shape == image.shape[:2] and 0 <= proba.min() <= proba.max() <= 1
    batch = predictor.proba_batch([image, image[::-1].copy()])
    np.testing.assert_allclose(batch[0], proba, atol=1e-6)


def test_help_states_the_cost_and_a_bad_value_is_one_line(runner: CliRunner) -> None:
    for command in ("evaluate", "predict"):
        text = runner.invoke(app, [command, "--help"], terminal_width=200).output
        assert "--tta" in text and "encoder pass" in " ".join(text.split())
    with pytest.raises(Exception, match="--tta 'mirror'"):
        load_predictor("models:/x@champion", tta="mirror")
