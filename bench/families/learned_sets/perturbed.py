"""The ``perturbed`` family: accuracy under one seeded random draw of a real perturbation family
(e.g. RTS, shear, stroke thickening, or CIFAR-10-C style corruption files). Not an attack: it is how
the learned-set papers measure in-family and held-out generalisation.

Its headline is the accuracy on the perturbed copies (``perturbed_correct``); ``robust`` also requires
the clean prediction to be right, as for attacks.
"""
from __future__ import annotations

from bench.families.learned_sets.pairs import Pairs
from bench.metrics import Metric
from bench.params import Params
from bench.tasks.classifier import predict
from bench.threats.base import ROBUST_ACC, THREAT_FAMILIES, Batch, ClassifierAttack, Outcome, Target


class PerturbedParams(Params):
    pairs: Pairs


@THREAT_FAMILIES.register("perturbed")
class Perturbed(ClassifierAttack):
    Params = PerturbedParams
    metrics = (Metric("perturbed_acc", "perturbed_correct", "accuracy on perturbed copies", agg="rate"), ROBUST_ACC)
    headline = "perturbed_acc"

    def attack(self, target: Target, batch: Batch) -> Outcome:
        if not hasattr(self, "source"):
            self.source = self.params.pairs.build("test")
        adv_pred = predict(target.module, self.source(batch.x, batch.index, batch.generator()), target.num_classes)
        return Outcome(values=self.scored(batch, adv_pred, perturbed_correct=adv_pred == batch.y))
