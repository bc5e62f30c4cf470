"""What the board derives for a grid family (``bench.threats.grid``): errors normalised by a baseline (mCE,
relative mCE) and the per-cell accuracy table.

Hendrycks & Dietterich (2019): CE_c = sum_s E(c, s) / sum_s E_base(c, s), mCE the mean of CE_c over
corruptions; relative CE_c = sum_s (E(c, s) - E(clean)) / sum_s (E_base(c, s) - E_base(clean)). Both are
computed on the points the model and the baseline share, with a 95% percentile interval from a paired
bootstrap over those points (1000 resamples, seed 0). A ratio whose baseline denominator is not positive
is undefined and shown as missing. mCE averages the benchmark's corruptions only (CIFAR-10-C's 15); the extra
ones (its 4 held-out corruptions) get their own mean beside it.
"""
from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tabulate import tabulate

from bench.metrics import Metric, MetricValue
from bench.threats.base import BoardRun

CELL = re.compile(r"^correct_(?P<group>.+)_(?P<level>\d+)$")
RESAMPLES = 1000
MCE = Metric("mce", "", "mean corruption error (baseline = 1)", agg="mean", higher_is_better=False)
RELATIVE_MCE = Metric("relative_mce", "", "relative mean corruption error (baseline = 1)", agg="mean",
                      higher_is_better=False)
MCE_EXTRA = Metric("mce_extra", "", "mCE of the extra corruptions (not in mCE)", agg="mean", higher_is_better=False)
RELATIVE_MCE_EXTRA = Metric("relative_mce_extra", "", "relative mCE of the extra corruptions (not in mCE)", agg="mean",
                            higher_is_better=False)


def cell_columns(rows: pd.DataFrame) -> dict[str, list[str]]:
    """The per-cell columns of a run, by group, in level order."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for column in rows.columns:
        match = CELL.match(column)
        if match:
            groups.setdefault(match["group"], []).append((int(match["level"]), column))
    return {g: [c for _, c in sorted(cells)] for g, cells in groups.items()}


def _ratios(err: np.ndarray, clean: np.ndarray, base_err: np.ndarray, base_clean: np.ndarray,
            groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """CE and relative CE per group (columns) for each row of weights already applied: err (B, cells) mean
    errors per cell, clean (B,) mean clean error; the same for the baseline. Undefined ratios are NaN."""
    ce, rel = [], []
    for cells in groups:
        num, den = err[:, cells].sum(1), base_err[:, cells].sum(1)
        ce.append(np.where(den > 0, num / np.where(den > 0, den, 1), np.nan))
        rnum = num - len(cells) * clean
        rden = den - len(cells) * base_clean
        defined = rden > 1e-9  # a baseline the corruption does not hurt (its difference is float noise)
        rel.append(np.where(defined, rnum / np.where(defined, rden, 1), np.nan))
    return np.stack(ce, 1), np.stack(rel, 1)


@dataclass
class GroupErrors:
    """A run's errors against a baseline on their shared points: per group the CE and relative CE (NaN where
    undefined), and the bootstrap rows behind them (row 0: the point estimate)."""

    groups: list[str]
    ce: np.ndarray  # (1 + resamples, groups)
    relative: np.ndarray
    n: int

    def mean(self, which: str, groups: Collection[str]) -> MetricValue | None:
        """The mean over ``groups`` (mCE or relative mCE) with its 95% interval; None if undefined for any."""
        columns = [k for k, g in enumerate(self.groups) if g in groups]
        values = (self.ce if which == "ce" else self.relative)[:, columns]
        if not columns or np.isnan(values[0]).any():
            return None
        means = values.mean(1)
        low, high = np.nanpercentile(means[1:], [2.5, 97.5])
        return MetricValue(float(means[0]), float(low), float(high), self.n)


def group_errors(run: BoardRun, baseline: BoardRun, resamples: int = RESAMPLES) -> GroupErrors | None:
    """CE and relative CE per group of ``run`` against ``baseline`` on their shared points, with ``resamples``
    bootstrap rows behind them (None when their cells differ)."""
    groups = cell_columns(run.rows)
    if groups != cell_columns(baseline.rows):
        return None
    shared = run.rows.merge(baseline.rows, on="index", suffixes=("", "_base"))
    columns = [c for cells in groups.values() for c in cells]
    err = 1 - shared[columns].to_numpy(dtype=np.float64)
    base_err = 1 - shared[[f"{c}_base" for c in columns]].to_numpy(dtype=np.float64)
    clean = 1 - shared["clean_correct"].to_numpy(dtype=np.float64)
    base_clean = 1 - shared["clean_correct_base"].to_numpy(dtype=np.float64)
    index, start = [], 0
    for cells in groups.values():
        index.append(np.arange(start, start + len(cells)))
        start += len(cells)
    n = len(shared)
    weights = np.vstack([np.full(n, 1 / n), np.random.default_rng(0).multinomial(n, np.full(n, 1 / n), resamples) / n])
    ce, rel = _ratios(weights @ err, weights @ clean, weights @ base_err, weights @ base_clean, index)
    return GroupErrors(list(groups), ce, rel, n)


def normalised_errors(run: BoardRun, baseline: BoardRun, benchmark: Collection[str] | None = None
                      ) -> dict[str, MetricValue]:
    """mCE and relative mCE of ``run`` against ``baseline`` on their shared points, over the ``benchmark`` groups
    (all by default); the groups outside it get their own means beside them (``mce_extra``), never mixed in."""
    errors = group_errors(run, baseline)
    if errors is None:
        return {}
    main = set(errors.groups) if benchmark is None else set(benchmark) & set(errors.groups)
    extra = set(errors.groups) - main
    out = {}
    for spec, which, groups in ((MCE, "ce", main), (RELATIVE_MCE, "relative", main), (MCE_EXTRA, "ce", extra),
                                (RELATIVE_MCE_EXTRA, "relative", extra)):
        value = errors.mean(which, groups)
        if value is not None:
            out[spec.name] = value
    return out


def mce_columns(baseline_id: str | None, runs: dict[str, BoardRun], benchmark: Collection[str] | None = None
                ) -> tuple[tuple[Metric, ...], dict]:
    """mCE columns when the params name a baseline that ran this protocol exactly once (by model id); the extra
    groups' columns where a run has groups outside ``benchmark``."""
    if baseline_id is None:
        return (), {}
    label = f" vs {baseline_id}"
    has_extra = benchmark is not None and any(set(cell_columns(run.rows)) - set(benchmark) for run in runs.values())
    metrics = (MCE, RELATIVE_MCE) + ((MCE_EXTRA, RELATIVE_MCE_EXTRA) if has_extra else ())
    specs = tuple(Metric(m.name, m.column, m.label + label, m.agg, m.higher_is_better) for m in metrics)
    bases = [run for run in runs.values() if run.model_id == baseline_id]
    if len(bases) != 1:
        return specs, {}
    return specs, {run_id: normalised_errors(run, bases[0], benchmark) for run_id, run in runs.items()}


def cell_table(runs: dict[str, BoardRun], what: str) -> str:
    """Accuracy (%) per group (rows) and level (columns, in order, the mean last), one block of rows per model;
    a cell a group was not run at shows "-". Where every group has one level (MNIST-C: each corruption at the
    severity its published set used) the table says which level and gives the accuracy."""
    records, levels = [], set()
    for run in sorted(runs.values(), key=lambda r: r.model_id):
        for group, cells in cell_columns(run.rows).items():
            accuracy = {int(CELL.match(c)["level"]): 100 * run.rows[c].mean() for c in cells}
            levels |= set(accuracy)
            records.append((run.model_id, group, accuracy, 100 * run.rows[cells].to_numpy(dtype=float).mean()))
    if not records:
        return ""
    if all(len(accuracy) == 1 for _, _, accuracy, _ in records):
        rows = [{"model": model, what: group, "level": next(iter(accuracy)), "accuracy": mean}
                for model, group, accuracy, mean in records]
    else:
        rows = [{"model": model, what: group, **{f"level {level}": accuracy.get(level) for level in sorted(levels)},
                 "mean": mean} for model, group, accuracy, mean in records]
    return f"accuracy (%) per {what} and level:\n\n" + tabulate(rows, headers="keys", tablefmt="pipe", floatfmt=".1f",
                                                                missingval="-")


def error_table(baseline_id: str | None, runs: dict[str, BoardRun], what: str) -> str:
    """CE and relative CE per group of every model against the baseline (point estimates), and, where the
    relative mCE is undefined, which groups make it so and why."""
    bases = [run for run in runs.values() if run.model_id == baseline_id]
    if baseline_id is None or len(bases) != 1:
        return ""
    rows, undefined = [], set()
    for run in sorted(runs.values(), key=lambda r: r.model_id):
        errors = group_errors(run, bases[0], resamples=0)  # point estimates: the intervals are the columns'
        if errors is None:
            continue
        for k, group in enumerate(errors.groups):
            relative = errors.relative[0, k]
            undefined |= {group} if np.isnan(relative) else set()
            rows.append({"model": run.model_id, what: group, "CE": errors.ce[0, k],
                         "relative CE": None if np.isnan(relative) else relative})
    if not rows:
        return ""
    text = f"corruption error per {what} vs {baseline_id} (baseline = 1):\n\n" + tabulate(
        rows, headers="keys", tablefmt="pipe", floatfmt=".3f", missingval="-")
    if undefined:
        text += (f"\n\nrelative CE is undefined (-) for {', '.join(sorted(undefined))}: there {baseline_id}'s error "
                 f"under the {what} is not above its clean error, and relative CE divides by that difference "
                 f"(Hendrycks & Dietterich), so the relative mCE, their mean, is undefined too.")
    return text
