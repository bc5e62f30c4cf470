"""PGD in the latent ball of a learned perturbation set (Wong & Kolter, 2021, section 5 of our notes).

The attack moves u inside { |u|_2 <= eps } (prior-standardised coordinates) to make the classifier
misclassify g(x, mu_p + sigma_p * u): random start (random direction, radius ~ U[0, eps]),
normalised-gradient ascent steps on cross-entropy (constant, or decaying for a stronger check),
projection after every step, and a per-example early stop once a point is misclassified. With
restarts, the first success per example is kept.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.families.learned_sets.cvae import CVAE
from bench.ops.draws import Draws, as_draws
from bench.ops.gradients import input_gradient
from bench.ops.norms import normalized, project_l2


def random_start(shape: torch.Size, eps: float, draws: Draws) -> Tensor:
    """A random direction at a radius drawn uniformly from [0, eps] (the paper's start, not uniform in the ball)."""
    direction = normalized(draws.randn(shape[1:]))
    radius = draws.rand().view(-1, *([1] * (len(shape) - 1))) * eps
    return direction * radius


def latent_pgd(cvae: CVAE, classifier: nn.Module, x: Tensor, y: Tensor, *, eps: float, steps: int,
               step_size: float, restarts: int = 1, gen: torch.Generator | Draws, decay: float = 1.0,
               until_fooled: bool = True) -> tuple[Tensor, Tensor]:
    """Return (x_adv, u) with every |u|_2 <= eps.

    Step k is ``step_size * decay ** (k / (steps - 1))``: constant by default, decaying geometrically for
    ``decay < 1`` (the stronger check). With ``until_fooled`` (evaluation), each example stops at the first
    latent point that fools the classifier and keeps it, else the last iterate of the last restart; without
    it (crafting points to transfer to another model), every example ascends for all steps and the last
    iterate is returned."""
    draws = as_draws(gen, len(x))
    with torch.no_grad():
        mu_p, logvar_p = cvae.prior(x)
        sigma_p = (0.5 * logvar_p).exp()

    def decode(u: Tensor) -> Tensor:
        return cvae.generator(x, mu_p + sigma_p * u)

    best = torch.zeros_like(mu_p)
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        u = random_start(mu_p.shape, eps, draws).to(mu_p)
        for step_index in range(steps + 1):  # evaluates u_0 .. u_steps, updates between them
            u.requires_grad_(True)
            logits = classifier(decode(u))
            if until_fooled:
                with torch.no_grad():
                    newly = (logits.argmax(1) != y) & ~fooled
                    best[newly] = u[newly].detach()
                    fooled |= newly
            if step_index == steps or bool(fooled.all()):
                break
            grad = input_gradient(F.cross_entropy(logits, y, reduction="sum"), u)
            step = step_size * decay ** (step_index / max(steps - 1, 1))
            with torch.no_grad():
                active = (~fooled).view(-1, *([1] * (u.ndim - 1))).to(u)  # early stop per example
                u = project_l2(u.detach() + step * normalized(grad) * active, eps)
        best[~fooled] = u.detach()[~fooled]
    with torch.no_grad():
        return decode(best), best
