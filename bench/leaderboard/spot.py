"""Spot checks of an entry: is it what its own points say, and do its points come out again here?

A leaderboard cannot rerun every submission in full, so it recomputes a seeded random subset of the run's
shards (a shard is the unit a run's randomness is tied to: batch k is attacked with its own seed, so it can be
recomputed alone, exactly) and compares every point of them with the entry's. Under the entry's own numerics
(device, torch, threads) the recomputation is deterministic, so every point must agree; under other numerics a
few points near a decision boundary may flip, so up to a binomial bound of them may (a flip rate of
``FLIP_RATE`` at ``CONFIDENCE``), and the refusal names the points that disagree either way. Before that, the
entry must hold what its headline numbers claim: each metric recomputed from its points equals the stated
value, the points are the protocol's first n, and the model card, weights, protocol, data and code are the
ones here (a stale entry is not recomputed: its code is gone).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.implementation import differences
from bench.leaderboard.entries import Entry

FLIP_RATE = 0.01  # the share of points allowed to flip when the numerics differ from the entry's
CONFIDENCE = 0.999
SHOWN = 8  # disagreeing points named in a refusal


@dataclass(frozen=True)
class Disagreement:
    index: int
    column: str
    claimed: Any
    recomputed: Any

    def __str__(self) -> str:
        return f"point {self.index}: {self.column} {self.claimed!r} claimed, {self.recomputed!r} recomputed"


@dataclass
class SpotCheck:
    """The outcome of checking one entry: problems found before recomputing, then the recomputed points."""

    entry: str
    problems: list[str] = field(default_factory=list)
    shards: list[int] = field(default_factory=list)
    points: int = 0
    allowed: int = 0  # points that may disagree (0 under the entry's own numerics)
    tolerance: str = ""
    disagreements: list[Disagreement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def disagreeing_points(self) -> list[int]:
        return sorted({d.index for d in self.disagreements})

    @property
    def accepted(self) -> bool:
        return not self.problems and len(self.disagreeing_points) <= self.allowed

    def __str__(self) -> str:
        lines = [f"{self.entry}: {'ACCEPTED' if self.accepted else 'REFUSED'}"]
        lines += [f"  problem: {p}" for p in self.problems]
        if self.shards:
            bad = self.disagreeing_points
            lines.append(f"  recomputed shards {', '.join(map(str, self.shards))} ({self.points} points): "
                         f"{len(bad)} disagree, {self.allowed} allowed ({self.tolerance})")
            shown = [d for d in self.disagreements if d.index in bad[:SHOWN]]
            lines += [f"    {d}" for d in shown]
            if len(bad) > SHOWN:
                lines.append(f"    and {len(bad) - SHOWN} more points")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"entry": self.entry, "accepted": self.accepted, "problems": self.problems, "shards": self.shards,
                "points": self.points, "allowed": self.allowed, "tolerance": self.tolerance,
                "disagreeing_points": self.disagreeing_points, "notes": self.notes,
                "disagreements": [vars(d) | {"claimed": _plain(d.claimed), "recomputed": _plain(d.recomputed)}
                                  for d in self.disagreements]}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def own_problems(entry: Entry) -> list[str]:
    """What makes an entry inconsistent with itself: metrics that its points do not give, points that are not n
    distinct ones. (An imported entry has no points to check.)"""
    if entry.points is None:
        return []
    rows = entry.points.frame()
    problems = []
    if len(rows) != entry.n or rows["index"].duplicated().any():
        problems.append(f"the entry holds {len(rows)} points ({rows['index'].nunique()} distinct) for n = {entry.n}")
    for name, part in entry.metrics.items():
        if part.column not in rows:
            problems.append(f"metric {name}: its column {part.column} is not among the points")
            continue
        got = part.metric(name).compute(rows[part.column].to_numpy())
        for what, stated, value in (("value", part.value, got.value), ("low", part.low, got.low),
                                    ("high", part.high, got.high)):
            if not _same(stated, value):
                problems.append(f"metric {name}: {what} {stated} is stated, its points give {value}")
    return problems


def _same(stated: float | None, value: float) -> bool:
    if stated is None:
        return value != value
    return math.isclose(stated, value, rel_tol=1e-9, abs_tol=1e-12)


def spot_check(card: Any, entry: Entry, name: str, *, fraction: float = 0.1, seed: int = 0,
               device: str | None = "auto", results: str | Path | None = None,
               trust_code: tuple[str, ...] = ()) -> SpotCheck:
    """Check ``entry`` (called ``name`` in messages) of the model ``card``: against itself, then by recomputing
    ``fraction`` of its shards (at least one, chosen by ``seed``) with the card's model here. Training what the
    card needs happens first, as for a run (``results``: where its log goes)."""
    from bench.executors import spec_threads
    from bench.run import prepare
    from bench.shards import compute_shard, shards_of
    from bench.spec import build, plan, spec_of
    from bench.threats import ThreatCard

    out = SpotCheck(name, problems=own_problems(entry))
    if entry.points is None:
        out.problems.append(f"an {entry.provenance} entry holds no per-point outcomes to recompute")
    if out.problems:
        return out
    claimed = entry.numerics
    p = plan(card, ThreatCard.model_validate(entry.protocol.card), dataset=entry.dataset.name, n=entry.n,
             seed=entry.seed, batch_size=entry.batch_size, device=device, threads=claimed.get("threads"))
    out.problems += _other_code(entry, p)
    if out.problems:
        return out  # before training anything
    prepare(p, results=results)
    spec = spec_of(p)
    out.problems += _other_question(entry, spec)
    rows = entry.points.frame().set_index("index")
    if sorted(rows.index) != sorted(p.positions.tolist()):
        out.problems.append(f"the entry's points are not the protocol's first {entry.n} evaluation points")
    if out.problems:
        return out
    ev = build(spec, device=p.device, data=p.data, trust_code=trust_code)
    shards = shards_of(ev)
    count = min(len(shards), max(1, math.ceil(fraction * len(shards))))
    chosen = sorted(random.Random(seed).sample(range(len(shards)), count))
    same_numerics = not differences(claimed, spec.numerics)
    with spec_threads(spec):
        for k in chosen:
            table, _ = compute_shard(ev, shards[k])
            out.disagreements += _compare(rows, table.to_pandas().set_index("index"), same_numerics)
            out.points += len(shards[k].indices)
    out.shards = chosen
    if same_numerics:
        out.tolerance = "the entry's own numerics: every point must agree"
    else:
        from scipy.stats import binom

        out.allowed = int(binom.ppf(CONFIDENCE, out.points, FLIP_RATE))
        out.tolerance = (f"other numerics ({'; '.join(differences(claimed, spec.numerics, ('entry', 'here')))}): "
                         f"a flip rate of {FLIP_RATE:.0%} at {CONFIDENCE:.1%} confidence")
    return out


def _other_code(entry: Entry, p: Any) -> list[str]:
    """Why the entry cannot be recomputed by this model and code at all (told before training anything)."""
    from bench.implementation import implementation
    from bench.leaderboard.marks import stale_reason

    problems = []
    if p.subject.card.hash != entry.model.hash:
        problems.append(f"the entry is of model {entry.model.hash[:12]}, the card hashes to "
                        f"{p.subject.card.hash[:12]}")
    stale = stale_reason(entry.implementation, implementation(p.threat_card.family, p.threat, p.subject.task))
    if stale:
        problems.append(f"{stale}; rerun it with this bench")
    return problems


def _other_question(entry: Entry, spec: Any) -> list[str]:
    """Why the run here would not recompute the entry's: other weights, protocol or data."""
    problems = []
    weights = differences(entry.model.weights, spec.weights, ("in the entry", "here"))
    if weights:
        problems.append(f"other weights ({'; '.join(weights)})")
    if spec.key["protocol"] != entry.protocol.hash:
        problems.append(f"the protocol card hashes to {spec.key['protocol'][:12]} here, "
                        f"{entry.protocol.hash[:12]} in the entry")
    if spec.dataset["identity"] != entry.dataset.identity:
        problems.append(f"other data ({entry.dataset.identity} in the entry, {spec.dataset['identity']} here)")
    return problems


def _compare(claimed: pd.DataFrame, recomputed: pd.DataFrame, exact: bool) -> list[Disagreement]:
    """The (point, column) pairs of one shard where the entry and the recomputation differ (floats within a
    last-digits tolerance under the same numerics, a looser one under others; NaN equals NaN)."""
    rtol, atol = (1e-5, 1e-7) if exact else (1e-3, 1e-5)
    out = []
    for column in claimed.columns:
        if column not in recomputed:
            out += [Disagreement(int(i), column, claimed.at[i, column], None) for i in recomputed.index]
            continue
        a = claimed.loc[recomputed.index, column].to_numpy()
        b = recomputed[column].to_numpy()
        if a.dtype.kind in "fc" or b.dtype.kind in "fc":
            fa, fb = a.astype(np.float64), b.astype(np.float64)
            same = np.isclose(fa, fb, rtol=rtol, atol=atol) | (np.isnan(fa) & np.isnan(fb))
        else:
            same = a == b
        out += [Disagreement(int(i), column, x, y) for i, x, y, ok in zip(recomputed.index, a, b, same) if not ok]
    return out
