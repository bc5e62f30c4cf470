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
from torch import Tensor, nn

from bench.attacks.base import Outcome, Threat, ThreatParams, predict
from bench.errors import BenchError
from bench.models.perturbation_set import Radius


class CVAEThreatParams(ThreatParams):
    cvae: str  # a CVAE model card id, or a path to one


class CVAEThreat(Threat):
    """Shared by the families that act in a CVAE's latent space: loads the set once per device."""

    params: CVAEThreatParams

    def __init__(self, params: CVAEThreatParams):
        super().__init__(params)
        from bench.models.perturbation_set import cvae_card

        self.card = cvae_card(params.cvae, f"threat params.cvae {params.cvae!r}")
        self._loaded: dict[str, Any] = {}
        self._radii: dict[float | str, float] = {}

    @classmethod
    def protocol(cls, params: CVAEThreatParams) -> dict:
        from bench.models.perturbation_set import cvae_card

        return {**params.model_dump(mode="json"), "cvae": {"id": params.cvae,
                                                           "hash": cvae_card(params.cvae, "threat params").hash}}

    def cvae(self, device: torch.device):
        if str(device) not in self._loaded:
            from bench.models.perturbation_set import load_cvae

            self._loaded[str(device)] = load_cvae(self.card, device)
        return self._loaded[str(device)]

    def radius(self, value: float | str, device: torch.device) -> float:
        """The radius as a number, resolved once per threat (not re-read from the cache every batch)."""
        if value not in self._radii:
            from bench.models.perturbation_set import resolve_radius

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


class LearnedCVAE(CVAEThreat):
    family = "learned-cvae"
    Params = LearnedCVAEParams

    def attack(self, model: nn.Module, x: Tensor, y: Tensor, clean_pred: Tensor, seed: int,
               index: Tensor) -> Outcome:
        from bench.attacks.latent_pgd import latent_pgd

        p = self.params
        self.check_input(x)
        eps = self.radius(p.eps, x.device)
        correct = clean_pred == y
        adv_pred = clean_pred.clone()
        latent_norm = torch.zeros(len(x))
        if correct.any():
            x_adv, u = latent_pgd(self.cvae(x.device), model, x[correct], y[correct], eps=eps, steps=p.steps,
                                  step_size=p.step_size or eps / 20, restarts=p.restarts,
                                  gen=torch.Generator().manual_seed(seed))
            adv_pred[correct] = predict(model, x_adv)
            latent_norm[correct.cpu()] = u.flatten(1).norm(dim=1).cpu()
        return Outcome(robust=correct & (adv_pred == y), adv_pred=adv_pred,
                       columns={"latent_norm": latent_norm, "eps": torch.full((len(x),), eps)})
