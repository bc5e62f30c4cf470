"""The ``translate-then-classify`` composer: y = f(T(x)), or with a gate, f(T(x)) only where the gate calls
x out of distribution and f(x) elsewhere (so in-distribution accuracy is kept exactly where it is not).

The gate (``gate: recon``) thresholds the translator's own correction, mean |T(x) - x|: the threshold is
its ``quantile`` over ``calibration`` clean training images (the first of the training split's fixed
permutation), so about 1 - quantile of in-distribution images are translated. The hard switch has no
useful gradient; ``bpda_surrogate()`` is the same model with the gate always open (f(T(x))), which the
``pgd-bpda`` family follows (BPDA, Athalye et al., 2018). Nothing here is random, so EOT is not needed.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from bench.families.ood_to_id.translator import TASK as TRANSLATOR
from bench.models.compose import COMPOSERS, Composer
from bench.params import Params, Samples


class TranslateThenClassify(nn.Module):
    def __init__(self, classifier: nn.Module, translator: nn.Module, threshold: float | None = None):
        super().__init__()
        self.classifier, self.translator = classifier, translator
        self.register_buffer("threshold", torch.tensor(float("nan") if threshold is None else threshold))

    @property
    def gated(self) -> bool:
        return not bool(torch.isnan(self.threshold))

    def translated(self, x: Tensor) -> Tensor:
        """Which images the gate sends through the translator (all of them without a gate)."""
        if not self.gated:
            return torch.ones(len(x), dtype=torch.bool, device=x.device)
        with torch.no_grad():
            return (self.translator(x) - x).abs().flatten(1).mean(1) > self.threshold

    def forward(self, x: Tensor) -> Tensor:
        mapped = self.classifier(self.translator(x))
        if not self.gated:
            return mapped
        return torch.where(self.translated(x).view(-1, 1), mapped, self.classifier(x))

    def bpda_surrogate(self) -> nn.Module:
        """The differentiable stand-in for the gate: always translate."""
        return nn.Sequential(self.translator, self.classifier)


class DefenceParams(Params):
    gate: Literal["none", "recon"] = "none"
    quantile: float = Field(0.95, gt=0, lt=1)  # of the gate statistic on clean training images
    calibration: Samples = 1000  # clean training images the threshold is read from


@COMPOSERS.register("translate-then-classify")
class TranslateThenClassifyComposer(Composer):
    roles = {"classifier": "classifier", "translator": TRANSLATOR}
    Params = DefenceParams
    params: DefenceParams

    def build(self, parts: dict[str, nn.Module], card, device: torch.device) -> nn.Module:
        model = TranslateThenClassify(parts["classifier"], parts["translator"])
        if self.params.gate == "recon":
            model.threshold.fill_(self.threshold(parts["translator"], card.dataset, device))
        return model

    @torch.no_grad()
    def threshold(self, translator: nn.Module, dataset: str, device: torch.device) -> float:
        from bench.data import load_dataset, subset_indices

        train = load_dataset(dataset, "train")
        x = train.x[subset_indices(len(train), min(self.params.calibration, len(train)))]
        scores = torch.cat([(translator(b.to(device)) - b.to(device)).abs().flatten(1).mean(1).cpu()
                            for b in x.split(500)])
        return float(torch.quantile(scores.double(), self.params.quantile))
