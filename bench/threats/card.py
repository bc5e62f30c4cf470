"""The threat card schema: which family, with which parameters, on which datasets; and references from one
threat card to another (``threat_ref``), as an ensemble names its members."""
from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, PlainSerializer, PlainValidator, ValidationInfo, field_validator

from bench.cards import ReferenceChainError, canonical_hash, check_chain, locate, read_card, validate
from bench.errors import CardError
from bench.params import CardSchema, Params

ANY_DATASET = "any"  # a card's datasets: [any]; what the listing prints for a card of no particular dataset
_resolving: ContextVar[tuple[str, ...]] = ContextVar("resolving", default=())


class ThreatCard(CardSchema):
    id: str
    family: str
    version: int = 1
    datasets: list[str] = Field(default_factory=list)  # [any] (or empty): any dataset whose images the model takes
    params: dict[str, Any] = Field(default_factory=dict)
    default: bool = False  # the family's card for its datasets when a run names the family, not a card
    description: str | None = None
    # Set by the loader, not written in YAML: the folder that relative card references start from.
    source_dir: str | None = Field(default=None, exclude=True)

    @field_validator("datasets", mode="before")
    @classmethod
    def _any_dataset(cls, value: Any) -> Any:
        """``datasets: [any]`` (or ``datasets: any``), as ``bench threats`` prints it, is the empty list: any
        dataset the model takes."""
        if value == ANY_DATASET:
            return []
        if not isinstance(value, list) or ANY_DATASET not in value:
            return value
        if len(value) > 1:
            raise ValueError(f"{ANY_DATASET!r} stands alone: write datasets: [any], or list the datasets without it")
        return []

    def validated_params(self) -> Params:
        """The params checked by the family's schema (card references resolved from the card's folder)."""
        return self._params

    @cached_property
    def _params(self) -> Params:
        from bench.threats.base import THREAT_FAMILIES

        cls = THREAT_FAMILIES.get(self.family, f"threat card {self.id}")
        key, stack = f"{self.source_dir}/{self.id}", _resolving.get()
        check_chain("threat", self.id, key, stack)
        token = _resolving.set(stack + (key,))
        try:
            return validate(cls.Params, self.params, f"threat card {self.id} params", {"source_dir": self.source_dir})
        finally:
            _resolving.reset(token)

    @cached_property
    def hash(self) -> str:
        """Protocol identity: the family, its validated parameters and the version, not the prose."""
        from bench.threats.base import THREAT_FAMILIES

        cls = THREAT_FAMILIES.get(self.family, f"threat card {self.id}")
        return canonical_hash({"family": self.family, "version": self.version,
                               "params": cls.protocol(self.validated_params())})


def load_threat_card(name: str | Path) -> ThreatCard:
    path = locate("threat", name)
    data = read_card(path)
    data.setdefault("id", path.stem)
    return validate(ThreatCard, {**data, "source_dir": str(path.parent.resolve())}, f"threat card {path}")


# --- references between threat cards ---------------------------------------------------------------


@dataclass(frozen=True)
class ThreatRef:
    """A threat card named by another threat card (an ensemble's member): ``name`` as written there, ``card``
    as resolved, and its protocol hash, which is what the referring card's protocol holds."""

    name: str
    card: ThreatCard
    hash: str


def resolve_threat_ref(value: Any, source_dir: str | None) -> ThreatRef:
    """A threat card id, or a path relative to the referring card's folder (absolute paths as they are)."""
    if isinstance(value, ThreatRef):
        return value
    if not isinstance(value, str) or not value:
        raise ValueError(f"a threat card reference is a threat card id or a path to a card file, got {value!r}")
    target = value
    if value.endswith((".yaml", ".yml")) and not Path(value).expanduser().is_absolute() and source_dir is not None:
        target = str(Path(source_dir) / value)
    try:
        card = load_threat_card(target)
        return ThreatRef(value, card, card.hash)
    except ReferenceChainError:
        raise
    except CardError as err:
        raise ValueError(err.problem) from None


def threat_ref():
    """The field type of a reference to a threat card, for threat params (it serialises as the protocol hash)."""
    def check(value: Any, info: ValidationInfo) -> ThreatRef:
        return resolve_threat_ref(value, (info.context or {}).get("source_dir"))

    return Annotated[ThreatRef, PlainValidator(check), PlainSerializer(lambda ref: ref.hash, when_used="json")]
