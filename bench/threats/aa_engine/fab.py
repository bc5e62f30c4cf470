"""FAB, the Fast Adaptive Boundary attack (Croce & Hein, 2020, "Minimally distorted adversarial examples with a
fast adaptive boundary attack"), as the official AutoAttack runs it (fra31/auto-attack: ``fab_base.py``,
``fab_pt.py``, ``fab_projections.py``): FAB-T (targeted at the classes ranked 2..n_target_classes+1 by the clean
logits, the ``standard`` version) and untargeted FAB with restarts (the ``plus`` version), for Linf, L2 and L1.

Each iteration linearises the decision boundary at the current iterate, projects both the iterate and the clean
point onto that hyperplane intersected with the box [0, 1] (the minimal-norm step for the norm), and moves to a
convex combination of the two projections (weight alpha <= alpha_max on the clean point's, overshoot eta); an
iterate that is adversarial is recorded if it is the smallest found and pulled back towards the clean point by
beta. The official's update rule, constants and per-point bookkeeping are kept, so given the same start a point
follows the official trajectory up to float rounding. What differs, on purpose:

- The projections are our own solvers (``project_hyperplane``): Linf and L2 are the same one-parameter "water
  filling" (each coordinate moves with the multiplier until it hits the box), solved exactly by Newton's method
  on its piecewise-linear concave equation (no sort); L1 fills the coordinates greedily by |w|. They give the
  official projections' result to float rounding, with no Python loop over points or bisection steps.
- Gradients are input gradients only (``torch.autograd.grad`` w.r.t. the input, so no weight gradients), and
  untargeted FAB's Jacobian of all logit differences comes from one forward and one vmapped backward pass
  (``is_grads_batched``) instead of one backward per class.
- Target classes and restarts run batched together (``runs``), not one after the other; a point's outcome is
  unchanged (fooled when any run fools it), its example is the first fooling run's in the official order.
- Compaction inside a run: a point leaves the run as soon as it has an adversarial example within eps. Its
  outcome is then settled (the recorded norm only decreases), so the robust accuracy is the official's; but the
  returned example is the first one found within eps, not FAB's fully minimised one. Across target classes and
  restarts, points already fooled are dropped, as the official does.
- Random starts (restarts > 0) come from ``rng`` keyed by point (stream ``target{rank}/restart{k}`` or
  ``restart{k}``), not the global generator, so a point's result does not depend on its batch-mates.
- With fewer classes than n_target_classes + 1 the target ranks stop at the class count (the official indexes
  past the end and fails).
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from bench.threats.aa_engine import cpu_kernels, rng, runs
from bench.threats.aa_engine.geometry import DEAD_WEIGHT, norms, per_point
from bench.threats.aa_engine.model import input_grad

NORMS = ("Linf", "L2", "L1")


# --- projection onto {z : <w, z> = b} intersected with [0, 1]^n -----------------------------------------------------

def _water_level(weight: Tensor, level: Tensor, need: Tensor) -> Tensor:
    """Per row, mu >= 0 with sum_i weight_i * min(mu, level_i) = need (weights >= 0, levels >= 0, need >= 0), or
    +inf where even every coordinate at its level falls short (or just reaches it): then every coordinate goes all
    the way. The left side g(mu) is piecewise linear, non-decreasing and concave (its slope, the weight of the
    coordinates still below their level, only drops), so Newton's method from mu = 0 never overshoots, and it is
    exact once an iterate lies on the segment holding the solution: when the slope stops changing. That takes a
    few steps of elementwise work where sorting the levels costs several times more on a CPU."""
    need = need[:, None]
    full = (weight * level).sum(1, keepdim=True)
    mu = torch.zeros_like(need)
    rows, w, lv, nd, m, used = torch.arange(len(need), device=need.device), weight, level, need, mu, None
    tiny = torch.finfo(level.dtype).tiny
    for _ in range(level.shape[1] + 1):  # each step before the last passes at least one breakpoint
        slope = (w * _above(lv, m)).sum(1, keepdim=True)
        if used is not None:
            moving = (slope != used)[:, 0]  # a row whose slope held is solved: it leaves (most do after 2 steps)
            if not bool(moving.any()):
                break
            if not bool(moving.all()):
                keep = moving.nonzero()[:, 0]
                rows, w, lv, nd, m, slope = rows[keep], w[keep], lv[keep], nd[keep], m[keep], slope[keep]
        filled = 0.0 if used is None else (w * torch.minimum(lv, m)).sum(1, keepdim=True)  # g(0) = 0
        m, used = m + ((nd - filled) / slope.clamp_min(tiny)).clamp_min(0.0), slope
        mu = mu.index_copy(0, rows, m)
    return torch.where(need >= full, torch.full_like(mu, float("inf")), mu)


def _above(level: Tensor, mu: Tensor | float) -> Tensor:
    """1.0 where level > mu, else 0.0, in float arithmetic: a float difference of two unequal floats is never 0, and
    on a CPU a full-size bool mask (the comparison, then a product or a select with it) costs 5-10x as much."""
    return (level - mu).clamp_min_(0.0).sign_()


def _greedy_l1(gain: Tensor, size: Tensor, need: Tensor) -> Tensor:
    """Per row, how far each coordinate moves (in units of its room) for the least L1 norm that reaches ``need``:
    a unit of movement buys ``size`` (=|w|) of progress, so the coordinates are used whole in decreasing order of
    |w| (coordinate i buys at most ``gain_i``), the last one in part; all whole where the total falls short."""
    order = size.argsort(dim=1, descending=True, stable=True)
    gain = gain.gather(1, order)
    spent = gain.cumsum(1)
    need = need[:, None]
    whole = (spent < need).sum(1, keepdim=True)  # coordinates used whole; the next one is used in part
    position = torch.arange(gain.shape[1], device=gain.device)[None, :]
    before = (spent - gain).gather(1, whole.clamp(max=gain.shape[1] - 1))
    part = (need - before).clamp_min(0.0) / gain.gather(1, whole.clamp(max=gain.shape[1] - 1)).clamp_min(
        torch.finfo(gain.dtype).tiny)
    share = torch.where(position < whole, 1.0, torch.where(position == whole, part.clamp(max=1.0), 0.0))
    share = torch.where(spent[:, -1:] <= need, torch.ones_like(share), share)
    return torch.empty_like(share).scatter_(1, order, share)


def project_hyperplane(norm: str, t: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Per row of ``t`` (n, d): the step d of least ||d||_p with <w, t + d> = b and t + d in [0, 1]; where the box
    cannot reach the hyperplane, the step to the box corner that comes closest. The same problem and answer as the
    official ``projection_linf`` / ``projection_l2`` / ``projection_l1`` (to float rounding)."""
    gap = (w * t).sum(1) - b
    w = w * torch.where(gap < 0, -1.0, 1.0)[:, None]  # oriented so that <w, .> has to drop by gap >= 0
    need = gap.abs()
    size, sign = w.abs(), w.sign()
    # how far each coordinate can go in the direction that lowers <w, .>: t where w > 0, else 1 - t (the weight is
    # 1.0 or 0.0, where lerp returns an end exactly; a select on an image-sized bool mask costs 5-10x more, _above)
    room = torch.lerp(1.0 - t, t, sign.clamp_min(0.0))
    direction = sign.neg_()
    if norm == "Linf":  # coordinates with w = 0 weigh nothing and have no direction: no mask needed
        return direction * torch.minimum(_water_level(size, room, need), room)
    live = _above(size, DEAD_WEIGHT)
    if norm == "L2":
        level = room / size.clamp_min(DEAD_WEIGHT) * live  # d_i = -mu * w_i until the box
        mu = _water_level(w.square() * live, level, need)
        return direction * torch.minimum(mu, level) * size * live
    if norm == "L1":
        share = _greedy_l1(size * room * live, size * live, need)
        return direction * room * share * live
    raise ValueError(f"unknown norm {norm!r}")


# --- the logit differences and their gradients ----------------------------------------------------------------------

def _dual_norm(g: Tensor, norm: str) -> Tensor:
    """The norm dual to the attacked one, along the last dimension: the distance to a hyperplane is |f| / ||w||_*."""
    if norm == "Linf":
        return g.abs().sum(-1)
    if norm == "L2":
        return g.square().sum(-1).sqrt()
    return g.abs().amax(-1)


def _targeted_plane(model, x: Tensor, y: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(f, grad f) for f = logit[target] - logit[y], shapes (m,) and (m, d): one forward and one backward pass (on
    a CPU with numba, seeded at the logits by ``cpu_kernels``: the same gradient, without the gathers' small ops)."""
    _, f, g = input_grad(model, x, lambda z: (z.gather(1, target[:, None]) - z.gather(1, y[:, None]))[:, 0],
                         lambda z: cpu_kernels.logit_difference(z, y, target))
    return f, g.flatten(1)


def _class_jacobian(model, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(logits, J) with J[:, k] the input gradient of logit[k] - logit[y], shape (m, K, d). One forward pass and a
    backward pass vmapped over the K classes; a model whose ops vmap cannot batch gets one pass over the inputs
    replicated per class instead (still no loop over classes)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = model(x)
        k = logits.shape[1]
        seeds = torch.eye(k, dtype=logits.dtype, device=logits.device)[:, None, :] \
            - torch.nn.functional.one_hot(y, k).to(logits.dtype)[None]  # (K, m, K): e_k - e_y
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # vmap's "performance drop" notes for ops without batching rules
                (jac,) = torch.autograd.grad(logits, x, grad_outputs=seeds, is_grads_batched=True)
        except (RuntimeError, NotImplementedError):  # e.g. an op with no batching rule, or .item() in a backward
            many = x.detach().repeat(k, *([1] * (x.dim() - 1))).requires_grad_(True)
            out = model(many).reshape(k, len(x), k)
            (jac,) = torch.autograd.grad((out * seeds).sum(), many)
    return logits.detach(), jac.reshape(k, len(x), -1).transpose(0, 1)


def _nearest_plane(model, x: Tensor, y: Tensor, target: Tensor | None, norm: str) -> tuple[Tensor, Tensor]:
    """(f, w) of the linearised boundary to attack: the target's, or untargeted the class whose linearised boundary
    is nearest in the attacked norm (the true class itself never, as its difference is set to 1e10)."""
    if target is not None:
        return _targeted_plane(model, x, y, target)
    logits, jac = _class_jacobian(model, x, y)
    f = logits - logits.gather(1, y[:, None])
    f = f.scatter(1, y[:, None], 1e10)
    nearest = (f.abs() / (1e-12 + _dual_norm(jac, norm))).argmin(1)
    rows = torch.arange(len(x), device=x.device)
    return f[rows, nearest], jac[rows, nearest]


def step(x1: Tensor, clean: Tensor, w: Tensor, f: Tensor, *, norm: str, eta: float, alpha_max: float) -> Tensor:
    """FAB's next iterate from ``x1``, given the linearised boundary there (value ``f``, gradient ``w``): both
    ``x1`` and the clean point projected onto it, and moved to their convex combination (weight alpha <= alpha_max
    on the clean point's, overshoot eta), clamped to the box. On a CPU with numba, fused (``cpu_kernels``)."""
    fused = cpu_kernels.fab_step(x1, clean, w, f, norm=norm, eta=eta, alpha_max=alpha_max)
    if fused is not None:
        return fused
    m = len(x1)
    flat1, flat0 = x1.flatten(1), clean.flatten(1)
    b = (w * flat1).sum(1) - f  # the linearised boundary: <w, z> = <w, x1> - f(x1)
    steps = project_hyperplane(norm, torch.cat((flat1, flat0)), torch.cat((w, w)), torch.cat((b, b)))
    size = norms(steps, norm).clamp_min(1e-8)
    alpha = per_point((size[:m] / (size[:m] + size[m:])).clamp(0.0, alpha_max), x1)
    d1, d0 = steps[:m].reshape(x1.shape), steps[m:].reshape(x1.shape)
    return ((x1 + eta * d1) * (1 - alpha) + (clean + eta * d0) * alpha).clamp(0.0, 1.0)


# --- one run ---------------------------------------------------------------------------------------------------------

def _random_start(x0: Tensor, norm: str, eps: float, keys: Tensor) -> Tensor:
    """The official's random start: a random direction scaled to half of eps in the attacked norm, then clamped."""
    shape = tuple(x0.shape[1:])
    if norm == "Linf":
        t = 2 * rng.uniform(keys, 0, shape, x0.dtype) - 1
    else:
        t = rng.normal(keys, 0, shape, x0.dtype)
    t = t / per_point(norms(t, norm), t)
    return (x0 + 0.5 * eps * t).clamp(0.0, 1.0)


def _run(model, x0: Tensor, y: Tensor, target: Tensor | None, *, norm: str, eps: float, start: Tensor, n_iter: int,
         alpha_max: float, eta: float, beta: float, stop_within_eps: bool = True, group: Tensor | None = None
         ) -> tuple[Tensor, Tensor]:
    """One FAB run from ``start`` on points the model classifies correctly: (best, best_norm) per point, the
    smallest adversarial iterate found (x0 where none, norm +inf). With ``stop_within_eps`` a point leaves the run
    once it has one within eps (its outcome is settled; with ``group``, each row's point where the rows are several
    runs of the same points, its other rows leave with it); otherwise every point runs all iterations (the
    official)."""
    n = len(x0)
    best, best_norm = x0.clone(), torch.full((n,), float("inf"), dtype=x0.dtype, device=x0.device)
    idx = torch.arange(n, device=x0.device)
    clean, label = x0, y
    aim = target
    x1 = start.clone()
    for _ in range(n_iter):
        if len(idx) == 0:
            break
        f, w = _nearest_plane(model, x1, label, aim, norm)
        x1 = step(x1, clean, w, f, norm=norm, eta=eta, alpha_max=alpha_max)
        with torch.no_grad():
            logits = model(x1)
        if _record(logits, label, x1, clean, idx, best, best_norm, norm=norm, beta=beta):
            if stop_within_eps:
                keep = best_norm[idx] > eps
                if group is not None and not keep.all():
                    keep = ~runs.siblings(group[idx], ~keep)
                if not keep.all():
                    idx, clean, label, x1 = idx[keep], clean[keep], label[keep], x1[keep]
                    aim = aim[keep] if aim is not None else None
    return best, best_norm


def _record(logits: Tensor, label: Tensor, x1: Tensor, clean: Tensor, idx: Tensor, best: Tensor, best_norm: Tensor,
            *, norm: str, beta: float) -> int:
    """After the check pass, in place: each adversarial row (``logits``' argmax not ``label``) becomes its point's
    record in ``best``/``best_norm`` where it is the nearest to ``clean`` found, and is pulled back towards
    ``clean`` by ``beta`` (the official's bookkeeping, on the adversarial rows only). Returns their count. On a CPU
    with numba, fused (``cpu_kernels``)."""
    found = cpu_kernels.fab_record(logits, label, x1, clean, idx, best, best_norm, norm=norm, beta=beta)
    if found is not None:
        return found
    rows = (logits.argmax(1) != label).nonzero()[:, 0]
    if len(rows):
        moved = x1[rows] - clean[rows]
        dist = norms(moved, norm)
        better = dist < best_norm[idx[rows]]
        best[idx[rows[better]]] = x1[rows[better]]
        best_norm[idx[rows[better]]] = dist[better]
        x1[rows] = clean[rows] + moved * beta
    return len(rows)


def fab(model, x: Tensor, y: Tensor, *, norm: str, eps: float, keys: Tensor, targeted: bool = True,
        n_target_classes: int = 9, n_restarts: int = 1, n_iter: int = 100, alpha_max: float = 0.1,
        eta: float = 1.05, beta: float = 0.9) -> tuple[Tensor, Tensor]:
    """-> (x_adv, fooled): x_adv inside the threat model (||x_adv - x||_p <= eps, [0,1]) for every point (x itself
    where nothing was found within eps); fooled (bool, n) where model(x_adv).argmax(1) != y.

    Points the model already gets wrong count as fooled with x_adv = x. The rest go through the runs (targeted:
    each target rank, then its restarts; untargeted: the restarts), batched together as far as ``runs`` allows,
    each batch on the points no earlier one fooled; a run's example counts if it is within eps and the model,
    asked again, gets it wrong."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}")
    with torch.no_grad():
        logits = model(x)
    fooled = logits.argmax(1) != y
    x_adv = x.detach().clone()
    keys = keys.to(x.device)
    if targeted:
        ranking = logits.argsort(dim=1)  # ascending, so the class of rank r is column -r
        ranks = range(2, min(n_target_classes + 1, logits.shape[1]) + 1)
        every = [(rank, k) for rank in ranks for k in range(n_restarts)]
    else:
        every = [(None, k) for k in range(n_restarts)]
    for group, todo in runs.batches(every, lambda: (~fooled).nonzero()[:, 0]):
        r = len(group)
        x0, y0 = runs.repeat(x[todo].detach(), r), runs.repeat(y[todo], r)
        target = torch.cat([ranking[todo, -rank] for rank, _ in group]) if targeted else None
        start = torch.cat([_start(x[todo].detach(), norm, eps, keys[todo], rank, k) for rank, k in group])
        best, best_norm = _run(model, x0, y0, target, norm=norm, eps=eps, start=start, n_iter=n_iter,
                               alpha_max=alpha_max, eta=eta, beta=beta, group=runs.rows_of(todo, r))
        found = best_norm <= eps
        if found.any():  # the official asks the model again before counting an example
            with torch.no_grad():
                found[found.clone()] = model(best[found]).argmax(1) != y0[found]
        hit, example = runs.first_success(found, best, r)
        x_adv[todo[hit]] = example[hit]
        fooled[todo[hit]] = True
    return x_adv, fooled


def _start(x0: Tensor, norm: str, eps: float, keys: Tensor, rank: int | None, k: int) -> Tensor:
    """A run's start: the clean points for the first restart, else a random start keyed by point and run."""
    if k == 0:
        return x0
    stream = f"target{rank}/restart{k}" if rank is not None else f"restart{k}"
    return _random_start(x0, norm, eps, rng.derive(keys, stream))
