"""The ``vae`` recipe: VAE, beta-VAE and beta-TCVAE training on unlabelled images.

- ``objective: elbo`` with ``beta``: maximise E_q[log p(x | z)] - beta * KL(q(z | x) || p(z)) (beta = 1: a VAE;
  beta > 1: a beta-VAE, Higgins et al. 2017);
- ``objective: beta-tcvae``: maximise E_q[log p(x | z)] - KL - (beta - 1) * TC, with the total correlation
  TC = KL(q(z) || prod_j q(z_j)) of the aggregate posterior estimated on each minibatch by minibatch-weighted
  sampling (Chen et al., 2018). The estimate carries a constant offset in the dataset size, which changes no
  gradient.

- ``objective: provae`` (Condessa & Kolter; schedule derived in the notes, section 6.2): maximise
  kappa * ELBO + (1 - kappa) * certified ELBO at eps_t: the clean ELBO alone for the first ``warmup`` of
  training, then eps_t ramping from 0 to ``eps`` and kappa from 1 to ``kappa_end`` over the next ``ramp``,
  then held there for the rest (the hold phase: without it, a ramp to the end of a one-cycle schedule reaches
  ``eps`` only at the last step, where the learning rate is 0, and the model is in effect trained at a third
  of it; ``provae_schedule`` and ``lr_weighted`` say what a schedule really trains at).

One reparameterised sample per image and step, from the step's seeded generator.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from bench.errors import CardError
from bench.families.vae_robustness.vae import gaussian_kl
from bench.recipes.base import RECIPES, Batch, Recipe, RecipeParams


def log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise log N(z; mu, exp(logvar))."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) / logvar.exp())


def total_correlation(z: Tensor, mu: Tensor, logvar: Tensor, dataset_size: int) -> Tensor:
    """Minibatch-weighted sampling estimate of TC = E[log q(z) - sum_j log q(z_j)] over the batch: log q(z_i) ~
    logsumexp_k log q(z_i | x_k) - log(N M), and the same per dimension."""
    m = len(z)
    pairwise = log_normal(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))  # (M, M, latent): z_i under q(.|x_k)
    offset = math.log(dataset_size * m)
    joint = torch.logsumexp(pairwise.sum(2), dim=1) - offset
    marginals = (torch.logsumexp(pairwise, dim=1) - offset).sum(1)
    return (joint - marginals).mean()


class VAEParams(RecipeParams):
    objective: Literal["elbo", "beta-tcvae", "provae"] = "elbo"
    beta: float = Field(1.0, ge=0)
    eps: float = Field(0.0, ge=0)  # provae: the L-inf radius the certified ELBO is trained at
    warmup: float = Field(0.0, ge=0, lt=1)  # provae: fraction of training on the clean ELBO alone, first
    ramp: float = Field(0.5, gt=0, le=1)  # provae: fraction of training over which eps and kappa then ramp
    kappa_end: float = Field(0.5, ge=0, le=1)  # provae: the clean ELBO's final weight (from 1)

    @model_validator(mode="after")
    def _provae(self) -> "VAEParams":
        if (self.objective == "provae") != (self.eps > 0):
            raise ValueError("objective: provae needs eps > 0, and eps is only for provae")
        if self.warmup + self.ramp > 1:
            raise ValueError(f"warmup + ramp is {self.warmup + self.ramp:g}; they are fractions of training, so at "
                             "most 1 (what is left of training holds eps and kappa_end)")
        return self


def provae_schedule(p: VAEParams, progress: float) -> tuple[float, float]:
    """(kappa, eps) at ``progress`` (the fraction of training done): warm-up, linear ramp, hold."""
    t = min(1.0, max(0.0, progress - p.warmup) / p.ramp)
    return 1 - (1 - p.kappa_end) * t, p.eps * t


def lr_weighted(recipe: Recipe, points: int = 10_000) -> dict[str, float]:
    """The learning-rate-weighted means of proVAE's eps and certified-term weight (1 - kappa) over training,
    and the share of that weight spent at the full eps: what the schedule effectively trains at."""
    p = recipe.params
    grid = (torch.arange(points, dtype=torch.float64) + 0.5) / points
    lr = torch.tensor([recipe.lr(float(t)) for t in grid], dtype=torch.float64)
    kappa, eps = (torch.tensor(v, dtype=torch.float64) for v in zip(*(provae_schedule(p, float(t)) for t in grid)))
    weight = lr / lr.sum()
    return {"eps": float((weight * eps).sum()), "certified_weight": float((weight * (1 - kappa)).sum()),
            "held": float(weight[eps >= p.eps].sum())}


@RECIPES.register("vae")
class VAETraining(Recipe):
    Params = VAEParams
    tasks = ("generative",)
    params: VAEParams

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        x = batch.x
        mu, logvar = model.encode(x)
        noise = torch.randn(mu.shape, generator=batch.gen).to(mu.device)
        z = mu + (0.5 * logvar).exp() * noise
        ll = model.log_likelihood(x, model.decode(z))
        kl = gaussian_kl(mu, logvar)
        p = self.params
        if p.objective == "elbo":
            return (-ll + p.beta * kl).mean()
        if p.objective == "provae":
            return self._provae(model, batch, (ll - kl).mean())
        return (-ll + kl).mean() + (p.beta - 1) * total_correlation(z, mu, logvar, self.train_size)

    def _provae(self, model: nn.Module, batch: Batch, elbo: Tensor) -> Tensor:
        """-(kappa * ELBO + (1 - kappa) * certified ELBO at eps_t), after ``warmup`` and ramped over ``ramp``;
        the certificate uses one fresh noise vector per step."""
        from bench.families.vae_robustness.certified import certifiable, elbo_lower_bound

        if not certifiable(model):
            raise CardError(f"objective: provae trains on the certified ELBO, which bounds conv-vae models, not "
                            f"{type(model).__name__}", "use an architecture: conv-vae card for proVAE")
        kappa, eps = provae_schedule(self.params, batch.progress)
        noise = torch.randn(1, model.latent, generator=batch.gen).to(batch.x.device)
        robust = elbo_lower_bound(model, batch.x, eps, noise).mean()
        return -(kappa * elbo + (1 - kappa) * robust)

    def positions(self, n_total: int) -> Tensor:
        chosen = super().positions(n_total)
        self.train_size = len(chosen)  # the N of the total-correlation estimator
        return chosen
