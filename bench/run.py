"""Runs: resolve a model and a threat, plan the run as shards, execute each shard, summarise.

A run is identified by everything that changes its rows: the model's hash, the threat's protocol
hash, the dataset's identity, n, the seed, the batch size (batch k is attacked as one batch with seed
f(seed, k), so the batch size changes rows) and the device type. Its plan is a list of independent
shards; ``run_shard`` computes one shard and writes its rows, and ``evaluate`` is the local executor
of the plan (a distributed executor runs the same shards elsewhere). Rerunning a command resumes it:
finished shards are skipped, so no row is lost or counted twice, and a resumed run equals an
uninterrupted one. Two processes running the same run split its shards between them.
"""
from __future__ import annotations

import contextlib
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from bench.cards import canonical_hash
from bench.data import Dataset, from_tensors, load_dataset, subset_indices
from bench.errors import BenchError
from bench.metrics import Metric, MetricValue
from bench.models.card import ModelCard, load_model_card
from bench.store import STORE_VERSION, Store, StoreError, now
from bench.tasks import TASKS, Task
from bench.threats import Batch, Target, Threat, ThreatCard, make_threat, resolve_threat

MAX_SEED = 2**31 - 1


# --- devices -----------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise BenchError(f"unknown device {device!r}", "use cpu, cuda, cuda:N, mps or auto") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"device {device} requested but CUDA is not available", "use --device cpu (or auto)")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise BenchError(f"device {device} requested but MPS is not available", "use --device cpu (or auto)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise BenchError(f"device {device} is not supported", "use cpu, cuda, cuda:N, mps or auto")
    return dev


def _module_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """A bare module is evaluated where it lives: bench does not move a caller's module."""
    own = next((p.device for p in model.parameters()), None)
    if own is None:
        return resolve_device(device)
    if own.type == "meta":
        raise BenchError("the model's parameters are on the meta device (they hold no values)",
                         "load real weights into the module first (e.g. model.to_empty(...) then load_state_dict)")
    if device is None or str(device) == "auto":
        return own
    wanted = resolve_device(device)
    if wanted.type != own.type or (wanted.index is not None and wanted != own):
        raise BenchError(f"the model is on {own} but device {wanted} was requested",
                         f"move it first (model.to('{wanted}')) or pass device='{own}'")
    return own


# --- plan ----------------------------------------------------------------------------------------------


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch k of a run: the same whether the run was interrupted or not."""
    return (seed * 1_000_003 + batch) % (2**31 - 1)


@dataclass(frozen=True)
class Shard:
    """One independent unit of a run: positions in the split, attacked as one batch with ``seed``."""

    number: int
    indices: tuple[int, ...]
    seed: int


@dataclass
class RunPlan:
    run_id: str
    meta: dict[str, Any]
    shards: list[Shard]


def plan_shards(positions: Tensor, seed: int, batch_size: int) -> list[Shard]:
    points = positions.tolist()
    return [Shard(k, tuple(points[start:start + batch_size]), batch_seed(seed, k))
            for k, start in enumerate(range(0, len(points), batch_size))]


@dataclass
class Evaluation:
    """A run's parts in memory, built once per process: every shard of the run executes against it."""

    run_id: str
    target: Target
    threat: Threat
    data: Dataset
    device: torch.device


def run_shard(ev: Evaluation, shard: Shard, store: Store) -> list[str]:
    """Compute one shard and write its rows; returns the notes the threat made on it."""
    start = time.perf_counter()
    idx = torch.tensor(shard.indices)
    x, y = ev.data.x[idx].to(ev.device), ev.data.y[idx].to(ev.device)
    target = ev.target
    clean = target.task.clean_pass(target.module, x, y, target.num_classes)
    batch = Batch(x, y, idx, shard.seed, clean)
    devices = [ev.device] if ev.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the checks leave the attack's random state as it was
        notes = ev.threat.checks(target, batch)
    with torch.random.fork_rng(devices=devices):
        out = ev.threat.attack(target, batch)
    out.notes = list(dict.fromkeys(notes + out.notes))
    values = {**clean, **out.values}
    _check_values(values, len(idx), type(ev.threat).__name__)
    seconds = time.perf_counter() - start
    columns = {"run_id": [ev.run_id] * len(idx), "shard": [shard.number] * len(idx), "index": idx.tolist(),
               **({"label": y.tolist()} if target.task.uses_labels else {}),
               **{k: v.detach().cpu().numpy() for k, v in values.items()},
               "seconds": [seconds / len(idx)] * len(idx)}
    store.write_shard(ev.run_id, shard.number, pa.table(columns),
                      {"shard": shard.number, "stats": out.stats, "notes": out.notes, "seconds": seconds,
                       "written": now()})
    return out.notes


def _check_values(values: dict[str, Tensor], n: int, family: str) -> None:
    for name, value in values.items():
        if not isinstance(value, Tensor) or value.ndim != 1 or len(value) != n:
            raise BenchError(f"threat {family} returned column {name!r} with shape "
                             f"{tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__}, "
                             f"not one value per point ({n})", "this is a bug in the threat family")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise BenchError(f"threat {family} returned non-finite values in column {name!r}",
                             "check the threat card's parameters; if they are sound, this is a bug in the family")


def execute(ev: Evaluation, shards: list[Shard], store: Store, *, progress: bool, desc: str) -> list[str]:
    """Run every shard not yet written; shards another process is computing are waited for, not redone."""
    done = {s.number for s in shards if store.shard_done(ev.run_id, s.number)}
    bar = tqdm(total=sum(len(s.indices) for s in shards), disable=not progress, desc=desc, unit="pt",
               initial=sum(len(s.indices) for s in shards if s.number in done), dynamic_ncols=True)
    notes: dict[str, None] = {}
    waiting = []
    for wait, todo in ((False, [s for s in shards if s.number not in done]), (True, waiting)):
        for shard in todo:
            with store.claim(ev.run_id, shard.number, wait=wait) as mine:
                if mine:
                    new = run_shard(ev, shard, store)
                    if new and not notes.keys() >= set(new):
                        bar.write("\n".join(n for n in dict.fromkeys(new) if n not in notes))
                    notes.update(dict.fromkeys(new))
                elif not wait and not store.shard_path(ev.run_id, shard.number).is_file():
                    waiting.append(shard)  # another process holds it
                    continue
            bar.update(len(shard.indices))
    bar.close()
    return list(notes)


# --- what is evaluated ---------------------------------------------------------------------------------


@dataclass
class Subject:
    """The model side of a run before anything is built: a card or a bare module, and its task."""

    card: ModelCard | None
    module: nn.Module | None
    name: str
    task: Task


def _subject(model: str | Path | ModelCard | nn.Module, task: str | None, model_name: str | None) -> Subject:
    if isinstance(model, nn.Module):
        return Subject(None, model, model_name or "module", TASKS.get(task or "classifier"))
    card = model if isinstance(model, ModelCard) else load_model_card(model)
    if task is not None and task != card.task:
        raise BenchError(f"model card {card.id} is a {card.task} card, not {task}", "drop task= for a card")
    return Subject(card, None, card.id, TASKS.get(card.task))


def _dataset(name: str | None, x: Tensor | None, y: Tensor | None, data_root) -> Dataset:
    if x is not None:
        return from_tensors(x, y, name=name or "tensors")
    if name is None:
        raise BenchError("no dataset given for a bare nn.Module", "pass dataset='mnist' (or x=images, y=labels)")
    return load_dataset(name, "test", data_root)


def _check_pairing(subject: Subject, card: ThreatCard, threat: Threat, data: Dataset) -> None:
    """Refuse a threat for another task or dataset before anything is built or trained."""
    accepted = type(threat).tasks
    if subject.task.name not in accepted:
        raise BenchError(f"threat {card.id} ({card.family}) evaluates {' or '.join(accepted)} models, but "
                         f"{subject.name} is a {subject.task.name} model",
                         f"`bench threats --task {subject.task.name}` lists the threats for it")
    if card.datasets and data.name not in card.datasets:
        raise BenchError(f"threat {card.id} is defined for {', '.join(card.datasets)}, not {data.name}",
                         "pick a threat card for this dataset (`bench threats` lists them)")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("bench", "pyautoattack"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def _identify_module(module: nn.Module, task: Task, data: Dataset, positions: Tensor,
                     device: torch.device) -> tuple[str, list[str]]:
    from bench.identity import module_hash

    probe_x = data.x[positions[:8]].to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        outputs = [task.probe(module, probe_x) for _ in range(2)]
    digest, deterministic = module_hash(module, None if outputs[0] is None else outputs)
    notes = [] if deterministic else ["the model's outputs differ between two identical calls (randomness in its "
                                      "forward pass): use an attack built for randomized defences (EOT, "
                                      "autoattack-rand), and read single-draw robust accuracy with care"]
    return digest, notes


def _mismatch_notes(store: Store, key: dict[str, Any]) -> list[str]:
    """Say when an earlier run differs from this one only in batch size or device (it cannot be resumed)."""
    same = ("model", "protocol", "dataset", "n", "seed")
    notes = []
    for run_id in store.run_ids():
        other = store.run_meta(run_id).get("key", {})
        if all(other.get(k) == key[k] for k in same) and other != key:
            done = len(store.read_run(run_id, ["index"]).rows)
            notes.append(f"run {run_id} of the same model and protocol used --batch-size {other.get('batch_size')} "
                         f"on {other.get('device')} ({done} of {other['n']} points done); this run uses --batch-size "
                         f"{key['batch_size']} on {key['device']}, which changes rows, so it is a separate run "
                         "(use that run's settings to resume or reuse it)")
    return notes


def _positions(data: Dataset, tensors: bool, n: int | None) -> Tensor:
    """The evaluation points: the first n of the fixed subset of a split (default 1000, or the whole split if
    smaller), or of the caller's tensors in their order (default all)."""
    if not tensors:
        return subset_indices(len(data), min(1000, len(data)) if n is None else n)
    if n is None or 0 < n <= len(data):
        return torch.arange(len(data))[:n]
    raise BenchError(f"n={n} is not between 1 and the {len(data)} images in x", f"pass n={len(data)} or less")


def plan_run(model: str | Path | ModelCard | nn.Module, threat: str | Path | ThreatCard, *,
             dataset: str | None = None, x: Tensor | None = None, y: Tensor | None = None, n: int | None = None,
             seed: int = 0, device: str | None = "auto", batch_size: int = 500, results: str | Path | None = None,
             data_root: str | Path | None = None, model_name: str | None = None, task: str | None = None,
             trust_code: tuple[str, ...] = ()) -> tuple[Evaluation, RunPlan, list[str]]:
    """Resolve the model, threat and data, check that they fit before anything is built or trained, build
    the model, and plan the run: (what its shards run against, the plan, notes for the user)."""
    if batch_size <= 0:
        raise BenchError(f"--batch-size must be positive, got {batch_size}", "pass e.g. --batch-size 256")
    if not 0 <= seed <= MAX_SEED:
        raise BenchError(f"--seed must be between 0 and {MAX_SEED}, got {seed}", "pass a smaller seed")
    subject = _subject(model, task, model_name)
    name = dataset or (subject.card.dataset if subject.card else None)
    threat_card, chosen = resolve_threat(threat, dataset=name or ("tensors" if x is not None else None),
                                         task=subject.task.name)
    if name is None and x is None and len(threat_card.datasets) == 1:
        name = threat_card.datasets[0]
    data = _dataset(name, x, y, data_root)
    threat_card, threat_obj = make_threat(threat_card)
    _check_pairing(subject, threat_card, threat_obj, data)
    dev = _module_device(subject.module, device) if subject.module is not None else resolve_device(device)
    positions = _positions(data, x is not None, n)
    notes = [f"threat {threat}: the family's default card for {data.name} is {threat_card.id}"] if chosen else []
    if subject.card is not None:
        from bench.models import create

        net = create(subject.card, device=dev, results=results, trust_code=trust_code)
        model_hash = subject.card.hash
    else:
        net = subject.module
        if next(net.parameters(), torch.zeros(0)).dtype == torch.float64:
            raise BenchError("the model's parameters are float64; bench evaluates float32 models",
                             "convert it with model.float()")
        model_hash, module_notes = _identify_module(net, subject.task, data, positions, dev)
        notes += module_notes
    key = {"model": model_hash, "protocol": threat_card.hash, "dataset": data.identity, "n": len(positions),
           "seed": seed, "batch_size": batch_size, "device": dev.type}
    run_id = canonical_hash(key)[:16]
    meta = {"store_version": STORE_VERSION, "run_id": run_id, "key": key, "model_id": subject.name,
            "model_card": subject.card.model_dump(mode="json") if subject.card else None,
            "threat_id": threat_card.id, "threat_card": threat_card.model_dump(mode="json"),
            "family": threat_card.family, "task": subject.task.name, "dataset": data.name,
            "metrics": [m.to_dict() for m in threat_obj.metrics_for(subject.task)],
            "headline": threat_obj.headline_for(subject.task), "device": str(dev),
            "threads": torch.get_num_threads(), "versions": _versions(), "created": now()}
    ev = Evaluation(run_id, Target(net, subject.card, subject.task, data.num_classes), threat_obj, data, dev)
    return ev, RunPlan(run_id, meta, plan_shards(positions, seed, batch_size)), notes


def evaluate(model: str | Path | ModelCard | nn.Module, threat: str | Path | ThreatCard, *,
             results: str | Path | None = None, progress: bool = True, **options: Any) -> Summary:
    """Evaluate a model card (or a bare ``nn.Module``) against a threat card or family: the local
    executor of ``plan_run``'s plan. Rerunning it resumes; its summary reads only this run's rows.

    Options (see ``plan_run``): ``dataset``, or the tensors ``x``, ``y`` a caller holds (identified by their
    content; ``dataset`` then names what they are, for the threat's dataset check); ``n`` points (the first
    n of the fixed evaluation subset, default 1000, or of ``x`` in its order, default all); ``seed``,
    ``device``, ``batch_size``, ``data_root``; ``model_name`` and ``task`` for a bare module (a classifier
    unless told otherwise); ``trust_code``: packages whose code an entry-point card may run.
    """
    ev, plan, notes = plan_run(model, threat, results=results, **options)
    store = Store(results)
    notes += _mismatch_notes(store, plan.meta["key"])
    store.open_run(plan.run_id, plan.meta)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    net = ev.target.module
    was_training = net.training
    net.eval()
    try:
        execute(ev, plan.shards, store, progress=progress, desc=f"{plan.meta['model_id']} x {plan.meta['threat_id']}")
    finally:
        net.train(was_training)
    summary = summarize(store, plan.run_id)
    summary.notes = list(dict.fromkeys(notes + summary.notes))
    return summary


# --- summaries -----------------------------------------------------------------------------------------


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
