"""What every reproduction report shares: per-seed copies of built-in cards, a runner that puts one seed's
runs into one resumable results folder, per-seed verdicts, mean ± sd formatting and atomic writing."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.errors import BenchError
from bench.files import atomic_write

from bench.cards import locate, read_card


def seed_card(kind: str, card_id: str, seed: int, folder: Path, refs: dict[str, Path | list[Path]]) -> Path:
    """A copy of a built-in card for one seed: recipe seed set, and each reference named in ``refs`` (a
    recipe's or threat's param such as ``cvae`` or ``source``, or a role of a ``compose:`` block; a list for a
    list of references, such as an ensemble's ``members``) pointed at the seed's own card. A model card trained
    with this seed already keeps its id, so it shares the card's trained weights; other copies are named
    ``<id>-seed<seed>``."""
    data = read_card(locate(kind, card_id))
    if "recipe" in data and data["recipe"].get("seed", 0) != seed:
        data["id"] = f"{card_id}-seed{seed}"
        data["recipe"]["seed"] = seed
    elif kind == "threat" or (data.get("compose") and refs):
        data["id"] = f"{card_id}-seed{seed}"
    places = [data.get("params")] if kind == "threat" else [data.get("recipe", {}).get("params"),
                                                              data.get("compose", {}).get("parts")]
    for field, path in refs.items():
        for place in places:
            if isinstance(place, dict) and field in place:
                place[field] = [str(p) for p in path] if isinstance(path, list) else str(path)
    path = folder / ("models" if kind == "model" else "attacks") / f"{data['id']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class SeedRunner:
    """Runs of one seed into one results folder (``work/results``), with the seed's own cards
    (``work/cards``): a report interrupted and run again resumes from what is stored."""

    def __init__(self, seed: int, work: Path, device: str):
        work = Path(work).resolve()  # cards name their parts by path, and a relative one resolves from the card
        self.seed, self.cards, self.results, self.device = seed, work / "cards", work / "results", device

    def card(self, kind: str, card_id: str, **refs: Path | list[Path]) -> Path:
        return seed_card(kind, card_id, self.seed, self.cards, refs)

    def run(self, model: Path | str, threat, n: int, batch_size: int = 500, save_adv: bool = False):
        from bench.run import evaluate

        return evaluate(str(model), threat if not isinstance(threat, Path) else str(threat), n=n, seed=self.seed,
                        device=self.device, batch_size=batch_size, results=self.results, save_adv=save_adv)

    def convergence(self, model: Path | str, threat: Path, summary, points: int, batch_size: int = 500) -> dict:
        """The convergence check of a run made with ``run`` (``bench.convergence``), as a dict."""
        from dataclasses import asdict

        from bench.convergence import check_convergence

        return asdict(check_convergence(summary, model=str(model), threat=str(threat), points=points,
                                        results=self.results, progress=False, n=summary.n, seed=self.seed,
                                        device=self.device, batch_size=batch_size))

    def rows(self, run_id: str):
        from bench.store import Store

        return Store(self.results).read_run(run_id).rows


Verdict = bool | str | None  # True / False: every seed agrees; "mixed": the seeds disagree; None: untestable;
# "unresolved": in some seed the claim's interval crosses its threshold
UNRESOLVED = "unresolved"
VERDICT_WORDS = {None: "NOT TESTABLE", "mixed": "MIXED (the seeds disagree)", True: "PASS", False: "FAIL",
                 UNRESOLVED: "NOT RESOLVED (an interval crosses the threshold)"}


def verdict(per_seed_holds: list[bool | str]) -> Verdict:
    """A claim holds when it holds in every seed, fails when it fails in every seed, and is mixed otherwise; it is
    not resolved when in some seed its interval crosses the threshold (a per-seed value ``UNRESOLVED``)."""
    if UNRESOLVED in per_seed_holds:
        return UNRESOLVED
    return True if all(per_seed_holds) else False if not any(per_seed_holds) else "mixed"


@dataclass(frozen=True)
class Paired:
    """Two per-point rates on the same points: the difference a - b with its 95% interval (Agresti-Min adjusted
    Wald, for paired proportions) and McNemar's exact two-sided p, from the points only a or only b got right."""

    diff: float
    low: float
    high: float
    p: float
    a_only: int
    b_only: int
    n: int

    def above(self, threshold: float = 0.0) -> bool | str:
        """Whether a - b exceeds ``threshold``: True when the interval lies above it, False when it lies at or
        below it, ``UNRESOLVED`` when it crosses it."""
        return True if self.low > threshold else False if self.high <= threshold else UNRESOLVED

    def below(self, threshold: float) -> bool | str:
        """Whether a - b stays under ``threshold`` (the mirror of ``above``)."""
        return True if self.high < threshold else False if self.low >= threshold else UNRESOLVED

    def __str__(self) -> str:
        return (f"{100 * self.diff:+.1f} points [{100 * self.low:+.1f}, {100 * self.high:+.1f}], McNemar p = "
                f"{self.p:.2g} ({self.a_only} vs {self.b_only} discordant of {self.n})")


def paired(a: dict[int, bool], b: dict[int, bool]) -> Paired:
    """Compare two runs' per-point outcomes, keyed by evaluation point; they must cover the same points."""
    from scipy.stats import binomtest

    if set(a) != set(b):
        raise BenchError("a paired comparison needs both runs on the same evaluation points",
                         "rerun the report with one number of points for both")
    n = len(a)
    a_only = sum(1 for k in a if a[k] and not b[k])
    b_only = sum(1 for k in a if b[k] and not a[k])
    diff = (a_only - b_only) / n if n else 0.0
    adjusted = (a_only + 0.5 - b_only - 0.5) / (n + 2)
    p_a, p_b = (a_only + 0.5) / (n + 2), (b_only + 0.5) / (n + 2)
    half = 1.959964 * math.sqrt(max(p_a + p_b - (p_a - p_b) ** 2, 0.0) / (n + 2))
    p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return Paired(diff, max(-1.0, adjusted - half), min(1.0, adjusted + half), float(p), a_only, b_only, n)


def mean_sd(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """'mean ± sd' over seeds (just the value for one seed), both times ``scale`` (100 for percent)."""
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def write_report(out: Path, text: str) -> Path:
    """Write a report atomically: an interrupted run never leaves a half-written file under its name."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: tmp.write_text(text))
    return out
