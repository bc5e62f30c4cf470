"""Projected gradient descent in an L-inf or L2 ball, batched, with per-example best tracking and a
pluggable loss (``bench.ops.losses``).

Shared by the ``pgd`` threat and the adversarial-training recipes.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.ops.draws import Draws, as_draws
from bench.ops.gradients import input_gradient
from bench.ops.losses import LOSSES, NEEDS_CLEAN
from bench.ops.norms import normalized, project_l2

NORMS = ("Linf", "L2")


def random_delta(x: Tensor, norm: str, eps: float | Tensor, gen: torch.Generator | Draws) -> Tensor:
    """A random start in the ball: uniform for L-inf; a uniform direction at radius eps * U^(1/d) for L2.
    Drawn on the CPU (``bench.ops.draws``), so a seed gives the same start on every device."""
    draws = as_draws(gen, len(x))
    if norm == "Linf":
        delta = (draws.rand(x.shape[1:]) * 2 - 1) * eps
    else:
        direction = normalized(draws.randn(x.shape[1:]))
        radius = draws.rand() ** (1.0 / x[0].numel())
        delta = direction * eps * radius.view(-1, *([1] * (x.ndim - 1)))
    return delta.to(x.device, x.dtype)


def project(x_adv: Tensor, x: Tensor, norm: str, eps: float) -> Tensor:
    """Project onto the eps-ball around x, then onto the image box [0, 1]."""
    delta = x_adv - x
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = project_l2(delta, eps)
    return (x + delta).clamp(0.0, 1.0)


def pgd(model: nn.Module, x: Tensor, y: Tensor, *, norm: str, eps: float, steps: int, step_size: float,
        restarts: int = 1, random_start: bool = True, gen: torch.Generator | Draws, keep: str = "first_success",
        loss: str = "ce") -> Tensor:
    """Maximise ``loss`` in the ball (random starts from ``gen``, a generator or per-point ``Draws``).

    ``keep="first_success"`` (evaluation) returns, per example, the first iterate found that is
    misclassified, else the last iterate of the last restart. ``keep="last"`` (adversarial
    training) returns the last iterate. Gradients of the model's parameters are left untouched.
    """
    if norm not in NORMS or keep not in ("first_success", "last"):
        raise ValueError(f"norm must be one of {NORMS} and keep 'first_success' or 'last'; got {norm!r}, {keep!r}")
    x = x.detach()
    objective = LOSSES.get(loss)
    clean = None
    if loss in NEEDS_CLEAN:
        with torch.no_grad():
            clean = model(x)

    def start() -> Tensor:
        return project(x + random_delta(x, norm, eps, gen), x, norm, eps) if random_start else x.clone()

    def ascend(x_adv: Tensor, track: tuple[Tensor, Tensor] | None) -> Tensor:
        """``steps`` ascent steps from x_adv; ``track=(best, fooled)`` records first successes in place."""
        for _ in range(steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            grad = input_gradient(objective(logits, y, clean).sum(), x_adv)
            with torch.no_grad():
                if track is not None:
                    best, fooled = track
                    newly = (logits.argmax(1) != y) & ~fooled
                    best[newly] = x_adv[newly].detach()
                    fooled |= newly
                step = grad.sign() if norm == "Linf" else normalized(grad)
                x_adv = project(x_adv.detach() + step_size * step, x, norm, eps)
        return x_adv.detach()

    if keep == "last":
        return ascend(start(), None)
    best = x.clone()
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        x_adv = ascend(start(), (best, fooled))
        with torch.no_grad():
            newly = (model(x_adv).argmax(1) != y) & ~fooled
            best[newly] = x_adv[newly]
            fooled |= newly
            best[~fooled] = x_adv[~fooled]
    return best
