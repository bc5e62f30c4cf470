"""The ``pgd`` family: L-inf / L2 projected gradient descent with restarts (Madry et al., 2018)."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from bench.attacks.base import Outcome, Threat, ThreatParams, predict
from bench.attacks.card import Eps, check_linf_eps
from bench.attacks.pgd_core import pgd


class PGDParams(ThreatParams):
    norm: Literal["Linf", "L2"]
    eps: Eps
    steps: int = Field(gt=0)
    step_size: float | None = Field(None, gt=0)  # default 2.5 * eps / steps
    restarts: int = Field(1, gt=0)
    random_start: bool = True

    @model_validator(mode="after")
    def _check(self) -> "PGDParams":
        check_linf_eps(self.norm, self.eps)
        return self

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps


class PGD(Threat):
    family = "pgd"
    Params = PGDParams

    def attack(self, model: nn.Module, x: Tensor, y: Tensor, clean_pred: Tensor, seed: int,
               index: Tensor) -> Outcome:
        p = self.params
        correct = clean_pred == y
        adv_pred = clean_pred.clone()
        if correct.any():
            x_adv = pgd(model, x[correct], y[correct], norm=p.norm, eps=p.eps, steps=p.steps, step_size=p.alpha,
                        restarts=p.restarts, random_start=p.random_start, gen=torch.Generator().manual_seed(seed))
            adv_pred[correct] = predict(model, x_adv)
        return Outcome(robust=correct & (adv_pred == y), adv_pred=adv_pred)
