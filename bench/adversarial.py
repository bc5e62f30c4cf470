"""Adversarial inputs as tensors, as torchattacks users hold them: ``attack(model, threat, x, y)`` returns each
point's adversarial input with its outcome, computed exactly as a run computes its rows (same cards, shards,
seeds and checks), and ``saved_inputs(run_id)`` reads back what ``bench run --save-adv`` stored, so an outside
evaluation can be re-scored on the very inputs a run scored.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch
from torch import Tensor, nn

from bench.errors import BenchError
from bench.models.card import ModelCard
from bench.threats import ThreatCard

__all__ = ["Attacked", "attack", "saved_inputs"]


@dataclass
class Attacked:
    """``x_adv``: per point, the input it was last classified on under the threat (its adversarial example where
    the attack made one, the clean input where it attacked nothing, e.g. a point wrong clean); ``rows``: the
    per-point columns a run stores (``clean_pred``, ``adv_pred``, ``robust``, the family's own)."""

    x_adv: Tensor
    rows: pd.DataFrame

    @property
    def robust(self) -> Tensor:
        return torch.tensor(self.rows["robust"].to_numpy(dtype=bool))

    @property
    def adv_pred(self) -> Tensor:
        return torch.tensor(self.rows["adv_pred"].to_numpy())


def attack(model: str | Path | ModelCard | nn.Module, threat: str | Path | ThreatCard, x: Tensor, y: Tensor, *,
           seed: int = 0, device: str | None = "auto", batch_size: int = 500, threads: int | None = None,
           model_name: str | None = None, dataset: str | None = None, trust_code: tuple[str, ...] = (),
           train: bool = True, eps: float | str | None = None, norm: str | None = None) -> Attacked:
    """Attack the points ``x`` (labels ``y``) and return their adversarial inputs, in the order of ``x`` and on
    its device. Nothing is stored; the same arguments given to ``bench.evaluate`` score the same rows."""
    from bench.executors import spec_threads
    from bench.run import prepare
    from bench.shards import attack_shard, shards_of
    from bench.spec import build, plan, spec_of

    p = plan(model, threat, x=x, y=y, dataset=dataset, seed=seed, device=device, batch_size=batch_size,
             threads=threads, model_name=model_name, eps=eps, norm=norm)
    prepare(p, train=train, progress=False)
    spec = spec_of(p)
    ev = build(spec, device=p.device, module=p.subject.module, data=p.data, trust_code=trust_code)
    tables, inputs = [], []
    net = ev.target.module
    was_training = net.training
    net.eval()
    try:
        with spec_threads(spec):
            for shard in shards_of(ev):
                table, _, x_adv = attack_shard(ev, shard)
                if x_adv is None:
                    raise BenchError(f"threat {p.threat_card.id} ({p.threat_card.family}) makes no adversarial "
                                     "inputs", "use bench.evaluate for its scores")
                tables.append(table)
                inputs.append(x_adv)
    finally:
        net.train(was_training)
    rows = pa.concat_tables(tables).to_pandas().drop(columns=["run_id", "shard", "seconds"])
    return Attacked(torch.cat(inputs).to(x.device), rows)


def saved_inputs(run_id: str, results: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """What ``bench run --save-adv`` stored for a run: the evaluation points' indices into their split, and each
    point's adversarial input, in the run's order (each file checked against its recorded checksum)."""
    from bench.store import Store

    index, x = Store(results).read_inputs(run_id)
    return torch.as_tensor(index), x
