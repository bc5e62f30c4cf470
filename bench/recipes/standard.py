"""Core recipes: ``standard`` (cross-entropy on clean inputs) and ``pgd-at`` (Madry et al., 2018)."""
from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from bench.ops.pgd import pgd
from bench.recipes.base import RECIPES, Attack, Batch, Recipe, RecipeParams


@RECIPES.register("standard")
class Standard(Recipe):
    """Cross-entropy on clean inputs."""


class PGDTrainingParams(RecipeParams, Attack):
    eps_warmup: float = Field(0.0, ge=0, lt=1)  # fraction of training over which eps ramps up from 0


@RECIPES.register("pgd-at")
class PGDAdversarialTraining(Recipe):
    """Train on PGD examples (last iterate, one random start) of the chosen attack loss."""

    Params = PGDTrainingParams

    @property
    def attack(self) -> Attack:
        return self.params

    def inputs(self, model: nn.Module, batch: Batch) -> Tensor:
        p = self.params
        scale = min(1.0, batch.progress / p.eps_warmup) if p.eps_warmup > 0 else 1.0
        if scale == 0:
            return batch.x
        was_training = model.training
        model.eval()  # attack the deployed function (matters for BatchNorm / dropout)
        x_adv = pgd(model, batch.x, batch.y, norm=p.norm, eps=p.eps * scale, steps=p.steps,
                    step_size=p.step_size * scale, gen=batch.gen, keep="last", loss=p.loss)
        model.train(was_training)
        return x_adv
