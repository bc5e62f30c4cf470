"""Compare freshly trained weights with the weights a card ships: the check behind `bench train`."""
from __future__ import annotations

from pathlib import Path

import torch

from bench.attacks.base import predict
from bench.attacks.pgd_core import pgd
from bench.data import load_dataset, subset_indices
from bench.models import from_file
from bench.models.card import ModelCard
from bench.models.recipes import PGDParams, make_recipe


def quick_metrics(card: ModelCard, path: Path, *, device: torch.device, n_robust: int = 1000) -> dict[str, float]:
    """Clean accuracy on the whole test split; for adversarial recipes also PGD-40 accuracy at the
    recipe's eps on the first ``n_robust`` points of the evaluation subset."""
    model = from_file(card, path, device=device)
    test = load_dataset(card.dataset, "test")
    correct = sum(int((predict(model, test.x[i:i + 1000].to(device)) == test.y[i:i + 1000].to(device)).sum())
                  for i in range(0, len(test), 1000))
    out = {"clean_acc": correct / len(test)}
    params = make_recipe(card.recipe.name, card.recipe.params, card.id).params if card.recipe else None
    if isinstance(params, PGDParams):
        idx = subset_indices(len(test), min(n_robust, len(test)))
        x, y = test.x[idx].to(device), test.y[idx].to(device)
        x_adv = pgd(model, x, y, norm=params.norm, eps=params.eps, steps=40, step_size=2.5 * params.eps / 40,
                    gen=torch.Generator().manual_seed(0))
        out["pgd40_acc"] = float((predict(model, x_adv) == y).float().mean())
    return out
