"""Threat families and threat cards. ``make_threat(card)`` is the one way to get a Threat, and
``resolve_threat(name, dataset, task)`` turns what a user typed (a card id, a card file, or a family
name) into a card."""
from __future__ import annotations

from pathlib import Path

from bench.cards import catalogue
from bench.errors import CardError, did_you_mean
from bench.threats.base import THREAT_FAMILIES, Batch, ClassifierAttack, Outcome, Target, Threat
from bench.threats.card import ThreatCard, load_threat_card

__all__ = ["THREAT_FAMILIES", "Batch", "ClassifierAttack", "Outcome", "Target", "Threat", "ThreatCard",
           "load_threat_card", "make_threat", "resolve_threat", "threat_cards"]


def make_threat(card: str | Path | ThreatCard) -> tuple[ThreatCard, Threat]:
    card = card if isinstance(card, ThreatCard) else load_threat_card(card)
    cls = THREAT_FAMILIES.get(card.family, f"threat card {card.id}")
    return card, cls(card.validated_params())


def threat_cards() -> list[ThreatCard]:
    """Every readable threat card of the catalogue (invalid ones are listed by `bench threats`)."""
    cards = []
    for path in catalogue("threat").cards.values():
        try:
            cards.append(load_threat_card(path))
        except CardError:
            continue
    return cards


def _family_default(family: str, dataset: str | None, task: str | None) -> ThreatCard:
    cls = THREAT_FAMILIES.get(family)
    if task is not None and task not in cls.tasks:
        raise CardError(f"threat family {family} evaluates {' or '.join(cls.tasks)} models, not {task} models",
                        f"`bench threats --task {task}` lists the threats for this model")
    cards = [c for c in threat_cards() if c.family == family and (not c.datasets or dataset in c.datasets)]
    defaults = [c for c in cards if c.default]
    if len(defaults) == 1:
        return defaults[0]
    if len(defaults) > 1:
        raise CardError(f"threat family {family} has {len(defaults)} default cards for {dataset}: "
                        f"{', '.join(c.id for c in defaults)}", "mark only one of them default: true")
    listed = ", ".join(c.id for c in cards) or "none"
    raise CardError(f"threat family {family} has no default card for dataset {dataset} (its cards for it: {listed})",
                    "name a threat card (`bench threats` lists them), or write one for this dataset")


def resolve_threat(name: str | Path | ThreatCard, *, dataset: str | None = None,
                   task: str | None = None) -> tuple[ThreatCard, bool]:
    """(card, chosen): a card itself, a card id or file, or a family name resolved to the family's default
    card for ``dataset`` (``chosen`` is then True, so the caller can say which card it took)."""
    if isinstance(name, ThreatCard):
        return name, False
    text = str(name)
    if text.endswith((".yaml", ".yml")) or text in catalogue("threat").cards or text not in THREAT_FAMILIES:
        try:
            return load_threat_card(text), False
        except CardError as err:
            if not err.problem.startswith("unknown threat"):
                raise
            known = [*catalogue("threat").cards, *THREAT_FAMILIES.names()]
            raise CardError(f"unknown threat {text!r}", f"{did_you_mean(text, known)}run `bench threats` to list "
                                                        "threat cards and families") from None
    return _family_default(text, dataset, task), True
