"""The ``vae-attack`` family: attacks on a VAE's input in an L-inf or L2 ball (no labels, no accuracy).

Objectives (``objective``), each maximised by PGD with per-point best tracking over steps and restarts:

- ``max-damage`` (Camuto et al.): the reconstruction's distance from the clean one,
  ||recon(x') - recon(x)||_2;
- ``latent`` (Tabacof et al.; Gondim-Ribeiro et al.): move the encoding towards a target image's, minimising
  ||mu(x') - mu(x_t)||_2, with x_t the next point of the batch (a fixed, label-free pairing);
- ``elbo``: lower the ELBO of the perturbed input, ELBO(x') (the threat a certified ELBO bounds).

Every point stores the three outcomes whatever the objective: ``damage`` (L2 distance of reconstructions),
``latent_dist`` (||mu(x') - mu(x)||_2) and ``elbo_drop`` (ELBO(x) - ELBO(x')), plus ``adv_elbo``. The clean
point is a candidate, so an attack never reports less than no perturbation. The headline follows the
objective: mean damage, mean latent distance to the target (lower is better for the attacker, so here
higher means more robust), or mean ELBO under attack.
"""
from __future__ import annotations

import math
from typing import Callable, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from bench.errors import BenchError, NotApplicable
from bench.metrics import Metric
from bench.ops.gradients import input_gradient
from bench.ops.norms import normalized
from bench.ops.pgd import random_delta, project
from bench.params import Eps, Norm, Params, Steps, check_linf_eps
from bench.tasks import Task
from bench.tasks.generative import check_elbo_order, model_name
from bench.threats.base import THREAT_FAMILIES, Batch, Outcome, Target, Threat
from bench.threats.checks import check_points

Objective = Literal["max-damage", "latent", "elbo"]
METRICS = {
    "damage": Metric("damage", "damage", "reconstruction damage ||recon(x') - recon(x)||_2",
                     higher_is_better=False),
    "latent_dist": Metric("latent_dist", "latent_dist", "latent shift ||mu(x') - mu(x)||_2", higher_is_better=False),
    "elbo_drop": Metric("elbo_drop", "elbo_drop", "ELBO drop under attack (nats)", higher_is_better=False),
    "adv_elbo": Metric("adv_elbo", "adv_elbo", "ELBO under attack (nats)", higher_is_better=True),
    "target_dist": Metric("target_dist", "target_dist", "latent distance to the target ||mu(x') - mu(x_t)||_2",
                          higher_is_better=True),
}
HEADLINE = {"max-damage": "damage", "latent": "target_dist", "elbo": "adv_elbo"}


class VAEAttackParams(Params):
    objective: Objective
    norm: Norm
    eps: Eps
    steps: Steps = 40
    step_size: float | None = Field(None, gt=0)  # default 2.5 * eps / steps
    restarts: Steps = 1

    @model_validator(mode="after")
    def _check(self) -> "VAEAttackParams":
        check_linf_eps(self.norm, self.eps)
        return self

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps


def maximise(value: Callable[[Tensor], Tensor], x: Tensor, *, norm: str, radius: Tensor, step_size: Tensor,
             steps: int, restarts: int, gen: torch.Generator, include_clean: bool) -> Tensor:
    """Per-point best iterate of PGD maximising ``value`` (one value per point) in per-point ``norm`` balls
    of ``radius`` (N,) intersected with [0, 1], with per-point ``step_size`` (N,): random start in the ball,
    best over every iterate of every restart (and over x itself with ``include_clean``)."""
    shape = (-1, *([1] * (x.ndim - 1)))
    eps, step_size = radius.view(shape), step_size.view(shape)
    best = x.clone()
    with torch.no_grad():
        best_value = value(x) if include_clean else torch.full((len(x),), -math.inf, device=x.device)
    for _ in range(restarts):
        x_adv = project(x + random_delta(x, norm, eps.cpu(), gen), x, norm, eps)  # drawn on the CPU
        for step in range(steps + 1):
            x_adv.requires_grad_(True)
            current = value(x_adv)
            if not torch.isfinite(current).all():  # a NaN is never "better": skipping it would score no damage
                raise BenchError("the attack's objective is not finite (NaN or inf) at a perturbed input",
                                 "check the model's outputs near the data (e.g. NaN for inputs off the data grid)")
            with torch.no_grad():
                better = current.detach() > best_value
                best[better], best_value[better] = x_adv.detach()[better], current.detach()[better]
            if step == steps:
                break
            grad = input_gradient(current.sum(), x_adv)
            with torch.no_grad():
                direction = grad.sign() if norm == "Linf" else normalized(grad)
                x_adv = project(x_adv.detach() + step_size * direction, x, norm, eps)
    return best


def not_a_vae(model: nn.Module) -> NotApplicable | None:
    """Why the VAE attacks cannot attack ``model`` (None: they can)."""
    if all(callable(getattr(model, name, None)) for name in ("encode", "reconstruct", "elbo")):
        return None
    return NotApplicable("has no encode(x) -> (mu, logvar), reconstruct(x) and elbo(x)",
                         "the VAE attacks need a VAE (e.g. architecture conv-vae); other generative models lack "
                         "encode()")


@THREAT_FAMILIES.register("vae-attack")
class VAEAttack(Threat):
    tasks = ("generative",)
    Params = VAEAttackParams
    params: VAEAttackParams
    budget = ("restarts",)

    def metrics_for(self, task: Task) -> tuple[Metric, ...]:
        names = ["damage", "latent_dist", "elbo_drop", "adv_elbo"]
        if self.params.objective == "latent":
            names.insert(0, "target_dist")
        return task.clean_metrics + tuple(METRICS[n] for n in names)

    def headline_for(self, task: Task) -> str:
        return HEADLINE[self.params.objective]

    def objective(self, model: nn.Module, x_adv: Tensor, recon: Tensor, target_mu: Tensor) -> Tensor:
        """Per-point value the attacker maximises."""
        kind = self.params.objective
        if kind == "max-damage":
            return (model.reconstruct(x_adv) - recon).flatten(1).norm(dim=1)
        if kind == "latent":
            return -(model.encode(x_adv)[0] - target_mu).norm(dim=1)
        return -model.elbo(x_adv)

    def unsupported(self, model: nn.Module) -> NotApplicable | None:
        return not_a_vae(model)

    def attack(self, target: Target, batch: Batch) -> Outcome:
        p, model, x = self.params, target.module, batch.x.detach()
        self.require_supported(model, model_name(model))
        with torch.no_grad():
            recon, mu = model.reconstruct(x), model.encode(x)[0]
            target_mu = mu.roll(1, dims=0)
        full = lambda value: torch.full((len(x),), value, device=x.device)  # noqa: E731
        best = maximise(lambda x_adv: self.objective(model, x_adv, recon, target_mu), x, norm=p.norm,
                        radius=full(p.eps), step_size=full(p.alpha), steps=p.steps, restarts=p.restarts,
                        gen=batch.generator(), include_clean=True)
        check_points(x, best, p.norm, p.eps, "vae-attack")
        with torch.no_grad():
            adv_elbo = model.elbo(best)
            adv_mu = model.encode(best)[0]
            values = {"damage": (model.reconstruct(best) - recon).flatten(1).norm(dim=1),
                      "latent_dist": (adv_mu - mu).norm(dim=1),
                      "elbo_drop": batch.clean["clean_elbo"] - adv_elbo, "adv_elbo": adv_elbo}
            if p.objective == "latent":
                values["target_dist"] = (adv_mu - target_mu).norm(dim=1)
            if p.objective == "elbo":
                check_elbo_order(model_name(model), batch.clean["clean_elbo"], adv_elbo)
        return Outcome(values=values)
