"""The run driver: ``evaluate(model, threat)`` plans a run, trains what it needs (a separate step, under a
lock), fixes its spec (``bench.spec``), hands its missing shards to an executor (``bench.executors``) and
summarises it, writing ``summary.json`` once it is complete.

A run is identified by everything that changes its rows (its spec's key): the model's hash and trained
weights, the threat's protocol hash, the dataset's identity, n, the seed, the batch size (batch k is
attacked as one batch with seed f(seed, k)), the numerics and the implementation identity. Rerunning a
command resumes it: finished shards are skipped, so no row is lost or counted twice, and a resumed run
equals an uninterrupted one. Two processes running the same run split its shards between them. A run
made by other code, on other numerics or with a different batch size is never resumed or reused: the
new run says why it starts afresh.
"""
from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from bench.errors import BenchError
from bench.executors import Executor, make_executor, worker_devices
from bench.implementation import differences
from bench.models.card import ModelCard
from bench.spec import Plan, RunSpec, build, plan, spec_of, threat_references
from bench.store import STORE_VERSION, Store, now
from bench.summary import Summary, stored_summary, summarize, write_summary
from bench.threats import ThreatCard


Consent = Callable[[list[ModelCard]], bool]


def prepare(p: Plan, *, results: str | Path | None = None, train: bool | Consent = True,
            progress: bool = True) -> None:
    """Train every card the run builds that has no weights yet (the model, its parts, the cards the threat
    names), before its spec is fixed: the spec holds the trained weights' sha256. What will be trained is said
    first; ``train`` False (or a consent callback answering no) refuses instead of training."""
    from bench.training import TrainingNeeded, ensure_trained, plan_text, training_plan

    cards = ([p.subject.card] if p.subject.card is not None else []) + threat_references(p.threat)
    todo = training_plan(cards)
    if todo and (train is False or (callable(train) and not train(todo))):
        raise TrainingNeeded(todo)
    if todo and progress and not callable(train):
        print(f"training first (not in the cache, none shipped): {plan_text(todo)}; the run resumes it if "
              "interrupted, and --no-train (train=False) refuses instead", file=sys.stderr)
    for card in cards:
        ensure_trained(card, device=p.device, data_root=p.data_root, results=results)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("bench", "pyautoattack"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def run_meta(spec: RunSpec, p: Plan) -> dict[str, Any]:
    """What ``run.json`` records: the spec (from which any worker rebuilds the run), its key, and what the
    board shows without reading rows."""
    task = p.subject.task
    return {"store_version": STORE_VERSION, "run_id": spec.run_id, "key": spec.key, "spec": spec.to_dict(),
            "model_id": p.subject.name, "model_card": spec.model["card"], "threat_id": p.threat_card.id,
            "threat_card": spec.threat["card"], "family": p.threat_card.family, "task": task.name,
            "dataset": p.data.name, "metrics": [m.to_dict() for m in p.threat.metrics_for(task)],
            "headline": p.threat.headline_for(task), "device": str(p.device),
            "threads": spec.numerics.get("threads"), "versions": _versions(), "created": now()}


SAME_QUESTION = ("model", "protocol", "dataset", "n", "seed")
OPTIONS = {"batch_size": "--batch-size", "numerics.threads": "--threads", "numerics.device": "--device"}


def earlier_runs(store: Store, key: dict[str, Any]) -> list[str]:
    """Notes on stored runs of the same model, protocol, data, n and seed that this run cannot resume or reuse,
    and why: other code (stale), other numerics, other trained weights or another batch size."""
    notes = []
    for run_id in store.run_ids():
        try:
            other = store.run_meta(run_id).get("key", {})
        except BenchError:
            continue
        if any(other.get(k) != key[k] for k in SAME_QUESTION) or other == key:
            continue
        if "implementation" not in other:
            notes.append(f"run {run_id} of the same model and protocol was written by an older bench; this run "
                         "recomputes it with the current code")
            continue
        why = [next((d.replace(f"{name}:", option, 1) for name, option in OPTIONS.items()
                     if d.startswith(f"{name}:")), d)
               for d in differences({k: other.get(k) for k in key if k not in SAME_QUESTION},
                                    {k: v for k, v in key.items() if k not in SAME_QUESTION}, ("there", "here"))]
        # another engine, not another revision of the same one
        engine = any(d.startswith(("implementation.family.engine:", "implementation.family.engine.name")) for d in why)
        stale = any(d.startswith("implementation.") for d in why)
        whose = (" and that one was computed by the family's other engine" if engine
                 else " and that one is stale (made by other code)" if stale else "")
        notes.append(f"run {run_id} of the same model and protocol differs ({'; '.join(why)}), so this is a separate "
                     f"run{whose}; use that run's settings to resume or reuse it")
    return notes


def evaluate(model: str | Path | ModelCard | nn.Module, threat: str | Path | ThreatCard, *,
             results: str | Path | None = None, progress: bool = True, executor: str | Executor = "local",
             workers: int | None = None, address: str | None = None, trust_code: tuple[str, ...] = (),
             dataset: str | None = None, x: Tensor | None = None, y: Tensor | None = None, n: int | None = None,
             seed: int = 0, device: str | None = "auto", batch_size: int = 500, threads: int | None = None,
             data_root: str | Path | None = None, model_name: str | None = None, task: str | None = None,
             train: bool | Consent = True, eps: float | str | None = None, norm: str | None = None,
             save_adv: bool = False) -> Summary:
    """Evaluate a model card (or a bare ``nn.Module``) against a threat card or family. Rerunning it resumes;
    its summary reads only this run's rows.

    ``dataset``, or the tensors ``x``, ``y`` a caller holds (identified by their content; ``dataset`` then names
    what they are, for the threat's dataset check); ``n`` points (the first n of the fixed evaluation subset,
    default 1000, or of ``x`` in its order, default all); ``seed``, ``device``, ``batch_size``, ``threads``
    (CPU threads, part of the run's numerics), ``data_root``; ``model_name`` and ``task`` for a bare module (a
    classifier unless told otherwise); ``trust_code``: packages whose code an entry-point card may run.
    ``executor``: ``local`` (this process), ``processes`` (``workers`` processes, one per GPU on CUDA) or
    ``ray`` (a Ray cluster at ``address``), or an ``Executor`` made with options of its own. ``train``: what
    the run needs trained first is trained (and said, with its cost); False refuses instead, and a callback
    given the cards to train decides. ``eps`` (a number or a fraction such as "8/255") and ``norm`` (Linf, L2,
    L1) run the threat at that ball, on any dataset the model takes: a card derived from the named card or family,
    with its own id and protocol hash (``bench.threats.override``). ``save_adv``: store each point's adversarial
    input beside its rows (``bench.adversarial.saved_inputs`` reads them back; local executor only).
    """
    p = plan(model, threat, dataset=dataset, x=x, y=y, n=n, seed=seed, device=device, batch_size=batch_size,
             threads=threads, data_root=data_root, model_name=model_name, task=task, eps=eps, norm=norm)
    p.threat.ready()
    devices = worker_devices(p.device, workers) if executor == "processes" else []
    if executor == "processes" and p.device.type == "cpu" and p.threads is None:
        p.threads = max(1, (os.cpu_count() or 1) // len(devices))  # the workers share the cores
    prepare(p, results=results, train=train, progress=progress)
    spec = spec_of(p)
    store = Store(results)
    notes = p.notes + earlier_runs(store, spec.key)
    store.open_run(spec.run_id, run_meta(spec, p))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    local = build(spec, device=p.device, module=p.subject.module, data=p.data, trust_code=trust_code) \
        if executor == "local" else None
    runner = executor if isinstance(executor, Executor) else \
        make_executor(executor, evaluation=local, devices=devices, address=address, trust_code=trust_code)
    start = time.perf_counter()
    runner.execute(spec, store, progress=progress, desc=f"{p.subject.name} x {p.threat_card.id}",
                   save_inputs=save_adv)
    summary = summarize(store, spec.run_id)
    if summary.complete and stored_summary(store, spec.run_id) is None:  # a rerun keeps its date and time taken
        write_summary(store, summary, time.perf_counter() - start)
    summary.notes = list(dict.fromkeys(notes + summary.notes))
    return summary

