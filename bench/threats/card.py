"""The threat card schema: which family, with which parameters, on which datasets."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field

from bench.cards import canonical_hash, locate, read_card, validate
from bench.params import CardSchema, Params


class ThreatCard(CardSchema):
    id: str
    family: str
    version: int = 1
    datasets: list[str] = Field(default_factory=list)  # empty: any dataset
    params: dict[str, Any] = Field(default_factory=dict)
    default: bool = False  # the family's card for its datasets when a run names the family, not a card
    description: str | None = None
    # Set by the loader, not written in YAML: the folder that relative card references start from.
    source_dir: str | None = Field(default=None, exclude=True)

    def validated_params(self) -> Params:
        """The params checked by the family's schema (card references resolved from the card's folder)."""
        return self._params

    @cached_property
    def _params(self) -> Params:
        from bench.threats.base import THREAT_FAMILIES

        cls = THREAT_FAMILIES.get(self.family, f"threat card {self.id}")
        return validate(cls.Params, self.params, f"threat card {self.id} params", {"source_dir": self.source_dir})

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
    return validate(ThreatCard, {**data, "source_dir": str(path.parent)}, f"threat card {path}")
