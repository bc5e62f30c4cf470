"""Run summaries: every metric of one run with its 95% interval, computed from that run's rows only, and
``summary.json``, written atomically beside ``run.json`` once the run is complete, so that the board and
the CI gate read one small file per run instead of its rows."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bench.files import atomic_write
from bench.metrics import Metric, MetricValue
from bench.store import Store, StoreError, now, sealed, unsealed

SUMMARY_VERSION = 1


@dataclass
class Summary:
    run_id: str
    model: str
    model_hash: str
    threat: str
    protocol: str
    family: str
    task: str
    dataset: str
    n: int
    seed: int
    batch_size: int
    metrics: dict[str, MetricValue]
    specs: dict[str, Metric]
    headline: str
    seconds: float
    complete: bool = True
    stats: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    results: str = ""

    def __getattr__(self, name: str) -> Any:
        """Metric values as attributes: ``summary.robust_acc``; intervals as ``summary.robust_acc_ci``."""
        metrics = self.__dict__.get("metrics", {})
        if name in metrics:
            return metrics[name].value
        if name.endswith("_ci") and name[:-3] in metrics:
            value = metrics[name[:-3]]
            return (value.low, value.high)
        raise AttributeError(f"{type(self).__name__} has no attribute or metric {name!r} "
                             f"(metrics: {', '.join(metrics)})")

    @property
    def examples_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("metrics", "specs")}
        for name, value in self.metrics.items():
            out[name] = value.value
            out[f"{name}_ci"] = [value.low, value.high]
        return {**out, "examples_per_s": self.examples_per_s}

    def __str__(self) -> str:
        width = max(len(m.label) for m in self.specs.values()) if self.specs else 10
        lines = [f"model {self.model} ({self.model_hash[:12]})   threat {self.threat} ({self.family}, protocol "
                 f"{self.protocol[:12]})   dataset {self.dataset}   n {self.n}   seed {self.seed}"]
        for name, spec in self.specs.items():
            mark = "   <- headline" if name == self.headline else ""
            lines.append(f"{spec.label:<{width}}  {self.metrics[name].format(spec)}{mark}")
        lines.append(f"{'time':<{width}}  {self.seconds:.1f} s   ({self.examples_per_s:.1f} examples/s)")
        if self.stats:
            lines.append(f"{'per attack':<{width}}  " + ", ".join(f"{k} {v}" for k, v in self.stats.items()))
        if not self.complete:
            lines.append("note: the run is incomplete; rerun its command to finish it")
        lines += [f"note: {note}" for note in self.notes]
        lines.append(f"{'results':<{width}}  {self.results} (run {self.run_id})")
        return "\n".join(lines)


def summarize(store: Store, run_id: str) -> Summary:
    """Metrics of one run, from its own shard files only."""
    meta = store.run_meta(run_id)
    run = store.read_run(run_id)
    if run.unreadable:
        path, problem = next(iter(run.unreadable.items()))
        raise StoreError(f"shard file {path} of run {run_id} cannot be read ({problem})",
                         "rerun the run's command: the damaged shard is set aside and computed again")
    specs = {m["name"]: Metric.from_dict(m) for m in meta["metrics"]}
    values = {name: spec.compute(run.rows[spec.column].to_numpy() if spec.column in run.rows else np.array([]))
              for name, spec in specs.items()}
    stats: dict[str, int] = {}
    notes: dict[str, None] = {}
    for info in run.infos:
        for k, v in info.get("stats", {}).items():
            stats[k] = stats.get(k, 0) + v
        notes.update(dict.fromkeys(info.get("notes", [])))
    key = meta["key"]
    return Summary(run_id=run_id, model=meta["model_id"], model_hash=key["model"], threat=meta["threat_id"],
                   protocol=key["protocol"], family=meta["family"], task=meta["task"], dataset=meta["dataset"],
                   n=len(run.rows), seed=key["seed"], batch_size=key["batch_size"], metrics=values, specs=specs,
                   headline=meta["headline"], seconds=float(run.rows.get("seconds", pd.Series(dtype=float)).sum()),
                   complete=len(run.rows) == key["n"], stats=stats, notes=list(notes), results=str(store.root))


def summary_record(store: Store, summary: Summary, wall_seconds: float | None) -> dict[str, Any]:
    """What ``summary.json`` holds for a complete run: its metrics with intervals, specs, headline, stats, notes,
    timings, the shard files it was computed from, and what identifies it (the spec from ``run.json``)."""
    meta = store.run_meta(summary.run_id)
    return {"version": SUMMARY_VERSION, "run_id": summary.run_id, "model": summary.model,
              "threat": summary.threat, "family": summary.family, "task": summary.task, "dataset": summary.dataset,
              "n": summary.n, "seed": summary.seed, "headline": summary.headline,
              "metrics": {name: asdict(value) for name, value in summary.metrics.items()},
              "specs": [spec.to_dict() for spec in summary.specs.values()], "stats": summary.stats,
              "notes": summary.notes, "seconds": summary.seconds, "wall_seconds": wall_seconds,
              "key": meta["key"], "spec": meta["spec"], "created": meta["created"], "finished": now(),
              "shards": shard_sizes(store, summary.run_id)}


def shard_sizes(store: Store, run_id: str) -> dict[str, int]:
    """The run's shard files and their sizes: what a summary was computed from."""
    return {p.name: p.stat().st_size for p in store.shard_files(run_id)}


def stored_summary(store: Store, run_id: str) -> dict[str, Any] | None:
    """The run's ``summary.json`` if it still describes the run's shard files (None: none yet, damaged, or
    written before a shard was added, damaged or removed)."""
    try:
        record = read_summary(store, run_id)
    except StoreError:
        return None
    return record if record is not None and record.get("shards") == shard_sizes(store, run_id) else None


def write_summary(store: Store, summary: Summary, wall_seconds: float) -> dict[str, Any]:
    """Write ``summary.json`` for a complete run, atomically."""
    record = summary_record(store, summary, wall_seconds)
    path = store.run_dir(summary.run_id) / "summary.json"
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(sealed(record), indent=2)))
    return record


def read_summary(store: Store, run_id: str) -> dict[str, Any] | None:
    """The run's ``summary.json`` (None while the run is incomplete), after checking its seal."""
    path = store.run_dir(run_id) / "summary.json"
    if not path.is_file():
        return None
    try:
        return unsealed(json.loads(path.read_text()), path)
    except (OSError, ValueError, RecursionError) as err:
        raise StoreError(f"the run summary {path} cannot be read ({err})",
                         "rerun the run's command to write it again") from err
