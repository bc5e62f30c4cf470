"""Tasks: what kind of model a card builds, and what a clean pass means for it.

A model card's ``task`` picks one; a threat family lists the tasks it accepts, and a run checks the
pair before anything is built or trained. Core tasks: ``classifier`` (logits over classes) and
``generative`` (a VAE: reconstructions and an ELBO, no labels); method families add their own
(``perturbation-set`` for learned perturbation sets).
"""
from __future__ import annotations

from abc import ABC
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from bench.metrics import Metric
from bench.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn


class TrainedCard(Protocol):
    """What a task reads of the model card whose trained model it summarises (a ``bench.models.ModelCard``, named
    here only by what is used: models depend on tasks, never the other way)."""

    dataset: str

    def make_recipe(self) -> Any: ...


class Task(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    clean_metrics: ClassVar[tuple[Metric, ...]] = ()  # what the clean pass reports
    revision: ClassVar[int] = 1  # bump whenever the clean pass's numbers may change (see bench.implementation)
    uses_labels: ClassVar[bool] = True

    def clean_pass(self, model: nn.Module, x: Tensor, y: Tensor, num_classes: int | None) -> dict[str, Tensor]:
        """Per-example columns of the unperturbed batch (e.g. the prediction and whether it is right)."""
        return {}

    def guarded(self, model: nn.Module, name: str):
        """The model as the clean pass and threat families see it: a task may wrap it to check every output (the
        model itself by default)."""
        return model

    def probe(self, model: nn.Module, x: Tensor) -> Tensor | None:
        """Outputs that fingerprint a bare module's behaviour on a few points (None: no fingerprint)."""
        return None

    def trained_summary(self, card: TrainedCard, model: nn.Module, device: torch.device) -> dict[str, float]:
        """What `bench train` prints about a card's model built from freshly trained (or shipped) weights."""
        return {}


# Declared by name (module -> its tasks), so that validating a card asks nothing of torch.
TASKS: Registry[Task] = Registry("task", providers={"bench.tasks.classifier": ("classifier",),
                                                    "bench.tasks.generative": ("generative",)})
