"""Training a model card's recipe into the weight cache: ``train(card)``.

Recipes live in ``recipe.py`` (the base and the registry) and ``standard.py`` (the core ones); method
families register their own. The weights are cached by the card's training hash; the per-epoch
history goes into the weights' training record and into the results store.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from bench.files import atomic_write
from bench.models.assemble import skeleton, trained_path, unwrap, wrap
from bench.models.card import ModelCard, as_card
from bench.models.weights import sha256_file

__all__ = ["train"]


def train(card: str | Path | ModelCard, *, device: str | torch.device = "cpu", data_root: str | None = None,
          fresh: bool = False, results: str | Path | None = None) -> Path:
    """Train the card's recipe into the cache (resuming an interrupted run unless ``fresh``)."""
    from safetensors.torch import save_file

    from bench.data import load_dataset
    from bench.store import Store
    from bench.training.loop import fit

    card = as_card(card)
    recipe = card.make_recipe()
    target = trained_path(card)
    checkpoint = target.with_suffix(".ckpt.pt")
    if fresh:
        checkpoint.unlink(missing_ok=True)
    recipe.prepare(device=torch.device(device), data_root=data_root)
    torch.manual_seed(card.recipe.seed)
    model = wrap(card, skeleton(card))
    with torch.enable_grad():  # a model trained on first use may be asked for inside a caller's no_grad()
        history = fit(model, recipe, load_dataset(card.dataset, "train", data_root), seed=card.recipe.seed,
                      device=torch.device(device), checkpoint=checkpoint, desc=f"train {card.id}")
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    atomic_write(target, lambda tmp: save_file(state, str(tmp)))
    record = {"card": card.id, "training_hash": card.training_hash, "sha256": sha256_file(target),
              "device": str(device), "threads": torch.get_num_threads(), "history": history,
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    target.with_suffix(".json").write_text(json.dumps(record, indent=2))
    Store(results).write_training(card.id, card.training_hash, history)
    checkpoint.unlink(missing_ok=True)
    return target
