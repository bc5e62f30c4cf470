"""``bench perf``'s processes: each engine measured (``bench.threats.aa_engine.perf``) in a fresh spawned process
on the card's model and the suite's evaluation points, so that its memory peak and warm caches are its own."""
from __future__ import annotations

import math
import multiprocessing

import torch
from torch import Tensor, nn

from bench.threats.aa_engine.perf import Measure, Rates, measure


def _child(engine: str, *, card: str, n: int, norm: str, eps: float, version: str, attacks: list[str] | None,
           device: str, threads: int, repeats: int, batch_size: int | None):
    """One engine measured in its own process (spawned: nothing measured before shares its memory peak)."""
    torch.set_num_threads(threads)
    try:
        model, x, y = load_points(card, n, device)
        return measure(engine, model, x, y, norm=norm, eps=eps, version=version, attacks=attacks,
                       repeats=repeats, batch_size=batch_size)
    except Exception as err:  # reported in the table, not raised: one engine missing must not hide the others
        return Measure(engine, math.nan, 0, n, Rates([], [], []), 0, error=f"{type(err).__name__}: {err}")


def load_points(card: str, n: int, device: str) -> tuple[nn.Module, Tensor, Tensor]:
    """The card's model (trained weights from the cache or shipped; never trained here) and the first ``n`` points
    of the suite's evaluation subset."""
    from bench.run import prepare
    from bench.spec import build, plan, spec_of
    from bench.testing import threat_card

    p = plan(card, threat_card("clean"), n=n, device=device)
    prepare(p, train=False, progress=False)
    ev = build(spec_of(p), device=p.device)
    x, y = ev.data.x[ev.positions[:n]], ev.data.y[ev.positions[:n]]
    return ev.target.module.eval(), x.to(ev.device), y.to(ev.device)


def perf(card: str, engines: list[str], *, n: int, norm: str, eps: float, version: str, device: str,
         threads: int, attacks: list[str] | None = None, repeats: int = 1, batch_size: int | None = None
         ) -> list[Measure]:
    """Each engine in a fresh spawned process, one after the other (never two at once on the same cores), timed
    ``repeats`` times there."""
    context = multiprocessing.get_context("spawn")
    options = dict(card=card, n=n, norm=norm, eps=eps, version=version, attacks=attacks, device=device,
                   threads=threads, repeats=repeats, batch_size=batch_size)
    out = []
    for engine in engines:
        with context.Pool(1) as pool:
            out.append(pool.apply(_child, (engine,), options))
    return out
