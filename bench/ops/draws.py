"""Per-point random draws that do not depend on which points are attacked together.

Two kinds. ``PointDraws`` (keyed by point) gives each point its own generator, seeded by the run's seed and
the point's position in the split: a point's noise then depends on nothing else, not on the batch size, the
number of points evaluated, or which points are attacked with it, so a verdict does not flip between n = 100
and n = 300. ``Draws`` (the families that predate it, kept so their recorded numbers hold):
an attack asks ``Draws`` for noise with a per-point shape. Every draw is made, on the CPU from the shard's
seeded generator, for the whole set of points the attack takes on its own (``total``), and only the rows of
the points attacked now are kept. So attacking a subset (the survivors of an ensemble's earlier members)
gives each point exactly the noise it gets when all are attacked, and a ``Draws`` over every point equals
plain ``torch.rand((total, *shape), generator=gen)``: the standalone draws are unchanged.
"""
from __future__ import annotations

import hashlib

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


def point_seed(seed: int, key: int, stream: str = "") -> int:
    """The seed of one point's generator: a hash of (run seed, point key, stream), so neighbouring points or
    seeds do not get related streams."""
    digest = hashlib.blake2b(f"{seed}:{key}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


class PointDraws(Draws):
    """Draws keyed by point (module docstring): ``keys`` are the points' positions in the split, ``stream``
    tells apart independent uses of one point's noise (e.g. the members of an attack ensemble)."""

    def __init__(self, seed: int, keys: Tensor, stream: str = "", generators: list[torch.Generator] | None = None):
        self.seed, self.keys, self.stream = seed, keys.cpu(), stream
        self.gens = generators if generators is not None else [
            torch.Generator().manual_seed(point_seed(seed, key, stream)) for key in self.keys.tolist()]
        self.gen, self.total, self.rows = None, len(self.keys), None

    @property
    def count(self) -> int:
        return len(self.keys)

    def _draw(self, sample, shape: tuple[int, ...], lead: tuple[int, ...]) -> Tensor:
        if not self.gens:
            return torch.empty((*lead, 0, *shape))
        return torch.stack([sample((*lead, *shape), generator=gen) for gen in self.gens], dim=len(lead))

    def subset(self, rows: Tensor) -> "PointDraws":
        """The draws of the points at ``rows`` (a bool mask or indices), continuing their own streams."""
        rows = rows.cpu()
        rows = torch.nonzero(rows).flatten() if rows.dtype == torch.bool else rows
        return PointDraws(self.seed, self.keys[rows], self.stream, [self.gens[i] for i in rows.tolist()])

    def fork(self, stream: str) -> "PointDraws":
        """Fresh, independent draws for the same points on another stream."""
        return PointDraws(self.seed, self.keys, f"{self.stream}/{stream}")
