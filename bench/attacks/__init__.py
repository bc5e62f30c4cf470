"""Threat families and threat cards. ``make_threat(card)`` is the one way to get a Threat."""
from __future__ import annotations

from pathlib import Path

from bench.attacks.base import Outcome, Threat
from bench.attacks.card import ThreatCard, load_threat_card
from bench.errors import CardError, did_you_mean

__all__ = ["Outcome", "Threat", "ThreatCard", "load_threat_card", "make_threat", "family_class", "FAMILIES"]


def _families() -> dict[str, type[Threat]]:
    from bench.attacks.autoattack import AutoAttack
    from bench.attacks.clean import Clean
    from bench.attacks.latent_smoothing import LatentSmoothing
    from bench.attacks.learned_cvae import LearnedCVAE
    from bench.attacks.perturbed import Perturbed
    from bench.attacks.pgd import PGD

    return {cls.family: cls for cls in (Clean, PGD, AutoAttack, LearnedCVAE, LatentSmoothing, Perturbed)}


FAMILIES = _families()


def family_class(family: str, card_id: str) -> type[Threat]:
    if family not in FAMILIES:
        raise CardError(f"threat card {card_id}: unknown family {family!r}",
                        f"{did_you_mean(family, FAMILIES)}known families: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[family]


def make_threat(card: str | Path | ThreatCard) -> tuple[ThreatCard, Threat]:
    from bench.cards import validate

    card = card if isinstance(card, ThreatCard) else load_threat_card(card)
    cls = family_class(card.family, card.id)
    return card, cls(validate(cls.Params, card.params, f"threat card {card.id} params"))
