"""Training recipes. A recipe is a params schema plus what it trains on and with which loss; the loop
in ``loop.py`` (optimiser, schedule, checkpoints, progress) is shared by all of them.

Recipes for learned perturbation sets (the CVAE itself and the classifiers trained with it) live
in ``learned.py`` and register here like the others.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from bench.attacks.card import Eps
from bench.attacks.pgd_core import pgd
from bench.errors import CardError, did_you_mean


class Schedule(BaseModel):
    """A piecewise-linear function of the (fractional) epoch, given by knots and values."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    knots: list[float] = Field(min_length=1)
    values: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _knots(self) -> "Schedule":
        if len(self.knots) != len(self.values):
            raise ValueError("knots and values need the same length")
        if any(b <= a for a, b in zip(self.knots, self.knots[1:])):
            raise ValueError("knots must increase")
        return self

    def at(self, epoch: float) -> float:
        return float(np.interp(epoch, self.knots, self.values))


class RecipeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    epochs: int = Field(gt=0)
    batch_size: int = Field(128, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["onecycle", "constant"] = "onecycle"
    lr_schedule: Schedule | None = None  # piecewise-linear over epochs; replaces lr and schedule
    train_subset: int | None = Field(None, gt=0)  # first n of the split's fixed permutation (CPU-sized runs)


@dataclass
class Batch:
    """One training step's data: ``index`` are the images' positions in the training split."""

    x: Tensor
    y: Tensor
    index: Tensor
    progress: float  # fraction of training done, in [0, 1)
    epoch: int
    gen: torch.Generator


class Recipe:
    """Base recipe: standard training, cross-entropy on clean inputs."""

    name: ClassVar[str]
    Params: ClassVar[type[RecipeParams]] = RecipeParams
    reserved: int = 0  # leading positions of the split's fixed permutation kept out of training

    def __init__(self, params: RecipeParams):
        self.params = params

    def prepare(self, *, device: torch.device, data_root: str | None) -> None:
        """Load what the recipe needs besides the model (e.g. a perturbation model); called once."""

    def positions(self, n_total: int) -> Tensor:
        """Which images of the training split are trained on: all in order, or a slice of the fixed
        permutation when a subset is asked for or some positions are reserved (e.g. for validation)."""
        from bench.data import subset_indices

        if self.params.train_subset is None and self.reserved == 0:
            return torch.arange(n_total)
        chosen = subset_indices(n_total, None)[self.reserved:]
        return chosen if self.params.train_subset is None else chosen[:self.params.train_subset]

    def lr(self, progress: float) -> float:
        """One-cycle: linear warm-up to lr over the first 40% of training, then linear decay to 0."""
        p = self.params
        if p.lr_schedule is not None:
            return p.lr_schedule.at(progress * p.epochs)
        if p.schedule == "constant":
            return p.lr
        return p.lr * (progress / 0.4 if progress < 0.4 else (1 - progress) / 0.6)

    def inputs(self, model: nn.Module, batch: Batch) -> Tensor:
        """The inputs to train on."""
        return batch.x

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return F.cross_entropy(model(self.inputs(model, batch)), batch.y)


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

    def inputs(self, model: nn.Module, batch: Batch) -> Tensor:
        p = self.params
        scale = min(1.0, batch.progress / p.eps_warmup) if p.eps_warmup > 0 else 1.0
        if scale == 0:
            return batch.x
        was_training = model.training
        model.eval()  # attack the deployed function (matters for BatchNorm / dropout)
        x_adv = pgd(model, batch.x, batch.y, norm=p.norm, eps=p.eps * scale, steps=p.steps,
                    step_size=p.step_size * scale, gen=batch.gen, keep="last")
        model.train(was_training)
        return x_adv


RECIPES: dict[str, type[Recipe]] = {r.name: r for r in (Standard, PGDAdversarialTraining)}


def register(cls: type[Recipe]) -> type[Recipe]:
    if cls.name in RECIPES:
        raise ValueError(f"recipe {cls.name!r} registered twice")
    RECIPES[cls.name] = cls
    return cls


def make_recipe(name: str, params: dict, where: str) -> Recipe:
    from bench.cards import validate

    if name not in RECIPES:
        raise CardError(f"{where}: unknown recipe {name!r}",
                        f"{did_you_mean(name, RECIPES)}known recipes: {', '.join(sorted(RECIPES))}")
    cls = RECIPES[name]
    return cls(validate(cls.Params, params, f"{where} recipe.params"))


from bench.models.recipes import learned  # noqa: E402,F401  (registers the perturbation-set recipes)
