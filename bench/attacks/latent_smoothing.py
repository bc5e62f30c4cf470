"""The ``latent-smoothing`` family: randomized smoothing in a learned perturbation set's latent space
(Cohen et al., 2019, with the noise moved to u as in Wong & Kolter, 2021).

The smoothed classifier predicts the most likely class of f(g(x, mu_p + sigma_p * u)), u ~ N(0, sigma^2 I).
Certification: n0 selection samples pick the candidate class; n estimation samples give its count,
whose one-sided Clopper-Pearson lower bound p_A at level alpha certifies the radius
R = sigma * Phi^-1(p_A) in u; the point abstains when p_A < 1/2. A point is counted robust when it
is certified with the true class at a radius of at least ``radius`` (a number or p50, p75, ...).
Per-example columns keep the certified radius, so any other radius can be read off the store.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from bench.attacks.base import Outcome
from bench.attacks.learned_cvae import CVAEThreat, CVAEThreatParams
from bench.models.cvae import CVAE
from bench.models.perturbation_set import Radius


def clopper_pearson_lower(successes: Tensor, trials: int, alpha: float) -> Tensor:
    """One-sided (1 - alpha) lower confidence bound of a binomial proportion (0 when there is no success)."""
    from scipy.stats import beta

    k = successes.cpu().double().numpy()
    lower = beta.ppf(alpha, k, trials - k + 1)
    return torch.from_numpy(lower).nan_to_num(0.0)


@torch.no_grad()
def class_counts(cvae: CVAE, classifier: nn.Module, x: Tensor, *, sigma: float, samples: int, num_classes: int,
                 gen: torch.Generator, chunk: int = 1000) -> Tensor:
    """(len(x), num_classes) counts of the classifier's votes over ``samples`` latent noise draws per point."""
    mu_p, logvar_p = cvae.prior(x)
    sigma_p = (0.5 * logvar_p).exp()
    counts = torch.zeros(len(x), num_classes, dtype=torch.long)
    per_round = max(1, chunk // len(x))
    done = 0
    while done < samples:
        k = min(per_round, samples - done)
        u = sigma * torch.randn((k, *mu_p.shape), generator=gen).to(mu_p)
        z = (mu_p + sigma_p * u).flatten(0, 1)  # (k * B, latent), draw-major
        votes = classifier(cvae.generator(x.repeat(k, *([1] * (x.ndim - 1))), z)).argmax(1).view(k, len(x))
        counts += torch.nn.functional.one_hot(votes.cpu(), num_classes).sum(0)
        done += k
    return counts


class LatentSmoothingParams(CVAEThreatParams):
    sigma: float = Field(gt=0)
    n0: int = Field(100, gt=0)  # selection samples
    n: int = Field(1000, gt=0)  # estimation samples
    alpha: float = Field(0.001, gt=0, lt=0.5)
    radius: Radius = 0.0  # certified accuracy is reported at this latent radius
    chunk: int = Field(1000, gt=0)  # generator forward passes per round (memory, not results)


class LatentSmoothing(CVAEThreat):
    family = "latent-smoothing"
    Params = LatentSmoothingParams
    robust_implies_clean: ClassVar[bool] = False  # the smoothed classifier may be right where f is wrong

    @classmethod
    def protocol(cls, params: LatentSmoothingParams) -> dict:
        out = super().protocol(params)
        out.pop("chunk")
        return out

    def attack(self, model: nn.Module, x: Tensor, y: Tensor, clean_pred: Tensor, seed: int,
               index: Tensor) -> Outcome:
        p = self.params
        self.check_input(x)
        cvae, gen = self.cvae(x.device), torch.Generator().manual_seed(seed)
        with torch.no_grad():
            num_classes = int(model(x[:1]).shape[1])
        kwargs = dict(sigma=p.sigma, num_classes=num_classes, gen=gen, chunk=p.chunk)
        candidate = class_counts(cvae, model, x, samples=p.n0, **kwargs).argmax(1)
        counts = class_counts(cvae, model, x, samples=p.n, **kwargs)
        p_lower = clopper_pearson_lower(counts.gather(1, candidate.view(-1, 1)).squeeze(1), p.n, p.alpha)
        abstain = p_lower < 0.5
        normal = torch.distributions.Normal(0.0, 1.0)
        radius = torch.where(abstain, torch.full_like(p_lower, -1.0),
                             p.sigma * normal.icdf(p_lower.clamp(0.5, 1 - 1e-12).float()).double())
        prediction = torch.where(abstain, torch.full_like(candidate, -1), candidate).to(y.device)
        certified = (~abstain).to(y.device) & (prediction == y) & (radius.to(y.device) >= self.radius(p.radius, x.device))
        return Outcome(robust=certified, adv_pred=prediction,
                       columns={"cert_radius": radius.float(), "abstain": abstain, "p_lower": p_lower.float()})
