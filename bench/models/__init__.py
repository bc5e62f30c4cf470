"""Models from model cards: the card schema, architectures, weight sources, and ``create``."""
from bench.models.assemble import from_file, trained_path
from bench.models.build import create
from bench.models.card import CardRef, ModelCard, load_model_card, model_ref

__all__ = ["CardRef", "ModelCard", "create", "from_file", "load_model_card", "model_ref", "trained_path"]
