"""Which plots the leaderboard site draws, from what its entries hold (``plots.py`` draws them). A plot is made
only where the entries give it data: none is drawn empty.

- clean vs robust accuracy, per dataset: every classifier entry whose headline is an accuracy (a percentage,
  higher is better), against the clean accuracy of the same entry (measured on the same points);
- the headline against eps, for the protocols of one family that differ only in eps;
- the share of points at or above each value of a quantile headline's per-point column (a certified or
  empirical margin, i.e. a radius): the certified share against the radius;
- the headline against the model card's training beta (``recipe.params.beta``), for generative models;
- accuracy per group and level of a grid family (corruptions, shifts), where the entry holds it: its
  ``acc_<group>`` metric is a cell's accuracy when the protocol has one level of that group.
"""
from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from markupsafe import Markup

from bench.leaderboard.entries import Entry, MetricPart
from bench.leaderboard.marks import current_threat
from bench.leaderboard.plots import Axis, Point, Series, chart, heatmap

if TYPE_CHECKING:
    from bench.leaderboard.site import Protocol

CURVE_POINTS = 200  # a share-of-points curve is drawn through at most this many values


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _value(part: MetricPart | None) -> float | None:
    return None if part is None else _finite(part.value)


def _point(entry: Entry, x: float, name: str | None = None) -> Point | None:
    metric = entry.metrics.get(name or entry.headline)
    y = _value(metric)
    if y is None:
        return None
    low, high = _finite(metric.low), _finite(metric.high)
    if low is None or high is None:
        low = high = None
    return Point(x, y, low, high, label=entry.model.id)


def clean_vs_robust(dataset: str, protocols: list[Protocol]) -> Markup | None:
    """Per robust protocol of the dataset (an accuracy headline), each model's headline against its clean
    accuracy on the same points."""
    series = []
    for protocol in protocols:
        headline = protocol.headline
        if protocol.headline_name == "clean_acc" or not (headline.percent and headline.higher_is_better):
            continue
        points = [p for r in protocol.results if (clean := _value(r.entry.metrics.get("clean_acc"))) is not None
                  and (p := _point(r.entry, clean)) is not None]
        series.append(Series(protocol.title, tuple(points)))
    return chart(f"{dataset}: clean against robust accuracy", Axis("clean accuracy", percent=True),
                 Axis("accuracy under the protocol (its headline)", percent=True), series, diagonal=True)


def versus_eps(protocols: list[Protocol]) -> list[Markup]:
    """One plot per set of protocols that differ only in eps (at least two eps)."""
    groups: dict[str, list[tuple[float, Protocol]]] = {}
    for protocol in protocols:
        params = dict(protocol.params)
        eps = params.pop("eps", None)
        if isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps):
            groups.setdefault(json.dumps(params, sort_keys=True, default=str), []).append((float(eps), protocol))
    out = []
    for key, members in sorted(groups.items()):
        if len({eps for eps, _ in members}) < 2:
            continue
        by_model: dict[str, list[Point]] = {}
        for eps, protocol in members:
            for result in protocol.results:
                point = _point(result.entry, eps, protocol.headline_name)
                if point is not None:
                    by_model.setdefault(result.name, []).append(point)
        family, headline = members[0][1].family, members[0][1].headline
        rest = ", ".join(f"{k} {v}" for k, v in json.loads(key).items())
        plot = chart(f"{family}: {headline.label} against eps" + (f" ({rest})" if rest else ""), Axis("eps"),
                     Axis(headline.label, headline.percent),
                     [Series(name, tuple(points)) for name, points in sorted(by_model.items())], lines=True)
        if plot is not None:
            out.append(plot)
    return out


def share_at_least(protocol: Protocol) -> Markup | None:
    """For a quantile headline (a median margin or radius): per model, the share of points whose value is at
    least r, against r."""
    headline = protocol.headline
    if headline.agg != "quantile":
        return None
    series = []
    for result in protocol.results:
        points = result.entry.points
        if points is None or headline.column not in points.columns:
            continue
        values = np.sort(points.frame()[headline.column].to_numpy(dtype=np.float64))
        values = values[np.isfinite(values)]
        if not len(values):
            continue
        levels = np.unique(values if len(values) <= CURVE_POINTS else
                           np.quantile(values, np.linspace(0, 1, CURVE_POINTS)))
        shares = 1 - np.searchsorted(values, levels, side="left") / len(values)
        curve = [*zip(levels.tolist(), shares.tolist()), (float(values[-1]), 0.0)]  # none above the largest
        series.append(Series(result.name, tuple(Point(r, s) for r, s in curve)))
    name = headline.label.split(" (")[0]
    return chart(f"{protocol.title}: share of points whose {name} is at least r", Axis(f"r ({name})"),
                 Axis(f"share of points with {name} \u2265 r", percent=True), series, step=True)


def versus_beta(protocol: Protocol) -> Markup | None:
    """The headline of generative models against their training beta, one series per training objective
    (at least two betas)."""
    by_objective: dict[str, list[Point]] = {}
    for result in protocol.results:
        card = result.entry.model.card or {}
        recipe = card.get("recipe")
        params = recipe.get("params") if isinstance(recipe, dict) else None
        params = params if isinstance(params, dict) else {}
        beta = params.get("beta")
        if card.get("task") != "generative" or not isinstance(beta, (int, float)) or isinstance(beta, bool) \
                or not math.isfinite(beta):
            continue
        point = _point(result.entry, float(beta))
        if point is not None:
            by_objective.setdefault(str(params.get("objective", "objective not named")), []).append(point)
    if len({p.x for points in by_objective.values() for p in points}) < 2:
        return None
    headline = protocol.headline
    return chart(f"{protocol.title}: {headline.label} against the training beta", Axis("beta (model card recipe)"),
                 Axis(headline.label, headline.percent),
                 [Series(name, tuple(points)) for name, points in sorted(by_objective.items())], lines=True)


def grid_cells(card: dict[str, Any], source_dir: str | None) -> list[tuple[str, int]] | None:
    """The (group, level) cells of a grid family's protocol card, or None for another family (or a card that
    does not load here)."""
    from bench.errors import BenchError
    from bench.threats.grid import CellGrid

    try:
        _, threat = current_threat(card, source_dir)
    except BenchError:
        return None
    return [(c.group, c.level) for c in threat.cells()] if isinstance(threat, CellGrid) else None


def grid_heatmap(entry: Entry, cells: list[tuple[str, int]]) -> Markup | None:
    """The entry's accuracy per group (row) and level (column) of its protocol's cells: each cell's per-point
    column where the entry holds it, else a single-level group's ``acc_<group>`` metric (older entries)."""
    from bench.threats.grid_board import cell_columns

    levels: dict[str, list[int]] = {}
    for group, level in cells:
        levels.setdefault(group, []).append(level)
    rows = entry.points.frame() if entry.points is not None else None
    stored = set() if rows is None else {c for columns in cell_columns(rows).values() for c in columns}
    values = {}
    for group, found in levels.items():
        for level in found:
            column = f"correct_{group}_{level}"
            value = (float(rows[column].mean()) if column in stored else
                     _value(entry.metrics.get(f"acc_{group}")) if len(found) == 1 else None)
            if value is not None:
                values[(group, str(level))] = value
    columns = [str(k) for k in sorted({level for _, level in cells})]
    return heatmap(f"{entry.model.id}, {entry.protocol.id}: accuracy per group and level",
                   "group (corruption or shift)", "level (severity, 1 = mildest)", list(levels), columns, values)
