"""The ``perturbed`` family: accuracy under one seeded random draw of a real perturbation family
(e.g. RTS, shear, stroke thickening, or CIFAR-10-C style corruption files). Not an attack: it is how
the learned-set papers measure in-family and held-out generalisation.

``adv_pred`` is the prediction on the perturbed copy; ``robust`` also requires the clean prediction
to be right, so accuracy on the perturbed copies alone is ``mean(adv_pred == label)`` in the store.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.attacks.base import Outcome, Threat, ThreatParams, predict
from bench.data.pairs import Pairs


class PerturbedParams(ThreatParams):
    pairs: Pairs


class Perturbed(Threat):
    family = "perturbed"
    Params = PerturbedParams

    def attack(self, model: nn.Module, x: Tensor, y: Tensor, clean_pred: Tensor, seed: int,
               index: Tensor) -> Outcome:
        from bench.data.pairs import pair_source

        if not hasattr(self, "source"):
            self.source = pair_source(self.params.pairs, "test", "threat params.pairs")
        adv_pred = predict(model, self.source(x, index, torch.Generator().manual_seed(seed)))
        return Outcome(robust=(clean_pred == y) & (adv_pred == y), adv_pred=adv_pred)
