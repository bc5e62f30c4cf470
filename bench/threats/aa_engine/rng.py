"""Counter-based random draws keyed by point: a value depends only on (point key, counter, element), never on
which other points share the batch, the batch size or the device.

A per-point ``torch.Generator`` (``bench.ops.draws.PointDraws``) costs a Python call per point and draw, which
Square's 5,000 iterations cannot afford. Here every element is a splitmix64 hash of its point's 63-bit key, the
draw's counter and its index, computed with int64 tensor ops (wrapping multiplication, logical shifts emulated
by masking), so one call draws for every point at once, on CPU or GPU, with the same bits on both.
"""
from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB


def _shr(z: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix(z: Tensor) -> Tensor:
    """splitmix64's finaliser: a bijection of 64-bit words whose output bits all depend on every input bit."""
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def derive(keys: Tensor, stream: str) -> Tensor:
    """Keys for an independent use of the same points' randomness (a stage, a restart, a target class)."""
    salt = int.from_bytes(hashlib.blake2b(stream.encode(), digest_size=8).digest(), "little", signed=True)
    return _mix(keys ^ salt)


def bits(keys: Tensor, counter: int, shape: tuple[int, ...]) -> Tensor:
    """64 random bits per element, shape (len(keys), *shape), on the keys' device."""
    n = math.prod(shape)
    base = _mix(_mix(keys.to(torch.int64)) + _mix(torch.tensor(counter, dtype=torch.int64, device=keys.device)))
    index = torch.arange(n, dtype=torch.int64, device=keys.device)
    return _mix(base[:, None] + _mix(index)[None, :]).reshape(len(keys), *shape)


def uniform(keys: Tensor, counter: int, shape: tuple[int, ...] = (), dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform on [0, 1) (24 bits; exact in float32), shape (len(keys), *shape)."""
    return (_shr(bits(keys, counter, shape), 40).to(torch.float64) * 2.0 ** -24).to(dtype)


def normal(keys: Tensor, counter: int, shape: tuple[int, ...] = (), dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal by Box-Muller from two independent uniform draws (counters ``counter`` and its twin)."""
    u1 = 1.0 - uniform(keys, counter, shape, torch.float64)  # (0, 1]: the log stays finite
    u2 = uniform(derive(keys, "normal"), counter, shape, torch.float64)
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).to(dtype)


def randint(keys: Tensor, counter: int, high: Tensor | int, shape: tuple[int, ...] = ()) -> Tensor:
    """Integers in [0, high) (``high`` a scalar or one bound per point), shape (len(keys), *shape)."""
    u = uniform(keys, counter, shape, torch.float64)
    high = torch.as_tensor(high, device=keys.device).reshape(-1, *([1] * len(shape)))
    return torch.minimum((u * high).floor().to(torch.int64), high - 1)


def point_keys(seed: int, positions: Tensor, stream: str) -> Tensor:
    """The key of each point: its position in the split, the run's seed and the stage's stream."""
    return derive(derive(positions.to(torch.int64), f"seed:{seed}"), stream)
