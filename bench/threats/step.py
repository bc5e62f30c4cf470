"""The attack step that every survivors-only classifier family shares.

A family says which points it attacks on its own (``attacked``: the points it classifies right clean, by
default) and how it perturbs them (``perturb``: inputs, labels and seeded ``Draws`` -> candidate
adversarial inputs). The step does the rest, the same way for every family: it attacks only the points
still standing (all of ``attacked``, or an ensemble's survivors among them), checks every candidate
against the family's threat model (``check``: finite, inside the ball, inside [0, 1]) before it counts,
classifies it with the evaluated model, and records the prediction for points that were right clean.
Draws are made for the whole ``attacked`` set and sliced, so a point gets the same noise whether it is
attacked alone, with all the others, or as a survivor (``bench.ops.draws``).
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from bench.ops.draws import Draws
from bench.tasks.classifier import predict
from bench.threats.base import Batch, ClassifierAttack, Outcome, Target
from bench.threats.checks import check_points


@dataclass
class Candidates:
    """What ``perturb`` returns for the points it was given: ``x`` (one candidate each), optionally ``pred``
    (the evaluated model's predictions on ``x``, where the attack already made them), per-point ``columns``
    to store, and the ``stats`` and ``notes`` of an Outcome."""

    x: Tensor
    pred: Tensor | None = None
    columns: dict[str, Tensor] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class StepResult:
    """The step over one batch: the prediction under the threat per point (the clean prediction where a
    point was not attacked or was wrong clean), and the candidates' extras."""

    adv_pred: Tensor
    columns: dict[str, Tensor]
    stats: dict[str, int]
    notes: list[str]
    inputs: Tensor  # the candidate of each attacked point, the clean input elsewhere
    attacked: Tensor  # the points this step attacked


class PerturbStep(ClassifierAttack):
    """A classifier family made of one perturb step (see the module docstring); it may join an ensemble."""

    point_draws: ClassVar[bool] = False  # True: its draws are keyed by point (``Batch.point_draws``, on the stream
    # ``draw_stream``), so a point's outcome depends only on the point; False: drawn for the whole ``attacked`` set
    # and sliced (older families)
    aligned_draws: ClassVar[bool] = True  # False: its randomness is its own (e.g. a backend seeded per batch), so
    # its outcome on a point may depend on which other points it attacks

    @property
    def draw_stream(self) -> str:
        """The stream of a point's noise this family draws from (its class): a family inside another (a member of
        ``learned-cvae``) draws exactly what it draws on its own."""
        return type(self).__name__

    def attacked(self, batch: Batch) -> Tensor:
        """The points this family attacks on its own (default: those classified right clean)."""
        return batch.clean["clean_correct"]

    @abstractmethod
    def perturb(self, target: Target, x: Tensor, y: Tensor, draws: Draws) -> Candidates:
        """Candidate adversarial inputs for the points ``x`` (labels ``y``), drawing any noise from ``draws``."""

    def check(self, x: Tensor, candidates: Candidates) -> None:
        """Refuse candidates outside the threat model (default: the ``norm`` ball of radius ``eps``, and [0, 1])."""
        check_points(x, candidates.x, self.params.norm, self.params.eps, type(self).__name__)

    def step(self, target: Target, batch: Batch, survivors: Tensor | None = None) -> StepResult:
        """Attack the points of ``attacked`` that are in ``survivors`` (default: all of them)."""
        attacked = self.attacked(batch)
        todo = attacked if survivors is None else attacked & survivors
        adv_pred = batch.clean["clean_pred"].clone()
        columns: dict[str, Tensor] = {}
        inputs = batch.x.clone()
        if not todo.any():
            return StepResult(adv_pred, columns, {}, [], inputs, todo)
        if self.point_draws:
            draws = batch.point_draws(todo, self.draw_stream)
        else:
            rows = None if survivors is None else torch.nonzero(todo[attacked].cpu()).flatten()
            draws = Draws(batch.generator(), int(attacked.sum()), rows, seed=batch.seed)
        x = batch.x[todo]
        candidates = self.perturb(target, x, batch.y[todo], draws)
        self.check(x, candidates)
        pred = candidates.pred if candidates.pred is not None else predict(target.module, candidates.x,
                                                                              target.num_classes)
        adv_pred[todo] = torch.where(batch.clean["clean_correct"][todo], pred, adv_pred[todo])
        inputs[todo] = candidates.x.detach().to(inputs.dtype)
        for name, values in candidates.columns.items():
            columns[name] = torch.zeros(len(batch.x), dtype=values.dtype)
            columns[name][todo.cpu()] = values.cpu()
        return StepResult(adv_pred, columns, candidates.stats, candidates.notes, inputs, todo)

    def attack(self, target: Target, batch: Batch) -> Outcome:
        result = self.step(target, batch)
        return Outcome(values=self.scored(batch, result.adv_pred, **result.columns), stats=result.stats,
                       notes=result.notes, inputs=result.inputs)
