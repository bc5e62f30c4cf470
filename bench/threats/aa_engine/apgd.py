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
- Parameters are frozen by the engine, so a gradient call computes the input gradient only.

The official's first oscillation window compares the first iterate's loss with 0 (an unset row of its loss
history); this is kept, since it decides the first step-size cut.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.threats.aa_engine import rng
from bench.threats.aa_engine.checks import zero_gradients
from bench.threats.aa_engine.geometry import per_point, project, project_l1
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
        delta = eps * t / per_point(t.flatten(1).abs().amax(1) + 1e-12, t)
    elif norm == "L2":
        t = rng.normal(keys, 0, shape).to(x)
        delta = eps * t / per_point(t.flatten(1).square().sum(1).sqrt() + 1e-12, t)
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


def run(model, x: Tensor, y: Tensor, target: Tensor | None, x0: Tensor, *, norm: str, eps: float, n_iter: int,
        loss: str, counts: bool = True, continued: bool = False, eot: int = 1) -> Run:
    """One APGD run from ``x0``. ``counts``: a fooled point leaves the batch (its fooling iterate is kept); else
    (an L1 stage at a larger radius) every point runs to the end and only the highest-loss points matter.
    ``continued``: ``x0`` is where an earlier L1 stage ended (L1's sparsity starts from it, not from 20%).
    ``eot``: gradients averaged over that many passes (randomised models)."""
    loss_fn = LOSSES[loss]
    n = len(x)
    out_best, out_adv = x0.clone(), x0.clone()
    out_fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    alive = torch.arange(n, device=x.device)
    n_fts = math.prod(x.shape[1:])
    alpha = 2.0 if norm in ("Linf", "L2") else 1.0

    def step_loss(z: Tensor) -> Tensor:
        return loss_fn(z, y_a, t_a)

    x_a, y_a = x, y
    t_a = target
    x_adv = x0.clamp(0.0, 1.0)
    logits, cur_loss, grad = _gradient(model, x_adv, step_loss, eot)
    start_grad = grad
    x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), cur_loss.clone()
    step = torch.full((n,), alpha * eps, dtype=x.dtype, device=x.device)
    x_old = x_adv.clone()
    prev_loss = torch.zeros_like(cur_loss)  # the official's unset history row (module docstring)
    increases = torch.zeros_like(cur_loss)
    best_at_check, reduced_at_check = loss_best.clone(), torch.ones_like(loss_best, dtype=torch.bool)
    if norm == "L1":
        window = max(int(0.04 * n_iter), 1)
        if continued:
            sparsity_old = (x_adv - x_a).flatten(1).ne(0).sum(1).to(x.dtype)
            topk = sparsity_old / n_fts / 1.5
        else:
            sparsity_old = torch.full((n,), float(n_fts), dtype=x.dtype, device=x.device)
            topk = torch.full((n,), 0.2, dtype=x.dtype, device=x.device)
        marks = set(range(window - 1, n_iter, window))
    else:
        marks = checkpoints(n_iter)

    def keep(mask: Tensor) -> None:
        """Drop the points not in ``mask`` from every per-point tensor of the loop."""
        nonlocal alive, x_a, y_a, t_a, x_adv, x_old, grad, x_best, grad_best, loss_best, step, prev_loss
        nonlocal increases, best_at_check, reduced_at_check, cur_loss
        alive, x_a, y_a = alive[mask], x_a[mask], y_a[mask]
        t_a = None if t_a is None else t_a[mask]
        x_adv, x_old, grad, x_best, grad_best = x_adv[mask], x_old[mask], grad[mask], x_best[mask], grad_best[mask]
        loss_best, step, prev_loss, increases = loss_best[mask], step[mask], prev_loss[mask], increases[mask]
        best_at_check, reduced_at_check, cur_loss = best_at_check[mask], reduced_at_check[mask], cur_loss[mask]
        if norm == "L1":
            nonlocal sparsity_old, topk
            sparsity_old, topk = sparsity_old[mask], topk[mask]

    def retire(fooled: Tensor) -> None:
        if counts and bool(fooled.any()):
            idx = alive[fooled]
            out_fooled[idx] = True
            out_adv[idx] = x_adv[fooled]
            out_best[idx] = x_best[fooled]
            keep(~fooled)

    retire(logits.argmax(1) != y_a)
    for i in range(n_iter):
        if not len(alive):
            break
        with torch.no_grad():
            s = per_point(step, x_adv)
            if norm == "L1":
                magnitude = grad.abs().flatten(1)
                rank = torch.clamp((1.0 - topk) * n_fts, 0, n_fts - 1).long()
                threshold = magnitude.sort(1).values.gather(1, rank[:, None])
                direction = (grad * (magnitude >= threshold).view_as(grad)).sign()
                moved = x_adv + s * direction / per_point(direction.flatten(1).abs().sum(1) + 1e-10, direction)
                x_new = x_a + project_l1(x_a, moved - x_a, eps)
            else:
                a = MOMENTUM if i > 0 else 1.0
                momentum = x_adv - x_old
                direction = grad.sign() if norm == "Linf" else grad / per_point(
                    grad.flatten(1).square().sum(1).sqrt() + 1e-12, grad)
                z = x_a + project(x_a, x_adv + s * direction - x_a, norm, eps)
                x_new = x_a + project(x_a, x_adv + (z - x_adv) * a + momentum * (1 - a) - x_a, norm, eps)
            x_old, x_adv = x_adv, x_new
        logits, cur_loss, grad = _gradient(model, x_adv, step_loss, eot)
        with torch.no_grad():
            better = cur_loss > loss_best
            x_best = torch.where(per_point(better, x_adv), x_adv, x_best)
            grad_best = torch.where(per_point(better, grad), grad, grad_best)
            loss_best = torch.where(better, cur_loss, loss_best)
            increases += (cur_loss > prev_loss).to(increases.dtype)
            prev_loss = cur_loss
        retire(logits.argmax(1) != y_a)  # before a checkpoint can move a fooling iterate back to the best point
        if i in marks and len(alive):
            with torch.no_grad():
                if norm == "L1":
                    sparsity = (x_best - x_a).flatten(1).ne(0).sum(1).to(x.dtype)
                    restart = sparsity / sparsity_old < 0.95
                    topk = sparsity / n_fts / 1.5
                    step = torch.where(restart, torch.full_like(step, alpha * eps), step / 1.5)
                    step = step.clamp(alpha * eps / 10.0, alpha * eps)
                    sparsity_old = sparsity
                else:
                    window_len = _window(marks, i)
                    restart = (increases <= window_len * RHO) | (~reduced_at_check & (best_at_check >= loss_best))
                    reduced_at_check, best_at_check = restart.clone(), loss_best.clone()
                    step = torch.where(restart, step / 2.0, step)
                    increases = torch.zeros_like(increases)
                x_adv = torch.where(per_point(restart, x_adv), x_best, x_adv)
                grad = torch.where(per_point(restart, grad), grad_best, grad)
    if len(alive):
        out_best[alive] = x_best
    return Run(out_best, out_fooled, out_adv, start_grad)


def _window(marks: set[int], i: int) -> int:
    """The length of the checkpoint window that ends at iteration ``i``."""
    earlier = [m for m in marks if m < i]
    return i - (max(earlier) if earlier else -1)


def _gradient(model, x: Tensor, loss_fn, eot: int) -> tuple[Tensor, Tensor, Tensor]:
    """Logits and loss of the last pass, the gradient averaged over ``eot`` passes (as the official)."""
    logits, loss, grad = input_grad(model, x, loss_fn)
    for _ in range(eot - 1):
        logits, loss, more = input_grad(model, x, loss_fn)
        grad = grad + more
    return logits, loss, grad / eot if eot > 1 else grad


def apgd(model, x: Tensor, y: Tensor, *, norm: str, eps: float, keys: Tensor, loss: str = "ce", n_iter: int = 100,
         n_restarts: int = 1, n_target_classes: int = 9, large_reps: bool = False, eot: int = 1,
         notes: list[str] | None = None) -> tuple[Tensor, Tensor]:
    """APGD on ``loss`` (ce, dlr, or dlr-targeted: APGD-T over the classes ranked 2 to ``n_target_classes`` + 1 on
    the clean logits), each restart and target class on the points not yet fooled. ``large_reps`` (the official's
    L1 standard setting): each run goes through radii 3, 2 and 1 times eps (30%, 30% and 40% of the iterations),
    starting from a Gaussian draw projected onto the largest. Returns (x_adv, fooled); x_adv is x where not
    fooled. ``notes`` gets the official's warning where a DLR loss has a zero gradient at a start."""
    x_adv, fooled = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
    targeted = loss == "dlr-targeted"
    order = model(x).detach().argsort(1) if targeted else None
    ranks = range(2, n_target_classes + 2) if targeted else [None]
    for rank in ranks:
        for restart in range(n_restarts):
            todo = (~fooled).nonzero()[:, 0]
            if not len(todo):
                return x_adv, fooled
            xs, ys = x[todo], y[todo]
            target = order[todo, -rank] if targeted else None
            draw_keys = rng.derive(keys[todo], f"apgd-{loss}:{rank}:{restart}")
            if large_reps:
                result = _large_reps(model, xs, ys, target, draw_keys, norm=norm, eps=eps, n_iter=n_iter, loss=loss,
                                     eot=eot)
            else:
                result = run(model, xs, ys, target, random_start(xs, norm, eps, draw_keys), norm=norm, eps=eps,
                             n_iter=n_iter, loss=loss, eot=eot)
            if notes is not None and loss != "ce":
                notes += [n for n in zero_gradients(result.start_grad) if n not in notes]
            hit = todo[result.fooled]
            fooled[hit] = True
            x_adv[hit] = result.adv[result.fooled]
    return x_adv, fooled


def _large_reps(model, x: Tensor, y: Tensor, target: Tensor | None, keys: Tensor, *, norm: str, eps: float,
                n_iter: int, loss: str, eot: int) -> Run:
    radii = [3.0 * eps, 2.0 * eps, eps]
    iters = [math.ceil(0.3 * n_iter), math.ceil(0.3 * n_iter)]
    iters.append(n_iter - sum(iters))
    start = x + project_l1(x, rng.normal(keys, 0, tuple(x.shape[1:])).to(x), radii[0])
    for k, (radius, steps) in enumerate(zip(radii, iters)):
        start = x + project_l1(x, start - x, radius)
        result = run(model, x, y, target, start, norm=norm, eps=radius, n_iter=steps, loss=loss,
                     counts=k == len(radii) - 1, continued=True, eot=eot)
        start = result.best
    return result
