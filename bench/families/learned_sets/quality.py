"""The ``set-quality`` family: how well a learned perturbation set explains real perturbations
(Wong & Kolter, 2021), run on a CVAE card like any other threat on any other model.

For each evaluation point it draws one seeded pair (x, x~), from the set's own training family
(in-family, the default) or from a given pair source (e.g. a held-out family), and stores per pair:
encoder AE, PGD AE (the headline), EAE, reconstruction error, KL and the identity error mse(x, x~),
all per-pixel MSE (KL in nats) at the card's radius eps (a number or a statistic of the set).
"""
from __future__ import annotations

import torch

from bench.errors import BenchError
from bench.families.learned_sets.pairs import Pairs
from bench.families.learned_sets.quality_metrics import quality_metrics
from bench.families.learned_sets.sets import TASK, Radius, resolve_radius
from bench.metrics import Metric
from bench.params import Params, Steps
from bench.threats.base import THREAT_FAMILIES, Batch, Outcome, Target, Threat


def _error(name: str, label: str) -> Metric:
    return Metric(name, name, label, higher_is_better=False)


class SetQualityParams(Params):
    eps: Radius = "max"
    pairs: Pairs | None = None  # None: the set's own training pairs (in-family)
    steps: Steps = 100  # PGD AE descent steps, decaying from eps/10 to eps/1000


@THREAT_FAMILIES.register("set-quality")
class SetQuality(Threat):
    tasks = (TASK,)
    Params = SetQualityParams
    metrics = (_error("pgd_ae", "PGD approximation error"), _error("encoder_ae", "encoder approximation error"),
               _error("eae", "expected approximation error"), _error("recon", "reconstruction error"),
               _error("kl", "KL(q || p) in nats"), _error("identity", "identity error mse(x, x~)"))
    headline = "pgd_ae"

    def attack(self, target: Target, batch: Batch) -> Outcome:
        p, card = self.params, target.card
        if card is None and (p.pairs is None or isinstance(p.eps, str)):
            raise BenchError("set quality of a bare CVAE module needs the card's pairs: and a numeric eps",
                             "evaluate the CVAE's card, or give pairs and a number for eps in the threat card")
        if not hasattr(self, "source"):
            self.source = (p.pairs or card.make_recipe().params.pairs).build("test")
            self.eps = resolve_radius(card, p.eps, device=batch.x.device)
        gen = batch.generator()
        x_tilde = self.source(batch.x, batch.index, gen)
        values = quality_metrics(target.module, batch.x, x_tilde, self.eps, gen, steps=p.steps)
        return Outcome(values={**values, "eps": torch.full((len(batch.x),), self.eps)})
