"""The ``learned-cvae`` family: latent PGD in a learned perturbation set (Wong & Kolter, 2021).

The set S(x) = { g(x, mu_p + sigma_p * u) : |u|_2 <= eps } comes from a CVAE model card; eps is a
number or a statistic of the set's held-out latent distances (p50, p75, max, ...), as in the paper.
Evaluation defaults: 50 steps of step eps/20, one random start. The protocol hash includes the
CVAE card's hash, so results with different perturbation models are never ranked together.
"""
from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from bench.errors import BenchError
from bench.families.learned_sets.latent_pgd import latent_pgd
from bench.families.learned_sets.sets import CVAERef, Radius, load_cvae, resolve_radius
from bench.params import Params
from bench.tasks.classifier import predict
from bench.threats.base import THREAT_FAMILIES, Batch, ClassifierAttack, Outcome, Target


class CVAEThreatParams(Params):
    cvae: CVAERef


class CVAEThreat(ClassifierAttack):
    """Shared by the families that act in a CVAE's latent space: loads the set once per device."""

    params: CVAEThreatParams

    def __init__(self, params: CVAEThreatParams):
        super().__init__(params)
        self.card = params.cvae.card
        self._loaded: dict[str, Any] = {}
        self._radii: dict[float | str, float] = {}

    def cvae(self, device: torch.device):
        if str(device) not in self._loaded:
            self._loaded[str(device)] = load_cvae(self.card, device)
        return self._loaded[str(device)]

    def radius(self, value: float | str, device: torch.device) -> float:
        """The radius as a number, resolved once per threat (not re-read from the cache every batch)."""
        if value not in self._radii:
            self._radii[value] = resolve_radius(self.card, value, device=device)
        return self._radii[value]

    def check_input(self, x: Tensor) -> None:
        cvae = self.cvae(x.device)
        try:
            with torch.no_grad():
                cvae.prior(x[:1])
        except RuntimeError as err:
            raise BenchError(f"the perturbation set {self.card.id} was learned on {self.card.dataset} images; "
                             f"it cannot take images of shape {tuple(x.shape[1:])}",
                             f"evaluate on {self.card.dataset} (the threat card's datasets should say so)") from err


class LearnedCVAEParams(CVAEThreatParams):
    eps: Radius
    steps: int = Field(50, gt=0)
    step_size: float | None = Field(None, gt=0)  # default eps / 20
    restarts: int = Field(1, gt=0)


@THREAT_FAMILIES.register("learned-cvae")
class LearnedCVAE(CVAEThreat):
    Params = LearnedCVAEParams
    gradient_based = True

    def attack(self, target: Target, batch: Batch) -> Outcome:
        p, model, x = self.params, target.module, batch.x
        self.check_input(x)
        eps = self.radius(p.eps, x.device)
        correct = batch.clean["clean_correct"]
        adv_pred = batch.clean["clean_pred"].clone()
        latent_norm = torch.zeros(len(x))
        if correct.any():
            x_adv, u = latent_pgd(self.cvae(x.device), model, x[correct], batch.y[correct], eps=eps, steps=p.steps,
                                  step_size=p.step_size or eps / 20, restarts=p.restarts, gen=batch.generator())
            adv_pred[correct] = predict(model, x_adv, target.num_classes)
            latent_norm[correct.cpu()] = u.flatten(1).norm(dim=1).cpu()
        if bool((latent_norm > eps * (1 + 1e-5)).any()) or not torch.isfinite(latent_norm).all():
            raise BenchError(f"latent PGD left the ball of radius {eps:.4g} (largest norm {latent_norm.max():.4g})",
                             "this is a bug in the attack, not the model: report it with the model and threat")
        return Outcome(values=self.scored(batch, adv_pred, latent_norm=latent_norm,
                                          eps=torch.full((len(x),), eps)))
