"""Per-point random draws that do not depend on which points are attacked together.

An attack asks ``Draws`` for noise with a per-point shape. Every draw is made, on the CPU from the shard's
seeded generator, for the whole set of points the attack takes on its own (``total``), and only the rows of
the points attacked now are kept. So attacking a subset (the survivors of an ensemble's earlier members)
gives each point exactly the noise it gets when all are attacked, and a ``Draws`` over every point equals
plain ``torch.rand((total, *shape), generator=gen)``: the standalone draws are unchanged.
"""
from __future__ import annotations

import torch
from torch import Tensor


class Draws:
    """``total`` points' draws from ``gen``, keeping ``rows`` (None: all); ``seed`` is the integer ``gen`` was
    seeded with, for a backend that seeds itself (its draws are then its own, not per point)."""

    def __init__(self, gen: torch.Generator, total: int, rows: Tensor | None = None, seed: int | None = None):
        self.gen, self.total, self.rows, self.seed = gen, total, rows, seed

    @property
    def count(self) -> int:
        """How many points are attacked now (the leading size of every draw returned)."""
        return self.total if self.rows is None else len(self.rows)

    def _draw(self, sample, shape: tuple[int, ...], lead: tuple[int, ...]) -> Tensor:
        full = sample((*lead, self.total, *shape), generator=self.gen)
        return full if self.rows is None else full.index_select(len(lead), self.rows)

    def rand(self, shape: tuple[int, ...] = (), lead: tuple[int, ...] = ()) -> Tensor:
        """Uniform [0, 1) of shape (*lead, count, *shape)."""
        return self._draw(torch.rand, tuple(shape), tuple(lead))

    def randn(self, shape: tuple[int, ...] = (), lead: tuple[int, ...] = ()) -> Tensor:
        """Standard normal of shape (*lead, count, *shape)."""
        return self._draw(torch.randn, tuple(shape), tuple(lead))


def as_draws(source: torch.Generator | Draws, count: int) -> Draws:
    """Draws for ``count`` points: ``source`` itself, or a generator's draws over exactly those points."""
    if isinstance(source, Draws):
        if source.count != count:
            raise ValueError(f"draws for {source.count} points used for {count}")
        return source
    return Draws(source, count)
