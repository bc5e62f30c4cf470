"""The ``clean`` family: no perturbation; robust accuracy equals clean accuracy."""
from __future__ import annotations

from torch import Tensor, nn

from bench.attacks.base import Outcome, Threat


class Clean(Threat):
    family = "clean"

    def attack(self, model: nn.Module, x: Tensor, y: Tensor, clean_pred: Tensor, seed: int,
               index: Tensor) -> Outcome:
        return Outcome(robust=clean_pred == y, adv_pred=clean_pred)
