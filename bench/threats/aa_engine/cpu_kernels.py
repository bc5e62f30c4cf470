"""The engine's per-iteration arithmetic outside the model, fused into CPU kernels (numba): each is one pass over a
row while it sits in the core's cache, where torch makes a dozen or more passes over the whole batch, each bound by
memory. On the project's 2-core CPU, FAB-T's step in torch (about 40 passes) took a third of the stage, as much as
the model's forward pass; APGD's L-inf step (11 passes) about a tenth.

- ``fab_step``: FAB's linearised boundary, the projections of the iterate and of the clean point onto it within
  the box (L-inf and L2), their norms, and the convex combination that is the next iterate. Float64 inside (the
  dot products and the water level's sums), so it is at least as close to the exact step as the torch step
  (``fab.step``); the two agree to float rounding.
- ``fab_record``: FAB's records and pull backs after its check pass (``fab._record``); L-inf bit for bit, the L2
  and L1 distances summed in float64.
- ``apgd_linf_step``: APGD's L-inf step, in the same float operations in the same order as the torch step: bit for
  bit its result.
- ``square_linf_propose``, ``square_settle``: Square's L-inf candidate and its acceptance rule, bit for bit the
  torch steps', but on the squares only: the candidate lives in a buffer kept equal to the best point outside each
  iteration's square, so no iteration copies the batch.

``tests/aa_engine/test_cpu_kernels.py`` holds each to its torch step. Rows are independent, so no result depends
on the thread count. Without numba (``AVAILABLE`` false), or on another device, the engine runs the torch steps;
a run's implementation identity names the kernels (``name``).
"""
from __future__ import annotations

import math
import threading

import numpy as np
import torch
from torch import Tensor

from bench.threats.aa_engine.geometry import DEAD_WEIGHT

try:
    import numba
except ImportError:  # an optional speed-up: the torch steps compute the same things
    numba = None

AVAILABLE = numba is not None
FAB_NORMS = ("Linf", "L2")  # fab_step's; L1's greedy projection stays the torch step's
RECORD_NORMS = ("Linf", "L2", "L1")  # fab_record's, in the order of its norm codes
TINY = np.finfo(np.float64).tiny
_EXPONENT = {4: np.uint32(0x7F800000), 8: np.uint64(0x7FF0000000000000)}  # a float's exponent bits, by its size
DTYPES = (torch.float32, torch.float64)


def name() -> str | None:
    """The kernels' part of the engine's implementation identity: numba's version, or None (the torch steps)."""
    return f"numba {numba.__version__}" if AVAILABLE else None


def usable(x: Tensor) -> bool:
    """Whether the kernels can take ``x``'s tensors: numba present, on the CPU, in float32 or float64."""
    return AVAILABLE and x.device.type == "cpu" and x.dtype in DTYPES


def fab_step(x1: Tensor, x0: Tensor, w: Tensor, f: Tensor, *, norm: str, eta: float, alpha_max: float
             ) -> Tensor | None:
    """FAB's next iterate (``fab.step``) from ``x1`` (points (m, ...); clean points ``x0``; the boundary's value
    ``f`` (m,) and gradient ``w`` (m, d) at ``x1``), or None where the kernel does not apply: another norm or
    device, or a non-finite value in ``w`` or ``f`` (its fast arithmetic assumes finite values; the torch step
    then carries the NaN on as it always has)."""
    if not usable(x1) or norm not in FAB_NORMS:
        return None
    flat1 = _rows(x1)
    out = torch.empty_like(flat1)
    weights, values = _rows(w.to(x1.dtype)).numpy(), f.detach().double().numpy()
    _threads()
    bad = _FAB(flat1.numpy(), _rows(x0).numpy(), weights, values, norm == "Linf", float(eta), float(alpha_max),
               DEAD_WEIGHT, out.numpy(), *_bits(weights), *_bits(values))
    return None if bad else out.view_as(x1)


def fab_record(logits: Tensor, label: Tensor, x1: Tensor, clean: Tensor, idx: Tensor, best: Tensor,
               best_norm: Tensor, *, norm: str, beta: float) -> int | None:
    """FAB's bookkeeping after its check pass (``fab._record``), in place: rows whose ``logits`` argmax is not
    ``label`` are adversarial; where one is nearer ``clean`` than its point's record (``best_norm[idx]``) it
    becomes the record in ``best``, and every one is pulled back towards ``clean`` by ``beta``. Returns how many
    rows were adversarial, or None where the kernel does not apply (nothing touched). Rows run in parallel: each
    has its own record (``idx`` holds no point twice, as in a FAB run)."""
    tensors = (x1, clean, best, best_norm)
    if not (usable(x1) and all(t.dtype == x1.dtype and t.is_contiguous() for t in tensors)
            and logits.dtype == x1.dtype and norm in RECORD_NORMS):
        return None
    _threads()
    return int(_FAB_RECORD(logits.detach().contiguous().numpy(), label.contiguous().numpy(),
                           x1.view(len(x1), -1).numpy(), clean.view(len(clean), -1).numpy(),
                           idx.contiguous().numpy(), best.view(len(best), -1).numpy(), best_norm.numpy(),
                           RECORD_NORMS.index(norm), x1.new_tensor([beta]).numpy()))


def apgd_linf_step(x_adv: Tensor, x_old: Tensor, grad: Tensor, step: Tensor, low: Tensor, high: Tensor,
                   a: float) -> Tensor | None:
    """APGD's L-inf step (``apgd.linf_step``, bit for bit) from ``x_adv`` (previous iterate ``x_old``, gradient
    ``grad``, step size per point ``step``, bounds ``low``/``high``, momentum weight ``a``), or None where the
    kernel does not apply."""
    if not usable(x_adv):
        return None
    flat = _rows(x_adv)
    out = torch.empty_like(flat)
    _threads()
    _APGD(flat.numpy(), _rows(x_old).numpy(), _rows(grad).numpy(), step.detach().to(x_adv.dtype).numpy(),
          _rows(low).numpy(), _rows(high).numpy(), x_adv.new_tensor([a, 1 - a]).numpy(), out.numpy())
    return out.view_as(x_adv)


def apgd_record(logits: Tensor, y: Tensor, loss: Tensor, x_adv: Tensor, grad: Tensor, loss_best: Tensor,
                x_best: Tensor, grad_best: Tensor, prev_loss: Tensor, increases: Tensor) -> tuple[int, Tensor] | None:
    """APGD's bookkeeping after a gradient pass (``apgd._bookkeep``), in place and bit for bit: where ``loss`` beats
    ``loss_best`` the row's iterate, gradient and loss become its best; ``increases`` counts a loss above
    ``prev_loss``, which then takes the loss. Returns (how many rows are fooled, the fooled rows: argmax not
    ``y``), or None where the kernel does not apply (nothing touched)."""
    rows = (x_adv, grad, x_best, grad_best)
    losses = (loss, loss_best, prev_loss, increases)
    if not (usable(x_adv) and all(t.dtype == x_adv.dtype and t.is_contiguous() for t in rows + losses)):
        return None
    fooled = torch.empty(len(x_adv), dtype=torch.bool)
    count = _APGD_RECORD(logits.detach().contiguous().numpy(), y.contiguous().numpy(), loss.numpy(),
                         x_adv.view(len(x_adv), -1).numpy(), grad.view(len(grad), -1).numpy(), loss_best.numpy(),
                         x_best.view(len(x_best), -1).numpy(), grad_best.view(len(grad_best), -1).numpy(),
                         prev_loss.numpy(), increases.numpy(), fooled.numpy())
    return int(count), fooled


def dlr_targeted(logits: Tensor, y: Tensor, target: Tensor) -> tuple[Tensor, Tensor] | None:
    """APGD-T's targeted DLR loss per row (``apgd.dlr_targeted_loss``) and its gradient with respect to the logits,
    both bit for bit what torch's forward and autograd compute, in one call; or None where the kernel does not
    apply: another device or dtype, fewer than 4 classes, or a row where autograd's routing is not decided by the
    values alone (a NaN, the target being the label, or a tie across the sorted positions that get a gradient)."""
    if not usable(logits) or logits.shape[1] < 4:
        return None
    values = logits.detach().contiguous().numpy()
    loss, seed = torch.empty(len(values), dtype=logits.dtype), torch.zeros(values.shape, dtype=logits.dtype)
    undecided = _DLR_TARGETED(values, y.contiguous().numpy(), target.contiguous().numpy(),
                              np.array([0.5, 1e-12, 1.0], dtype=values.dtype), loss.numpy(), seed.numpy())
    return None if undecided else (loss, seed)


def logit_difference(logits: Tensor, y: Tensor, target: Tensor) -> tuple[Tensor, Tensor] | None:
    """FAB-T's boundary value per row, f = logit[target] - logit[y], and its gradient with respect to the logits
    (+1 at the target, -1 at the label: what autograd's gathers give, 0 where they coincide), in one call; or None
    on another device or dtype."""
    if not usable(logits):
        return None
    values = logits.detach().contiguous()
    f, seed = torch.empty(len(values), dtype=values.dtype), torch.zeros_like(values)
    _LOGIT_DIFFERENCE(values.numpy(), y.contiguous().numpy(), target.contiguous().numpy(), f.numpy(), seed.numpy())
    return f, seed


def square_linf_propose(cand: Tensor, low: Tensor, high: Tensor, corners: Tensor, steps: Tensor, j: int, s: int
                        ) -> None:
    """Square's L-inf candidate written into ``cand``, a buffer equal to the best point (``square_settle`` keeps it
    so): on each point's s x s square (top-left ``corners[:, j]``, of (n, J, 2)) moved by ``steps[:, j]`` (of (n,
    J, c)) and clipped to [``low``, ``high``]; bit for bit ``square._candidate_linf``. Only the squares are read
    and written, and the chunk's draws are passed whole (no per-iteration slice or copy)."""
    _SQUARE_PROPOSE(cand.numpy(), low.numpy(), high.numpy(), corners.numpy(), steps.numpy(), j, s)


def square_settle(logits: Tensor, y: Tensor, margins: Tensor, best: Tensor, cand: Tensor, corners: Tensor, j: int,
                  s: int, finished: Tensor) -> int:
    """Square's acceptance after ``square_linf_propose``, in place (bit for bit ``square._accept``): where the
    candidate's margin is lower than ``margins`` or <= 0, its square goes into ``best`` and its margin into
    ``margins``; elsewhere ``cand``'s square is restored from ``best``. ``finished`` (bool, n) gets the points
    whose margin is now <= 0; returns how many."""
    return int(_SQUARE_SETTLE(logits.detach().contiguous().numpy(), y.numpy(), margins.numpy(), best.numpy(),
                              cand.numpy(), corners.numpy(), j, s, finished.numpy()))


def _rows(t: Tensor) -> Tensor:
    return t.detach().reshape(len(t), -1).contiguous()


def _bits(a: np.ndarray) -> tuple[np.ndarray, np.unsignedinteger]:
    """The floats' bit patterns as unsigned integers (same memory) and their exponent mask: a non-finite value has
    every exponent bit set, a test that fast-math arithmetic cannot fold away."""
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64), _EXPONENT[a.dtype.itemsize]


_SET = threading.local()  # numba's thread count is per calling thread, as torch's


def _threads() -> None:
    """numba's threads as torch's (the run's thread count), set only when torch's changed: asking numba costs
    more than a small kernel's call."""
    wanted = torch.get_num_threads()
    if getattr(_SET, "threads", None) != wanted:
        numba.set_num_threads(max(1, min(wanted, numba.config.NUMBA_NUM_THREADS)))
        _SET.threads = wanted


def _water_level(weight, level, need, full, slope):  # pragma: no cover - compiled by numba
    """The row's water level mu (``fab._water_level``): sum_i weight_i * min(mu, level_i) = need, by Newton's
    method from 0 (where the slope is ``slope``) on that concave piecewise-linear equation, exact once the slope
    stops changing; +inf where even every coordinate at its level (``full``) falls short or just reaches it."""
    if need >= full:
        return math.inf
    mu = need / max(slope, TINY)  # the first step, from g(0) = 0
    used = slope
    for _ in range(weight.shape[0]):  # each step before the last passes at least one breakpoint
        slope, filled = 0.0, 0.0
        for i in range(weight.shape[0]):
            above = level[i] > mu
            slope += weight[i] if above else 0.0
            filled += weight[i] * (mu if above else level[i])
        if slope == used:
            break
        mu += max((need - filled) / max(slope, TINY), 0.0)
        used = slope
    return mu


def _max_abs(v):  # pragma: no cover - compiled by numba
    """max |v_i| (exact) over four running maxima: one running maximum waits on each compare, four overlap."""
    a = b = c = e = 0.0
    n = v.shape[0] - v.shape[0] % 4
    for i in range(0, n, 4):
        a = max(a, abs(v[i]))
        b = max(b, abs(v[i + 1]))
        c = max(c, abs(v[i + 2]))
        e = max(e, abs(v[i + 3]))
    for i in range(n, v.shape[0]):
        a = max(a, abs(v[i]))
    return max(max(a, b), max(c, e))


def _fab(x1, x0, w, f, linf, eta, alpha_max, dead, out, wbits, wmask, fbits, fmask
         ):  # pragma: no cover - compiled by numba
    """Per row: both gaps to the hyperplane, the water filling's weights and levels for both points, their water
    levels, the steps and their norms, then alpha and the next iterate (``fab.step``'s arithmetic, in float64).
    ``dead``: ``DEAD_WEIGHT``, an argument so that a cached compilation never holds a stale copy of it. A row whose
    ``w`` or ``f`` holds a non-finite value (``wbits``, ``fbits``: their bits; ``wmask``, ``fmask``: the exponent's)
    is left and counted (the count is returned): the fast arithmetic below assumes finite values."""
    d = x1.shape[1]
    bad = 0
    for r in numba.prange(x1.shape[0]):
        nonfinite = (fbits[r] & fmask) == fmask
        for i in range(d):
            nonfinite |= (wbits[r, i] & wmask) == wmask
        if nonfinite:
            bad += 1
            continue
        a, c, g = x1[r], x0[r], w[r]
        shift = 0.0  # <w, x0 - x1>: the iterate's gap to the hyperplane is f, the clean point's f + shift
        for i in range(d):
            shift += g[i] * (c[i] - a[i])
        gap1, gap0 = f[r], f[r] + shift
        s1, s0 = (-1.0 if gap1 < 0 else 1.0), (-1.0 if gap0 < 0 else 1.0)  # so that <s w, .> has to drop
        # the water filling's weights and levels: a coordinate's room is how far it can go in the direction that
        # lowers <s w, .> (t where s w > 0, else 1 - t); Linf: weight |w|, level room; L2: w^2, room / |w|
        weight, level1, level0 = np.empty(d), np.empty(d), np.empty(d)
        full1, full0, slope1, slope0 = 0.0, 0.0, 0.0, 0.0
        for i in range(d):
            size = abs(g[i])
            room1 = a[i] if s1 * g[i] > 0.0 else 1.0 - a[i]
            room0 = c[i] if s0 * g[i] > 0.0 else 1.0 - c[i]
            if linf:
                wt, lv1, lv0 = size, room1, room0
            else:
                inverse = 1.0 / size if size > dead else 0.0
                wt, lv1, lv0 = (size * size if size > dead else 0.0), room1 * inverse, room0 * inverse
            weight[i], level1[i], level0[i] = wt, lv1, lv0
            full1 += wt * lv1
            full0 += wt * lv0
            slope1 += wt if lv1 > 0.0 else 0.0
            slope0 += wt if lv0 > 0.0 else 0.0
        mu1 = _water_level(weight, level1, abs(gap1), full1, slope1)
        mu0 = _water_level(weight, level0, abs(gap0), full0, slope0)
        # the steps, against the sign of s w (np.sign: no branch to mispredict), kept in the levels' place
        if linf:
            for i in range(d):
                level1[i] = -(min(mu1, level1[i]) * np.sign(s1 * g[i]))
                level0[i] = -(min(mu0, level0[i]) * np.sign(s0 * g[i]))
            n1, n0 = _max_abs(level1), _max_abs(level0)
        else:
            n1, n0 = 0.0, 0.0
            for i in range(d):
                scale = abs(g[i])
                d1 = -((min(mu1, level1[i]) * scale) * np.sign(s1 * g[i]))
                d0 = -((min(mu0, level0[i]) * scale) * np.sign(s0 * g[i]))
                level1[i], level0[i] = d1, d0
                n1, n0 = n1 + d1 * d1, n0 + d0 * d0
            n1, n0 = math.sqrt(n1), math.sqrt(n0)
        n1, n0 = max(n1, 1e-8), max(n0, 1e-8)
        alpha = min(max(n1 / (n1 + n0), 0.0), alpha_max)
        for i in range(d):
            v = (a[i] + eta * level1[i]) * (1.0 - alpha) + (c[i] + eta * level0[i]) * alpha
            out[r, i] = min(max(v, 0.0), 1.0)
    return bad


def _argmax(row):  # pragma: no cover - compiled by numba
    """torch's argmax of a row: the first maximum, a NaN counting as the largest (the first NaN)."""
    top, value = 0, row[0]
    for k in range(1, row.shape[0]):
        if value != value:
            break
        if row[k] > value or row[k] != row[k]:
            top, value = k, row[k]
    return top


def _fab_record(logits, label, x1, clean, idx, best, best_norm, norm, beta):  # pragma: no cover - numba
    """Per row: torch's argmax (the first maximum, NaN counting as the largest); where it is not the label, the
    row's distance to ``clean`` in the norm (0 Linf, 1 L2, 2 L1), a new record where it is the point's smallest,
    and the pull back clean + (x1 - clean) * beta in the rows' dtype (torch's arithmetic)."""
    found = 0
    for r in numba.prange(x1.shape[0]):
        if _argmax(logits[r]) == label[r]:
            continue
        found += 1
        dist = 0.0  # float64: Linf's max is exact either way, L2's and L1's sums the closer
        for i in range(x1.shape[1]):
            moved = x1[r, i] - clean[r, i]
            if norm == 0:
                dist = max(dist, abs(moved))
            elif norm == 1:
                dist += moved * moved
            else:
                dist += abs(moved)
        if norm == 1:
            dist = np.sqrt(dist)
        point = idx[r]
        if dist < best_norm[point]:
            best_norm[point] = dist
            best[point] = x1[r]
        for i in range(x1.shape[1]):
            x1[r, i] = clean[r, i] + (x1[r, i] - clean[r, i]) * beta[0]
    return found


def _apgd(x_adv, x_old, grad, step, low, high, weights, out):  # pragma: no cover - compiled by numba
    """The torch step's float operations, in its order and its dtype (``weights``: a and 1 - a in it): z = clamp(x +
    s * sign(g)), then clamp(x + (z - x) * a + (x - x_old) * (1 - a)); clamp(v) = min(max(v, low), high)."""
    a, rest = weights[0], weights[1]
    for r in numba.prange(x_adv.shape[0]):
        s = step[r]
        for i in range(x_adv.shape[1]):
            x, lo, hi = x_adv[r, i], low[r, i], high[r, i]
            g = grad[r, i]
            z = x + s if g > 0 else (x - s if g < 0 else x)  # x + s * sign(g): torch's sign is 0 at 0 and NaN
            z = lo if z < lo else z
            z = hi if z > hi else z
            v = x + (z - x) * a + (x - x_old[r, i]) * rest
            v = lo if v < lo else v
            out[r, i] = hi if v > hi else v


def _apgd_record(logits, y, loss, x_adv, grad, loss_best, x_best, grad_best, prev_loss, increases, fooled
                 ):  # pragma: no cover - compiled by numba
    """Per row: a new best where the loss beats it, an increase counted where it beats the previous loss (which
    then takes it), and whether the argmax is not the label; returns the count of those."""
    count = 0
    for r in range(x_adv.shape[0]):
        if loss[r] > loss_best[r]:
            loss_best[r] = loss[r]
            x_best[r] = x_adv[r]
            grad_best[r] = grad[r]
        if loss[r] > prev_loss[r]:
            increases[r] += 1.0
        prev_loss[r] = loss[r]
        fooled[r] = _argmax(logits[r]) != y[r]
        count += fooled[r]
    return count


def _dlr_targeted(logits, y, target, consts, loss, seed):  # pragma: no cover - compiled by numba
    """Per row, in the logits' dtype: the top five values (one pass, kept in order), then torch's forward, -(z_y -
    z_t) / (top1 - 0.5 * (top3 + top4) + 1e-12), and autograd's backward of its sum (div: 1 / D and -(L / D); the
    sort routes the latter to top1 and half its negation to top3 and top4; the gathers route -(1 / D) to y and
    1 / D to the target), so every float operation is torch's. Returns the rows it cannot decide as torch would
    (left)."""
    half, tiny, one = consts[0], consts[1], consts[2]
    undecided = 0
    k = logits.shape[1]
    top = np.empty(5, dtype=np.int64)
    for r in range(logits.shape[0]):
        row = logits[r]
        bad = y[r] == target[r]
        filled = 0
        for c in range(k):
            v = row[c]
            bad |= v != v
            j = min(filled, 4)  # where v goes: below every kept value that is >= v
            if filled == 5 and not v > row[top[4]]:
                continue
            while j > 0 and v > row[top[j - 1]]:
                top[j] = top[j - 1]
                j -= 1
            top[j] = c
            filled = min(filled + 1, 5)
        v1, v2, v3, v4 = row[top[0]], row[top[1]], row[top[2]], row[top[3]]
        if bad or v1 == v2 or v2 == v3 or (k > 4 and v4 == row[top[4]]):
            undecided += 1
            continue
        d = (v1 - half * (v3 + v4)) + tiny
        value = -(row[y[r]] - row[target[r]]) / d
        loss[r] = value
        q = one / d
        g = -(value / d)  # autograd's -grad * ((B / D) / D), where B / D is the loss
        seed[r, top[0]] += g
        seed[r, top[2]] += -g * half
        seed[r, top[3]] += -g * half
        seed[r, y[r]] += -q
        seed[r, target[r]] += q
    return undecided


def _logit_difference(logits, y, target, f, seed):  # pragma: no cover - compiled by numba
    for r in range(logits.shape[0]):
        f[r] = logits[r, target[r]] - logits[r, y[r]]
        seed[r, target[r]] += 1.0
        seed[r, y[r]] -= 1.0


def _square_propose(cand, low, high, corners, steps, j, s):  # pragma: no cover - compiled by numba
    """On each point's square: min(max(best + step, low), high) per channel (torch's clamp order), in cand, which
    holds the best point on entry."""
    for r in range(cand.shape[0]):
        top, left = corners[r, j, 0], corners[r, j, 1]
        for ch in range(cand.shape[1]):
            move = steps[r, j, ch]
            for i in range(top, top + s):
                for k in range(left, left + s):
                    v = cand[r, ch, i, k] + move
                    lo, hi = low[r, ch, i, k], high[r, ch, i, k]
                    v = lo if v < lo else v
                    cand[r, ch, i, k] = hi if v > hi else v


def _square_settle(logits, y, margins, best, cand, corners, j, s, finished):  # pragma: no cover - compiled by numba
    """Per point: its margin (the true logit minus the largest other), the official's acceptance rule (lower, or
    <= 0), the square copied from cand into best where accepted and back from best into cand where not, and
    whether the margin is now <= 0; returns the count of those."""
    count = 0
    for r in range(logits.shape[0]):
        true = logits[r, y[r]]
        other = -np.inf
        for k in range(logits.shape[1]):
            v = logits[r, k]
            if k != y[r] and (v > other or v != v):  # NaN kept, as torch's amax keeps it
                other = v
        m = true - other
        accept = m < margins[r] or m <= 0
        if accept:
            margins[r] = m
        source, target = (cand, best) if accept else (best, cand)
        top, left = corners[r, j, 0], corners[r, j, 1]
        target[r, :, top:top + s, left:left + s] = source[r, :, top:top + s, left:left + s]
        finished[r] = margins[r] <= 0
        count += finished[r]
    return count


def _compiled(fn, **options):
    """``fn`` compiled on its first call, cached on disk where numba finds a writable place (else compiled anew in
    each process: about 13 s for all the kernels of one dtype)."""
    try:
        return numba.njit(cache=True, **options)(fn)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(**options)(fn)


if AVAILABLE:
    # FAB: fastmath for vectorised sums and selects, which assume finite values (``fab_step`` checks its inputs);
    # APGD: none, so that every float operation is the torch step's
    _water_level = _compiled(_water_level, fastmath=True)
    _max_abs = _compiled(_max_abs, fastmath=True)
    _FAB = _compiled(_fab, parallel=True, fastmath=True)
    _argmax = _compiled(_argmax)
    _FAB_RECORD = _compiled(_fab_record, parallel=True)
    _APGD = _compiled(_apgd, parallel=True)
    _APGD_RECORD = _compiled(_apgd_record)
    _DLR_TARGETED = _compiled(_dlr_targeted)
    _LOGIT_DIFFERENCE = _compiled(_logit_difference)
    # Square's: serial, as a parallel launch costs more than a few small squares' work
    _SQUARE_PROPOSE = _compiled(_square_propose)
    _SQUARE_SETTLE = _compiled(_square_settle)
