"""Models from model cards: the card schema, architectures, weight sources, and ``create``.

The names below are imported on first use, so that reading and validating a card (``bench.models.card``)
does not import torch: ``bench models`` and an unknown ``--model`` answer without it."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.models.assemble import from_file, trained_path
    from bench.models.build import create
    from bench.models.card import CardRef, ModelCard, load_model_card, model_ref

_WHERE = {"from_file": "bench.models.assemble", "trained_path": "bench.models.assemble", "create": "bench.models.build",
          "CardRef": "bench.models.card", "ModelCard": "bench.models.card", "load_model_card": "bench.models.card",
          "model_ref": "bench.models.card"}
__all__ = ["CardRef", "ModelCard", "create", "from_file", "load_model_card", "model_ref", "trained_path"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value
