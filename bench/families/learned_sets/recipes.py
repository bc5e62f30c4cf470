"""Recipes of learned perturbation sets (Wong & Kolter, 2021): the CVAE that learns the set, and the
classifiers trained with it or with the real perturbations.

- ``cvae``: fit a CVAE to pairs (x, x~) with summed reconstruction + beta * KL, beta piecewise
  linear in the integer epoch, a validation slice kept out for the latent statistics;
- ``perturbation-aug``: train on real perturbed copies only (the paper's data-augmentation row);
- ``cvae-aug``: train on samples g(x, mu_p + sigma_p * u), u ~ N(0, sigma^2 I), unbounded;
- ``cvae-smoothing``: the same with a chosen sigma, the base classifier of latent smoothing;
- ``cvae-adv``: per example max(CE(f(x)), CE(f(x_adv))) with x_adv from latent PGD (7 steps,
  step eps/5); eps may be a percentile of the set's latent statistics (p75, max, ...);
- ``cvae-adv-apgd``: the same with x_adv from latent APGD on cross-entropy (the default threat's first
  member), the ablation of training against the stronger attack.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from bench.families.learned_sets.latent_apgd import latent_apgd
from bench.families.learned_sets.latent_pgd import latent_pgd
from bench.ops.draws import PointDraws
from bench.families.learned_sets.pairs import Pairs
from bench.families.learned_sets.sets import TASK, CVAERef, Radius, load_cvae, resolve_radius
from bench.params import Samples, Steps
from bench.recipes.base import RECIPES, Batch, Recipe, RecipeParams, Schedule


class CVAEParams(RecipeParams):
    pairs: Pairs
    beta: Schedule  # of the integer epoch
    val_size: Samples = 1000  # leading positions of the fixed permutation, kept for the statistics
    stats_passes: Steps = 5  # fresh pair draws over the validation slice for eps statistics


@RECIPES.register("cvae")
class CVAETraining(Recipe):
    Params = CVAEParams
    tasks = (TASK,)

    @property
    def reserved(self) -> int:
        return self.params.val_size

    def prepare(self, *, device: torch.device, data_root: str | None) -> None:
        self.source = self.params.pairs.build("train")

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        x_tilde = self.source(batch.x, batch.index, batch.gen)
        total, _, _ = model.loss(batch.x, x_tilde, self.params.beta.at(batch.epoch), batch.gen)
        return total


class UsesCVAE(RecipeParams):
    cvae: CVAERef


class _WithCVAE(Recipe):
    """Loads the frozen CVAE named by the params once, before training."""

    def prepare(self, *, device: torch.device, data_root: str | None) -> None:
        self.cvae_card = self.params.cvae.card
        self.cvae = load_cvae(self.cvae_card, device)

    def sample(self, x: Tensor, sigma: float, gen: torch.Generator) -> Tensor:
        with torch.no_grad():
            mu_p, _ = self.cvae.prior(x)
            return self.cvae.perturb(x, sigma * torch.randn(mu_p.shape, generator=gen).to(mu_p))


class AugParams(RecipeParams):
    pairs: Pairs


@RECIPES.register("perturbation-aug")
class PerturbationAugmentation(Recipe):
    Params = AugParams

    def prepare(self, *, device: torch.device, data_root: str | None) -> None:
        self.source = self.params.pairs.build("train")

    def inputs(self, model: nn.Module, batch: Batch) -> Tensor:
        return self.source(batch.x, batch.index, batch.gen)


class CVAEAugParams(UsesCVAE):
    sigma: float = Field(1.0, gt=0)  # 1: a sample of the CVAE prior


@RECIPES.register("cvae-aug")
class CVAEAugmentation(_WithCVAE):
    Params = CVAEAugParams

    def inputs(self, model: nn.Module, batch: Batch) -> Tensor:
        return self.sample(batch.x, self.params.sigma, batch.gen)


class SmoothingParams(UsesCVAE):
    sigma: float = Field(gt=0)  # the latent noise level that certification will use


@RECIPES.register("cvae-smoothing")
class LatentSmoothingTraining(CVAEAugmentation):
    Params = SmoothingParams


class CVAEAdvParams(UsesCVAE):
    eps: Radius  # a radius, or a statistic of the set: p50, p75, max, ...
    steps: Steps = 7
    step_size: float | None = Field(None, gt=0)  # default eps / 5


@RECIPES.register("cvae-adv")
class CVAEAdversarialTraining(_WithCVAE):
    Params = CVAEAdvParams

    def prepare(self, *, device: torch.device, data_root: str | None) -> None:
        super().prepare(device=device, data_root=data_root)
        self.eps = resolve_radius(self.cvae_card, self.params.eps, device=device)

    def adversarial(self, model: nn.Module, batch: Batch) -> Tensor:
        """The batch's adversarial members of the set (latent PGD, ``steps`` of eps/5 by default)."""
        x_adv, _ = latent_pgd(self.cvae, model, batch.x, batch.y, eps=self.eps, steps=self.params.steps,
                              step_size=self.params.step_size or self.eps / 5, gen=batch.gen)
        return x_adv

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        was_training = model.training
        model.eval()  # attack the deployed function, as the PGD-AT recipe does
        x_adv = self.adversarial(model, batch)
        model.train(was_training)
        clean = F.cross_entropy(model(batch.x), batch.y, reduction="none")
        adv = F.cross_entropy(model(x_adv), batch.y, reduction="none")
        return torch.maximum(clean, adv).mean()


class CVAEAdvAPGDParams(UsesCVAE):
    eps: Radius
    steps: Steps = 10


@RECIPES.register("cvae-adv-apgd")
class CVAEAdversarialTrainingAPGD(CVAEAdversarialTraining):
    Params = CVAEAdvAPGDParams

    def adversarial(self, model: nn.Module, batch: Batch) -> Tensor:
        seed = int(torch.randint(2 ** 62, (1,), generator=batch.gen))
        u, _ = latent_apgd(self.cvae, model, batch.x, batch.y, eps=self.eps, steps=self.params.steps, restarts=1,
                           draws=PointDraws(seed, batch.index))
        with torch.no_grad():
            return self.cvae.perturb(batch.x, u)
