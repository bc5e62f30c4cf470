"""Training recipes: a params schema plus what a recipe trains on, with which loss and which parameters.

The loop in ``bench.training.loop`` (optimisers, schedule, checkpoints, validation, progress) is shared by all of
them. What a recipe can say beyond the default (cross-entropy on clean inputs, one optimiser over the
model's parameters):

- ``inputs`` / ``loss``: what to train on and how (e.g. PGD examples, a CVAE's samples);
- ``parameter_groups``: extra trainable parameters beyond the model (e.g. dual variables), each group
  with its own optimiser and learning rate, all saved in checkpoints;
- ``state_dict`` / ``load_state_dict``: further state restored on resume;
- ``validate``: per-epoch metrics on a held-out slice of the training split (clean and PGD accuracy by
  default), which the card's ``validation:`` block turns on, with best-checkpoint selection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from bench.ops.losses import LossName
from bench.params import Eps, Norm, Params, Samples, Steps, check_linf_eps
from bench.registry import Registry


class Schedule(Params):
    """A piecewise-linear function of the (fractional) epoch, given by knots and values."""

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


class Attack(Params):
    """An L-inf or L2 PGD attack used inside training (or to validate it)."""

    norm: Norm = "Linf"
    eps: Eps
    steps: Steps
    step_size: Eps  # same syntax as eps: a number or a fraction such as 2/255
    loss: LossName = "ce"  # the maximised loss: ce, kl (to the clean prediction, as TRADES), margin

    @model_validator(mode="after")
    def _linf_range(self) -> "Attack":
        check_linf_eps(self.norm, self.eps)
        return self


class Validation(Params):
    """Per-epoch validation on ``size`` training images kept out of training."""

    size: Samples = 1000  # leading positions of the training split's fixed permutation
    attack: Attack | None = None  # also report accuracy under this PGD attack (pgd_acc)
    select: Literal["last", "clean_acc", "pgd_acc"] = "last"  # which epoch's weights are kept

    @model_validator(mode="after")
    def _selectable(self) -> "Validation":
        if self.select == "pgd_acc" and self.attack is None:
            raise ValueError("select: pgd_acc needs an attack: block")
        return self


class RecipeParams(Params):
    epochs: Steps
    batch_size: Samples = 128
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["onecycle", "constant"] = "onecycle"
    lr_schedule: Schedule | None = None  # piecewise-linear over epochs; replaces lr and schedule
    train_subset: Samples | None = None  # first n of the split's fixed permutation (CPU-sized runs)
    validation: Validation | None = None


@dataclass
class Batch:
    """One training step's data: ``index`` are the images' positions in the training split."""

    x: Tensor
    y: Tensor
    index: Tensor
    progress: float  # fraction of training done, in [0, 1)
    epoch: int
    gen: torch.Generator


@dataclass
class ParamGroup:
    """Parameters trained by one optimiser. ``scheduled`` groups follow the recipe's learning-rate
    schedule; the others keep their own constant ``lr`` (e.g. dual variables)."""

    name: str
    params: list[nn.Parameter]
    optimizer: Literal["adam", "sgd"]
    lr: float
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduled: bool = True

    def build(self) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(self.params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(self.params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                               nesterov=True)


# Counts changes to what the shared training loop (``bench.training.loop``, ``bench.training._fit``) and this base
# class make of a card: part of every training hash once above 0 (kept here, where the cards read it: the models
# package cannot import the training package, which imports it)
LOOP_REVISION = 0


class Recipe:
    """Base recipe: standard training, cross-entropy on clean inputs. ``revision`` counts changes to what a recipe
    trains (its inputs, loss, parameters, schedule): part of its cards' training hashes once above 0, so weights
    trained by an older revision are never reused for a newer one; ``tests/fingerprints/test_recipe_fingerprints.py``
    fails on a forgotten bump."""

    Params: ClassVar[type[RecipeParams]] = RecipeParams
    revision: ClassVar[int] = 0
    tasks: ClassVar[tuple[str, ...]] = ("classifier",)  # the tasks whose models it trains (checked on the card)

    def __init__(self, params: RecipeParams):
        self.params = params

    @property
    def reserved(self) -> int:
        """Leading positions of the split's fixed permutation kept out of training (for validation)."""
        return self.params.validation.size if self.params.validation else 0

    @property
    def attack(self) -> Attack | None:
        """The attack the recipe trains against, if any (what `bench train` checks the result with)."""
        return None

    def prepare(self, *, device: torch.device, data_root: str | None) -> None:
        """Load what the recipe needs besides the model (e.g. a perturbation model); called once."""

    def positions(self, n_total: int) -> Tensor:
        """Which images of the training split are trained on: all in order, or a slice of the fixed
        permutation when a subset is asked for or some positions are reserved."""
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

    def parameter_groups(self, model: nn.Module) -> list[ParamGroup]:
        p = self.params
        return [ParamGroup("model", list(model.parameters()), p.optimizer, p.lr, p.weight_decay, p.momentum)]

    def state_dict(self) -> dict[str, Tensor]:
        """Recipe state beyond the model and the optimisers, saved in every checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what ``state_dict`` saved (on resume)."""

    def epoch_metrics(self) -> dict[str, float]:
        """Per-epoch statistics of the recipe's own (e.g. the mean dual variable over the epoch's batches), added
        to the epoch's training record; called once at the end of every epoch, so it starts the next one afresh."""
        return {}

    def inputs(self, model: nn.Module, batch: Batch) -> Tensor:
        """The inputs to train on."""
        return batch.x

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return F.cross_entropy(model(self.inputs(model, batch)), batch.y)

    @torch.no_grad()
    def _accuracy(self, model: nn.Module, x: Tensor, y: Tensor) -> float:
        return float((model(x).argmax(1) == y).float().mean())

    def validate(self, model: nn.Module, x: Tensor, y: Tensor, gen: torch.Generator) -> dict[str, float]:
        """Metrics of the model (in eval mode) on the held-out images: clean and, with an attack, PGD accuracy."""
        from bench.ops.pgd import pgd

        out = {"clean_acc": self._accuracy(model, x, y)}
        attack = self.params.validation.attack
        if attack is not None:
            x_adv = pgd(model, x, y, norm=attack.norm, eps=attack.eps, steps=attack.steps,
                        step_size=attack.step_size, gen=gen, loss=attack.loss)
            out["pgd_acc"] = self._accuracy(model, x_adv, y)
        return out


RECIPES: Registry[type[Recipe]] = Registry("recipe", providers=("bench.recipes.standard",))


def recipes_for(task: str) -> list[str]:
    """The recipes that train models of ``task``."""
    return [name for name in RECIPES.names() if task in RECIPES.get(name).tasks]


def make_recipe(name: str, params: dict, where: str, context: dict | None = None) -> Recipe:
    from bench.cards import validate

    cls = RECIPES.get(name, where)
    return cls(validate(cls.Params, params, f"{where} recipe.params", context))
