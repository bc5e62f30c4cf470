"""Shards: a run cut into independent units of work, and the pure step that computes one.

Shard k holds the k-th batch of the run's evaluation points and is attacked as one batch with the seed
``batch_seed(seed, k)``, the same whether the run was interrupted or not, and whichever process or
machine computes it. ``compute_shard`` returns the shard's rows and what the threat said about them;
``run_shard`` also writes them; ``execute`` runs a run's missing shards in this process. Every executor
(``bench.executors``) is built from these.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import torch
from torch import Tensor
from tqdm.auto import tqdm

from bench.errors import BenchError
from bench.progress import listening
from bench.spec import Evaluation
from bench.store import VOLATILE, Store, now
from bench.threats import Batch


SEED_STRIDE = 1_000_003  # more shards than a run can have, so no two (seed, batch) pairs share a seed


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch k of a run: the same whether the run was interrupted or not, and never another
    (seed, batch)'s (no modulus: one would make the largest seed repeat seed 0)."""
    if not 0 <= batch < SEED_STRIDE:
        raise BenchError(f"a run has at most {SEED_STRIDE - 1} batches, this one needs batch {batch}",
                         "pass a larger --batch-size")
    return seed * SEED_STRIDE + batch


@dataclass(frozen=True)
class Shard:
    """One independent unit of a run: positions in the split, attacked as one batch with ``seed``."""

    number: int
    indices: tuple[int, ...]
    seed: int


def plan_shards(positions: Tensor, seed: int, batch_size: int) -> list[Shard]:
    points = positions.tolist()
    return [Shard(k, tuple(points[start:start + batch_size]), batch_seed(seed, k))
            for k, start in enumerate(range(0, len(points), batch_size))]


def shards_of(ev: Evaluation) -> list[Shard]:
    return plan_shards(ev.positions, ev.spec.seed, ev.spec.batch_size)


def compute_shard(ev: Evaluation, shard: Shard) -> tuple[pa.Table, dict[str, Any]]:
    """One shard's rows (one per evaluation point) and its info: stats, notes, seconds."""
    table, info, _ = attack_shard(ev, shard)
    return table, info


def attack_shard(ev: Evaluation, shard: Shard) -> tuple[pa.Table, dict[str, Any], Tensor | None]:
    """``compute_shard``, plus the inputs each point was last classified on (None where the threat makes no
    adversarial inputs)."""
    start = time.perf_counter()
    idx = torch.tensor(shard.indices)
    x, y = ev.data.x[idx].to(ev.device), ev.data.y[idx].to(ev.device)
    target = replace(ev.target, module=ev.target.task.guarded(ev.target.module, ev.spec.model["id"]))
    clean = target.task.clean_pass(target.module, x, y, target.num_classes)
    batch = Batch(x, y, idx, shard.seed, clean, run_seed=ev.spec.seed)
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
    info = {"shard": shard.number, "stats": out.stats, "notes": out.notes, "seconds": seconds, "written": now()}
    return pa.table(columns), info, None if out.inputs is None else out.inputs.detach().cpu()


def _check_values(values: dict[str, Tensor], n: int, family: str) -> None:
    for name, value in values.items():
        if not isinstance(value, Tensor) or value.ndim != 1 or len(value) != n:
            raise BenchError(f"threat {family} returned column {name!r} with shape "
                             f"{tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__}, "
                             f"not one value per point ({n})", "this is a bug in the threat family")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise BenchError(f"threat {family} returned non-finite values in column {name!r}",
                             "check the threat card's parameters; if they are sound, this is a bug in the family")


def run_shard(ev: Evaluation, shard: Shard, store: Store, *, save_inputs: bool = False) -> list[str]:
    """Compute one shard and write its rows (and, with ``save_inputs``, the adversarial inputs beside them);
    returns the notes the threat made on it."""
    table, info, inputs = attack_shard(ev, shard)
    if save_inputs:
        store.write_inputs(ev.run_id, shard.number, table.column("index").to_pylist(), _inputs_of(inputs, ev))
    store.write_shard(ev.run_id, shard.number, table, info)
    return info["notes"]


def _inputs_of(inputs: Tensor | None, ev: Evaluation) -> Tensor:
    if inputs is None:
        raise BenchError(f"threat family {ev.spec.threat['card']['family']} makes no adversarial inputs to save",
                         "leave out --save-adv for this threat")
    return inputs


def add_inputs(ev: Evaluation, shard: Shard, store: Store) -> None:
    """Save the adversarial inputs of a shard written without them: recomputed, and kept only if the
    recomputed rows are the stored ones (else the inputs would not be what the rows scored)."""
    table, _, inputs = attack_shard(ev, shard)
    stored = store.read_shard(ev.run_id, shard.number).drop_columns(sorted(VOLATILE))
    if not stored.equals(table.drop_columns(sorted(VOLATILE))):
        raise BenchError(f"recomputing shard {shard.number} of run {ev.run_id} to save its adversarial inputs gave "
                         "other rows than the stored ones, so they would not be the inputs that were scored",
                         "save them in a fresh run (another --results folder or --seed), and report the "
                         "nondeterminism")
    store.write_inputs(ev.run_id, shard.number, table.column("index").to_pylist(), _inputs_of(inputs, ev))


def execute(ev: Evaluation, shards: list[Shard], store: Store, *, progress: bool, desc: str,
            save_inputs: bool = False) -> list[str]:
    """Run every shard not yet written, in this process; shards another process is computing are waited for,
    not redone (if that process dies, its lock goes with it and the shard is computed here). With
    ``save_inputs``, a shard written earlier without its adversarial inputs gets them (``add_inputs``)."""
    done = {s.number for s in shards if store.shard_done(ev.run_id, s.number)}
    bar = tqdm(total=sum(len(s.indices) for s in shards), disable=not progress, desc=desc, unit="pt",
               initial=sum(len(s.indices) for s in shards if s.number in done), dynamic_ncols=True)
    notes: dict[str, None] = {}
    waiting = []
    net = ev.target.module
    was_training = net.training
    net.eval()
    try:
        for shard in (s for s in shards if save_inputs and s.number in done):
            if not store.inputs_done(ev.run_id, shard.number):
                bar.set_postfix_str(f"saving the adversarial inputs of shard {shard.number}, written without them")
                add_inputs(ev, shard, store)
        for wait, todo in ((False, [s for s in shards if s.number not in done]), (True, waiting)):
            for shard in todo:
                with store.claim(ev.run_id, shard.number, wait=wait) as mine:
                    if mine:
                        with listening(lambda text, k=shard.number: bar.set_postfix_str(
                                f"shard {k + 1}/{len(shards)}: {text}")):
                            new = run_shard(ev, shard, store, save_inputs=save_inputs)
                        if new and not notes.keys() >= set(new):
                            bar.write("\n".join(n for n in dict.fromkeys(new) if n not in notes))
                        notes.update(dict.fromkeys(new))
                    elif not wait and not store.shard_path(ev.run_id, shard.number).is_file():
                        waiting.append(shard)  # another process holds it
                        continue
                bar.update(len(shard.indices))
    finally:
        net.train(was_training)
        bar.close()
    return list(notes)
