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
from bench.models.card import model_ref
from bench.ops.norms import normalized
from bench.params import Params, Samples, Steps
from bench.tasks.classifier import predict
from bench.ops.draws import Draws
from bench.threats.base import THREAT_FAMILIES, Batch, ClassifierAttack, Outcome, Target
from bench.threats.step import Candidates, PerturbStep, StepResult


ClassifierRef = model_ref("classifier")


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
        self._sources: dict[str, Any] = {}

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


class CVAEStep(CVAEThreat, PerturbStep):
    """A perturb step in a CVAE's latent ball. Its candidates are the set's members, checked against the ball by
    the attack itself (``check`` here only refuses non-finite or misshapen images)."""

    def check(self, x: Tensor, candidates: Candidates) -> None:
        if candidates.x.shape != x.shape or not torch.isfinite(candidates.x).all():
            raise BenchError(f"{type(self).__name__} returned non-finite points (NaN or inf) or points of the wrong "
                             "shape", "this is a bug in the attack, not the model: report it with the model and threat")

    def step(self, target: Target, batch: Batch, survivors: Tensor | None = None) -> StepResult:
        self.check_input(batch.x)
        return super().step(target, batch, survivors)


class LearnedCVAEParams(CVAEThreatParams):
    eps: Radius
    steps: Steps = 50
    step_size: float | None = Field(None, gt=0)  # default eps / 20 (eps / 4 with a decaying step)
    restarts: Steps = 1
    decay: float = Field(1.0, gt=0, le=1)  # the last step is step_size * decay (1: constant steps)

    def step(self, eps: float) -> float:
        return self.step_size or (eps / 20 if self.decay == 1 else eps / 4)


@THREAT_FAMILIES.register("learned-cvae")
class LearnedCVAE(CVAEStep):
    Params = LearnedCVAEParams
    gradient_based = True

    def perturb(self, target: Target, x: Tensor, y: Tensor, draws: Draws) -> Candidates:
        p = self.params
        eps = self.radius(p.eps, x.device)
        x_adv, u = latent_pgd(self.cvae(x.device), target.module, x, y, eps=eps, steps=p.steps, step_size=p.step(eps),
                              restarts=p.restarts, gen=draws, decay=p.decay)
        latent_norm = u.flatten(1).norm(dim=1)
        if bool((latent_norm > eps * (1 + 1e-5)).any()) or not torch.isfinite(latent_norm).all():
            raise BenchError(f"latent PGD left the ball of radius {eps:.4g} (largest norm {latent_norm.max():.4g})",
                             "this is a bug in the attack, not the model: report it with the model and threat")
        return Candidates(x_adv, columns={"latent_norm": latent_norm})

    def attack(self, target: Target, batch: Batch) -> Outcome:
        out = super().attack(target, batch)
        out.values["eps"] = torch.full((len(batch.x),), self.radius(self.params.eps, batch.x.device))
        return out


def uniform_in_ball(rounds: int, dim: int, eps: float, draws: Draws) -> Tensor:
    """``rounds`` points per drawn point, uniform in the L2 ball of radius eps in ``dim`` dimensions:
    shape (rounds, points, dim)."""
    direction = normalized(draws.randn((dim,), lead=(rounds,)).flatten(0, 1))
    radius = eps * draws.rand((1,), lead=(rounds,)).flatten(0, 1) ** (1 / dim)
    return (direction * radius).view(rounds, -1, dim)


class RandomSamplesParams(CVAEThreatParams):
    eps: Radius
    samples: Samples = 1000
    chunk: Samples = 2000  # generator forward passes per round; it orders the draws, so it is protocol


@THREAT_FAMILIES.register("learned-cvae-random")
class LearnedCVAERandom(CVAEStep):
    """Gradient-free check: a point survives only if all of ``samples`` latent points drawn uniformly in
    the ball are classified correctly. Weaker than PGD on an honest model, but blind to gradient masking:
    where it breaks points that PGD leaves robust, PGD's number is not to be trusted. It draws for every
    point of the batch (the rounds are sized by the batch), so its draws are per point of the whole batch."""

    Params = RandomSamplesParams

    def attacked(self, batch: Batch) -> Tensor:
        return torch.ones_like(batch.clean["clean_correct"])

    def perturb(self, target: Target, x: Tensor, y: Tensor, draws: Draws) -> Candidates:
        """The first sample that fools each point (the point itself where none does), with its prediction."""
        p, model = self.params, target.module
        eps, cvae = self.radius(p.eps, x.device), self.cvae(x.device)
        pred = y.clone()  # until a sample fools the point (a point wrong clean keeps its clean prediction)
        found = x.clone()
        with torch.no_grad():
            mu_p, logvar_p = cvae.prior(x)
            sigma_p = (0.5 * logvar_p).exp()
            per_round = max(1, p.chunk // draws.total)
            done = 0
            while done < p.samples:
                k = min(per_round, p.samples - done)
                u = uniform_in_ball(k, mu_p.shape[1], eps, draws).to(mu_p)
                images = cvae.generator(x.repeat(k, 1, 1, 1), (mu_p + sigma_p * u).flatten(0, 1))
                votes = predict(model, images, target.num_classes).view(k, len(x))
                wrong = votes != y
                first = wrong.float().argmax(0)  # the first draw that fools each point
                hit = wrong.any(0) & (pred == y)
                points = torch.arange(len(x), device=x.device)
                pred[hit] = votes[first, points][hit]
                found[hit] = images.view(k, *x.shape)[first, points][hit]
                done += k
        return Candidates(found, pred=pred)


class TransferParams(CVAEThreatParams):
    eps: Radius
    source: ClassifierRef  # the model the latent points are crafted on
    steps: Steps = 50
    step_size: float | None = Field(None, gt=0)  # default eps / 20


@THREAT_FAMILIES.register("learned-cvae-transfer")
class LearnedCVAETransfer(CVAEStep):
    """Transfer check: latent PGD on ``source`` (all steps, maximising its loss), then the evaluated model
    classifies those points. It needs no gradient of the evaluated model at all."""

    Params = TransferParams
    adaptive = False

    def perturb(self, target: Target, x: Tensor, y: Tensor, draws: Draws) -> Candidates:
        p = self.params
        eps = self.radius(p.eps, x.device)
        if str(x.device) not in self._sources:
            from bench.models.build import create

            self._sources[str(x.device)] = create(p.source.card, device=x.device).requires_grad_(False)
        x_adv, _ = latent_pgd(self.cvae(x.device), self._sources[str(x.device)], x, y, eps=eps, steps=p.steps,
                              step_size=p.step_size or eps / 20, gen=draws, until_fooled=False)
        return Candidates(x_adv)
