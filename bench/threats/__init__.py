"""Threat families and threat cards. ``make_threat(card)`` is the one way to get a Threat, and
``resolve_threat(name, dataset, task, eps, norm)`` turns what a user typed (a card id, a card file, or a family
name, and an eps and norm to set: ``bench.threats.override``) into a card."""
from __future__ import annotations

import contextlib
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


def _check_task(family: str, task: str | None) -> None:
    cls = THREAT_FAMILIES.get(family)
    if task is not None and task not in cls.tasks:
        raise CardError(f"threat family {family} evaluates {' or '.join(cls.tasks)} models, not {task} models",
                        f"`bench threats --task {task}` lists the threats for this model")


def _defaults_for(family: str, dataset: str | None) -> list[ThreatCard]:
    """The family's default cards for ``dataset``: those naming it, else those for any dataset."""
    cards = [c for c in threat_cards() if c.family == family and c.default]
    return [c for c in cards if dataset in c.datasets] or [c for c in cards if not c.datasets]


def _family_default(family: str, dataset: str | None, task: str | None) -> ThreatCard:
    _check_task(family, task)
    defaults = _defaults_for(family, dataset)
    if len(defaults) == 1:
        return defaults[0]
    if len(defaults) > 1:
        raise CardError(f"threat family {family} has {len(defaults)} default cards for {dataset}: "
                        f"{', '.join(c.id for c in defaults)}", "mark only one of them default: true")
    cards = [c for c in threat_cards() if c.family == family and (not c.datasets or dataset in c.datasets)]
    listed = ", ".join(c.id for c in cards) or "none"
    raise CardError(f"threat family {family} has no default card for dataset {dataset} (its cards for it: {listed})",
                    _elsewhere(family) + "name a threat card (`bench threats` lists them), write one for this "
                    "dataset, or set the ball with --eps and --norm")


def _elsewhere(family: str) -> str:
    """Where the family does have default cards, with models that run there (one whose weights ship first): what
    a user most likely wanted."""
    from bench.cards import catalogue, read_card
    from bench.models.prebuilt import shipped_for

    homes = {d: c.id for c in threat_cards() if c.family == family and c.default for d in c.datasets}
    if not homes:
        return ""
    tasks = THREAT_FAMILIES.get(family).tasks
    models: dict[str, list[str]] = {}
    for card_id, path in sorted(catalogue("model").cards.items()):
        with contextlib.suppress(CardError):
            data = read_card(path)
            if data.get("task", "classifier") in tasks:
                models.setdefault(str(data.get("dataset")), []).append(card_id)
    examples = [f"{d} (`{cid}`; models: {', '.join(models.get(d, [])[:3]) or 'none yet'}"
                f"{', ...' if len(models.get(d, [])) > 3 else ''})" for d, cid in sorted(homes.items())]
    ready = [m for d in sorted(homes) for m in models.get(d, [])]
    ready.sort(key=lambda m: not shipped_for(m))  # a model whose weights ship runs at once
    run = f", e.g. `bench run --model {ready[0]} --threat {family}`" if ready else ""
    return f"its default cards are for {'; '.join(examples)}: evaluate a model of that dataset{run}; or "


def _ball_base(family: str, dataset: str | None, task: str | None, eps, norm) -> ThreatCard:
    """The card --eps / --norm start from when a family is named: its default card for the dataset; else (your
    own data, tensors, a dataset without one) the family's param defaults, if eps and norm are all they need;
    else its default cards for other datasets (else all its cards), which must agree once eps and norm are set."""
    from bench.cards import validate
    from bench.threats.override import derive

    _check_task(family, task)
    defaults = _defaults_for(family, dataset)
    if defaults:
        return _family_default(family, dataset, task)
    given = {k: v for k, v in (("norm", norm), ("eps", eps)) if v is not None}
    try:
        card = validate(ThreatCard, {"id": family, "family": family, "params": given}, f"threat {family}")
        card.validated_params()
        return card
    except CardError:
        pass
    cards = [c for c in threat_cards() if c.family == family]
    candidates = sorted([c for c in cards if c.default] or cards, key=lambda c: c.id)
    if candidates and len({derive(c, name=family, eps=eps, norm=norm).hash for c in candidates}) == 1:
        return candidates[0]
    listed = ", ".join(c.id for c in candidates) or "none"
    raise CardError(f"threat family {family} has no default card for dataset {dataset}, and its cards differ in more "
                    f"than eps and norm ({listed})", "name the card to start from: --threat CARD --eps E --norm N")


def _named_card(text: str) -> ThreatCard:
    try:
        return load_threat_card(text)
    except CardError as err:
        if not err.problem.startswith("unknown threat"):
            raise
        known = [*catalogue("threat").cards, *THREAT_FAMILIES.names()]
        raise CardError(f"unknown threat {text!r}", f"{did_you_mean(text, known)}run `bench threats` to list "
                                                    "threat cards and families") from None


def resolve_threat(name: str | Path | ThreatCard, *, dataset: str | None = None, task: str | None = None,
                   eps: float | str | None = None, norm: str | None = None) -> tuple[ThreatCard, bool]:
    """(card, chosen): a card itself, a card id or file, or a family name resolved to the family's default
    card for ``dataset`` (``chosen`` is then True, so the caller can say which card it took).

    With ``eps`` and/or ``norm`` (a number, a fraction such as "8/255", or a named radius; Linf, L2 or L1) the
    card is derived from that one, or, for a family on data without a default card, from the family's param
    defaults or its other default cards: ``bench.threats.override.derive``, ``chosen`` True."""
    from bench.threats.override import check_applies, derive, parse_eps, parse_norm

    eps = None if eps is None else parse_eps(eps)
    norm = None if norm is None else parse_norm(norm)
    text = None if isinstance(name, ThreatCard) else str(name)
    family = text is not None and not text.endswith((".yaml", ".yml")) and text not in catalogue("threat").cards \
        and text in THREAT_FAMILIES
    if eps is None and norm is None:
        if not family:
            return (name if text is None else _named_card(text)), False
        return _family_default(text, dataset, task), True
    if family:
        check_applies(text, eps, norm)  # before looking for a card to start from
        return derive(_ball_base(text, dataset, task, eps, norm), name=text, eps=eps, norm=norm), True
    card = name if text is None else _named_card(text)
    return derive(card, name=card.id, eps=eps, norm=norm), True
