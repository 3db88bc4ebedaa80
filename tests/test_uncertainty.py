"""Intervals and paired tests, held to direct NumPy computations on small data."""

from __future__ import annotations

import itertools
from dataclasses import asdict

import numpy as np
import pytest

from polypseg.errors import DataError
from polypseg.evaluation.scoring import SetScorer
from polypseg.uncertainty import (
    bootstrap_interval,
    check_resamples,
    format_interval,
    paired_difference,
)


def numpy_percentile_bootstrap(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """The textbook percentile bootstrap of the mean, written out."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    return np.quantile(means, [0.025, 0.975])


def exact_wilcoxon_p(difference: np.ndarray) -> float:
    """Two-sided exact signed-rank p-value by enumerating every sign pattern."""
    magnitude = np.abs(difference)
    ranks = magnitude.argsort().argsort() + 1.0  # distinct magnitudes: no ties
    observed = ranks[difference > 0].sum()
    signs = np.array(list(itertools.product([0, 1], repeat=difference.size)))
    totals = signs @ ranks
    return min(1.0, 2 * min((totals <= observed).mean(), (totals >= observed).mean()))


@pytest.fixture(scope="module")
def dice() -> np.ndarray:
    return np.random.default_rng(3).beta(5, 1.5, size=40)


def test_bootstrap_interval_matches_a_direct_percentile_bootstrap(dice: np.ndarray) -> None:
    low, high = bootstrap_interval(dice, resamples=20_000, seed=1)
    direct = numpy_percentile_bootstrap(dice, 20_000, seed=2)
    assert low < dice.mean() < high
    assert low == pytest.approx(direct[0], abs=0.006)
    assert high == pytest.approx(direct[1], abs=0.006)


def test_bootstrap_interval_is_reproducible_and_narrows_with_more_images(dice: np.ndarray) -> None:
    assert bootstrap_interval(dice, seed=5) == bootstrap_interval(dice, seed=5)
    wide = np.subtract(*bootstrap_interval(dice[:10])[::-1])
    narrow = np.subtract(*bootstrap_interval(np.tile(dice, 10))[::-1])
    assert narrow < wide


def test_no_interval_from_one_image_and_none_wider_than_nothing_for_equal_scores() -> None:
    assert bootstrap_interval([0.8]) is None
    assert bootstrap_interval([0.5] * 6) == (0.5, 0.5)


def test_paired_difference_resamples_the_differences_and_uses_wilcoxon() -> None:
    rng = np.random.default_rng(11)
    baseline = rng.random(9)
    difference = rng.normal(0.05, 0.1, size=9)
    result = paired_difference(baseline, baseline + difference, resamples=20_000, seed=4)
    assert result.mean == pytest.approx(difference.mean())
    direct = numpy_percentile_bootstrap(difference, 20_000, seed=9)
    assert result.ci_low == pytest.approx(direct[0], abs=0.01)
    assert result.ci_high == pytest.approx(direct[1], abs=0.01)
    assert result.p_value == pytest.approx(exact_wilcoxon_p(difference))


def test_identical_methods_differ_by_nothing_with_p_one() -> None:
    scores = np.linspace(0.2, 0.9, 8)
    result = paired_difference(scores, scores)
    assert asdict(result) == {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}


def test_format_interval_prints_the_figure_then_its_interval() -> None:
    assert format_interval(0.8991, (0.8712, 0.9234)) == "0.899 [0.87, 0.92]"
    assert format_interval(0.5, None) == "0.500"


@pytest.mark.parametrize(
    ("protocol", "keys"), [("default", ("dice", "iou")), ("pranet", ("mdice", "miou"))]
)
def test_a_sets_summary_carries_the_bootstrap_interval_of_its_images(
    protocol: str, keys: tuple[str, str]
) -> None:
    rng = np.random.default_rng(8)
    scorer = SetScorer(protocol)
    for i in range(12):
        mask = np.zeros((12, 12), np.uint8)
        mask[3:9, 2 : 4 + i % 6] = 1
        scorer.add(f"{i}.png", np.clip(mask * 0.6 + rng.random((12, 12)) * 0.5, 0, 1), mask)
    summary = scorer.summary(resamples=20_000)
    assert list(summary)[:5] == ["n_images", keys[0], f"{keys[0]}_ci", keys[1], f"{keys[1]}_ci"]
    for key in keys:
        per_image = np.array([row[key] for row in scorer.rows])
        assert summary[key] == pytest.approx(per_image.mean())  # so resampling rows is right
        direct = numpy_percentile_bootstrap(per_image, 20_000, seed=6)
        assert summary[f"{key}_ci"] == pytest.approx(direct, abs=0.006)


def test_too_few_resamples_are_refused_before_any_work() -> None:
    with pytest.raises(DataError, match="--resamples 5: use at least 100"):
        check_resamples(5)
