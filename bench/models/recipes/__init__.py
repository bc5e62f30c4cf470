"""Training recipes. A recipe is a params schema plus how it turns a clean batch into training inputs;
the loop in ``loop.py`` (optimiser, schedule, checkpoints, progress) is shared by all of them."""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from bench.attacks.card import Eps
from bench.attacks.pgd_core import pgd
from bench.errors import CardError, did_you_mean


class RecipeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    epochs: int = Field(gt=0)
    batch_size: int = Field(128, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["onecycle", "constant"] = "onecycle"


class Recipe:
    """Base recipe: standard training on clean inputs."""

    name: ClassVar[str]
    Params: ClassVar[type[RecipeParams]] = RecipeParams

    def __init__(self, params: RecipeParams):
        self.params = params

    def inputs(self, model: nn.Module, x: Tensor, y: Tensor, progress: float, gen: torch.Generator) -> Tensor:
        """The inputs to train on, given training progress in [0, 1)."""
        return x


class Standard(Recipe):
    name = "standard"


class PGDParams(RecipeParams):
    norm: Literal["Linf", "L2"] = "Linf"
    eps: Eps
    steps: int = Field(gt=0)
    step_size: Eps  # same syntax as eps: a number or a fraction such as 2/255
    eps_warmup: float = Field(0.0, ge=0, lt=1)  # fraction of training over which eps ramps up from 0

    @model_validator(mode="after")
    def _linf_range(self) -> "PGDParams":
        if self.norm == "Linf" and self.eps > 1:
            raise ValueError("an L-inf eps above 1 covers the whole [0, 1] image box")
        return self


class PGDAdversarialTraining(Recipe):
    """Madry et al. (2018): train on PGD adversarial examples (last iterate, one random start)."""

    name = "pgd-at"
    Params = PGDParams

    def inputs(self, model: nn.Module, x: Tensor, y: Tensor, progress: float, gen: torch.Generator) -> Tensor:
        p = self.params
        scale = min(1.0, progress / p.eps_warmup) if p.eps_warmup > 0 else 1.0
        if scale == 0:
            return x
        was_training = model.training
        model.eval()  # attack the deployed function (matters for BatchNorm / dropout)
        x_adv = pgd(model, x, y, norm=p.norm, eps=p.eps * scale, steps=p.steps, step_size=p.step_size * scale,
                    gen=gen, keep="last")
        model.train(was_training)
        return x_adv


RECIPES: dict[str, type[Recipe]] = {r.name: r for r in (Standard, PGDAdversarialTraining)}


def make_recipe(name: str, params: dict, where: str) -> Recipe:
    from bench.cards import validate

    if name not in RECIPES:
        raise CardError(f"{where}: unknown recipe {name!r}",
                        f"{did_you_mean(name, RECIPES)}known recipes: {', '.join(sorted(RECIPES))}")
    cls = RECIPES[name]
    return cls(validate(cls.Params, params, f"{where} recipe.params"))


