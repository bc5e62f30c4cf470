"""The run loop: resolve model, threat and data; attack in batches; write rows as batches finish.

A run is identified by (model hash, threat protocol hash, dataset, n, seed). Rerunning the same
command resumes: finished batches are skipped, so no row is lost or counted twice. Batch k is
always attacked with seed ``f(seed, k)`` at the same positions, so a resumed run gives the same
rows as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from torch import nn
from tqdm.auto import tqdm

from bench.attacks import Threat, ThreatCard, make_threat
from bench.attacks.base import predict
from bench.data import Dataset, load_dataset, subset_indices
from bench.errors import BenchError
from bench.models import ModelCard, create, load_model_card
from bench.stats import wilson_interval
from bench.store import Store


@dataclass
class Summary:
    run_id: str
    model: str
    threat: str
    threat_hash: str
    dataset: str
    n: int
    seed: int
    clean_acc: float
    robust_acc: float
    robust_ci: tuple[float, float]
    seconds: float
    stats: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    results: str = ""

    @property
    def examples_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "examples_per_s": self.examples_per_s}

    def __str__(self) -> str:
        lo, hi = self.robust_ci
        lines = [
            f"model {self.model}   threat {self.threat} (protocol {self.threat_hash[:12]})   dataset {self.dataset}"
            f"   n {self.n}   seed {self.seed}",
            f"clean accuracy   {self.clean_acc:7.2%}",
            f"robust accuracy  {self.robust_acc:7.2%}   (95% Wilson interval {lo:.2%} - {hi:.2%})",
            f"time             {self.seconds:7.1f} s   ({self.examples_per_s:.1f} examples/s)",
        ]
        if self.stats:
            lines.append("per attack       " + ", ".join(f"{k} {v}" for k, v in self.stats.items()))
        lines += [f"note: {note}" for note in self.notes]
        lines.append(f"results          {self.results} (run {self.run_id})")
        return "\n".join(lines)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise BenchError(f"unknown device {device!r}", "use cpu, cuda, cuda:N or auto") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"device {device} requested but CUDA is not available", "use --device cpu (or auto)")
    return dev


def _module_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """A bare module is evaluated where it lives: bench does not move a caller's module."""
    own = next((p.device for p in model.parameters()), None)
    if own is None:
        return resolve_device(device)
    if device is None or str(device) == "auto":
        return own
    wanted = resolve_device(device)
    if wanted.type != own.type or (wanted.index is not None and wanted != own):
        raise BenchError(f"the model is on {own} but device {wanted} was requested",
                         f"move it first (model.to('{wanted}')) or pass device='{own}'")
    return own


def module_hash(model: nn.Module) -> str:
    """Content identity of a bare module: its class and every tensor in its state dict."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("bench", "pyautoattack"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch k of a run: the same whether the run was interrupted or not."""
    return (seed * 1_000_003 + batch) % (2**31 - 1)


def evaluate(model: str | Path | ModelCard | nn.Module, threat: str | Path | ThreatCard, *,
             dataset: str | None = None, n: int | None = 1000, seed: int = 0, device: str | None = "auto",
             batch_size: int = 500, results: str | Path | None = None, data_root: str | Path | None = None,
             model_name: str | None = None, progress: bool = True) -> Summary:
    """Evaluate a model card (or a bare ``nn.Module``) against a threat card; see the module docstring."""
    dev = _module_device(model, device) if isinstance(model, nn.Module) else resolve_device(device)
    if batch_size <= 0:
        raise BenchError(f"--batch-size must be positive, got {batch_size}", "pass e.g. --batch-size 256")
    threat_card, threat_obj = make_threat(threat)
    if isinstance(model, nn.Module):
        net, model_id, model_meta = model, model_name or "module", {"hash": module_hash(model)}
        dataset = dataset or (threat_card.datasets[0] if len(threat_card.datasets) == 1 else None)
        if dataset is None:
            raise BenchError("no dataset given for a bare nn.Module", "pass dataset='mnist' (or another dataset)")
    else:
        card = model if isinstance(model, ModelCard) else load_model_card(model)
        net, model_id = create(card, device=dev), card.id
        model_meta = {"hash": card.hash, "card": card.model_dump(mode="json")}
        dataset = dataset or card.dataset
    if threat_card.datasets and dataset not in threat_card.datasets:
        raise BenchError(f"threat {threat_card.id} is defined for {', '.join(threat_card.datasets)}, not {dataset}",
                         "pick a threat card for this dataset (`bench threats` lists them)")
    data = load_dataset(dataset, "test", data_root)
    positions = subset_indices(len(data), n)
    threat_hash = threat_card.hash  # validates and serialises the card: compute once
    run_key = {"model": model_meta["hash"], "threat": threat_hash, "dataset": data.name,
               "n": len(positions), "seed": seed}
    run_id = hashlib.sha256(json.dumps(run_key, sort_keys=True).encode()).hexdigest()[:16]
    store = Store(results)
    store.open_run(run_id, {
        "run_id": run_id, **run_key, "model_id": model_id, "model_card": model_meta.get("card"),
        "threat_id": threat_card.id, "threat_card": threat_card.model_dump(mode="json"), "batch_size": batch_size,
        "device": str(dev), "versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    was_training = net.training
    net.eval()
    try:
        _attack_remaining(net, threat_obj, data, positions, store, run_id, dict(
            run_id=run_id, model=model_id, model_hash=model_meta["hash"], threat=threat_card.id,
            threat_hash=threat_hash, family=threat_card.family, dataset=data.name, seed=seed,
            run_n=len(positions)), seed=seed, device=dev, batch_size=batch_size, progress=progress)
    finally:
        net.train(was_training)
    return summarize(store, run_id)


def _attack_remaining(net: nn.Module, threat: Threat, data: Dataset, positions: torch.Tensor, store: Store,
                      run_id: str, constants: dict[str, Any], *, seed: int, device: torch.device,
                      batch_size: int, progress: bool) -> None:
    done = store.done_indices(run_id)
    todo: dict[int, list[int]] = {}
    for pos, index in enumerate(positions.tolist()):
        if index not in done:
            todo.setdefault(pos // batch_size, []).append(index)
    bar = tqdm(total=len(positions), initial=len(positions) - sum(map(len, todo.values())), disable=not progress,
               desc=f"{constants['model']} x {constants['threat']}", unit="pt", dynamic_ncols=True)
    for batch, indices in todo.items():
        start = time.perf_counter()
        idx = torch.tensor(indices)
        x, y = data.x[idx].to(device), data.y[idx].to(device)
        clean_pred = predict(net, x)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            out = threat.attack(net, x, y, clean_pred, batch_seed(seed, batch), idx)
        wrong_but_robust = threat.robust_implies_clean and bool((out.robust & (clean_pred != y)).any())
        if out.robust.shape != y.shape or wrong_but_robust:
            raise BenchError(f"threat {constants['threat']} returned an invalid outcome (wrong shape, or a point "
                             "robust although misclassified when clean)", "this is a bug in the threat family")
        seconds = time.perf_counter() - start
        columns = {
            **{k: [v] * len(idx) for k, v in constants.items()},
            "index": idx.tolist(), "label": y.tolist(), "clean_pred": clean_pred.tolist(),
            "clean_correct": (clean_pred == y).tolist(), "adv_pred": out.adv_pred.tolist(),
            "robust": out.robust.tolist(), "seconds": [seconds / len(idx)] * len(idx),
            "created": [datetime.now(timezone.utc)] * len(idx),
            **{k: v.tolist() for k, v in out.columns.items()},
        }
        store.write_shard(run_id, batch, pa.table(columns), {"batch": batch, "stats": out.stats, "notes": out.notes})
        bar.update(len(idx))
        if out.notes:
            bar.write("\n".join(dict.fromkeys(out.notes)))
    bar.close()


def summarize(store: Store, run_id: str) -> Summary:
    """Summary metrics of one run, from the store (DuckDB over its shards)."""
    row = store.query(
        "SELECT any_value(model) AS model, any_value(threat) AS threat, any_value(threat_hash) AS threat_hash, "
        "any_value(dataset) AS dataset, any_value(seed) AS seed, count(*) AS n, "
        "sum(clean_correct::INT) AS clean, sum(robust::INT) AS robust, sum(seconds) AS seconds "
        "FROM rows WHERE run_id = ?", [run_id]).iloc[0]
    n, robust = int(row.n), int(row.robust)
    stats: dict[str, int] = {}
    notes: dict[str, None] = {}
    for info in store.shard_infos(run_id):
        for key, value in info["stats"].items():
            stats[key] = stats.get(key, 0) + value
        notes.update(dict.fromkeys(info["notes"]))
    return Summary(run_id=run_id, model=row.model, threat=row.threat, threat_hash=row.threat_hash,
                   dataset=row.dataset, n=n, seed=int(row.seed), clean_acc=int(row.clean) / n, robust_acc=robust / n,
                   robust_ci=wilson_interval(robust, n), seconds=float(row.seconds), stats=stats, notes=list(notes),
                   results=str(store.root))
