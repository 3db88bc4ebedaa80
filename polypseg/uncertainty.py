"""How sure a per-set figure is: seeded percentile-bootstrap intervals over images (SciPy's
`bootstrap`; the polyp test sets hold 60–200 images), and paired comparisons (the per-image
differences resampled, plus Wilcoxon's signed-rank test)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from polypseg.errors import DataError

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0


def check_resamples(resamples: int) -> int:
    """`--resamples N`, refused before any work when it could not give an interval."""
    if resamples < 100:
        raise DataError(f"--resamples {resamples}: use at least 100 (the default is {RESAMPLES})")
    return resamples


def bootstrap_interval(
    values: Sequence[float] | np.ndarray, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float] | None:
    """The percentile-bootstrap interval of the mean of per-image `values`; None for fewer than
    two images, where resampling says nothing."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return None
    result = bootstrap(
        (values,),
        np.mean,
        n_resamples=resamples,
        confidence_level=LEVEL,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return float(interval.low), float(interval.high)


@dataclass(frozen=True)
class PairedDifference:
    """Candidate minus baseline over the same images: the mean, its interval, Wilcoxon's p."""

    mean: float
    ci_low: float | None
    ci_high: float | None
    p_value: float


def paired_difference(
    baseline: Sequence[float] | np.ndarray,
    candidate: Sequence[float] | np.ndarray,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> PairedDifference:
    """Compares two methods' per-image scores, given in the same image order."""
    from scipy.stats import wilcoxon

    difference = np.asarray(candidate, np.float64) - np.asarray(baseline, np.float64)
    interval = bootstrap_interval(difference, resamples, seed)
    low, high = interval if interval else (None, None)
    # Wilcoxon drops zero differences; with none left there is no evidence either way (SciPy
    # would divide by zero and warn).
    p_value = 1.0 if not difference.any() else float(wilcoxon(difference).pvalue)
    return PairedDifference(float(difference.mean()), low, high, p_value)


def format_interval(value: float, interval: tuple[float, float] | None) -> str:
    """`0.899 [0.87, 0.92]`: the figure at three places, its interval at two."""
    if interval is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[0]:.2f}, {interval[1]:.2f}]"
