"""The Threat interface: one class per family; the run loop knows nothing about any one of them."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn


class ThreatParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Outcome:
    """What a threat says about one batch.

    ``robust`` is per example: still classified correctly under the threat (False wherever the
    clean prediction is already wrong). ``columns`` are extra per-example values for the store;
    ``stats`` are per-batch counts that add up over batches (e.g. survivors after each attack);
    ``notes`` are warnings for the run output (e.g. AutoAttack's own checks).
    """

    robust: Tensor
    adv_pred: Tensor
    columns: dict[str, Tensor] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Threat(ABC):
    family: ClassVar[str]
    Params: ClassVar[type[ThreatParams]] = ThreatParams
    robust_implies_clean: ClassVar[bool] = True  # False for certificates of a smoothed classifier

    def __init__(self, params: ThreatParams):
        self.params = params

    @abstractmethod
    def attack(self, model: nn.Module, x: Tensor, y: Tensor, clean_pred: Tensor, seed: int,
               index: Tensor) -> Outcome:
        """Attack one batch. ``model`` is in eval mode on x's device; ``seed`` is this batch's seed;
        ``index`` are the points' positions in the evaluation split (for file-backed perturbations)."""

    @classmethod
    def protocol(cls, params: ThreatParams) -> dict:
        """What identifies the protocol besides family and version: the validated params, plus (for
        families that use other cards) the identity of those cards."""
        return params.model_dump(mode="json")


@torch.no_grad()
def predict(model: nn.Module, x: Tensor) -> Tensor:
    return model(x).argmax(1)
