"""Metrics: what a threat family (or a task's clean pass) reports, and how per-example values add up.

A Metric names the per-example column it reads, how the rows aggregate (a rate of true values, a
mean, or a quantile), whether higher is better, and a label for people. Summaries, ``bench run``'s
output and the board are generic over metrics: they compute each one from the stored rows with its
95% interval, and rank by the family's headline metric in its direction. A run stores its metric
specs in ``run.json``, so old runs stay readable when a family changes.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # numpy is imported where used: validating a card needs no numpy
    import numpy as np

from bench.stats import mean_interval, quantile_interval, wilson_interval

Aggregation = Literal["rate", "mean", "quantile"]
INTERVALS = {"rate": "Wilson", "mean": "normal", "quantile": "order-statistic"}


@dataclass(frozen=True)
class Metric:
    name: str  # e.g. robust_acc
    column: str  # the per-example column it aggregates
    label: str  # e.g. "robust accuracy"
    agg: Aggregation = "mean"
    higher_is_better: bool = True
    q: float | None = None  # the quantile, for agg "quantile"
    as_percent: bool = False  # show a mean of values in [0, 1] (e.g. a per-point accuracy over cells) in %

    def __post_init__(self) -> None:
        if (self.agg == "quantile") != (self.q is not None) or (self.q is not None and not 0 <= self.q <= 1):
            raise ValueError(f"metric {self.name}: give q in [0, 1] exactly for a quantile")

    @property
    def percent(self) -> bool:
        return self.agg == "rate" or self.as_percent

    def compute(self, values: np.ndarray) -> MetricValue:
        """The metric and its 95% interval over the per-example values of one run."""
        import numpy as np

        values = np.asarray(values)
        n = len(values)
        if self.agg == "rate":
            hits = int(values.astype(bool).sum())
            low, high = wilson_interval(hits, n)
            return MetricValue(hits / n if n else math.nan, low, high, n)
        values = values.astype(np.float64)
        if not n:
            value, (low, high) = math.nan, (math.nan, math.nan)
        elif self.agg == "mean":
            value, (low, high) = float(values.mean()), mean_interval(values)
            if self.as_percent:  # a mean of values in [0, 1] lies in [0, 1]; the normal interval need not
                low, high = max(low, 0.0), min(high, 1.0)
        else:
            value, (low, high) = float(np.quantile(values, self.q)), quantile_interval(values, self.q)
        return MetricValue(value, low, high, n)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Metric:
        return cls(**data)


@dataclass(frozen=True)
class MetricValue:
    value: float
    low: float
    high: float
    n: int

    def format(self, metric: Metric) -> str:
        """``90.60%  (95% Wilson interval 87.7% - 92.9%)`` or ``0.0123  (95% normal interval ...)``."""
        def fmt(v: float, digits: int) -> str:
            return f"{100 * v:.{digits}f}%" if metric.percent else f"{v:.4g}"

        interval = "" if math.isnan(self.low) else \
            f"   (95% {INTERVALS[metric.agg]} interval {fmt(self.low, 1)} - {fmt(self.high, 1)})"
        return fmt(self.value, 2) + interval


def rank_key(metric: Metric, value: float) -> float:
    """Sort key that puts the best value first whatever the metric's direction (NaN last)."""
    if math.isnan(value):
        return math.inf
    return -value if metric.higher_is_better else value
