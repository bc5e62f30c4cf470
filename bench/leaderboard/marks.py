"""What the board and the site mark on a result, decided in one place for both: made by other code than the
current (stale: its implementation identity differs from the one the current code gives its protocol), or by
a non-adaptive family (an attack that ignores the evaluated model, never a defence's robustness)."""
from __future__ import annotations

import json
from typing import Any

from bench.errors import BenchError
from bench.implementation import differences


def current_threat(card: dict[str, Any], source_dir: str | None) -> tuple[Any, Any]:
    """(card, threat) as the current code builds them from a recorded threat card (a run's spec, an entry's
    protocol), references resolved from ``source_dir``; a BenchError saying why where it cannot here (the family
    does not load, the card no longer validates, a card it references is not found)."""
    from pydantic import ValidationError

    from bench.threats import THREAT_FAMILIES, ThreatCard, make_threat

    family = card.get("family")
    if not isinstance(family, str):
        raise BenchError("its card names no family")
    try:
        THREAT_FAMILIES.get(family)
    except BenchError:
        raise BenchError(f"family {family} does not load") from None
    try:
        return make_threat(ThreatCard.model_validate({**card, "source_dir": source_dir}))
    except ValidationError as err:
        raise BenchError(f"its card does not load here: {err.errors()[0]['msg']}") from None
    except BenchError as err:
        raise BenchError(f"its card does not load here: {err.problem}") from None


def current_implementation(card: dict[str, Any], source_dir: str | None, task: str) -> dict:
    """The implementation identity the current code gives the protocol of a recorded threat card on a model of
    ``task``; a BenchError saying why where it cannot be told here."""
    from bench.implementation import implementation
    from bench.tasks import TASKS

    built, threat = current_threat(card, source_dir)
    return implementation(built.family, threat, TASKS.get(task))


class CurrentCode:
    """``current_implementation``, or why it cannot be told here, computed once per card, folder and task (a
    board or a site asks it of every result, and most results share a few protocols)."""

    def __init__(self) -> None:
        self._known: dict[str, dict | str] = {}

    def __call__(self, card: dict[str, Any], source_dir: str | None, task: str) -> dict | str:
        key = json.dumps([card, source_dir, task], sort_keys=True, default=str)
        if key not in self._known:
            try:
                self._known[key] = current_implementation(card, source_dir, task)
            except BenchError as err:
                self._known[key] = err.problem
        return self._known[key]


def stale_reason(recorded: dict[str, Any], now: dict | str) -> str:
    """Why a result made by the implementation ``recorded`` is not what the current code computes (``now``: its
    identity, or why it cannot be told here); '' when it is."""
    if isinstance(now, str):
        return f"code unknown here ({now})"
    why = differences(recorded, now, ("in the run", "now"))
    return f"stale: made by other code ({'; '.join(why)})" if why else ""


def adaptive(family: str) -> bool:
    """Whether the family's attack adapts to the evaluated model (a family unknown here counts as adaptive:
    nothing says otherwise)."""
    from bench.threats.base import family_class

    cls = family_class(family)
    return cls is None or cls.adaptive


def asked(family: str, params: dict[str, Any]) -> dict[str, Any]:
    """The card's params that make up its protocol, as the card writes them: without those its family leaves out
    of the protocol (AutoAttack's engine and its opt-ins say which code answers, not what is asked), so a page
    neither titles nor groups a protocol by them. Params this code cannot read are shown whole."""
    from pydantic import ValidationError

    from bench.threats.base import family_class

    cls = family_class(family)
    if cls is None:
        return params
    try:
        kept = cls.protocol(cls.Params.model_validate(params))
    except (ValidationError, BenchError, TypeError):
        return params
    return {k: v for k, v in params.items() if k in kept}
