"""The robust-training recipes: ``trades``, ``mart``, and ARMOR_D on top of PGD-AT, TRADES or MART in its KL
(``armor-kl``) and alpha-divergence (``armor-alpha``) forms.

Every recipe's inner maximisation is the core ``pgd-at`` recipe's: the suite's PGD (``bench.ops.pgd``) on the
model in eval mode, last iterate, one random start, with the card's attack loss (``kl`` to the clean prediction
for TRADES, ``ce`` otherwise; ``bench.ops.losses``) and the eps warm-up (``eps_warmup``). The per-example
losses at the adversarial point are in ``objectives.py``; a base recipe trains on their mean, ARMOR_D on their
divergence dual, optionally mixed with the clean cross-entropy (``t``). Learning rates follow the core
schedules or, with ``lr_milestones``, the step schedule of the TRADES / MART / ARMOR code (times ``lr_gamma``
from each listed epoch on, epochs counted from 1).

Per batch an ARMOR_D recipe keeps its ``DualStep`` in ``last`` (the dual variables, the normalised sample
weights); the training record gets their per-epoch means (``epoch_metrics``): ``dual_lambda`` (and ``dual_nu``),
``weight_entropy``, ``weight_max_n``, ``weight_kl``, ``weight_zero``, ``dual_value`` and ``base_loss``.
"""
from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from bench.families.robust_training.objectives import (BASE_LOSSES, NEEDS_CLEAN_LOGITS, DualStep, alpha_dual,
                                                       kl_dual, softplus_inverse)
from bench.ops.losses import LossName
from bench.recipes.base import RECIPES, Batch, ParamGroup
from bench.recipes.standard import PGDAdversarialTraining, PGDTrainingParams

Base = Literal["pgd-at", "trades", "mart"]
BASE_ATTACK_LOSS = {"pgd-at": "ce", "trades": "kl", "mart": "ce"}  # each method's own inner maximisation
DEFAULT_BETA = 6.0  # TRADES (1/lambda = 6) and MART


class RobustParams(PGDTrainingParams):
    lr_milestones: list[float] | None = None  # step schedule (replaces `schedule`): from each listed epoch (from 1)
    # on, lr is multiplied by lr_gamma once more
    lr_gamma: float = Field(0.1, gt=0, le=1)

    @model_validator(mode="after")
    def _milestones(self) -> "RobustParams":
        m = self.lr_milestones
        if m is not None and (not m or any(b <= a for a, b in zip(m, m[1:])) or m[0] < 1):
            raise ValueError("lr_milestones must be increasing epoch numbers, counted from 1")
        if m is not None and self.lr_schedule is not None:
            raise ValueError("give lr_milestones or lr_schedule, not both")
        return self


class TradesParams(RobustParams):
    loss: LossName = "kl"  # TRADES maximises KL(p(x) || p(x')) inside
    beta: float = Field(DEFAULT_BETA, ge=0)


class MartParams(RobustParams):
    beta: float = Field(DEFAULT_BETA, ge=0)


class ArmorParams(RobustParams):
    base: Base
    beta: float | None = Field(None, ge=0)  # the base's beta (TRADES, MART); none for PGD-AT
    radius: float = Field(gt=0)  # the divergence radius eps of D(Q || P_n) <= eps
    t: float = Field(0.0, ge=0, lt=1)  # natural-loss mixing: t * CE(f(x), y) + (1 - t) * dual

    @model_validator(mode="before")
    @classmethod
    def _base_defaults(cls, data):
        """The base method's own attack loss and beta unless the card sets them (written out in the hash)."""
        if isinstance(data, dict) and data.get("base") in BASE_ATTACK_LOSS:
            data = dict(data)
            data.setdefault("loss", BASE_ATTACK_LOSS[data["base"]])
            if data["base"] != "pgd-at":
                data.setdefault("beta", DEFAULT_BETA)
        return data

    @model_validator(mode="after")
    def _beta(self) -> "ArmorParams":
        if (self.base == "pgd-at") != (self.beta is None):
            raise ValueError("beta belongs to a TRADES or MART base, and only to them")
        return self


class ArmorKLParams(ArmorParams):
    kappa: float = Field(0.1, ge=0)  # lower bound of the softmax temperature lambda + kappa


class ArmorAlphaParams(ArmorParams):
    alpha: float = Field(gt=1)
    lam0: float = Field(1.0, gt=0)  # initial lambda (kept positive as softplus of a trained parameter)
    nu0: float = 0.0  # initial nu
    dual_lr: float = Field(1e-3, gt=0)  # Adam on (lambda, nu), constant


class AdversarialRecipe(PGDAdversarialTraining):
    """A base method: the core PGD inner maximisation, then the mean of the method's per-example loss."""

    Params = RobustParams
    method: ClassVar[str] = "pgd-at"

    @property
    def base(self) -> str:
        return self.method

    @property
    def beta(self) -> float | None:
        return getattr(self.params, "beta", None)

    def lr(self, progress: float) -> float:
        p = self.params
        if p.lr_milestones is None:
            return super().lr(progress)
        epoch = math.floor(progress * p.epochs + 1e-9) + 1
        return p.lr * p.lr_gamma ** sum(epoch >= m for m in p.lr_milestones)

    def example_losses(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """The base method's per-example losses at its adversarial points, and the clean logits if computed."""
        x_adv = self.inputs(model, batch)
        clean = model(batch.x) if self.base in NEEDS_CLEAN_LOGITS else None
        return BASE_LOSSES[self.base](clean, model(x_adv), batch.y, self.beta), clean

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return self.example_losses(model, batch)[0].mean()


@RECIPES.register("trades")
class Trades(AdversarialRecipe):
    """TRADES (Zhang et al., 2019): CE on clean inputs plus beta times the KL to the prediction at the point
    that maximises it."""

    Params = TradesParams
    method = "trades"


@RECIPES.register("mart")
class Mart(AdversarialRecipe):
    """MART (Wang et al., 2020): boosted CE at the PGD point plus beta times the KL weighted by the clean
    misclassification probability."""

    Params = MartParams
    method = "mart"


class ArmorRecipe(AdversarialRecipe):
    """ARMOR_D on a base method: its per-example losses re-weighted by the divergence's dual."""

    Params = ArmorParams

    def __init__(self, params):
        super().__init__(params)
        self.last: DualStep | None = None
        self._sums: dict[str, float] = {}
        self._batches = 0

    def parameter_groups(self, model: nn.Module) -> list[ParamGroup]:
        self._sums, self._batches = {}, 0  # a training (or a resume) starts its epoch's statistics afresh
        return super().parameter_groups(model)

    @property
    def base(self) -> str:
        return self.params.base

    def dual(self, losses: Tensor) -> tuple[Tensor, DualStep]:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        losses, clean = self.example_losses(model, batch)
        robust, self.last = self.dual(losses)
        for key, value in self.last.stats().items():
            self._sums[key] = self._sums.get(key, 0.0) + value
        self._batches += 1
        t = self.params.t
        if t == 0:
            return robust
        natural = F.cross_entropy(clean if clean is not None else model(batch.x), batch.y)
        return t * natural + (1 - t) * robust

    def epoch_metrics(self) -> dict[str, float]:
        out = {k: v / self._batches for k, v in self._sums.items()} if self._batches else {}
        self._sums, self._batches = {}, 0
        return out


@RECIPES.register("armor-kl")
class ArmorKL(ArmorRecipe):
    """ARMOR_D with the KL divergence: lambda* solved per batch by bisection (with the temperature floor kappa)."""

    Params = ArmorKLParams

    def dual(self, losses: Tensor) -> tuple[Tensor, DualStep]:
        return kl_dual(losses, self.params.radius, self.params.kappa)


@RECIPES.register("armor-alpha")
class ArmorAlpha(ArmorRecipe):
    """ARMOR_D with the alpha-divergence: (lambda, nu) trained beside the model by Adam at ``dual_lr``;
    lambda = softplus of a raw parameter, so it stays positive."""

    Params = ArmorAlphaParams

    def __init__(self, params):
        super().__init__(params)
        self._initial_duals()

    def _initial_duals(self) -> None:
        self.raw_lam = nn.Parameter(torch.tensor(softplus_inverse(self.params.lam0)))
        self.nu = nn.Parameter(torch.tensor(float(self.params.nu0)))

    @property
    def lam(self) -> Tensor:
        return F.softplus(self.raw_lam)

    def parameter_groups(self, model: nn.Module) -> list[ParamGroup]:
        """Called when a training starts: the duals start from (lam0, nu0) (a card's recipe object is cached, so a
        second training in one process must not inherit the first one's duals); a resume then loads its own."""
        self._initial_duals()
        return super().parameter_groups(model) + [
            ParamGroup("dual", [self.raw_lam, self.nu], "adam", self.params.dual_lr, scheduled=False)]

    def state_dict(self) -> dict[str, Tensor]:
        return {"raw_lam": self.raw_lam.detach().clone(), "nu": self.nu.detach().clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        with torch.no_grad():
            self.raw_lam.copy_(state["raw_lam"])
            self.nu.copy_(state["nu"])

    def dual(self, losses: Tensor) -> tuple[Tensor, DualStep]:
        device = losses.device
        return alpha_dual(losses, self.lam.to(device), self.nu.to(device), self.params.radius, self.params.alpha)
