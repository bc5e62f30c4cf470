"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search"), untargeted, with the margin loss, for Linf, L2 and L1, as the official
AutoAttack package (fra31/auto-attack, ``square.py``) runs it in its ``standard`` version: p_init 0.8, 5,000
queries, one restart, the p schedule not rescaled to the query budget. A point's trajectory follows the official
one step for step: the same initialisation (Linf: vertical stripes of +-eps; L2/L1: a grid of signed "eta"
blocks rescaled to eps, projected onto the L1 ball for L1), the same side-length schedule, the same update
inside one square (L2/L1: a second square emptied to free budget) and the same acceptance rule (keep a candidate
whose margin is lower, or that is misclassified); a point stops being queried once its margin is <= 0, and it
spends one query for the initial point and one per iteration it is still running, as the official counts them.

What differs, on purpose:

- The official draws ONE square position (and one sign per channel, one transposition of the eta pattern) per
  iteration and shares it by the whole batch; here every point draws its own, with the same per-point
  distribution, from ``rng`` keyed by point, so a point's result does not depend on its batch-mates.
- Points already fooled leave the working batch (``index_select`` of the running rows, only when some finish),
  so later iterations spend no forward passes on them.
- The returned point of a point that was not fooled is its best (lowest-margin) iterate, inside the threat
  model and classified correctly; the official returns the clean image there. ``fooled`` is read from the
  logits of the pass that produced the returned point, so no extra pass is spent on it.
- The official crashes when h < 5 (its init block side h // 5 is 0); here the side is at least 1. Init blocks
  that fall partly outside the image are cropped (the official fails on those unless they are wholly outside).
- The candidates are clamped to [0, 1] after the L1 projection too, against float rounding (a no-op otherwise).
- The L1 projection is the exact one (as the official's ``L1_projection``), computed from sorted kinks here.

How much the per-point draws matter: a point's trajectory is a function of its own draws only, in the official
as here, so its chance of being fooled is the same; the official's shared draws only correlate its points'
outcomes (its robust accuracy varies more from seed to seed). Fed our draws, the official's code retraces our
trajectories exactly (``tests/aa_engine/test_square.py``).

Like the official, the caller hands Square only points the model classifies correctly (AutoAttack attacks the
still-robust points); a clean image the model already gets wrong is attacked like any other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from bench.threats.aa_engine import cpu_kernels, rng
from bench.threats.aa_engine.geometry import project_l1

NORMS = ("Linf", "L2", "L1")
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # p halves after each of these iterations
L1_SHRINK = 1.0 - 1e-6  # the official projects onto a radius a hair under eps, so rounding stays inside
TINY = 1e-12  # the official's guard in every normalisation
DRAW_CHUNK = 64  # iterations whose random numbers are drawn at once (a point's draws stay its own)


@dataclass
class SquareResult:
    x_adv: Tensor  # (n, c, h, w): the first misclassified point found, else the best (lowest-margin) one
    fooled: Tensor  # (n,) bool: the model's argmax at x_adv is not y
    queries: Tensor  # (n,) int64: forward passes spent on the point, the init included (the official's n_queries)


def p_schedule(iteration: int, p_init: float = 0.8) -> float:
    """The share of pixels a square covers at this (0-based) iteration: p_init halved after iterations 10, 50,
    200, 500, 1000, 2000, 4000, 6000 and 8000 (the schedule of the paper, not rescaled to the budget)."""
    return p_init / 2 ** sum(iteration > t for t in P_HALVINGS)


def side(iteration: int, norm: str, c: int, h: int, w: int, p_init: float = 0.8) -> int:
    """The square's side: covering a share p of the h*w pixels, at least 1 (Linf) or 3 and odd (L2, L1, whose
    eta pattern needs a centre), and no larger than the image. (p * c*h*w / c in the official's order of float
    operations, so that a value near a rounding tie rounds the same way.)"""
    s = round(math.sqrt(p_schedule(iteration, p_init) * (c * h * w) / c))
    if norm == "Linf":
        s = max(s, 1)
    else:
        s = max(s, 3)
        s += 1 - s % 2
    return min(s, h, w)


@lru_cache(maxsize=64)
def _rectangle(rows: int, cols: int, norm: str) -> Tensor:
    """The official's nested-squares bump on a rows x cols rectangle: squares of radius k = 0, 1, ... around
    (rows // 2, cols // 2), each adding 1 / (k + 1)^2 (L2) or ^4 (L1); unit L2 (or L1) norm. A pixel at
    Chebyshev distance r from the centre is covered by the squares k >= r, so its value is a tail sum."""
    power = 2 if norm == "L2" else 4
    n_squares = max(rows // 2, cols // 2) + 1
    weights = 1.0 / torch.arange(1, n_squares + 1, dtype=torch.float64) ** power
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[r] = sum of weights[r:]
    dist_r = (torch.arange(rows) - rows // 2).abs()
    dist_c = (torch.arange(cols) - cols // 2).abs()
    bump = tail[torch.maximum(dist_r[:, None], dist_c[None, :])]
    return bump / (bump.square().sum().sqrt() if norm == "L2" else bump.abs().sum())


@lru_cache(maxsize=64)
def _eta64(s: int, norm: str) -> Tensor:
    top, bottom = _rectangle(s // 2, s, norm), _rectangle(s - s // 2, s, norm)
    eta = torch.cat([top, -bottom], 0)
    return eta / (eta.square().sum().sqrt() if norm == "L2" else eta.abs().sum())


def eta(s: int, norm: str, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """The s x s update pattern of L2 and L1 (before the official's random transposition): a positive bump on
    the top half and a negative one on the bottom half, of unit L2 (L2) or L1 (L1) norm."""
    return _eta64(s, norm).to(dtype=dtype, device=device)


@lru_cache(maxsize=256)
def _eta_pair(s: int, norm: str, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(2, s*s): eta and its transpose, flattened, on the device (a per-point coin picks the row)."""
    e = eta(s, norm, dtype, device)
    return torch.stack([e.flatten(), e.t().flatten()])


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """The true class's logit minus the largest other one: <= 0 once the point is misclassified (or tied)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - others


def _signs(u: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """+-1 from uniforms: the official's sign(2u - 1), which is 0 with probability 0 (here: never)."""
    return torch.where(u < 0.5, -1.0, 1.0).to(dtype or u.dtype)


def _lp(delta: Tensor, norm: str, dims: tuple[int, ...]) -> Tensor:
    return torch.linalg.vector_norm(delta, 2 if norm == "L2" else 1, dim=dims, keepdim=True)


class _Squares:
    """Per-point s x s squares of a c x h x w image as a few indexing ops: for each side s, tables of the rows
    (columns) a square starting at each row (column) covers, and the flat offsets of its pixels. Masks are 0/1 in
    the images' dtype: on a CPU an image-sized bool mask, and any product or select with it, costs several times
    its float arithmetic."""

    def __init__(self, c: int, h: int, w: int, device: torch.device, dtype: torch.dtype):
        self.c, self.h, self.w, self.device, self.dtype = c, h, w, device, dtype
        self._tables: dict[int, tuple[Tensor, ...]] = {}

    def _for(self, s: int) -> tuple[Tensor, ...]:
        if s not in self._tables:
            def covered(size: int) -> Tensor:  # (size - s + 1, size): [start, position] -> covered
                starts = torch.arange(size - s + 1, device=self.device)[:, None]
                position = torch.arange(size, device=self.device)[None, :]
                return ((position >= starts) & (position < starts + s)).to(self.dtype)

            offsets = (torch.arange(s, device=self.device)[:, None] * self.w
                       + torch.arange(s, device=self.device)[None, :]).flatten()
            self._tables[s] = covered(self.h), covered(self.w), offsets
        return self._tables[s]

    def starts(self, sides: list[int], u: Tensor) -> Tensor:
        """(n, J, k) top/left corners for J iterations whose squares have the sides ``sides``, from k uniforms per
        point and iteration (``u``: (n, J, k)), alternating rows and columns: the official's ``random_int(0, h - s)``,
        floor((h - s) * u), so in [0, h - s - 1] (or 0 when the square fills it). Drawn for a chunk of iterations
        at once: per iteration that leaves a slice, not a handful of small ops."""
        sizes = torch.tensor([self.h, self.w] * 2, device=self.device)[:u.shape[2]]
        highs = sizes[None, :] - torch.tensor(sides, device=self.device)[:, None]  # (J, k)
        return torch.minimum((u * highs).long(), (highs - 1).clamp_min(0))

    def mask(self, s: int, top: Tensor, left: Tensor) -> Tensor:
        """(n, 1, h, w): 1.0 on each point's square, else 0.0."""
        rows, cols = self._for(s)[:2]
        return (rows[top][:, :, None] * cols[left][:, None, :])[:, None]

    def index(self, s: int, top: Tensor, left: Tensor) -> Tensor:
        """(n, c, s*s): the flat (h*w) positions of each point's square, for gather and scatter."""
        flat = (top * self.w + left)[:, None] + self._for(s)[2]
        return flat[:, None, :].expand(-1, self.c, -1)


def _init_linf(x: Tensor, keys: Tensor, eps: float) -> Tensor:
    """Vertical stripes: every column of every channel moved by +-eps."""
    n, c, h, w = x.shape
    signs = _signs(rng.uniform(keys, 0, (c, 1, w)), x.dtype)
    return (x + eps * signs).clamp(0.0, 1.0)


def _init_blocks(x: Tensor, keys: Tensor, norm: str) -> Tensor:
    """The L2/L1 starting direction: a grid of h // 5 sided eta blocks from a centred offset (h // s rows of
    w // s blocks, as the official lays them), each with a random sign per channel and a random transposition."""
    n, c, h, w = x.shape
    s = max(h // 5, 1)
    start = max((h - 5 * s) // 2, 0)
    blocks = [(start + i * s, start + j * s) for i in range(h // s) for j in range(w // s)]
    draws = rng.uniform(keys, 0, (len(blocks), 1 + c))
    pair = _eta_pair(s, norm, x.dtype, x.device).view(2, s, s)
    delta = torch.zeros_like(x)
    for b, (top, left) in enumerate(blocks):
        if top >= h or left >= w:
            continue
        pattern = pair[(draws[:, b, 0] > 0.5).long()][:, None] * _signs(draws[:, b, 1:], x.dtype)[:, :, None, None]
        rows, cols = min(s, h - top), min(s, w - left)
        delta[:, :, top:top + rows, left:left + cols] += pattern[:, :, :rows, :cols]
    return delta


def _to_sphere(x: Tensor, delta: Tensor, eps: float) -> Tensor:
    """L2: the point at distance eps from x in delta's direction, clamped to the box."""
    return (x + delta / (_lp(delta, "L2", (1, 2, 3)) + TINY) * eps).clamp(0.0, 1.0)


def _into_l1(x: Tensor, delta: Tensor, eps: float) -> Tensor:
    return (x + project_l1(x, delta, eps * L1_SHRINK)).clamp(0.0, 1.0)


def _init(x: Tensor, keys: Tensor, norm: str, eps: float) -> Tensor:
    if norm == "Linf":
        return _init_linf(x, keys, eps)
    delta = _init_blocks(x, keys, norm)
    return _to_sphere(x, delta, eps) if norm == "L2" else _into_l1(x, delta, eps)


def _candidate_linf(best: Tensor, low: Tensor, high: Tensor, corner: Tensor, step: Tensor, s: int,
                    squares: _Squares) -> Tensor:
    """One square of each channel pushed to a random face of the Linf ball: best + step (2 eps * sign, per channel)
    there, clipped to the ball and the box (``low``/``high``: x -+ eps clipped to [0, 1], the same bounds in one
    clamp). Only the square's s*s values per channel are computed (gathered, moved, clipped, scattered into a copy
    of ``best``): outside it the clip leaves ``best`` as it is, and most iterations' squares cover a few pixels."""
    index = squares.index(s, corner[:, 0], corner[:, 1])
    flat = best.flatten(2)
    moved = flat.gather(2, index) + step[:, :, None]
    moved = torch.minimum(torch.maximum(moved, low.flatten(2).gather(2, index)), high.flatten(2).gather(2, index))
    return flat.scatter(2, index, moved).view_as(best)


def _candidate_lp(x: Tensor, best: Tensor, corner: Tensor, signs: Tensor, transpose: Tensor, s: int, eps: float,
                  norm: str, squares: _Squares) -> Tensor:
    """L2/L1: empty a second square and give its mass, with the budget left under eps, to the first square,
    whose content becomes its old (normalised) content plus a signed eta pattern; then back onto the sphere (L2)
    or into the L1 ball and the box (L1)."""
    n, c, h, w = x.shape
    index = squares.index(s, corner[:, 0], corner[:, 1])
    second = squares.mask(s, corner[:, 2], corner[:, 3])
    union = torch.maximum(squares.mask(s, corner[:, 0], corner[:, 1]), second)
    delta = best - x
    flat = delta.flatten(2)  # (n, c, h*w)
    old = flat.gather(2, index)  # (n, c, s*s)
    freed = _lp(delta * union, norm, (2, 3)).flatten(2)  # (n, c, 1): per channel, the mass both squares hold
    total = _lp(flat, norm, (1, 2))  # (n, 1, 1)
    new = _eta_pair(s, norm, x.dtype, x.device)[transpose][:, None] * signs[:, :, None]
    new = new + old / (_lp(old, norm, (2,)) + TINY)
    new = new / (_lp(new, norm, (2,)) + TINY)
    if norm == "L2":
        new = new * ((eps ** 2 - total.square()).clamp_min(0.0) / c + freed.square()).sqrt()
    else:
        new = new * ((eps - total).clamp_min(0.0) / c + freed) * c
    delta = (flat * (1.0 - second.flatten(2))).scatter(2, index, new).view_as(x)
    return _to_sphere(x, delta, eps) if norm == "L2" else _into_l1(x, delta, eps)


def _accept(logits: Tensor, y: Tensor, margins: Tensor, best: Tensor, cand: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The official's rule: a candidate replaces the best point where its margin is lower, or <= 0 (misclassified).
    -> (best, margins, finished: margin <= 0)."""
    m = margin(logits, y)
    accept = (m < margins) | (m <= 0)
    margins = torch.where(accept, m, margins)
    return torch.where(accept[:, None, None, None], cand, best), margins, margins <= 0


def run_square(model, x: Tensor, y: Tensor, *, norm: str, eps: float, keys: Tensor, n_queries: int = 5000,
               p_init: float = 0.8) -> SquareResult:
    """Square on every point, with the per-point query count (``square`` returns the rest)."""
    if norm not in NORMS:
        raise ValueError(f"Square supports {', '.join(NORMS)}, not {norm!r}")
    n, c, h, w = x.shape
    device = x.device
    if n == 0:
        return SquareResult(x.clone(), torch.zeros(0, dtype=torch.bool, device=device),
                            torch.zeros(0, dtype=torch.long, device=device))
    squares = _Squares(c, h, w, device, x.dtype)
    with torch.no_grad():
        y = y.to(device=device, dtype=torch.long)
        keys = keys.to(device)
        best = _init(x, rng.derive(keys, "square:init"), norm, eps)
        logits = model(best)
        margins = margin(logits, y)
        x_adv = best.clone()
        fooled = torch.zeros(n, dtype=torch.bool, device=device)
        queries = torch.ones(n, dtype=torch.long, device=device)
        done = margins <= 0
        fooled[done] = logits[done].argmax(1) != y[done]

        active = (~done).nonzero().squeeze(1)
        xs, ys, best, margins = x[active], y[active], best[active], margins[active]
        step_keys = rng.derive(keys, "square:step")[active]
        # Linf's clip bounds, kept with the running rows
        low, high = ((xs - eps).clamp(0.0, 1.0), (xs + eps).clamp(0.0, 1.0)) if norm == "Linf" else (None, None)
        n_corners = 2 if norm == "Linf" else 4  # one square's top and left; L2/L1 also the emptied square's
        # L-inf on a CPU with numba: the candidate in a buffer kept equal to best outside each iteration's square
        fused = norm == "Linf" and cpu_kernels.usable(best)
        cand = best.clone() if fused else None
        finished = torch.empty(len(active), dtype=torch.bool) if fused else None
        for it in range(n_queries):
            if len(active) == 0:
                break
            j = it % DRAW_CHUNK
            if j == 0:  # one hash pass per DRAW_CHUNK iterations (it costs about as much as a forward)
                draws = rng.uniform(step_keys, it // DRAW_CHUNK, (DRAW_CHUNK, n_corners + 1 + c))
                signs = _signs(draws[:, :, n_corners + 1:], x.dtype)
                signs = 2.0 * eps * signs if norm == "Linf" else signs  # Linf's steps
                transposes = (draws[:, :, n_corners] > 0.5).long()
                sides = [side(it + k, norm, c, h, w, p_init) for k in range(DRAW_CHUNK)]
                corners = squares.starts(sides, draws[:, :, :n_corners])
            s = sides[j]
            if fused:
                cpu_kernels.square_linf_propose(cand, low, high, corners, signs, j, s)
            else:
                cand = (_candidate_linf(best, low, high, corners[:, j], signs[:, j], s, squares) if norm == "Linf"
                        else _candidate_lp(xs, best, corners[:, j], signs[:, j], transposes[:, j], s, eps, norm,
                                           squares))
            logits = model(cand)
            if fused:
                stop = cpu_kernels.square_settle(logits, ys, margins, best, cand, corners, j, s, finished)
            else:
                best, margins, finished = _accept(logits, ys, margins, best, cand)
                stop = bool(finished.any())
            if stop:
                rows = active[finished]
                x_adv[rows] = best[finished]
                fooled[rows] = logits[finished].argmax(1) != ys[finished]
                queries[rows] = it + 2
                keep = (~finished).nonzero().squeeze(1)
                active = active[keep]
                xs, ys, best, margins, step_keys, signs, transposes, corners, low, high, cand = (
                    None if t is None else t.index_select(0, keep)
                    for t in (xs, ys, best, margins, step_keys, signs, transposes, corners, low, high,
                              cand if fused else None))
                finished = finished[:len(keep)] if fused else None
        x_adv[active] = best
        queries[active] = 1 + n_queries  # still running: the loop ran to the end
    return SquareResult(x_adv, fooled, queries)


def square(model, x: Tensor, y: Tensor, *, norm: str, eps: float, keys: Tensor, n_queries: int = 5000,
           p_init: float = 0.8) -> tuple[Tensor, Tensor]:
    """-> (x_adv, fooled): x_adv (same shape as x) inside the threat model for every point; fooled (bool, n) where
    model(x_adv).argmax(1) != y."""
    result = run_square(model, x, y, norm=norm, eps=eps, keys=keys, n_queries=n_queries, p_init=p_init)
    return result.x_adv, result.fooled
