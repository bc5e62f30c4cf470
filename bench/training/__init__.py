"""Training a model card's recipe into the weight cache: ``train(card)``, and ``ensure_trained(card)``, the
separate step that trains whatever a card depends on before anything is built from it.

Recipes live in ``recipe.py`` (the base and the registry) and ``standard.py`` (the core ones); method
families register their own. The weights are cached by the card's training hash; the per-epoch history
goes into the weights' training record and into the results store. Training holds a lock beside the
weights, so two processes that need one card train it once: the second waits and uses the result.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from bench.errors import BenchError
from bench.files import atomic_write, exclusive
from bench.models.assemble import skeleton, trained_path, unwrap, wrap
from bench.models.card import ModelCard, as_card, card_references
from bench.models.weights import sha256_file
from bench.models.prebuilt import install_prebuilt, prebuilt_path

__all__ = ["TrainingNeeded", "build_trained", "ensure_trained", "needs_training", "plan_text", "train",
           "training_plan"]


def needs_training(card: ModelCard) -> bool:
    """Whether the card's own weights come from its recipe and are not in the cache yet."""
    return card.weights is None and card.compose is None and not trained_path(card).is_file()


def training_plan(cards: list[ModelCard]) -> list[ModelCard]:
    """The cards ``ensure_trained`` would train for these (references first, each once): those with no weights
    in the cache and none shipped for their training hash."""
    out: dict[str, ModelCard] = {}

    def visit(card: ModelCard) -> None:
        for ref in card_references(card):
            visit(ref)
        if needs_training(card) and prebuilt_path(card) is None:
            out.setdefault(card.training_hash, card)

    for card in cards:
        visit(as_card(card))
    return list(out.values())


def plan_text(cards: list[ModelCard]) -> str:
    """What will be trained, with the time each card says its training takes."""
    return "; ".join(f"{c.id} (recipe {c.recipe.name}, {c.training_time or 'training time not stated by the card'})"
                     for c in cards)


class TrainingNeeded(BenchError):
    """A run that would train first was told not to (``--no-train``, or a caller that said no)."""

    def __init__(self, cards: list[ModelCard]):
        super().__init__(f"this needs weights that are not trained yet: {plan_text(cards)}",
                         "train them first with " + ", then ".join(f"`bench train {c.id}`" for c in cards)
                         + ", or let the run train them (leave out --no-train)")


def ensure_trained(card: str | Path | ModelCard, *, device: str | torch.device = "cpu",
                   data_root: str | None = None, results: str | Path | None = None) -> None:
    """Train every card ``card`` is built from that has no weights yet, then the card itself: references
    first (a CVAE before the classifier trained in its set, parts before their composition)."""
    card = as_card(card)
    for ref in card_references(card):
        ensure_trained(ref, device=device, data_root=data_root, results=results)
    if needs_training(card):
        train(card, device=device, data_root=data_root, results=results, if_missing=True)


def build_trained(card: str | Path | ModelCard, *, device: str | torch.device = "cpu",
                  trust_code: tuple[str, ...] = ()) -> torch.nn.Module:
    """The card's model (eval mode, on ``device``), after training whatever it needs: for commands and
    reports that use a model outside a run."""
    from bench.models.build import create

    ensure_trained(card, device=device)
    return create(card, device=device, trust_code=trust_code)


def train(card: str | Path | ModelCard, *, device: str | torch.device = "cpu", data_root: str | None = None,
          fresh: bool = False, results: str | Path | None = None, if_missing: bool = False) -> Path:
    """Train the card's recipe into the cache (resuming an interrupted run unless ``fresh``), after the cards it
    refers to; with ``if_missing``, weights another process finished meanwhile are kept, not trained again."""
    card = as_card(card)
    card.make_recipe()  # a card without a recipe of its own (weights only, or composed) says so here
    for ref in card_references(card):
        ensure_trained(ref, device=device, data_root=data_root, results=results)
    target = trained_path(card)
    with exclusive(target.with_name(f".{target.name}.lock")):
        if if_missing and (target.is_file() or install_prebuilt(card, target)):
            return target
        return _fit(card, target, device=device, data_root=data_root, fresh=fresh, results=results)


def _fit(card: ModelCard, target: Path, *, device, data_root, fresh: bool, results) -> Path:
    from safetensors.torch import save_file

    from bench.data import load_dataset
    from bench.store import Store
    from bench.training.loop import fit

    recipe = card.make_recipe()
    checkpoint = target.with_suffix(".ckpt.pt")
    if fresh:
        checkpoint.unlink(missing_ok=True)
    recipe.prepare(device=torch.device(device), data_root=data_root)
    torch.manual_seed(card.recipe.seed)
    start = time.perf_counter()
    model = wrap(card, skeleton(card))
    with torch.enable_grad():  # a model trained on first use may be asked for inside a caller's no_grad()
        history = fit(model, recipe, load_dataset(card.dataset, "train", data_root), seed=card.recipe.seed,
                      device=torch.device(device), checkpoint=checkpoint, desc=f"train {card.id}")
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    atomic_write(target, lambda tmp: save_file(state, str(tmp)))
    record = {"card": card.id, "training_hash": card.training_hash, "sha256": sha256_file(target),
              "device": str(device), "threads": torch.get_num_threads(), "history": history,
              "seconds": round(time.perf_counter() - start, 1),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    target.with_suffix(".json").write_text(json.dumps(record, indent=2))
    Store(results).write_training(card.id, card.training_hash, history)
    checkpoint.unlink(missing_ok=True)
    return target
