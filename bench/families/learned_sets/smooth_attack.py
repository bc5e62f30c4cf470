"""The ``latent-smoothing-attack`` family: the smoothed classifier itself attacked in the latent ball.

A certificate of a smoothed classifier must be compared with an attack on that same classifier, not on
its base classifier (they are different classifiers: the smoothed one can be right where the base one is
wrong). SmoothAdv (Salman et al., 2019), moved to the latent ball: PGD on u maximises the cross-entropy of
the smoothed soft prediction, the mean softmax of f(g(x, mu_p + sigma_p (u + delta))) over ``samples``
noise draws delta ~ N(0, sigma^2) per step; then the smoothed classifier predicts at the point found, as
the certifying family does (n0 selection, n estimation samples, abstain when the lower bound p_A < 1/2,
an abstention counting as wrong). A point certified at radius R cannot be broken by an attack within R
(up to the certificate's alpha and the prediction's sampling), which the tests check.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from bench.families.learned_sets.cvae import CVAE
from bench.families.learned_sets.sets import Radius
from bench.families.learned_sets.smoothing import classes, smoothed_prediction
from bench.families.learned_sets.threats import CVAEThreat, CVAEThreatParams, checked_norm
from bench.metrics import Metric
from bench.ops.gradients import input_gradient
from bench.ops.norms import normalized, project_l2
from bench.params import Samples, Steps
from bench.threats.base import THREAT_FAMILIES, Batch, Outcome, Target


class SmoothAttackParams(CVAEThreatParams):
    sigma: float = Field(gt=0)  # the smoothing noise of the classifier attacked (its certifying card's sigma)
    eps: Radius
    steps: Steps = 20
    samples: Samples = 16  # noise draws per attack step
    n0: Samples = 100  # the smoothed prediction at the point found, as the certifying family makes it
    n: Samples = 1000
    alpha: float = Field(0.001, gt=0, lt=0.5)
    chunk: Samples = 1000


def smooth_adv(cvae: CVAE, classifier: nn.Module, x: Tensor, y: Tensor, *, sigma: float, eps: float, steps: int,
               samples: int, gen: torch.Generator) -> Tensor:
    """The latent point u (|u|_2 <= eps) found by PGD on the smoothed soft prediction's cross-entropy."""
    with torch.no_grad():
        mu_p, logvar_p = cvae.prior(x)
        sigma_p = (0.5 * logvar_p).exp()
    u = torch.zeros_like(mu_p)
    step = 2.5 * eps / steps
    images = x.repeat(samples, *([1] * (x.ndim - 1)))
    for _ in range(steps):
        u.requires_grad_(True)
        noise = sigma * torch.randn((samples, *mu_p.shape), generator=gen).to(mu_p)
        z = (mu_p + sigma_p * (u + noise)).flatten(0, 1)
        probs = F.softmax(classifier(cvae.generator(images, z)), 1).view(samples, len(x), -1).mean(0)
        loss = -probs.gather(1, y.view(-1, 1)).clamp_min(1e-12).log().sum()
        with torch.no_grad():
            u = project_l2(u.detach() + step * normalized(input_gradient(loss, u)), eps)
    return u


@THREAT_FAMILIES.register("latent-smoothing-attack")
class LatentSmoothingAttack(CVAEThreat):
    Params = SmoothAttackParams
    params: SmoothAttackParams
    metrics = (Metric("robust_acc", "robust", "smoothed accuracy under attack (abstentions wrong)", agg="rate"),
               Metric("abstain_rate", "abstain", "abstention rate under attack", agg="rate", higher_is_better=False))
    headline = "robust_acc"
    gradient_based = True
    budget = ("steps", "samples")

    def attack(self, target: Target, batch: Batch) -> Outcome:
        p, model, x, y = self.params, target.module, batch.x, batch.y
        self.check_input(x)
        cvae, gen = self.cvae(x.device), batch.generator()
        eps = self.radius(p.eps, x.device)
        u = smooth_adv(cvae, model, x, y, sigma=p.sigma, eps=eps, steps=p.steps, samples=p.samples, gen=gen)
        latent_norm = checked_norm(u, eps, "the smoothed-classifier attack")
        candidate, p_lower = smoothed_prediction(cvae, model, x, p, classes(target, x), gen, shift=u)
        abstain = p_lower < 0.5
        robust = ~abstain & (candidate == y.cpu())
        return Outcome(values={"robust": robust, "abstain": abstain, "adv_pred": candidate,
                               "latent_norm": latent_norm.cpu(), "eps": torch.full((len(x),), eps)})
