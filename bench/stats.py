"""95% intervals for the three aggregations a metric can have: a rate, a mean and a quantile."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where used: validating a card needs no numpy
    import numpy as np

from bench.errors import require

Z95 = 1.959964


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (95% by default): well-behaved at 0% and 100%, unlike the normal one."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: np.ndarray, z: float = Z95) -> tuple[float, float]:
    """Normal-approximation interval of a mean: mean +- z * sd / sqrt(n) (sample sd; NaN below n = 2)."""
    n = len(values)
    if n < 2:
        return (math.nan, math.nan)
    mean, half = float(values.mean()), z * float(values.std(ddof=1)) / math.sqrt(n)
    return (mean - half, mean + half)


def quantile_interval(values: np.ndarray, q: float, level: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval of the q-quantile from order statistics (binomial ranks);
    an end is infinite where n is too small to bound it at this level."""
    binom = require("scipy.stats", "quantile intervals", "pip install scipy").binom
    n = len(values)
    if n == 0:
        return (math.nan, math.nan)
    import numpy as np

    ordered = np.sort(values)
    alpha = (1 - level) / 2
    lo_rank, hi_rank = int(binom.ppf(alpha, n, q)), int(binom.ppf(1 - alpha, n, q)) + 1  # 1-based ranks
    low = float(ordered[lo_rank - 1]) if lo_rank >= 1 else -math.inf
    high = float(ordered[hi_rank - 1]) if hi_rank <= n else math.inf
    return (low, high)


def clopper_pearson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial rate: conservative, and 0 or 1 only where observed."""
    if n == 0:
        return (0.0, 1.0)
    low, high = clopper_pearson_bounds(successes, n, (1 - level) / 2)
    return (float(low), float(high))


def clopper_pearson_bounds(successes, n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided exact (Clopper-Pearson) bounds of binomial rates, elementwise over ``successes`` (each of n > 0
    trials): the lower and the upper bound, each holding with probability >= 1 - alpha on its own (together a
    1 - 2 alpha interval); 0 or 1 only where observed (the lower bound at k = n is alpha^(1/n))."""
    beta = require("scipy.stats", "exact binomial intervals", "pip install scipy").beta
    import numpy as np

    k = np.asarray(successes, dtype=np.float64)
    low = np.where(k > 0, beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)  # the maxima keep beta's shapes > 0
    high = np.where(k < n, beta.ppf(1 - alpha, k + 1, np.maximum(n - k, 1)), 1.0)
    return low, high


def paired_median_difference(a: np.ndarray, b: np.ndarray, level: float = 0.95, resamples: int = 2000,
                             seed: int = 0) -> tuple[float, float, float]:
    """median(b) - median(a) for two models' values on the same points, with a percentile bootstrap interval
    that resamples the points (pairs kept together; a fixed seed, so a report is reproducible): two medians
    one bisection step apart are a difference only when the interval says so."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired values need one non-empty shape, got {a.shape} and {b.shape}")
    picks = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    diffs = np.median(b[picks], axis=1) - np.median(a[picks], axis=1)
    tail = 100 * (1 - level) / 2
    return (float(np.median(b) - np.median(a)), float(np.percentile(diffs, tail)),
            float(np.percentile(diffs, 100 - tail)))
