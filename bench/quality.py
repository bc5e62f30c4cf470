"""Quality runs of a learned perturbation set: per-pair set-quality metrics written to the store.

``evaluate_quality(cvae, pairs, eps)`` draws seeded pairs (x, x~) on the evaluation subset of the
CVAE's dataset, from the set's own training family (in-family) or from a ``perturbed`` threat
card (e.g. a held-out family), and stores encoder AE, PGD AE, EAE, reconstruction error, KL and
the identity error mse(x, x~) per pair in the store's ``quality`` table. Like classifier runs, a
run is keyed by what defines it, written one shard per batch, and resumed by rerunning it.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import torch
from tqdm.auto import tqdm

from bench.errors import BenchError
from bench.store import Store

METRICS = ("encoder_ae", "pgd_ae", "eae", "recon", "kl", "identity")


@dataclass
class QualitySummary:
    run_id: str
    cvae: str
    pairs: str
    eps: str
    eps_value: float
    n: int
    seed: int
    means: dict[str, float]

    def __str__(self) -> str:
        head = (f"perturbation set {self.cvae}   pairs {self.pairs}   eps {self.eps} = {self.eps_value:.3f}"
                f"   n {self.n}   seed {self.seed}")
        body = "   ".join(f"{k} {v:.4g}" for k, v in self.means.items())
        return f"{head}\nmean per-pixel errors and KL: {body}\nrun {self.run_id}"


def _pairs_spec(cvae_card, pairs: str | None) -> tuple[str, dict]:
    """(label, spec): the set's own training pairs, or those of a ``perturbed`` threat card."""
    if pairs is None or pairs == "in-family":
        return "in-family", dict(cvae_card.recipe.params["pairs"])
    from bench.attacks import load_threat_card

    card = load_threat_card(pairs)
    if card.family != "perturbed":
        raise BenchError(f"--pairs {pairs} is a {card.family} threat, not a perturbed-pairs card",
                         "pass in-family or a perturbed-* threat card (`bench threats` lists them)")
    return card.id, dict(card.params["pairs"])


def evaluate_quality(cvae: str | Path, pairs: str | None = None, *, eps: float | str = "max", n: int = 500,
                     seed: int = 0, device: str | None = "auto", batch_size: int = 250,
                     results: str | Path | None = None, progress: bool = True) -> QualitySummary:
    from bench.data import load_dataset, subset_indices
    from bench.data.pairs import pair_source
    from bench.models.cvae_quality import quality_metrics
    from bench.models.perturbation_set import cvae_card, load_cvae, radius_option, resolve_radius
    from bench.run import batch_seed, resolve_device

    dev = resolve_device(device)
    card = cvae_card(cvae, "bench perturbation quality")
    eps = radius_option(eps)
    label, spec = _pairs_spec(card, pairs)
    source = pair_source(spec, "test", f"pairs {label}")
    model = load_cvae(card, dev)
    eps_value = resolve_radius(card, eps, device=dev)
    data = load_dataset(card.dataset, "test")
    positions = subset_indices(len(data), n)
    key = {"cvae": card.hash, "pairs": spec, "eps": eps, "dataset": data.name, "n": len(positions), "seed": seed}
    run_id = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    store = Store(results, table="quality")
    store.open_run(run_id, {"run_id": run_id, **key, "cvae_id": card.id, "pairs_label": label,
                            "eps_value": eps_value, "device": str(dev),
                            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    done = store.done_indices(run_id)
    bar = tqdm(total=len(positions), disable=not progress, desc=f"quality {card.id} x {label}", unit="pair",
               dynamic_ncols=True)
    for batch, start in enumerate(range(0, len(positions), batch_size)):
        idx = positions[start:start + batch_size]
        if set(idx.tolist()) <= done:
            bar.update(len(idx))
            continue
        gen = torch.Generator().manual_seed(batch_seed(seed, batch))
        x = data.x[idx].to(dev)
        metrics = quality_metrics(model, x, source(x, idx, gen), eps_value, gen)
        table = pa.table({
            "run_id": [run_id] * len(idx), "cvae": [card.id] * len(idx), "cvae_hash": [card.hash] * len(idx),
            "dataset": [data.name] * len(idx), "pairs": [label] * len(idx), "eps": [str(eps)] * len(idx),
            "eps_value": [eps_value] * len(idx), "seed": [seed] * len(idx), "run_n": [len(positions)] * len(idx),
            "index": idx.tolist(), "created": [datetime.now(timezone.utc)] * len(idx),
            **{k: v.cpu().tolist() for k, v in metrics.items()},
        })
        store.write_shard(run_id, batch, table, {"batch": batch})
        bar.update(len(idx))
    bar.close()
    means = store.query(f"SELECT {', '.join(f'avg({m}) AS {m}' for m in METRICS)} FROM rows WHERE run_id = ?",
                        [run_id]).iloc[0]
    return QualitySummary(run_id, card.id, label, str(eps), eps_value, len(positions), seed,
                          {m: float(means[m]) for m in METRICS})
