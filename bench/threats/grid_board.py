"""What the board derives for a grid family (``bench.threats.grid``): errors normalised by a baseline (mCE,
relative mCE) and the per-cell accuracy table.

Hendrycks & Dietterich (2019): CE_c = sum_s E(c, s) / sum_s E_base(c, s), mCE the mean of CE_c over
corruptions; relative CE_c = sum_s (E(c, s) - E(clean)) / sum_s (E_base(c, s) - E_base(clean)). Both are
computed on the points the model and the baseline share, with a 95% percentile interval from a paired
bootstrap over those points (1000 resamples, seed 0). A ratio whose baseline denominator is not positive
is undefined and shown as missing.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from bench.metrics import Metric, MetricValue
from bench.threats.base import BoardRun

CELL = re.compile(r"^correct_(?P<group>.+)_(?P<level>\d+)$")
RESAMPLES = 1000
MCE = Metric("mce", "", "mean corruption error (baseline = 1)", agg="mean", higher_is_better=False)
RELATIVE_MCE = Metric("relative_mce", "", "relative mean corruption error (baseline = 1)", agg="mean",
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
    """mCE and relative mCE for each row of weights already applied: err (B, cells) mean errors per cell,
    clean (B,) mean clean error; the same for the baseline. Undefined ratios are NaN."""
    ce, rel = [], []
    for cells in groups:
        num, den = err[:, cells].sum(1), base_err[:, cells].sum(1)
        ce.append(np.where(den > 0, num / np.where(den > 0, den, 1), np.nan))
        rnum = num - len(cells) * clean
        rden = den - len(cells) * base_clean
        defined = rden > 1e-9  # a baseline the corruption does not hurt (its difference is float noise)
        rel.append(np.where(defined, rnum / np.where(defined, rden, 1), np.nan))
    return np.mean(ce, 0), np.mean(rel, 0)


def normalised_errors(run: BoardRun, baseline: BoardRun) -> dict[str, MetricValue]:
    """mCE and relative mCE of ``run`` against ``baseline`` on their shared points."""
    groups = cell_columns(run.rows)
    if groups != cell_columns(baseline.rows):
        return {}
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
    weights = np.vstack([np.full(n, 1 / n), np.random.default_rng(0).multinomial(n, np.full(n, 1 / n), RESAMPLES) / n])
    mce, rel = _ratios(weights @ err, weights @ clean, weights @ base_err, weights @ base_clean, index)
    out = {}
    for spec, values in ((MCE, mce), (RELATIVE_MCE, rel)):
        if np.isnan(values[0]):
            continue
        low, high = np.nanpercentile(values[1:], [2.5, 97.5])
        out[spec.name] = MetricValue(float(values[0]), float(low), float(high), n)
    return out


def mce_columns(baseline_id: str | None, runs: dict[str, BoardRun]) -> tuple[tuple[Metric, ...], dict]:
    """mCE columns when the params name a baseline that ran this protocol exactly once (by model id)."""
    if baseline_id is None:
        return (), {}
    label = f" vs {baseline_id}"
    specs = tuple(Metric(m.name, m.column, m.label + label, m.agg, m.higher_is_better) for m in (MCE, RELATIVE_MCE))
    bases = [run for run in runs.values() if run.model_id == baseline_id]
    if len(bases) != 1:
        return specs, {}
    return specs, {run_id: normalised_errors(run, bases[0]) for run_id, run in runs.items()}


def cell_table(runs: dict[str, BoardRun], what: str) -> str:
    """Accuracy (%) per group (rows) and level (columns), one block of rows per model."""
    records = []
    for run in sorted(runs.values(), key=lambda r: r.model_id):
        for group, cells in cell_columns(run.rows).items():
            accs = {f"level {CELL.match(c)['level']}": 100 * run.rows[c].mean() for c in cells}
            records.append({"model": run.model_id, what: group, **accs,
                            "mean": 100 * run.rows[cells].to_numpy(dtype=float).mean()})
    if not records:
        return ""
    table = pd.DataFrame.from_records(records)
    return f"accuracy (%) per {what} and level:\n\n" + table.to_markdown(index=False, floatfmt=".1f",
                                                                            missingval="")
