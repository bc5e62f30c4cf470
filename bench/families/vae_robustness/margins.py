"""The ``vae-margin`` family: r-robustness margins of a VAE (Camuto et al., AISTATS 2021), per point.

A VAE is r-robust at x' when its stochastic reconstruction stays within r of the clean deterministic one,
||g(z') - g(mu(x))||_2 <= r with z' ~ q(z | x'), with probability above one half. Every probability here is a
count of noise draws that are each point's own (``Batch.point_draws``, keyed by the run's seed and the point, as
are the attack's random starts), so a point's numbers do not depend on which points share its batch. Every claim
made from a count is made at the one-sided level ``alpha`` with an exact (Clopper-Pearson) bound; the default
0.001 is randomized smoothing's (Cohen et al. 2019), whose argument the first-order margin is: on a 200-point run
about 0.2 points are expected to have a lower bound above their true p0. Per point:

- ``p0``: the share of ``p0_samples`` draws (default 1,000) at x' = x that stay within r; ``p0_lower`` its lower
  bound; ``at_cap``: every draw stayed within r, so p0_lower = alpha^(1 / p0_samples) (0.9931 for 1,000 draws at
  alpha 0.001) and the margin bound is limited by the number of draws, not by the model;
- ``margin_bound``: the first-order margin sigma_min(x) * Phi^-1(p0_lower) / ||J_mu(x)||_F (0 when
  p0_lower <= 1/2). Camuto et al.'s argument holds for any lower bound on p0, so with p0_lower (not the
  estimate, which needed a cap at p0 = 1) the only approximation left is the linearisation of the encoder mean:
  an *estimate*, not a certificate;
- ``margin_low``, ``margin_est``: the empirical margin, bracketed. A maximum-damage attack (PGD on
  ||g(mu(x')) - g(mu(x))||_2 in the L2 ball of radius t) *breaks* x at t when the probability at its point,
  from ``samples`` draws per point (default 200; the same draws at every t, see ``Breaker``), has an upper bound
  <= 1/2. Bisection on [0, max_radius] ends with the largest radius not broken (``margin_low``) and the smallest
  broken (``margin_est``): resolution max_radius / 2^bisection. An attack can miss a worse point, so margin_est is
  an upper bound on the true margin, wrong otherwise only where a "broken" verdict was (probability <= alpha
  each, so <= (bisection + 1) * alpha per point). Both are 0 where x itself is shown not r-robust (p0's upper
  bound <= 1/2);
- ``censored``: x is not broken even at max_radius: its margin is above the search's range, and margin_low =
  margin_est = max_radius there, a lower bound. The metric ``margin_est_censored`` (the median of ``censored``)
  is 1 when more than half the points are censored: the median margin_est is then only "at least max_radius";
- ``violation``: the bound exceeds the attack's margin at an uncensored point, which a valid lower bound never
  does (the linearisation ignores higher-order terms, so some violations are expected; their rate is reported).

The headline is the median empirical margin (higher is better).
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from bench.errors import BenchError, NotApplicable
from bench.families.vae_robustness.attacks import maximise, not_a_vae
from bench.metrics import Metric
from bench.ops.draws import Draws
from bench.params import Params, Samples, Steps
from bench.stats import clopper_pearson_bounds
from bench.tasks.generative import model_name
from bench.threats.base import THREAT_FAMILIES, Batch, Outcome, Target, Threat

NORMAL = torch.distributions.Normal(0.0, 1.0)
CHUNK = 4096  # latent draws decoded at once


class MarginParams(Params):
    r: float = Field(gt=0)  # the reconstruction radius, in the L2 norm of images in [0, 1]
    samples: Samples = Field(200, gt=1)  # noise draws per point for each probability during the bisection
    p0_samples: Samples = Field(1000, gt=1)  # noise draws per point for the clean probability p0
    alpha: float = Field(0.001, gt=0, lt=0.5)  # one-sided level of every bound on a probability (as Cohen et al.)
    max_radius: float = Field(4.0, gt=0)  # the bisection's upper end (L2, input space)
    bisection: Steps = 8  # halvings of the radius interval
    steps: Steps = 20  # PGD steps of the attack at each radius (step 2.5 * radius / steps)


@torch.no_grad()
def inside_counts(model: nn.Module, x: Tensor, centre: Tensor, noise: Tensor, r: float) -> Tensor:
    """Per point, how many of its own noise draws (points, draws, latent) give a reconstruction g(mu + sigma * e)
    within r of its ``centre``; all points' draws are decoded together, CHUNK latents at a time."""
    mu, logvar = model.encode(x)
    noise = noise.to(mu.device)
    z = (mu[:, None] + (0.5 * logvar).exp()[:, None] * noise).flatten(0, 1)
    owner = torch.arange(len(x), device=mu.device).repeat_interleave(noise.shape[1])
    inside = torch.zeros(len(x), device=mu.device)
    for start in range(0, len(z), CHUNK):
        rows = owner[start:start + CHUNK]
        out = model.mean(model.decode(z[start:start + CHUNK]))
        inside.index_add_(0, rows, ((out - centre[rows]).flatten(1).norm(dim=1) <= r).float())
    return inside


def bounds(count: Tensor, n: int, alpha: float) -> tuple[Tensor, Tensor]:
    """One-sided Clopper-Pearson lower and upper bounds of the probabilities count / n, each at level alpha."""
    low, high = clopper_pearson_bounds(count.cpu().numpy(), n, alpha)
    return (torch.from_numpy(low).float().to(count.device), torch.from_numpy(high).float().to(count.device))


def jacobian_frobenius(model: nn.Module, x: Tensor) -> Tensor:
    """||d mu / d x||_F per point, one vector-Jacobian product per latent (points do not interact)."""
    x = x.detach().requires_grad_(True)
    mu = model.encode(x)[0]
    total = torch.zeros(len(x), device=x.device)
    for j in range(mu.shape[1]):
        grad = torch.autograd.grad(mu[:, j].sum(), x, retain_graph=j < mu.shape[1] - 1)[0]
        total += grad.flatten(1).pow(2).sum(1)
    return total.sqrt()


def first_order_bound(p0_lower: Tensor, sigma_min: Tensor, jacobian: Tensor) -> Tensor:
    """sigma_min * Phi^-1(p0_lower) / ||J||_F where p0_lower > 1/2, else 0 (p0_lower < 1: no cap needed)."""
    bound = sigma_min * NORMAL.icdf(p0_lower.cpu()).to(p0_lower.device) / jacobian.clamp_min(1e-12)
    return torch.where(p0_lower > 0.5, bound, torch.zeros_like(bound))


def max_damage(model: nn.Module, x: Tensor, centre: Tensor, radius: Tensor, steps: int,
               gen: torch.Generator | Draws) -> Tensor:
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


class Breaker:
    """The bisection's verdict "broken at radius t" for a batch, from each point's own attack starts and its own
    ``samples`` noise draws (drawn once: every radius sees the same draws, so verdicts differ by the attack only).

    Broken means at most ``most`` draws inside r: the Clopper-Pearson upper bound of the probability is <= 1/2.
    Draws are decoded ROUND at a time and a point stops as soon as its verdict cannot change (curtailed sampling:
    the same verdict as with every draw, for a fraction of the decodes where the probability is near 0 or 1)."""

    ROUND = 25

    def __init__(self, model: nn.Module, x: Tensor, centre: Tensor, latent: int, p: MarginParams, batch: Batch):
        everyone = torch.ones(len(x), dtype=torch.bool)
        self.model, self.x, self.centre, self.p = model, x, centre, p
        self.noise = batch.point_draws(everyone, "margin/bisection").randn((p.samples, latent))
        self.starts = batch.point_draws(everyone, "margin/attack")
        self.most = int((bounds(torch.arange(p.samples + 1.0), p.samples, p.alpha)[1] <= 0.5).sum()) - 1

    def __call__(self, rows: Tensor, radius: Tensor) -> Tensor:
        """For the points at mask ``rows``: is the probability at the attack's point at ``radius`` shown <= 1/2?"""
        if not rows.any():
            return torch.zeros(0, dtype=torch.bool, device=self.x.device)
        x, centre, noise, n = self.x[rows], self.centre[rows], self.noise[rows.cpu()], self.p.samples
        x_adv = max_damage(self.model, x, centre, radius[rows], self.p.steps, self.starts.subset(rows))
        inside = torch.zeros(len(x), device=x.device)
        for start in range(0, n, self.ROUND):
            open_ = ((inside <= self.most) & (inside + n - start > self.most)).nonzero().flatten()
            if not len(open_):
                break
            inside[open_] += inside_counts(self.model, x_adv[open_], centre[open_],
                                           noise[open_.cpu(), start:start + self.ROUND], self.p.r)
        return inside <= self.most


@THREAT_FAMILIES.register("vae-margin")
class VAEMargin(Threat):
    tasks = ("generative",)
    Params = MarginParams
    params: MarginParams
    revision = 2  # 2: per-point draws, Clopper-Pearson bounds, the bisection's bracket
    metrics = (
        Metric("margin_est", "margin_est", "empirical margin (median, L2; attack upper bound)", agg="quantile",
               q=0.5),
        Metric("margin_est_censored", "censored", "median empirical margin censored (1: only >= max_radius)",
               agg="quantile", q=0.5, higher_is_better=False),
        Metric("margin_bound", "margin_bound", "first-order margin from p0's lower bound (median; an estimate, "
               "not a certificate)", agg="quantile", q=0.5),
        Metric("violation", "violation", "bound above the attack's margin", agg="rate", higher_is_better=False),
        Metric("p0", "p0", "clean r-robustness probability", agg="mean"),
        Metric("p0_lower", "p0_lower", "lower bound of p0 (one-sided, level alpha)", agg="mean"),
        Metric("at_cap", "at_cap", "every p0 draw inside: bound limited by the draws", agg="rate",
               higher_is_better=False),
        Metric("censored", "censored", "not broken at max_radius (margin censored)", agg="rate",
               higher_is_better=False),
    )
    headline = "margin_est"

    def unsupported(self, model: nn.Module) -> NotApplicable | None:
        return not_a_vae(model)

    def attack(self, target: Target, batch: Batch) -> Outcome:
        p, model, x = self.params, target.module, batch.x.detach()
        self.require_supported(model, model_name(model))
        with torch.no_grad():
            centre = model.reconstruct(x)
            mu, logvar = model.encode(x)
        noise = batch.point_draws(torch.ones(len(x), dtype=torch.bool), "margin/p0").randn((p.p0_samples, mu.shape[1]))
        count = inside_counts(model, x, centre, noise, p.r)
        p0_lower, p0_upper = bounds(count, p.p0_samples, p.alpha)
        sigma_min = (0.5 * logvar).exp().min(1).values
        jacobian = jacobian_frobenius(model, x)
        bound = first_order_bound(p0_lower, sigma_min, jacobian)

        breaker = Breaker(model, x, centre, mu.shape[1], p, batch)
        zero = torch.zeros(len(x), device=x.device)
        low, high = zero.clone(), torch.full((len(x),), p.max_radius, device=x.device)
        todo = p0_upper > 0.5  # where x itself is shown not r-robust, the margin is 0
        censored = torch.zeros_like(todo)
        censored[todo] = ~breaker(todo, high)
        active = todo & ~censored
        for _ in range(p.bisection):
            mid = (low + high) / 2
            broken = torch.zeros_like(active)
            broken[active] = breaker(active, mid)
            high, low = torch.where(broken, mid, high), torch.where(active & ~broken, mid, low)
        low = torch.where(censored, high, torch.where(todo, low, zero))
        high = torch.where(todo, high, zero)
        return Outcome(values={"p0": count / p.p0_samples, "p0_lower": p0_lower, "at_cap": count == p.p0_samples,
                               "sigma_min": sigma_min, "jacobian_fro": jacobian.detach(), "margin_bound": bound,
                               "margin_low": low, "margin_est": high, "censored": censored,
                               "violation": (bound > high) & ~censored})
