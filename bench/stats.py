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
    beta = require("scipy.stats", "exact binomial intervals", "pip install scipy").beta
    if n == 0:
        return (0.0, 1.0)
    alpha = (1 - level) / 2
    low = 0.0 if successes == 0 else float(beta.ppf(alpha, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta.ppf(1 - alpha, successes + 1, n - successes))
    return (low, high)
