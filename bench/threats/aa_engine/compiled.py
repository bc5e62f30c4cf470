"""The attacks' model compiled (opt-in ``compile`` in an ``engine: bench`` card): ``torch.compile`` with fixed
shapes, each call padded to one of a few row counts (buckets). The engine's batches shrink as points are broken,
so unpadded they would come in as many shapes as there are counts of points left, each a new compilation (and on
CUDA, with ``reduce-overhead``, a new CUDA graph); padded, a run compiles at most one graph per bucket and grad
mode. Like lower precision it only steers the search: the plain model decides every point."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile's; reduce-overhead replays CUDA graphs
SMALLEST = 16  # rows: below this a pass costs the same on a GPU whatever its rows
RECOMPILE_LIMIT = 64  # dynamo's default (8) is fewer than buckets x grad modes: beyond it calls run uncompiled
BACKEND = "inductor"


def bucket(rows: int) -> int:
    """The padded row count of a call with ``rows`` rows: the next of 16, 24, 32, 48, 64, 96, ... (powers of two
    and one and a half times them), so at most a third of the rows computed are padding (on a power-of-two grid:
    up to half), and 4096 rows, a GPU's largest batch here, take 17 buckets."""
    if rows <= SMALLEST:
        return SMALLEST
    power = 1 << (rows - 1).bit_length()
    return power * 3 // 4 if power * 3 // 4 >= rows else power


class _Pad(torch.autograd.Function):
    """``x`` followed by copies of its last row up to ``size`` rows (a real input, so a model that normalises per
    row meets no zero image; zeros only after an empty batch); the backward pass returns a copy of the real rows'
    gradient, never a view of the compiled backward's output, which a CUDA graph's next replay overwrites."""

    @staticmethod
    def forward(ctx, x: Tensor, size: int) -> Tensor:
        ctx.rows = len(x)
        last = x[-1:] if len(x) else x.new_zeros(1, *x.shape[1:])
        return torch.cat([x, last.expand(size - len(x), *x.shape[1:])])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad[:ctx.rows].clone(), None


class Bucketed(nn.Module):
    """``inner`` called on every batch padded to its bucket; the real rows' outputs returned as a copy (a CUDA
    graph's outputs live in memory its next replay overwrites). Each row's output is the inner model's for that
    row: the padding rows are dropped, and in a model that treats rows independently they touch nothing else."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        padded = _Pad.apply(x, bucket(len(x)))
        torch.compiler.cudagraph_mark_step_begin()  # earlier outputs were copied out: their memory may be reused
        with warnings.catch_warnings():  # dynamo reads .grad of every input it traces: benign on a padded one
            warnings.filterwarnings("ignore", "The .grad attribute of a Tensor that is not a leaf", UserWarning)
            return self.inner(padded)[:len(x)].clone()


class _Held(nn.Module):
    """The model inside a module of the engine's own: ``torch.compile`` marks the module it compiles (an attribute
    set on it), and the user's model must stay as it was, since its attributes are part of its identity."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def compiled(model: nn.Module, mode: str) -> nn.Module:
    """``model`` compiled with static shapes in ``mode``, called through buckets."""
    if mode not in MODES:
        raise ValueError(f"unknown compile mode {mode!r}: choose from {', '.join(MODES)}")
    options = {"mode": mode} if BACKEND == "inductor" else {}  # the modes are inductor's (tests use lighter backends)
    return Bucketed(torch.compile(_Held(model), dynamic=False, backend=BACKEND, **options))


def recompiles():
    """The run's recompile limit raised above the buckets' count (dynamo's config, restored after)."""
    return torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT)
