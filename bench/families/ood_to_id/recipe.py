"""The ``ood2id-translator`` recipe: a translator T trained by L1(T(s(x)), x) on (shifted, clean) pairs.

Each batch is split at random into parts: identity pairs (x, x), one part per listed shift with a
strength drawn uniformly from its range (one strength per part and step), and, given a classifier,
adversarial pairs from PGD against that frozen classifier (FGSM with ``steps: 1``) at an eps drawn from
the list. This is the design our notes derive for Amich & Eshete's method (the paper's code and exact
translator are not public): see docs and ../shared/notes/ood-to-id-mapping.md.
"""
from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from bench.ops.shifts import SHIFTS
from bench.models.card import model_ref
from bench.ops.pgd import pgd
from bench.params import Eps, Params, Steps
from bench.recipes.base import RECIPES, Batch, Recipe, RecipeParams


class ShiftRange(Params):
    shift: str
    low: float
    high: float

    @model_validator(mode="after")
    def _known(self) -> "ShiftRange":
        SHIFTS.get(self.shift, "ood2id-translator shifts")
        if self.high < self.low:
            raise ValueError(f"shift {self.shift}: high must be at least low")
        return self

    @property
    def name(self) -> str:
        return self.shift


class AdversarialPairs(Params):
    eps: list[Eps] = Field(min_length=1)  # L-inf radii, one drawn per step
    steps: Steps = 1  # 1: FGSM (no random start); more: PGD with step 2.5 eps / steps


class TranslatorParams(RecipeParams):
    shifts: list[ShiftRange] = Field(default_factory=list)
    classifier: model_ref("classifier") | None = None  # the frozen classifier adversarial pairs attack
    adversarial: AdversarialPairs | None = None
    identity: float = Field(0.25, ge=0, lt=1)  # fraction of each batch kept as identity pairs

    @model_validator(mode="after")
    def _pairs(self) -> "TranslatorParams":
        if (self.adversarial is None) != (self.classifier is None):
            raise ValueError("adversarial pairs need a classifier card, and a classifier is only for them")
        if not self.shifts and self.adversarial is None:
            raise ValueError("give shifts or adversarial pairs to translate from")
        return self


@RECIPES.register("ood2id-translator")
class TranslatorTraining(Recipe):
    Params = TranslatorParams
    tasks = ("translator",)
    params: TranslatorParams

    def prepare(self, *, device: torch.device, data_root: str | None) -> None:
        self.classifier = None
        if self.params.classifier is not None:
            from bench.models.build import create

            self.classifier = create(self.params.classifier.card, device=device)
            self.classifier.requires_grad_(False)

    def _adversarial(self, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        p = self.params.adversarial
        eps = p.eps[int(torch.randint(len(p.eps), (1,), generator=gen))]
        return pgd(self.classifier, x, y, norm="Linf", eps=eps, steps=p.steps,
                   step_size=eps if p.steps == 1 else 2.5 * eps / p.steps, random_start=p.steps > 1, gen=gen,
                   keep="last")

    def pairs(self, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        """The inputs to translate back to x: identity, shifted and adversarial parts of a random split."""
        parts = [s.name for s in self.params.shifts] + (["adversarial"] if self.params.adversarial else [])
        order = torch.randperm(len(x), generator=gen).to(x.device)
        keep = int(round(self.params.identity * len(x)))
        chunks = order[keep:].tensor_split(len(parts))
        out = x.clone()
        for part, idx in zip(parts, chunks):
            if not len(idx):
                continue
            if part == "adversarial":
                out[idx] = self._adversarial(x[idx], y[idx], gen)
            else:
                s = next(s for s in self.params.shifts if s.name == part)
                strength = s.low + (s.high - s.low) * float(torch.rand((), generator=gen))
                out[idx] = SHIFTS.get(part)(x[idx], strength, gen)
        return out

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return (model(self.pairs(batch.x, batch.y, batch.gen)) - batch.x).abs().mean()

    def examples(self, x: Tensor, gen: torch.Generator) -> dict[str, Tensor]:
        """Inputs at the middle of each shift's range, for the trained summary."""
        return {"identity": x, **{f"{s.name}_{(s.low + s.high) / 2:g}": SHIFTS.get(s.name)(x, (s.low + s.high) / 2, gen)
                                  for s in self.params.shifts}}
