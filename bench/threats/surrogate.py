"""PGD whose gradients come from another model than the one scored, for defences that a plain gradient
attack cannot see through:

- ``pgd-bpda``: BPDA (Athalye et al., 2018). The evaluated model names a differentiable stand-in for its
  non-differentiable parts (``bpda_surrogate()``, e.g. a gate replaced by "always translate"); the
  attack's forward pass is the real model, its backward pass the surrogate's.
- ``apgd-bpda``: the same BPDA with APGD-CE in place of PGD (our AutoAttack engine's APGD: the official's
  step-size schedule and momentum, 100 iterations by default), so a defence's BPDA number does not rest on one
  fixed-step attack.
- ``pgd-transfer``: PGD on a ``source`` card (all steps, maximising its loss), then the evaluated model
  classifies those points: the non-adaptive "paper setting" of input-transformation defences, and a
  gradient-free check beside the white-box attacks.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import model_validator
from torch import Tensor, nn

from bench.models.card import model_ref
from bench.ops.draws import Draws
from bench.params import Eps, Norm, Params, Steps, check_linf_eps
from bench.ops.pgd import pgd
from bench.threats.base import THREAT_FAMILIES, Batch, Target
from bench.threats.pgd import PGDParams
from bench.threats.step import Candidates, PerturbStep


class StraightThrough(nn.Module):
    """Forward: the model's logits; backward: the surrogate's gradients."""

    def __init__(self, model: nn.Module, surrogate: nn.Module):
        super().__init__()
        self.model, self.surrogate = model, surrogate

    def forward(self, x: Tensor) -> Tensor:
        approx = self.surrogate(x)
        with torch.no_grad():
            exact = self.model(x)
        return approx + (exact - approx).detach()


class _Crafted(PerturbStep):
    """PGD on ``crafting_model``, scored on the evaluated model, for the points it gets right clean."""

    params: PGDParams
    keep = "first_success"

    def crafting_model(self, target: Target, x: Tensor) -> nn.Module:
        raise NotImplementedError

    def perturb(self, target: Target, x: Tensor, y: Tensor, draws: Draws) -> Candidates:
        p = self.params
        return Candidates(pgd(self.crafting_model(target, x), x, y, norm=p.norm, eps=p.eps, steps=p.steps,
                              step_size=p.alpha, restarts=p.restarts, random_start=p.random_start, gen=draws,
                              loss=p.loss, keep=self.keep))


@THREAT_FAMILIES.register("pgd-bpda")
class PGDBPDA(_Crafted):
    """A model without ``bpda_surrogate()`` is its own surrogate: the attack is then plain PGD, and says so."""

    Params = PGDParams
    gradient_based = True
    budget = ("restarts",)
    plain = "pgd-bpda ran as plain PGD"

    @staticmethod
    def surrogate(module: nn.Module) -> nn.Module | None:
        make = getattr(module, "bpda_surrogate", None)
        return make() if callable(make) else None

    def crafting_model(self, target: Target, x: Tensor) -> nn.Module:
        surrogate = self.surrogate(target.module)
        return target.module if surrogate is None else StraightThrough(target.module, surrogate)

    def checks(self, target: Target, batch: Batch) -> list[str]:
        notes = super().checks(target, batch)
        if self.surrogate(target.module) is None:
            notes.append(f"{type(target.module).__name__} names no differentiable surrogate (bpda_surrogate()), so "
                         f"{self.plain} on it")
        return notes


class APGDParams(Params):
    norm: Norm
    eps: Eps
    steps: Steps = 100
    restarts: Steps = 1
    loss: Literal["ce", "dlr"] = "ce"

    @model_validator(mode="after")
    def _check(self) -> "APGDParams":
        check_linf_eps(self.norm, self.eps)
        return self


@THREAT_FAMILIES.register("apgd-bpda")
class APGDBPDA(PGDBPDA):
    """APGD through the BPDA surrogate (plain APGD on a model without one, and the run says so)."""

    Params = APGDParams
    params: APGDParams
    point_draws = True  # the engine keys its draws by point
    budget = ("steps", "restarts")
    plain = "apgd-bpda ran as plain APGD"

    def perturb(self, target: Target, x: Tensor, y: Tensor, draws: Draws) -> Candidates:
        from bench.threats.aa_engine import rng
        from bench.threats.aa_engine.apgd import apgd
        from bench.threats.aa_engine.model import frozen

        p = self.params
        model = self.crafting_model(target, x)
        keys = rng.point_keys(draws.seed, draws.keys.to(x.device), "apgd-bpda")
        with frozen(model):
            x_adv, _ = apgd(model, x, y, norm=p.norm, eps=p.eps, keys=keys, loss=p.loss, n_iter=p.steps,
                            n_restarts=p.restarts)
        return Candidates(x_adv)


class TransferParams(PGDParams):
    source: model_ref("classifier")  # the model the points are crafted on


@THREAT_FAMILIES.register("pgd-transfer")
class PGDTransfer(_Crafted):
    Params = TransferParams
    params: TransferParams
    keep = "last"
    adaptive = False

    def __init__(self, params: TransferParams):
        super().__init__(params)
        self._sources: dict[str, nn.Module] = {}

    def crafting_model(self, target: Target, x: Tensor) -> nn.Module:
        if str(x.device) not in self._sources:
            from bench.models.build import create

            self._sources[str(x.device)] = create(self.params.source.card, device=x.device).requires_grad_(False)
        return self._sources[str(x.device)]
