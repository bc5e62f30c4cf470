"""Put a card's model together from parts: architecture, weight file, normalisation wrapper."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bench.errors import WeightsError
from bench.files import safe_filename
from bench.models import weights as W
from bench.models.archs import build as build_arch
from bench.models.card import ModelCard
from bench.models.wrapper import Normalized


def skeleton(card: ModelCard) -> nn.Module:
    """The card's architecture with fresh weights (the card schema guarantees an architecture here)."""
    arch = card.architecture
    assert arch is not None
    return build_arch(arch.name, arch.kwargs, f"model card {card.id}", card.task)


def wrap(card: ModelCard, net: nn.Module) -> nn.Module:
    return net if card.normalization is None else Normalized(net, card.normalization.mean, card.normalization.std)


def unwrap(model: nn.Module) -> nn.Module:
    return model.net if isinstance(model, Normalized) else model


def trained_path(card: ModelCard) -> Path:
    """Where `bench train` puts this card's weights: keyed by the training hash."""
    return W.cache_dir("models") / f"{safe_filename(card.id)}-{card.training_hash[:16]}.safetensors"


def trained_weights(cards: list[ModelCard], *, missing_ok: bool = False) -> dict[str, str]:
    """``"<card id>@<training hash>"`` -> sha256 of the trained weight file, for each card whose weights come
    from its recipe (shipped weights are pinned by the sha256 in the card itself), and ``"<card id>@robustbench"``
    -> sha256 of the local checkpoint of a RobustBench card that pins none (one the package has yet to download
    is left out)."""
    out = {}
    for card in cards:
        w = card.weights
        if w is not None and w.source == "robustbench" and w.sha256 is None:
            from bench.models.zoo import checkpoint, digest

            path = checkpoint(w.robustbench.name, w.robustbench.dataset, w.robustbench.threat_model)
            if path is not None:
                out[f"{card.id}@robustbench"] = digest(W.readable(path))
            continue
        if card.weights is None and card.compose is None:
            path = trained_path(card)
            if not path.is_file():
                if missing_ok:
                    continue
                raise WeightsError(f"model card {card.id} has no trained weights yet", f"run `bench train {card.id}`")
            out[f"{card.id}@{card.training_hash[:16]}"] = W.sha256_cached(W.readable(path))
    return out


def from_file(card: ModelCard, path: Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """The card's architecture filled from a weight file (checking its sha256 is the caller's job)."""
    net = skeleton(card)
    W.apply_state_dict(net, W.load_state_dict(path), str(path))
    return wrap(card, net).to(device).eval()
