"""The ``latent-smoothing`` family: randomized smoothing in a learned perturbation set's latent space
(Cohen et al., 2019, with the noise moved to u as in Wong & Kolter, 2021).

The smoothed classifier predicts the most likely class of f(g(x, mu_p + sigma_p * u)), u ~ N(0, sigma^2 I).
Certification: n0 selection samples pick the candidate class; n estimation samples give its count,
whose one-sided Clopper-Pearson lower bound p_A at level alpha certifies the radius
R = sigma * Phi^-1(p_A) in u; the point abstains when p_A < 1/2. A point counts as certified when the
smoothed classifier predicts its true class with a radius of at least ``radius`` (a number or p50,
p75, ...). Abstentions are a metric of their own, never a class; per-example columns keep each
certified radius, so certified accuracy at any other radius can be read off the store.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from bench.families.learned_sets.cvae import CVAE
from bench.families.learned_sets.sets import Radius
from bench.families.learned_sets.threats import CVAEThreat, CVAEThreatParams
from bench.metrics import Metric
from bench.params import Samples
from bench.stats import clopper_pearson_bounds
from bench.tasks.classifier import logits
from bench.threats.base import THREAT_FAMILIES, Batch, Outcome, Target


def clopper_pearson_lower(successes: Tensor, trials: int, alpha: float) -> Tensor:
    """One-sided (1 - alpha) lower confidence bound of a binomial proportion (0 when there is no success)."""
    lower, _ = clopper_pearson_bounds(successes.cpu().double().numpy(), trials, alpha)
    return torch.from_numpy(lower)


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
        perturbed = cvae.generator(x.repeat(k, *([1] * (x.ndim - 1))), z)
        votes = logits(classifier, perturbed, num_classes).argmax(1).view(k, len(x))  # checked: no NaN votes
        counts += torch.nn.functional.one_hot(votes.cpu(), num_classes).sum(0)
        done += k
    return counts


def classes(target: Target, x: Tensor) -> int:
    """The number of classes: the dataset's, else the model's output width."""
    if target.num_classes is not None:
        return target.num_classes
    with torch.no_grad():
        return int(logits(target.module, x[:1]).shape[1])


class LatentSmoothingParams(CVAEThreatParams):
    sigma: float = Field(gt=0)
    n0: Samples = 100  # selection samples
    n: Samples = 1000  # estimation samples
    alpha: float = Field(0.001, gt=0, lt=0.5)
    radius: Radius = 0.0  # certified accuracy is reported at this latent radius
    chunk: Samples = 1000  # generator forward passes per round; it orders the noise draws, so it is protocol


@THREAT_FAMILIES.register("latent-smoothing")
class LatentSmoothing(CVAEThreat):
    """Certifies the smoothed classifier; a point that abstains certifies nothing (radius 0) and counts
    as wrong. The smoothed classifier may be right where the base classifier is wrong."""

    Params = LatentSmoothingParams
    metrics = (Metric("certified_acc", "certified", "certified accuracy at the card's radius", agg="rate"),
               Metric("smoothed_acc", "smoothed_correct", "smoothed accuracy (abstentions wrong)", agg="rate"),
               Metric("abstain_rate", "abstain", "abstention rate", agg="rate", higher_is_better=False))
    headline = "certified_acc"

    def attack(self, target: Target, batch: Batch) -> Outcome:
        p, model, x, y = self.params, target.module, batch.x, batch.y
        self.check_input(x)
        cvae, gen = self.cvae(x.device), batch.generator()
        num_classes = classes(target, x)
        candidate, p_lower = smoothed_prediction(cvae, model, x, p, num_classes, gen)
        abstain = p_lower < 0.5
        normal = torch.distributions.Normal(0.0, 1.0)
        radius = torch.where(abstain, torch.zeros_like(p_lower),
                             p.sigma * normal.icdf(p_lower.clamp(0.5, 1 - 1e-12).float()).double())
        smoothed_correct = ~abstain & (candidate == y.cpu())
        certified = smoothed_correct & (radius >= self.radius(p.radius, x.device))
        return Outcome(values={"abstain": abstain, "smoothed_correct": smoothed_correct, "certified": certified,
                               "cert_radius": radius.float(), "p_lower": p_lower.float()})


def smoothed_prediction(cvae: CVAE, classifier: nn.Module, x: Tensor, p: "LatentSmoothingParams", num_classes: int,
                        gen: torch.Generator, shift: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(candidate class, one-sided lower bound p_A) of the smoothed classifier at x, with the latent noise
    centred at ``shift`` (a point u of the ball; 0 by default): n0 selection and n estimation samples."""
    moved = _Shifted(cvae, shift) if shift is not None else cvae
    kwargs = dict(sigma=p.sigma, num_classes=num_classes, gen=gen, chunk=p.chunk)
    candidate = class_counts(moved, classifier, x, samples=p.n0, **kwargs).argmax(1)
    counts = class_counts(moved, classifier, x, samples=p.n, **kwargs)
    return candidate, clopper_pearson_lower(counts.gather(1, candidate.view(-1, 1)).squeeze(1), p.n, p.alpha)


class _Shifted(nn.Module):
    """The CVAE with its prior mean moved to mu_p + sigma_p * shift: smoothing noise centred at u = shift."""

    def __init__(self, cvae: CVAE, shift: Tensor):
        super().__init__()
        self.cvae, self.shift, self.generator = cvae, shift, cvae.generator

    def prior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu_p, logvar_p = self.cvae.prior(x)
        return mu_p + (0.5 * logvar_p).exp() * self.shift, logvar_p
