"""Attacks in a learned perturbation set (Wong & Kolter, 2021).

The set S(x) = { g(x, mu_p + sigma_p * u) : |u|_2 <= eps } comes from a CVAE model card; eps is a
number or a statistic of the set's held-out latent distances (p50, p75, max, ...), as in the paper.
The protocol hash includes the CVAE card's hash, so results with different perturbation models are never
ranked together. Families:

- ``learned-cvae``, the default: a latent attack ensemble built like AutoAttack (``LatentEnsemble``);
- ``learned-cvae-pgd``: the paper's latent PGD (50 steps of eps/20, one start: the ``-paper`` cards), which
  overstates robust accuracy by tens of points on defended models, and its 10 x 200-step variant;
- ``learned-cvae-apgd``: latent APGD on cross-entropy or the targeted DLR loss (the ensemble's members);
- ``learned-cvae-random`` and ``learned-cvae-transfer``: gradient-free and transfer checks.

Every family here draws its noise per point (``bench.ops.draws.PointDraws``): a point's verdict does not
depend on the batch or on how many points are evaluated.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from bench.errors import BenchError
from bench.families.learned_sets.latent_apgd import latent_apgd
from bench.families.learned_sets.latent_pgd import latent_pgd
from bench.families.learned_sets.sets import CVAERef, Radius, load_cvae, resolve_radius
from bench.models.card import model_ref
from bench.ops.norms import normalized
from bench.ops.draws import Draws
from bench.params import Params, Samples, Steps
from bench.tasks.classifier import predict
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
    """A perturb step in a CVAE's latent ball, with draws keyed by point. Its candidates are the set's members,
    checked against the ball by the attack itself (``check`` here only refuses non-finite or misshapen images)."""

    point_draws = True

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


def checked_norm(u: Tensor, eps: float, who: str) -> Tensor:
    """The latent norm of each point, refusing any outside the ball (a bug in the attack, never scored)."""
    latent_norm = u.flatten(1).norm(dim=1)
    if not torch.isfinite(latent_norm).all():
        raise BenchError(f"{who} produced non-finite latent points (NaN or inf): the model's outputs or gradients "
                         "are not finite", "check the model on these inputs (bench checks every output it scores)")
    if bool((latent_norm > eps * (1 + 1e-5)).any()):
        raise BenchError(f"{who} left the ball of radius {eps:.4g} (largest norm {latent_norm.max():.4g})",
                         "this is a bug in the attack, not the model: report it with the model and threat")
    return latent_norm


class RadiusColumn(CVAEStep):
    """Stores the resolved radius with every point, so a run says which number p50 or max stood for."""

    def attack(self, target: Target, batch: Batch) -> Outcome:
        out = super().attack(target, batch)
        out.values["eps"] = torch.full((len(batch.x),), self.radius(self.params.eps, batch.x.device))
        return out


@THREAT_FAMILIES.register("learned-cvae-pgd")
class LatentPGD(RadiusColumn):
    """The paper's latent PGD (and, with restarts and a decaying step, a stronger variant of it)."""

    Params = LearnedCVAEParams
    gradient_based = True
    budget = ("restarts",)

    def perturb(self, target: Target, x: Tensor, y: Tensor, draws: Draws) -> Candidates:
        p = self.params
        eps = self.radius(p.eps, x.device)
        x_adv, u = latent_pgd(self.cvae(x.device), target.module, x, y, eps=eps, steps=p.steps, step_size=p.step(eps),
                              restarts=p.restarts, gen=draws, decay=p.decay)
        return Candidates(x_adv, columns={"latent_norm": checked_norm(u, eps, "latent PGD")})


class LatentAPGDParams(CVAEThreatParams):
    eps: Radius
    loss: Literal["ce", "dlr-targeted"] = "ce"
    steps: Steps = 100
    restarts: Steps = 1
    targets: Steps = 3  # dlr-targeted: the classes ranked 2nd, 3rd, ... on the clean image, attacked in turn


@THREAT_FAMILIES.register("learned-cvae-apgd")
class LatentAPGD(RadiusColumn):
    """Latent APGD (``latent_apgd``) on cross-entropy, or on the targeted DLR loss towards each of the
    ``targets`` most likely wrong classes of the clean image in turn, each on the points still standing."""

    Params = LatentAPGDParams
    params: LatentAPGDParams
    gradient_based = True
    budget = ("steps",)

    def perturb(self, target: Target, x: Tensor, y: Tensor, draws: Draws) -> Candidates:
        p, model, cvae = self.params, target.module, self.cvae(x.device)
        eps = self.radius(p.eps, x.device)
        if p.loss == "ce":
            u, _ = latent_apgd(cvae, model, x, y, eps=eps, steps=p.steps, restarts=p.restarts, draws=draws)
        else:
            with torch.no_grad():
                clean = model(x)
            if clean.shape[1] < 4:
                raise BenchError(f"the targeted DLR loss needs at least 4 classes; this model has {clean.shape[1]}",
                                 "use loss: ce for this model")
            ranked = clean.masked_fill(torch.nn.functional.one_hot(y, clean.shape[1]).bool(), -torch.inf)
            ranked = ranked.argsort(dim=1, descending=True)
            u = torch.zeros(len(x), cvae.prior(x[:1])[0].shape[1], device=x.device)
            standing = torch.ones(len(x), dtype=torch.bool, device=x.device)
            for rank in range(min(p.targets, clean.shape[1] - 1)):
                rows = torch.nonzero(standing).flatten()
                if not len(rows):
                    break
                found, fooled = latent_apgd(cvae, model, x[rows], y[rows], eps=eps, steps=p.steps,
                                            restarts=p.restarts, draws=draws.fork(f"target{rank}").subset(rows),
                                            target=ranked[rows, rank])
                u[rows] = found
                standing[rows[fooled]] = False
        with torch.no_grad():
            mu_p, logvar_p = cvae.prior(x)
            images = cvae.generator(x, mu_p + (0.5 * logvar_p).exp() * u)
        return Candidates(images, columns={"latent_norm": checked_norm(u, eps, "latent APGD")})


def uniform_in_ball(rounds: int, dim: int, eps: float, draws: Draws) -> Tensor:
    """``rounds`` points per drawn point, uniform in the L2 ball of radius eps in ``dim`` dimensions:
    shape (rounds, points, dim)."""
    direction = normalized(draws.randn((dim,), lead=(rounds,)).flatten(0, 1))
    radius = eps * draws.rand((1,), lead=(rounds,)).flatten(0, 1) ** (1 / dim)
    return (direction * radius).view(rounds, -1, dim)


def keep_first_fooling(found: Tensor, pred: Tensor, y: Tensor, images: Tensor, votes: Tensor, wrong: Tensor) -> None:
    """Record in place, for each point no candidate has fooled yet, the first of this round's k candidates that
    does (``images`` (k * n, ...) draw-major, ``votes`` and ``wrong`` (k, n)) and its prediction."""
    first = wrong.float().argmax(0)
    hit = wrong.any(0) & (pred == y)
    points = torch.arange(len(y), device=y.device)
    pred[hit] = votes[first, points][hit]
    found[hit] = images.view(len(votes), *found.shape)[first, points][hit]


class RandomSamplesParams(CVAEThreatParams):
    eps: Radius
    samples: Samples = 1000
    chunk: Samples = 2000  # generator forward passes per round (memory only: each point's draws are its own)


@THREAT_FAMILIES.register("learned-cvae-random")
class LearnedCVAERandom(CVAEStep):
    """Gradient-free check: a point survives only if all of ``samples`` latent points drawn uniformly in
    the ball are classified correctly. Weaker than PGD on an honest model, but blind to gradient masking:
    where it breaks points that PGD leaves robust, PGD's number is not to be trusted."""

    Params = RandomSamplesParams
    revision = 2  # 2: draws keyed by point
    budget = ("samples",)

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
            per_round = max(1, p.chunk // draws.count)
            done = 0
            while done < p.samples:
                k = min(per_round, p.samples - done)
                u = uniform_in_ball(k, mu_p.shape[1], eps, draws).to(mu_p)
                images = cvae.generator(x.repeat(k, 1, 1, 1), (mu_p + sigma_p * u).flatten(0, 1))
                votes = predict(model, images, target.num_classes).view(k, len(x))
                keep_first_fooling(found, pred, y, images, votes, votes != y)
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
    revision = 2  # 2: draws keyed by point

    def perturb(self, target: Target, x: Tensor, y: Tensor, draws: Draws) -> Candidates:
        p = self.params
        eps = self.radius(p.eps, x.device)
        if str(x.device) not in self._sources:
            from bench.models.build import create

            self._sources[str(x.device)] = create(p.source.card, device=x.device).requires_grad_(False)
        x_adv, _ = latent_pgd(self.cvae(x.device), self._sources[str(x.device)], x, y, eps=eps, steps=p.steps,
                              step_size=p.step_size or eps / 20, gen=draws, until_fooled=False)
        return Candidates(x_adv)
