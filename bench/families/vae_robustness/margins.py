"""The ``vae-margin`` family: r-robustness margins of a VAE (Camuto et al., AISTATS 2021), per point.

A VAE is r-robust at x' when its stochastic reconstruction stays within r of the clean deterministic one,
||g(z') - g(mu(x))||_2 <= r with z' ~ q(z | x'), with probability above one half. Per point:

- ``p0``: that probability at x' = x, from ``samples`` noise draws (the shard's seeded generator);
- ``margin_bound``: the first-order margin sigma_min(x) * Phi^-1(p0) / ||J_mu(x)||_F (0 when p0 <= 1/2).
  It linearises the encoder mean and is an *estimate*, not a certificate. p0 is capped at
  1 - 1/(2 * samples) so that Phi^-1 stays finite;
- ``margin_est``: the empirical margin: the smallest L2 radius at which a maximum-damage attack (PGD on
  ||g(mu(x')) - g(mu(x))||_2) brings the estimated probability at x' to one half or below, found by
  bisection on [0, max_radius]. An attack can miss a worse point, so this is an upper bound on the true
  margin; a point still r-robust at max_radius is censored there (``censored``);
- ``violation``: the bound exceeds the attack's margin, which a valid lower bound never does (the
  linearisation ignores higher-order terms, so some violations are expected; their rate is reported).

The headline is the median empirical margin (higher is better).
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from bench.errors import BenchError, NotApplicable
from bench.families.vae_robustness.attacks import maximise, not_a_vae
from bench.metrics import Metric
from bench.params import Params, Samples, Steps
from bench.tasks.generative import model_name
from bench.threats.base import THREAT_FAMILIES, Batch, Outcome, Target, Threat

NORMAL = torch.distributions.Normal(0.0, 1.0)


class MarginParams(Params):
    r: float = Field(gt=0)  # the reconstruction radius, in the L2 norm of images in [0, 1]
    samples: Samples = Field(200, gt=1)  # noise draws for each probability estimate
    max_radius: float = Field(4.0, gt=0)  # the bisection's upper end (L2, input space)
    bisection: Steps = 8  # halvings of the radius interval
    steps: Steps = 20  # PGD steps of the attack at each radius (step 2.5 * radius / steps)


class Stochastic:
    """Probability estimates of r-robustness for one batch, with one set of noise draws for all radii."""

    def __init__(self, model: nn.Module, x: Tensor, r: float, samples: int, gen: torch.Generator):
        self.model, self.r = model, r
        with torch.no_grad():
            self.centre = model.reconstruct(x)
        latent = model.encode(x[:1])[0].shape[1]
        self.noise = torch.randn(samples, latent, generator=gen).to(x.device)

    @torch.no_grad()
    def probability(self, x: Tensor) -> Tensor:
        """Per point: the share of noise draws whose reconstruction stays within r of the clean one."""
        mu, logvar = self.model.encode(x)
        std = (0.5 * logvar).exp()
        inside = torch.zeros(len(x), device=x.device)
        for e in self.noise:
            out = self.model.mean(self.model.decode(mu + std * e))
            inside += ((out - self.centre).flatten(1).norm(dim=1) <= self.r).float()
        return inside / len(self.noise)


def jacobian_frobenius(model: nn.Module, x: Tensor) -> Tensor:
    """||d mu / d x||_F per point, one vector-Jacobian product per latent (points do not interact)."""
    x = x.detach().requires_grad_(True)
    mu = model.encode(x)[0]
    total = torch.zeros(len(x), device=x.device)
    for j in range(mu.shape[1]):
        grad = torch.autograd.grad(mu[:, j].sum(), x, retain_graph=j < mu.shape[1] - 1)[0]
        total += grad.flatten(1).pow(2).sum(1)
    return total.sqrt()


def first_order_bound(p0: Tensor, sigma_min: Tensor, jacobian: Tensor, samples: int) -> Tensor:
    """sigma_min * Phi^-1(p0) / ||J||_F where p0 > 1/2, else 0 (p0 capped at 1 - 1/(2 samples))."""
    capped = p0.clamp(max=1 - 1 / (2 * samples))
    bound = sigma_min * NORMAL.icdf(capped.cpu()).to(p0.device) / jacobian.clamp_min(1e-12)
    return torch.where(p0 > 0.5, bound, torch.zeros_like(bound))


def max_damage(model: nn.Module, x: Tensor, centre: Tensor, radius: Tensor, steps: int,
               gen: torch.Generator) -> Tensor:
    """The maximum-damage attack in per-point L2 balls of ``radius``: maximise ||g(mu(x')) - g(mu(x))||_2."""
    best = maximise(lambda x_adv: (model.reconstruct(x_adv) - centre).flatten(1).norm(dim=1), x, norm="L2",
                    radius=radius, step_size=2.5 * radius / steps, steps=steps, restarts=1, gen=gen,
                    include_clean=False)
    return _checked(x, best, radius)


def _checked(x: Tensor, x_adv: Tensor, radius: Tensor) -> Tensor:
    """Refuse points outside their own L2 ball or the [0, 1] box (an attack bug, never a number)."""
    distance = (x_adv - x).flatten(1).norm(dim=1)
    if not torch.isfinite(x_adv).all() or bool((distance > radius * (1 + 1e-4) + 1e-6).any()) or \
            bool(((x_adv < 0) | (x_adv > 1)).any()):
        raise BenchError("vae-margin's attack returned points outside their L2 ball or [0, 1]",
                         "this is a bug in the attack, not the model: report it with the model and threat")
    return x_adv


@THREAT_FAMILIES.register("vae-margin")
class VAEMargin(Threat):
    tasks = ("generative",)
    Params = MarginParams
    params: MarginParams
    metrics = (
        Metric("margin_est", "margin_est", "empirical margin (median, L2; attack upper bound)", agg="quantile",
               q=0.5),
        Metric("margin_bound", "margin_bound", "first-order margin (median; an estimate, not a certificate)",
               agg="quantile", q=0.5),
        Metric("violation", "violation", "bound above the attack's margin", agg="rate", higher_is_better=False),
        Metric("p0", "p0", "clean r-robustness probability", agg="mean"),
        Metric("censored", "censored", "still r-robust at max_radius", agg="rate"),
    )
    headline = "margin_est"

    def unsupported(self, model: nn.Module) -> NotApplicable | None:
        return not_a_vae(model)

    def attack(self, target: Target, batch: Batch) -> Outcome:
        p, model, x = self.params, target.module, batch.x.detach()
        self.require_supported(model, model_name(model))
        gen = batch.generator()
        stochastic = Stochastic(model, x, p.r, p.samples, gen)
        p0 = stochastic.probability(x)
        with torch.no_grad():
            sigma_min = (0.5 * model.encode(x)[1]).exp().min(1).values
        jacobian = jacobian_frobenius(model, x)
        bound = first_order_bound(p0, sigma_min, jacobian, p.samples)
        low = torch.zeros(len(x), device=x.device)
        high = torch.full((len(x),), p.max_radius, device=x.device)
        robust_at_max = stochastic.probability(max_damage(model, x, stochastic.centre, high, p.steps, gen)) > 0.5
        for _ in range(p.bisection):
            mid = (low + high) / 2
            broken = stochastic.probability(max_damage(model, x, stochastic.centre, mid, p.steps, gen)) <= 0.5
            high, low = torch.where(broken, mid, high), torch.where(broken, low, mid)
        estimate = torch.where(robust_at_max, torch.full_like(high, p.max_radius), high)  # else: smallest broken
        estimate = torch.where(p0 <= 0.5, torch.zeros_like(high), estimate)
        return Outcome(values={"p0": p0, "sigma_min": sigma_min, "jacobian_fro": jacobian.detach(),
                               "margin_bound": bound, "margin_est": estimate, "censored": robust_at_max & (p0 > 0.5),
                               "violation": bound > estimate})
