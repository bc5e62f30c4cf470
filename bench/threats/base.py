"""The Threat interface: one class per family; the run loop knows nothing about any one of them.

A family declares the tasks it accepts, the metrics it produces (and which one is the headline),
and ``attack(target, batch) -> Outcome`` whose per-example values are stored by name. Families that
attack classifiers derive from ``ClassifierAttack``, which scores a batch from its adversarial
predictions: a point is robust when it is classified correctly both clean and under the threat.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from bench.errors import NotApplicable
from bench.metrics import Metric
from bench.ops.draws import PointDraws
from bench.params import Params
from bench.registry import Registry

if TYPE_CHECKING:
    import pandas as pd

    from bench.models.card import ModelCard
    from bench.tasks import Task
    from bench.threats.card import ThreatCard


@dataclass
class Target:
    """What a threat evaluates: the module (eval mode, on the batch's device), its card (None for a bare
    module), its task, and the number of classes of the dataset."""

    module: nn.Module
    card: ModelCard | None
    task: Task
    num_classes: int | None


@dataclass
class Batch:
    """One shard's points: ``index`` are their positions in the split, ``seed`` the shard's seed,
    ``clean`` the task's clean-pass columns (e.g. ``clean_pred``, ``clean_correct``) and ``run_seed`` the run's
    seed, which keys per-point draws (``bench.ops.draws.PointDraws``; the shard's seed where not given)."""

    x: Tensor
    y: Tensor
    index: Tensor
    seed: int
    clean: dict[str, Tensor]
    run_seed: int | None = None

    def point_draws(self, points: Tensor, stream: str = "") -> PointDraws:
        """Draws keyed by the points at mask ``points``: each point's noise depends only on the run seed, the
        point and ``stream``, not on its batch."""
        return PointDraws(self.seed if self.run_seed is None else self.run_seed, self.index[points.cpu()], stream)

    def generator(self) -> torch.Generator:
        """A fresh CPU generator seeded with the shard's seed (the same on every device)."""
        return torch.Generator().manual_seed(self.seed)


@dataclass
class BoardRun:
    """One model's run of a protocol, as the board sees it: the model's id and the stored per-example rows."""

    model_id: str
    rows: pd.DataFrame


@dataclass
class Outcome:
    """What a threat says about one batch: per-example ``values`` by column name, per-batch ``stats``
    that add up over batches (e.g. points broken by each attack), and ``notes`` for the run output."""

    values: dict[str, Tensor]
    stats: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    inputs: Tensor | None = None  # per point, the input it was last classified on under the threat (its adversarial
    # example where the attack made one, else the clean input): what `bench.attack` and `--save-adv` return


class Threat(ABC):
    tasks: ClassVar[tuple[str, ...]] = ("classifier",)
    Params: ClassVar[type[Params]] = Params
    metrics: ClassVar[tuple[Metric, ...]] = ()
    headline: ClassVar[str]
    adaptive: ClassVar[bool] = True  # False: the attack ignores the evaluated model (e.g. transfer); never a
    # defence's robustness ranking (the board ranks defences by their worst adaptive number)
    revision: ClassVar[int] = 1  # bump whenever the family's numbers may change; its fingerprint test says when
    budget: ClassVar[tuple[str, ...]] = ()  # the params that set its effort (steps, restarts, samples): the
    # convergence check (``bench.convergence``) doubles them all

    def __init__(self, params: Params):
        self.params = params

    @classmethod
    def backends(cls) -> dict[str, str]:
        """Packages outside bench that compute this family's numbers, with their versions (none by default;
        ``installed_version`` reads one)."""
        return {}

    def implementation(self) -> dict:
        """This family's part of a run's implementation identity (``bench.implementation``)."""
        backends = self.backends()
        return {"revision": self.revision, **({"backends": backends} if backends else {})}

    def ready(self) -> None:
        """Raise a BenchError naming what the run lacks (e.g. data files) before any point is attacked and any
        progress bar starts; nothing by default."""

    def member_cards(self) -> list[ThreatCard]:
        """Threat cards this one runs as parts of itself (an ensemble's members), checked against the run's task
        and dataset like the card itself (none by default)."""
        return []

    def metrics_for(self, task: Task) -> tuple[Metric, ...]:
        """Every metric a run of this family on a model of ``task`` reports: the clean pass's, then its own
        (a family whose metrics depend on its params, such as one per corruption, overrides this)."""
        return task.clean_metrics + self.metrics

    def headline_for(self, task: Task) -> str:
        return self.headline

    @abstractmethod
    def attack(self, target: Target, batch: Batch) -> Outcome:
        """Evaluate one batch; ``target.module`` is in eval mode on the batch's device."""

    def unsupported(self, model: nn.Module) -> NotApplicable | None:
        """Why this threat cannot evaluate a model like ``model`` (None: it can). Asked at plan time of the card's
        architecture with fresh weights, so it may look at the model's kind, never its weights."""
        return None

    def require_supported(self, model: nn.Module, name: str) -> None:
        why = self.unsupported(model)
        if why is not None:
            raise NotApplicable(f"{name} {why.problem}", why.fix)

    def checks(self, target: Target, batch: Batch) -> list[str]:
        """Notes on what could make this family's numbers misleading for this model (none by default)."""
        return []

    @classmethod
    def board_columns(cls, params: dict, runs: dict[str, BoardRun]) -> tuple[tuple[Metric, ...], dict]:
        """Metrics a family derives on the board from all the runs of one protocol (e.g. an error normalised
        by a baseline model's): their specs, and per run (keyed as ``runs``) {metric name: MetricValue}."""
        return (), {}

    @classmethod
    def board_details(cls, params: dict, runs: dict[str, BoardRun]) -> str:
        """Markdown the board prints under the family's table (e.g. a per-cell breakdown); none by default."""
        return ""

    @classmethod
    def protocol(cls, params: Params) -> dict:
        """What identifies the protocol besides family and version: the validated params, with any
        referenced card as that card's hash."""
        return params.model_dump(mode="json")


THREAT_FAMILIES: Registry[type[Threat]] = Registry(
    "threat family",
    providers=("bench.threats.clean", "bench.threats.pgd", "bench.threats.autoattack", "bench.threats.surrogate",
               "bench.threats.ensemble"),
    hint="`bench threats` lists them")

def family_class(name: str) -> type[Threat] | None:
    """The family's class, or None for a family that is not known here or does not import (the board still
    shows such a family's stored runs, without what only its code can derive)."""
    from bench.errors import BenchError

    try:
        return THREAT_FAMILIES.get(name)
    except BenchError:
        return None


ROBUST_ACC = Metric("robust_acc", "robust", "robust accuracy", agg="rate")


class ClassifierAttack(Threat):
    """A family that perturbs a classifier's inputs; its headline is robust accuracy. A family that
    follows gradients (``gradient_based``) says when the model's gradients are zero or its predictions
    random, since both make a gradient attack look weaker than the model is robust."""

    metrics = (ROBUST_ACC,)
    headline = "robust_acc"
    gradient_based: ClassVar[bool] = False

    def checks(self, target: Target, batch: Batch) -> list[str]:
        from bench.threats.checks import gradient_notes

        return gradient_notes(target.module, batch.x, batch.y) if self.gradient_based else []

    @staticmethod
    def scored(batch: Batch, adv_pred: Tensor, **values: Tensor) -> dict[str, Tensor]:
        """The standard columns: the prediction under the threat, and robust = right both clean and under it."""
        robust = batch.clean["clean_correct"] & (adv_pred == batch.y)
        return {"adv_pred": adv_pred, "robust": robust, **values}


def installed_version(*distributions: str) -> str:
    """The version of the first of ``distributions`` installed (alternative names of one package), for a
    family's ``backends()``; "not installed" where none is."""
    from importlib import metadata

    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"
