"""APGD (Croce & Hein, 2020) in the latent ball of a learned perturbation set.

The latent PGD of the paper (fixed step, one start) stops far from the worst case: the step size that
suits the start overshoots near the boundary. APGD needs no step size: it starts at 2 eps, moves with
momentum, and halves the step at fixed checkpoints when too few steps improved the loss or the best loss
stalled, restarting from the best point. The losses are cross-entropy (``ce``) and the targeted DLR ratio
(``dlr``: -(z_y - z_t) / (z_1 - (z_3 + z_4) / 2), scale-free, so a model cannot hide behind flat softmax
probabilities). A point stops once it is misclassified: its fooling latent point is kept. Everything runs on
the points still standing only, so the cost falls as points break.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.families.learned_sets.cvae import CVAE
from bench.ops.draws import Draws, PointDraws
from bench.ops.gradients import input_gradient
from bench.ops.norms import normalized, project_l2

MOMENTUM = 0.75  # APGD's alpha
RHO = 0.75  # the share of improving steps below which the step is halved


def checkpoints(steps: int) -> list[int]:
    """APGD's checkpoints: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), as steps."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({int(round(q * steps)) for q in p if 0 < q < 1 and 0 < round(q * steps) < steps})


def dlr_targeted(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR loss per example (larger: closer to classifying ``target``); needs 4 classes or more."""
    z = logits.sort(dim=1).values
    gap = logits.gather(1, y[:, None]) - logits.gather(1, target[:, None])
    return -gap.squeeze(1) / (z[:, -1] - 0.5 * (z[:, -3] + z[:, -4]) + 1e-12)


def uniform_ball(dim: int, eps: float, draws: Draws) -> Tensor:
    """One point per drawn point, uniform in the L2 ball of radius eps in ``dim`` dimensions."""
    return normalized(draws.randn((dim,))) * eps * draws.rand((1,)) ** (1 / dim)


def latent_apgd(cvae: CVAE, classifier: nn.Module, x: Tensor, y: Tensor, *, eps: float, steps: int,
                restarts: int, draws: PointDraws, target: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Return (u, fooled): per point the latent point that fooled the classifier (else the best-loss one of the
    last restart), every |u|_2 <= eps. ``target`` None: cross-entropy; else the targeted DLR loss towards it."""
    with torch.no_grad():
        mu_p, logvar_p = cvae.prior(x)
        sigma_p = (0.5 * logvar_p).exp()
    dim, device = mu_p.shape[1], x.device
    best = torch.zeros_like(mu_p)
    fooled = torch.zeros(len(x), dtype=torch.bool, device=device)
    marks = set(checkpoints(steps))

    def loss_and_grad(rows: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-example loss, its gradient in u and whether the point is misclassified, for the points ``rows``."""
        u = u.detach().requires_grad_(True)
        logits = classifier(cvae.generator(x[rows], mu_p[rows] + sigma_p[rows] * u))
        loss = (F.cross_entropy(logits, y[rows], reduction="none") if target is None
                else dlr_targeted(logits, y[rows], target[rows]))
        return loss.detach(), input_gradient(loss.sum(), u), (logits.argmax(1) != y[rows]).detach()

    def record(rows: Tensor, u: Tensor, wrong: Tensor) -> None:
        newly = rows[wrong & ~fooled[rows]]
        best[newly] = u[wrong & ~fooled[rows]].detach()
        fooled[newly] = True

    for _ in range(restarts):
        rows = torch.nonzero(~fooled).flatten()
        if not len(rows):
            break
        start = uniform_ball(dim, eps, draws.subset(rows.cpu()))
        u = torch.zeros_like(mu_p)
        u[rows] = start.to(mu_p)
        loss, grad = torch.zeros(len(x), device=device), torch.zeros_like(mu_p)
        loss[rows], grad[rows], wrong = loss_and_grad(rows, u[rows])
        record(rows, u[rows], wrong)
        eta = torch.full((len(x),), 2 * eps, device=device)
        u_best, loss_best, grad_best = u.clone(), loss.clone(), grad.clone()
        u_prev = u.clone()
        improved = torch.zeros(len(x), device=device)
        eta_at_mark, best_at_mark, last_mark = eta.clone(), loss_best.clone(), 0
        for k in range(steps):
            rows = rows[~fooled[rows]]
            if not len(rows):
                break
            alpha = 1.0 if k == 0 else MOMENTUM
            with torch.no_grad():
                step = eta[rows, None] * normalized(grad[rows])
                z = project_l2(u[rows] + step, eps)
                moved = project_l2(u[rows] + alpha * (z - u[rows]) + (1 - alpha) * (u[rows] - u_prev[rows]), eps)
                u_prev[rows] = u[rows]
                u[rows] = moved
            new_loss, grad[rows], wrong = loss_and_grad(rows, u[rows])
            record(rows, u[rows], wrong)
            with torch.no_grad():
                improved[rows] += (new_loss > loss[rows]).float()
                loss[rows] = new_loss
                better = new_loss > loss_best[rows]
                u_best[rows[better]] = u[rows[better]]
                loss_best[rows[better]] = new_loss[better]
                grad_best[rows[better]] = grad[rows[better]]
            if k + 1 in marks:
                with torch.no_grad():
                    few = improved[rows] < RHO * (k + 1 - last_mark)
                    stalled = (eta_at_mark[rows] == eta[rows]) & (best_at_mark[rows] == loss_best[rows])
                    halve = rows[few | stalled]
                    eta[halve] /= 2
                    u[halve], u_prev[halve] = u_best[halve], u_best[halve]  # go on from the best point, smaller step
                    loss[halve], grad[halve] = loss_best[halve], grad_best[halve]
                    improved.zero_()
                    eta_at_mark, best_at_mark, last_mark = eta.clone(), loss_best.clone(), k + 1
        standing = ~fooled
        best[standing] = u_best[standing]
    with torch.no_grad():
        return best, fooled
