"""The ``pgd`` family: L-inf / L2 projected gradient descent with restarts (Madry et al., 2018)."""
from __future__ import annotations

from pydantic import Field, model_validator

from torch import Tensor

from bench.ops.draws import Draws
from bench.ops.losses import LossName
from bench.ops.pgd import pgd
from bench.params import Eps, Norm, Params, Steps, check_linf_eps
from bench.threats.base import THREAT_FAMILIES, Target
from bench.threats.step import Candidates, PerturbStep


class PGDParams(Params):
    norm: Norm
    eps: Eps
    steps: Steps
    step_size: float | None = Field(None, gt=0)  # default 2.5 * eps / steps
    restarts: Steps = 1
    random_start: bool = True
    loss: LossName = "ce"  # ce, kl (to the clean prediction) or margin

    @model_validator(mode="after")
    def _check(self) -> "PGDParams":
        check_linf_eps(self.norm, self.eps)
        return self

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps


@THREAT_FAMILIES.register("pgd")
class PGD(PerturbStep):
    Params = PGDParams
    params: PGDParams
    gradient_based = True
    budget = ("restarts",)

    def perturb(self, target: Target, x: Tensor, y: Tensor, draws: Draws) -> Candidates:
        p = self.params
        return Candidates(pgd(target.module, x, y, norm=p.norm, eps=p.eps, steps=p.steps, step_size=p.alpha,
                              restarts=p.restarts, random_start=p.random_start, gen=draws, loss=p.loss))
