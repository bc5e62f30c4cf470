"""The ``learned-cvae-real-fit`` family: are the learned set's adversarial examples real perturbations?

It runs exactly the default latent attack ensemble (``learned-cvae``: same members, same draws, so the same
verdicts), then fits a rotation, scale and shift to each adversarial example it found: gradient descent on
the pixel error between warp(x) and the example from a grid of starting angles and scales, keeping the best.
Per broken point it stores the fitted transformation, how much of the example's change it explains
(``fit_explained``: 1 - fit error / error of x itself; 0 for points not broken) and whether the fit lies
outside the range of the pairs the set was learned from; the headline beside robust accuracy is the share
of all points broken by an example whose best real fit is outside that range (divide by the broken share for
the share of examples). An example far outside the range, or poorly explained, is one the real family does
not make: the learned ball is larger than the real family.
"""
from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from bench.families.learned_sets.latent_ensemble import LatentEnsemble, LatentEnsembleParams
from bench.families.learned_sets.pairs import RTS, Pairs, affine_warp, rts_theta
from bench.families.learned_sets.real_grid import rts_family
from bench.metrics import Metric
from bench.ops.draws import Draws
from bench.params import Steps
from bench.tasks import Task
from bench.threats.base import THREAT_FAMILIES, Target
from bench.threats.step import Candidates

SLACK = 0.01  # a fit within 1% of a range's width beyond its end still counts as inside


class RealFitParams(LatentEnsembleParams):
    pairs: Pairs | None = None  # the real family (default: the pairs the CVAE card was learned from)
    fit_steps: Steps = 100
    angles: Steps = 5  # starting angles over the pairs' rotation range (times 3 starting scales)
    lr: float = Field(0.05, gt=0)


def fit_rts(x: Tensor, target: Tensor, spec: RTS, *, angles: int, steps: int, lr: float) -> tuple[Tensor, Tensor]:
    """Per image, the rotation-scale-shift (angle in degrees, scale, shift x, shift y as a share of the side)
    whose warp of x is closest to ``target`` in mean squared error, and that error: Adam from every start of a
    grid of angles and scales, the best start kept."""
    starts = torch.cartesian_prod(torch.linspace(-spec.rotation, spec.rotation, angles) * math.pi / 180,
                                  torch.tensor([spec.scale[0], 1.0, spec.scale[1]]).log())
    k, n = len(starts), len(x)
    angle = starts[:, 0].repeat_interleave(n).to(x.device).requires_grad_(True)
    log_scale = starts[:, 1].repeat_interleave(n).to(x.device).requires_grad_(True)
    shift = torch.zeros(k * n, 2, device=x.device, requires_grad=True)
    images, goal = x.repeat(k, 1, 1, 1), target.repeat(k, 1, 1, 1)
    optimizer = torch.optim.Adam([angle, log_scale, shift], lr=lr)

    def error() -> Tensor:
        warped = affine_warp(images, rts_theta(angle, log_scale.exp(), shift[:, 0], shift[:, 1]))
        return ((warped - goal) ** 2).flatten(1).mean(1)

    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            error().sum().backward()
            optimizer.step()
    with torch.no_grad():
        final = error().view(k, n)
        best = final.argmin(0)
        pick = best * n + torch.arange(n, device=x.device)
        params = torch.stack([angle[pick] * 180 / math.pi, log_scale[pick].exp(), shift[pick, 0] / 2,
                              shift[pick, 1] / 2], 1)
        return params, final[best, torch.arange(n, device=x.device)]


def outside(params: Tensor, spec: RTS) -> Tensor:
    """Whether each fitted transformation lies outside the pairs' ranges (by more than ``SLACK`` of a width)."""
    angle, scale, shift = params[:, 0], params[:, 1], params[:, 2:]
    wide = 2 * spec.rotation * SLACK, (spec.scale[1] - spec.scale[0]) * SLACK, 2 * spec.translate * SLACK
    return ((angle.abs() > spec.rotation + wide[0]) | (scale < spec.scale[0] - wide[1])
            | (scale > spec.scale[1] + wide[1]) | (shift.abs() > spec.translate + wide[2]).any(1))


@THREAT_FAMILIES.register("learned-cvae-real-fit")
class RealFit(LatentEnsemble):
    Params = RealFitParams
    params: RealFitParams
    revision = 1
    budget = ()  # the convergence check belongs to the ensemble card this one mirrors

    def __init__(self, params: RealFitParams):
        super().__init__(params)
        self.spec = rts_family(self.card, params.pairs)

    def metrics_for(self, task: Task) -> tuple[Metric, ...]:
        return super().metrics_for(task) + (
            Metric("fit_outside_rate", "fit_outside", "broken by an example whose best real fit is out of range",
                   agg="rate", higher_is_better=False),)

    def perturb(self, target: Target, x: Tensor, y: Tensor, draws: Draws) -> Candidates:
        out = super().perturb(target, x, y, draws)
        broken = (out.pred != y).cpu()
        params = torch.zeros(len(x), 4)
        explained = torch.zeros(len(x))
        if broken.any():
            rows = broken.to(x.device)
            fitted, error = fit_rts(x[rows], out.x[rows], self.spec, angles=self.params.angles,
                                    steps=self.params.fit_steps, lr=self.params.lr)
            change = ((x[rows] - out.x[rows]) ** 2).flatten(1).mean(1).clamp_min(1e-12)
            params[broken] = fitted.cpu()
            explained[broken] = (1 - error / change).clamp(min=0).cpu()
        names = ("fit_angle", "fit_scale", "fit_shift_x", "fit_shift_y")
        out.columns |= {name: params[:, i] for i, name in enumerate(names)}
        out.columns |= {"fit_explained": explained, "fit_outside": broken & outside(params, self.spec)}
        return out
