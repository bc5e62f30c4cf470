"""The CI gate: evaluate a model on a baseline run's exact question (protocol, data, points, seed, batches) and
test point by point whether a headline metric got worse.

Both runs hold one row per evaluation point, so the comparison is paired: McNemar's exact test for rates
(only the points that changed carry information), a one-sided paired t-test for means and the Wilcoxon
signed-rank test for quantiles. A metric regresses when the test says so at ``alpha`` *and* it dropped by
more than a tolerance (default: one evaluation point's worth of a rate, nothing for a mean); an improvement
passes. Two runs that do not answer the same question (another protocol, other data or points, other code)
are not compared: the check says why and ends with exit code 2.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.implementation import differences
from bench.metrics import Metric
from bench.spec import RunSpec
from bench.store import Store

PASSED, REGRESSED, INCOMPARABLE = "passed", "regressed", "incomparable"
EXIT_CODES = {PASSED: 0, REGRESSED: 1, INCOMPARABLE: 2}


@dataclass(frozen=True)
class Comparison:
    """One metric of the two runs, compared on the same points."""

    metric: str
    label: str
    headline: bool
    percent: bool
    baseline: float
    current: float
    worse: int  # points (rates) or paired differences (means) that moved the wrong way
    better: int
    test: str
    p_worse: float  # one-sided p-value of "the current run is worse"
    p_better: float
    tolerance: float
    regressed: bool
    improved: bool

    @property
    def change(self) -> float:
        return (self.current - self.baseline) * (100 if self.percent else 1)

    def line(self) -> str:
        unit = " points" if self.percent else ""
        fmt = (lambda v: f"{100 * v:.2f}%") if self.percent else (lambda v: f"{v:.4g}")
        verdict = "REGRESSED" if self.regressed else "improved" if self.improved else "no significant change"
        return (f"{self.label:<28} {fmt(self.baseline):>9} -> {fmt(self.current):>9}  ({self.change:+.2f}{unit}; "
                f"{self.worse} worse, {self.better} better; {self.test} p = {self.p_worse:.3g})  {verdict}"
                f"{'  [headline]' if self.headline else ''}")


@dataclass
class CheckResult:
    """The verdict of one model against one baseline run."""

    model: str
    threat: str
    baseline_run: str
    run_id: str | None
    status: str
    comparisons: list[Comparison] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # why the runs could not be compared
    notes: list[str] = field(default_factory=list)
    alpha: float = 0.05

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def __str__(self) -> str:
        head = f"bench check: {self.model} on {self.threat} against run {self.baseline_run}: {self.status.upper()}"
        lines = [head] + [f"  {c.line()}" for c in self.comparisons]
        lines += [f"  cannot compare: {r}" for r in self.reasons] + [f"  note: {n}" for n in self.notes]
        if self.comparisons:
            lines.append(f"  (a headline regresses when its one-sided p < {self.alpha:g} and it dropped by more than "
                         "its tolerance)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["comparisons"] = [{**asdict(c), "change": c.change} for c in self.comparisons]
        return {**out, "passed": self.passed, "exit_code": self.exit_code}


def _rate(metric: Metric, base: np.ndarray, new: np.ndarray) -> tuple[int, int, str, float, float]:
    from scipy.stats import binomtest

    good_base, good_new = base.astype(bool), new.astype(bool)
    if not metric.higher_is_better:
        good_base, good_new = ~good_base, ~good_new
    worse, better = int((good_base & ~good_new).sum()), int((~good_base & good_new).sum())
    if worse + better == 0:
        return worse, better, "McNemar exact", 1.0, 1.0
    p_worse = binomtest(worse, worse + better, 0.5, alternative="greater").pvalue
    p_better = binomtest(better, worse + better, 0.5, alternative="greater").pvalue
    return worse, better, "McNemar exact", float(p_worse), float(p_better)


def _paired(metric: Metric, base: np.ndarray, new: np.ndarray) -> tuple[int, int, str, float, float]:
    from scipy.stats import ttest_1samp, wilcoxon

    gain = (new - base) * (1 if metric.higher_is_better else -1)
    worse, better = int((gain < 0).sum()), int((gain > 0).sum())
    if worse + better == 0:
        return worse, better, "paired", 1.0, 1.0
    if metric.agg == "mean":
        if np.std(gain) == 0:  # a constant shift: certain, whatever its sign
            return worse, better, "paired t", float(gain[0] >= 0), float(gain[0] <= 0)
        return (worse, better, "paired t", float(ttest_1samp(gain, 0, alternative="less").pvalue),
                float(ttest_1samp(gain, 0, alternative="greater").pvalue))
    return (worse, better, "Wilcoxon signed-rank", float(wilcoxon(gain, alternative="less").pvalue),
            float(wilcoxon(gain, alternative="greater").pvalue))


def compare_rows(metric: Metric, base: np.ndarray, new: np.ndarray, *, headline: bool, alpha: float,
                 tolerance: float | None) -> Comparison:
    """Compare one metric's per-point values of two runs (the same points, in the same order)."""
    base, new = np.asarray(base), np.asarray(new)
    worse, better, test, p_worse, p_better = (_rate if metric.agg == "rate" else _paired)(metric, base, new)
    b, c = metric.compute(base).value, metric.compute(new).value
    if tolerance is None:
        tolerance = 100 / len(base) if metric.agg == "rate" else 0.0
    drop = (b - c) * (1 if metric.higher_is_better else -1) * (100 if metric.percent else 1)
    return Comparison(metric.name, metric.label, headline, metric.percent, b, c, worse, better, test, p_worse,
                      p_better, tolerance, regressed=p_worse < alpha and drop > tolerance,
                      improved=p_better < alpha and -drop > tolerance)


@dataclass
class Baseline:
    """What a check compares with: the question asked (threat card, data, n, seed, batches), the key parts that
    must match, the metric specs and every point's values, from a stored run or a leaderboard entry."""

    name: str
    threat_id: str
    threat_card: dict[str, Any]
    threat_dir: str | None
    dataset: str
    data_root: str | None
    n: int
    seed: int
    batch_size: int
    key: dict[str, Any]  # protocol, dataset, implementation, numerics
    metrics: list[Metric]
    headline: str
    rows: pd.DataFrame
    problems: list[str] = field(default_factory=list)


def _from_run(store: Store, run_id: str) -> Baseline:
    meta = store.run_meta(run_id)
    spec = RunSpec.from_dict(meta["spec"])
    run = store.read_run(run_id)
    problems = [] if spec.dataset["subset"] == "fixed" else [
        "the baseline evaluated tensors held in memory, which this check cannot see again"]
    if run.unreadable or len(run.rows) != spec.n:
        problems.append(f"the baseline run is incomplete or damaged ({len(run.rows)} of {spec.n} rows)")
    return Baseline(run_id, meta["threat_id"], spec.threat["card"], spec.threat["source_dir"], spec.dataset["name"],
                    spec.dataset["root"], spec.n, spec.seed, spec.batch_size, meta["key"],
                    [Metric.from_dict(m) for m in meta["metrics"]], meta["headline"], run.rows, problems)


def _from_entry(path: Path) -> Baseline:
    from bench.leaderboard.entries import read_entry

    entry = read_entry(path)
    if entry.points is None:
        raise BenchError(f"entry {path} holds no per-point outcomes ({entry.provenance})",
                         "check against a verified entry or a run")
    key = {"protocol": entry.protocol.hash, "dataset": entry.dataset.identity,
           "implementation": entry.implementation, "numerics": entry.numerics}
    return Baseline(str(path), entry.protocol.id, entry.protocol.card, None, entry.dataset.name, None, entry.n,
                    entry.seed, entry.batch_size, key, [m.metric(name) for name, m in entry.metrics.items()],
                    entry.headline, entry.points.frame())


def load_baseline(baseline: str | Path, results: str | Path | None) -> Baseline:
    """A baseline: a leaderboard entry (``.json``), a run's folder (``.../runs/<run_id>``) or ``run.json``, or a
    run id in the results folder."""
    path = Path(baseline).expanduser()
    if path.suffix == ".json" and path.name != "run.json":
        return _from_entry(path)
    if path.name == "run.json":
        path = path.parent
    if (path / "run.json").is_file():
        return _from_run(Store(path.parent.parent), path.name)
    store = Store(results)
    if (store.run_dir(str(baseline)) / "run.json").is_file():
        return _from_run(store, str(baseline))
    raise BenchError(f"baseline {baseline} is neither an entry, a run folder nor a run id under {store.root}",
                     "pass a leaderboard entry file, a run id shown by `bench run` / `bench board`, or the path of "
                     "its folder (<results>/runs/<run_id>)")


def _threat_hash(threat: str, dataset: str) -> str:
    from bench.threats import resolve_threat

    return resolve_threat(threat, dataset=dataset)[0].hash


def check(model: Any, baseline: str | Path, *, threat: str | None = None, results: str | Path | None = None,
          tolerance: float | None = None, alpha: float = 0.05, device: str | None = "auto",
          trust_code: tuple[str, ...] = (), progress: bool = True) -> CheckResult:
    """Evaluate ``model`` (a card id or path, or a module) on the baseline's question and compare; ``threat``,
    when given, must be the baseline's protocol."""
    from bench.run import evaluate
    from bench.threats import ThreatCard

    if not 0 < alpha < 1:
        raise BenchError(f"alpha must be between 0 and 1, got {alpha}", "pass e.g. --alpha 0.05")
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        raise BenchError(f"the tolerance must be a number >= 0, got {tolerance}", "pass e.g. --tolerance 1")
    base = load_baseline(baseline, results)
    name = model if isinstance(model, (str, Path)) else type(model).__name__
    result = CheckResult(str(name), base.threat_id, base.name, None, INCOMPARABLE, alpha=alpha)
    if threat is not None and _threat_hash(threat, base.dataset) != base.key["protocol"]:
        result.reasons.append(f"threat {threat} is another protocol than the baseline's {base.threat_id} "
                              f"({base.key['protocol'][:12]})")
    result.reasons += base.problems
    if result.reasons:
        return result
    card = ThreatCard.model_validate({**base.threat_card, "source_dir": base.threat_dir})
    root = base.data_root if base.data_root and Path(base.data_root).is_dir() else None
    summary = evaluate(model, card, dataset=base.dataset, n=base.n, seed=base.seed,  # the data: by content
                       batch_size=base.batch_size, data_root=root, device=device,
                       results=results, trust_code=trust_code, progress=progress)
    store = Store(results)
    new_meta = store.run_meta(summary.run_id)
    result.run_id = summary.run_id
    result.reasons += _incomparable(base.key, new_meta["key"])
    new_rows = store.read_run(summary.run_id).rows.sort_values("index").reset_index(drop=True)
    base_rows = base.rows.sort_values("index").reset_index(drop=True)
    if list(new_rows["index"]) != list(base_rows["index"]):
        result.reasons.append("the two runs hold other evaluation points")
    if {m.name: m for m in base.metrics} != {m["name"]: Metric.from_dict(m) for m in new_meta["metrics"]}:
        result.reasons.append("the family reports other metrics now")
    if result.reasons:
        return result
    if base.key["numerics"] != new_meta["key"]["numerics"]:
        result.notes.append("the runs were computed with other numerics ("
                            + "; ".join(differences(base.key["numerics"], new_meta["key"]["numerics"],
                                                    ("baseline", "now"))) + "): last digits may differ")
    for metric in base.metrics:
        if metric.column in base_rows and metric.column in new_rows:
            result.comparisons.append(compare_rows(
                metric, base_rows[metric.column].to_numpy(), new_rows[metric.column].to_numpy(),
                headline=metric.name == base.headline, alpha=alpha, tolerance=tolerance))
    result.status = REGRESSED if any(c.regressed and c.headline for c in result.comparisons) else PASSED
    return result


def _incomparable(base_key: dict[str, Any], new_key: dict[str, Any]) -> list[str]:
    """Why two run keys do not ask the same question (the model and numerics may differ: that is the check)."""
    reasons = []
    if base_key["protocol"] != new_key["protocol"]:
        reasons.append("another protocol")
    if base_key["dataset"] != new_key["dataset"]:
        reasons.append(f"other data ({base_key['dataset']} in the baseline, {new_key['dataset']} now)")
    changed = differences(base_key["implementation"], new_key["implementation"], ("baseline", "now"))
    if changed:
        reasons.append(f"another implementation ({'; '.join(changed)}): rerun the baseline with this bench")
    return reasons


def exit_code(results: list[CheckResult]) -> int:
    """2 if any pair could not be compared, else 1 if any headline regressed, else 0."""
    return max((r.exit_code for r in results), default=0)


def junit(results: list[CheckResult]) -> str:
    """JUnit XML: one test case per compared metric (a regressed headline fails), one error per pair that could
    not be compared."""
    suite = ET.Element("testsuite", name="bench check")
    failures = errors = 0
    for r in results:
        classname = f"bench.check.{r.model}.{r.threat}"
        if r.status == INCOMPARABLE:
            errors += 1
            case = ET.SubElement(suite, "testcase", classname=classname, name="comparable")
            ET.SubElement(case, "error", message="; ".join(r.reasons)).text = str(r)
        for c in r.comparisons:
            case = ET.SubElement(suite, "testcase", classname=classname, name=c.metric)
            if c.regressed and c.headline:
                failures += 1
                ET.SubElement(case, "failure", message=c.line()).text = str(r)
            else:
                ET.SubElement(case, "system-out").text = c.line()
    suite.set("tests", str(len(suite)))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    return ET.tostring(suite, encoding="unicode")

