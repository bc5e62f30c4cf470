"""APGD (Croce & Hein, 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks"): APGD-CE, APGD-DLR and the targeted APGD-T, for Linf, L2 and L1, as the official
package (fra31/auto-attack, ``autopgd_base.py``) runs them, batched per point.

Every quantity the official keeps per point (step size, best loss, best point, the oscillation count since the
last checkpoint, momentum) is kept per point here too, and checkpoints fall on the same iterations, so a point's
trajectory is the official one given the same start. What differs, on purpose:

- Points already fooled leave the batch (their trajectory no longer matters: a point counts as fooled from the
  first iterate the model gets wrong), so later iterations spend no passes on them. With L1's radius schedule
  (3, 2, 1 times eps) only the last stage counts, so the earlier stages keep every point.
- Random starts come from ``rng`` keyed by point, not from the global generator, so a point's start does not
  depend on which points share its batch.
- Restarts and target classes run batched together, not one after the other (``runs``); a point fooled by one
  leaves the others at once. Its outcome is the official's (fooled when any run fools it); its example is the
  first fooling run's in the official order among those that fooled it by then.
- Parameters are frozen by the engine, so a gradient call computes the input gradient only.

The official's first oscillation window compares the first iterate's loss with 0 (an unset row of its loss
history); this is kept, since it decides the first step-size cut.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.threats.aa_engine import cpu_kernels, rng, runs
from bench.threats.aa_engine.checks import zero_gradients
from bench.threats.aa_engine.geometry import norms, per_point, project, project_l1
from bench.threats.aa_engine.model import input_grad

RHO = 0.75  # the share of increasing steps below which the step size is halved
MOMENTUM = 0.75


def ce_loss(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def dlr_loss(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Difference of logits ratio: the margin to the best other class over the spread of the top three."""
    top = logits.sort(dim=1).values
    z_y = logits.gather(1, y[:, None])[:, 0]
    best_other = torch.where(logits.argmax(1) == y, top[:, -2], top[:, -1])
    return -(z_y - best_other) / (top[:, -1] - top[:, -3] + 1e-12)


def dlr_targeted_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR: the margin of the target class over the spread of the top four (needs 4 classes)."""
    top = logits.sort(dim=1).values
    z_y, z_t = logits.gather(1, y[:, None])[:, 0], logits.gather(1, target[:, None])[:, 0]
    return -(z_y - z_t) / (top[:, -1] - 0.5 * (top[:, -3] + top[:, -4]) + 1e-12)


LOSSES = {"ce": ce_loss, "dlr": dlr_loss, "dlr-targeted": dlr_targeted_loss}
# the losses with a fused CPU kernel giving the loss and its gradient at the logits, as autograd would
SEEDED = {"dlr-targeted": cpu_kernels.dlr_targeted}


def checkpoints(n_iter: int) -> set[int]:
    """The iterations (0-based) after which Linf/L2 APGD may halve a point's step: a first window of 22% of the
    iterations, each next one 3% shorter, at least 6%."""
    first, least, shrink = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)
    out, i, k = set(), -1, first
    while i + k < n_iter:
        i += k
        out.add(i)
        k = max(k - shrink, least)
    return out


def random_start(x: Tensor, norm: str, eps: float, keys: Tensor) -> Tensor:
    """The official starts: Linf a uniform draw scaled to Linf norm eps, L2 a Gaussian scaled to L2 norm eps, L1 a
    Gaussian projected onto the L1 ball (then every start clamped to [0, 1])."""
    shape = tuple(x.shape[1:])
    if norm == "Linf":
        t = (2 * rng.uniform(keys, 0, shape) - 1).to(x)
        delta = eps * t / per_point(norms(t, "Linf") + 1e-12, t)
    elif norm == "L2":
        t = rng.normal(keys, 0, shape).to(x)
        delta = eps * t / per_point(norms(t, "L2") + 1e-12, t)
    else:
        t = rng.normal(keys, 0, shape).to(x)
        delta = project_l1(x, t, eps)
    return (x + delta).clamp(0.0, 1.0)


@dataclass
class Run:
    """What one run returns for its points: the point of highest loss (where the next radius stage starts) and,
    for points it fooled, the fooling iterate."""

    best: Tensor
    fooled: Tensor
    adv: Tensor
    start_grad: Tensor  # the loss's gradient at the start, for the zero-gradient check


@dataclass
class _Points:
    """The loop's per-point state (row i of every tensor is one point), so that a fooled point leaves all of it at
    once. ``index``: each row's position in the run's input."""

    index: Tensor
    x: Tensor
    y: Tensor
    target: Tensor | None
    x_adv: Tensor
    x_old: Tensor
    grad: Tensor
    loss: Tensor
    x_best: Tensor
    grad_best: Tensor
    loss_best: Tensor
    step: Tensor
    prev_loss: Tensor  # the previous iterate's loss
    increases: Tensor  # steps that raised the loss since the last checkpoint
    best_at_check: Tensor
    reduced_at_check: Tensor
    group: Tensor | None = None  # each row's point, where several runs of the points share the batch
    sparsity_old: Tensor | None = None  # L1 only
    topk: Tensor | None = None  # L1 only: the share of coordinates a step moves
    low: Tensor | None = None  # Linf only: x - eps and x + eps clipped to [0, 1], the bounds of one clamp
    high: Tensor | None = None

    def keep(self, mask: Tensor) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                setattr(self, f.name, value[mask])


def linf_step(x_adv: Tensor, x_old: Tensor, grad: Tensor, step: Tensor, low: Tensor, high: Tensor, a: float
              ) -> Tensor:
    """APGD's L-inf step, the official's arithmetic: a signed-gradient step of size ``step`` (per point), then
    momentum ``a`` towards it from the previous iterate ``x_old``, each clamped to [``low``, ``high``] (x -+ eps
    within [0, 1]) in one clamp. On a CPU with numba, fused (``cpu_kernels``, bit for bit the same)."""
    fused = cpu_kernels.apgd_linf_step(x_adv, x_old, grad, step, low, high, a)
    if fused is not None:
        return fused
    z = torch.clamp(x_adv + per_point(step, x_adv) * grad.sign(), low, high)
    return torch.clamp(x_adv + (z - x_adv) * a + (x_adv - x_old) * (1 - a), low, high)


def run(model, x: Tensor, y: Tensor, target: Tensor | None, x0: Tensor, *, norm: str, eps: float, n_iter: int,
        loss: str, counts: bool = True, continued: bool = False, eot: int = 1, group: Tensor | None = None) -> Run:
    """One APGD run from ``x0``. ``counts``: a fooled point leaves the batch (its fooling iterate is kept); else
    (an L1 stage at a larger radius) every point runs to the end and only the highest-loss points matter.
    ``continued``: ``x0`` is where an earlier L1 stage ended (L1's sparsity starts from it, not from 20%).
    ``eot``: gradients averaged over that many passes (randomised models). ``group``: each row's point where the
    rows are several runs of the same points (``runs``); a point's other rows leave with its fooled one."""
    n, n_fts = len(x), math.prod(x.shape[1:])
    out_best, out_adv = x0.clone(), x0.clone()
    out_fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    alpha = 2.0 if norm in ("Linf", "L2") else 1.0
    x_adv = x0.clamp(0.0, 1.0)
    logits, cur_loss, grad = _gradient(model, x_adv, loss, y, target, eot)
    start_grad = grad
    p = _Points(index=torch.arange(n, device=x.device), x=x, y=y, target=target, x_adv=x_adv, x_old=x_adv.clone(),
                grad=grad, loss=cur_loss, x_best=x_adv.clone(), grad_best=grad.clone(), loss_best=cur_loss.clone(),
                step=torch.full((n,), alpha * eps, dtype=x.dtype, device=x.device),
                prev_loss=torch.zeros_like(cur_loss),  # the official's unset history row (module docstring)
                increases=torch.zeros_like(cur_loss), best_at_check=cur_loss.clone(),
                reduced_at_check=torch.ones_like(cur_loss, dtype=torch.bool), group=group)
    if norm == "Linf":
        p.low, p.high = (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)
    if norm == "L1":
        window = max(int(0.04 * n_iter), 1)
        if continued:
            p.sparsity_old = (x_adv - x).flatten(1).ne(0).sum(1).to(x.dtype)
            p.topk = p.sparsity_old / n_fts / 1.5
        else:
            p.sparsity_old = torch.full((n,), float(n_fts), dtype=x.dtype, device=x.device)
            p.topk = torch.full((n,), 0.2, dtype=x.dtype, device=x.device)
        marks = range(window - 1, n_iter, window)
        windows = {i: window for i in marks}
    else:
        marks = sorted(checkpoints(n_iter))
        windows = {i: i - before for i, before in zip(marks, [-1] + marks)}  # each checkpoint window's length

    def retire(fooled: Tensor | None) -> None:
        if counts and fooled is not None:
            idx = p.index[fooled]
            out_fooled[idx] = True
            out_adv[idx] = p.x_adv[fooled]
            out_best[idx] = p.x_best[fooled]
            p.keep(~(fooled if p.group is None else runs.siblings(p.group, fooled)))

    retire(_any(logits.argmax(1) != p.y))
    for i in range(n_iter):
        if not len(p.index):
            break
        with torch.no_grad():
            if norm == "L1":
                s = per_point(p.step, p.x_adv)
                magnitude = p.grad.abs().flatten(1)
                rank = torch.clamp((1.0 - p.topk) * n_fts, 0, n_fts - 1).long()
                threshold = magnitude.sort(1).values.gather(1, rank[:, None])
                direction = (p.grad * (magnitude >= threshold).view_as(p.grad)).sign()
                moved = p.x_adv + s * direction / per_point(norms(direction, "L1") + 1e-10, direction)
                x_new = p.x + project_l1(p.x, moved - p.x, eps)
            else:
                a = MOMENTUM if i > 0 else 1.0
                if norm == "Linf":
                    x_new = linf_step(p.x_adv, p.x_old, p.grad, p.step, p.low, p.high, a)
                else:
                    s = per_point(p.step, p.x_adv)
                    direction = p.grad / per_point(norms(p.grad, "L2") + 1e-12, p.grad)
                    inside = lambda v: p.x + project(p.x, v - p.x, norm, eps)  # noqa: E731
                    z = inside(p.x_adv + s * direction)
                    x_new = inside(p.x_adv + (z - p.x_adv) * a + (p.x_adv - p.x_old) * (1 - a))
            p.x_old, p.x_adv = p.x_adv, x_new
        logits, p.loss, p.grad = _gradient(model, p.x_adv, loss, p.y, p.target, eot)
        retire(_bookkeep(p, logits))  # before a checkpoint can move a fooling iterate back to the best point
        if i in windows and len(p.index):
            with torch.no_grad():
                if norm == "L1":
                    sparsity = (p.x_best - p.x).flatten(1).ne(0).sum(1).to(x.dtype)
                    restart = sparsity / p.sparsity_old < 0.95
                    p.topk = sparsity / n_fts / 1.5
                    p.step = torch.where(restart, torch.full_like(p.step, alpha * eps), p.step / 1.5)
                    p.step = p.step.clamp(alpha * eps / 10.0, alpha * eps)
                    p.sparsity_old = sparsity
                else:
                    restart = (p.increases <= windows[i] * RHO) | (~p.reduced_at_check
                                                                   & (p.best_at_check >= p.loss_best))
                    p.reduced_at_check, p.best_at_check = restart.clone(), p.loss_best.clone()
                    p.step = torch.where(restart, p.step / 2.0, p.step)
                    p.increases = torch.zeros_like(p.increases)
                p.x_adv = torch.where(per_point(restart, p.x_adv), p.x_best, p.x_adv)
                p.grad = torch.where(per_point(restart, p.grad), p.grad_best, p.grad)
    if len(p.index):
        out_best[p.index] = p.x_best
    return Run(out_best, out_fooled, out_adv, start_grad)


@torch.no_grad()
def _bookkeep(p: _Points, logits: Tensor) -> Tensor | None:
    """After a gradient pass, in place: the rows whose loss beats their best become it, the loss increases are
    counted and the loss kept for the next comparison. Returns the fooled rows (argmax not the label), None where
    there are none. On a CPU with numba, fused (``cpu_kernels``): a handful of small ops cost more than the work."""
    fused = cpu_kernels.apgd_record(logits, p.y, p.loss, p.x_adv, p.grad, p.loss_best, p.x_best, p.grad_best,
                                    p.prev_loss, p.increases)
    if fused is not None:
        count, fooled = fused
        return fooled if count else None
    better = (p.loss > p.loss_best).nonzero().squeeze(1)  # rows copied in place: often a few of them
    p.x_best.index_copy_(0, better, p.x_adv.index_select(0, better))
    p.grad_best.index_copy_(0, better, p.grad.index_select(0, better))
    p.loss_best.index_copy_(0, better, p.loss.index_select(0, better))
    p.increases += (p.loss > p.prev_loss).to(p.increases.dtype)
    p.prev_loss = p.loss
    return _any(logits.argmax(1) != p.y)


def _any(mask: Tensor) -> Tensor | None:
    return mask if bool(mask.any()) else None


def _gradient(model, x: Tensor, loss: str, y: Tensor, target: Tensor | None, eot: int
              ) -> tuple[Tensor, Tensor, Tensor]:
    """Logits and loss of the last pass, the gradient averaged over ``eot`` passes (as the official). A loss with
    a fused kernel (``SEEDED``) gives autograd its gradient at the logits, where the kernel applies."""
    loss_fn, fused = LOSSES[loss], SEEDED.get(loss)
    args = (lambda z: loss_fn(z, y, target), None if fused is None else lambda z: fused(z, y, target))
    logits, value, grad = input_grad(model, x, *args)
    for _ in range(eot - 1):
        logits, value, more = input_grad(model, x, *args)
        grad = grad + more
    return logits, value, grad / eot if eot > 1 else grad


def apgd(model, x: Tensor, y: Tensor, *, norm: str, eps: float, keys: Tensor, loss: str = "ce", n_iter: int = 100,
         n_restarts: int = 1, n_target_classes: int = 9, large_reps: bool = False, eot: int = 1,
         notes: list[str] | None = None) -> tuple[Tensor, Tensor]:
    """APGD on ``loss`` (ce, dlr, or dlr-targeted: APGD-T over the classes ranked 2 to ``n_target_classes`` + 1 on
    the clean logits), its restarts and target classes batched together (``runs``: as many as fit, each batch on
    the points no earlier one fooled). ``large_reps`` (the official's L1 standard setting): each run goes through
    radii 3, 2 and 1 times eps (30%, 30% and 40% of the iterations), starting from a Gaussian draw projected onto
    the largest. Returns (x_adv, fooled); x_adv is x where not
    fooled. ``notes`` gets the official's warning where a DLR loss has a zero gradient at a start."""
    x_adv, fooled = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
    targeted = loss == "dlr-targeted"
    order = model(x).detach().argsort(1) if targeted else None
    ranks = range(2, n_target_classes + 2) if targeted else [None]
    every = [(rank, restart) for rank in ranks for restart in range(n_restarts)]
    for group, todo in runs.batches(every, lambda: (~fooled).nonzero()[:, 0]):
        r = len(group)
        xs, ys = runs.repeat(x[todo], r), runs.repeat(y[todo], r)
        target = torch.cat([order[todo, -rank] for rank, _ in group]) if targeted else None
        draw_keys = torch.cat([rng.derive(keys[todo], f"apgd-{loss}:{rank}:{restart}") for rank, restart in group])
        point = runs.rows_of(todo, r)
        if large_reps:
            result = _large_reps(model, xs, ys, target, draw_keys, norm=norm, eps=eps, n_iter=n_iter, loss=loss,
                                 eot=eot, group=point)
        else:
            result = run(model, xs, ys, target, random_start(xs, norm, eps, draw_keys), norm=norm, eps=eps,
                         n_iter=n_iter, loss=loss, eot=eot, group=point)
        if notes is not None and loss != "ce":
            notes += [n for n in zero_gradients(result.start_grad) if n not in notes]
        hit, adv = runs.first_success(result.fooled, result.adv, r)
        fooled[todo[hit]] = True
        x_adv[todo[hit]] = adv[hit]
    return x_adv, fooled


def _large_reps(model, x: Tensor, y: Tensor, target: Tensor | None, keys: Tensor, *, norm: str, eps: float,
                n_iter: int, loss: str, eot: int, group: Tensor | None = None) -> Run:
    radii = [3.0 * eps, 2.0 * eps, eps]
    iters = [math.ceil(0.3 * n_iter), math.ceil(0.3 * n_iter)]
    iters.append(n_iter - sum(iters))
    start = x + project_l1(x, rng.normal(keys, 0, tuple(x.shape[1:])).to(x), radii[0])
    for k, (radius, steps) in enumerate(zip(radii, iters)):
        start = x + project_l1(x, start - x, radius)
        result = run(model, x, y, target, start, norm=norm, eps=radius, n_iter=steps, loss=loss,
                     counts=k == len(radii) - 1, continued=True, eot=eot, group=group)
        start = result.best
    return result
