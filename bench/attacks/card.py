"""The threat card schema: which family, with which parameters, on which datasets."""
from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from bench.cards import canonical_hash, locate, read_card, validate


def _parse_eps(value: Any) -> float:
    """Accept 0.3, "0.3" or "8/255"; the card keeps the number, not the string."""
    if isinstance(value, str):
        try:
            value = float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError) as err:
            raise ValueError(f"eps {value!r} is not a number or a fraction such as 8/255") from err
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"eps must be a number, got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"eps must be a positive finite number, got {value}")
    return float(value)


Eps = Annotated[float, BeforeValidator(_parse_eps)]


def check_linf_eps(norm: str, eps: float) -> None:
    if norm == "Linf" and eps > 1:
        raise ValueError(f"an L-inf eps of {eps} exceeds the [0, 1] image range (write 8/255, not 8)")


class ThreatCard(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    family: str
    version: int = 1
    datasets: list[str] = Field(default_factory=list)  # empty: any dataset
    params: dict[str, Any] = Field(default_factory=dict)
    description: str | None = None

    @property
    def hash(self) -> str:
        """Protocol identity: the family, its validated parameters and the version, not the prose."""
        from bench.attacks import family_class

        cls = family_class(self.family, self.id)
        params = cls.protocol(validate(cls.Params, self.params, f"threat card {self.id} params"))
        return canonical_hash({"family": self.family, "version": self.version, "params": params})


def load_threat_card(name: str | Path) -> ThreatCard:
    path = locate("threat", name)
    data = read_card(path)
    data.setdefault("id", path.stem)
    return validate(ThreatCard, data, f"threat card {path}")
