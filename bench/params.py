"""Parameter schemas shared by threat families and recipes: frozen, strict, finite, with eps syntax."""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict

Norm = Literal["Linf", "L2"]


class Params(BaseModel):
    """Base of every card-parameter schema: unknown keys and non-finite numbers (.inf, .nan) are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CardSchema(Params):
    """Base of the card schemas: derived values cached on a card (its hashes, its validated params) are
    dropped by ``model_copy``, so a copy with other fields never carries the original's identity."""

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False):
        copied = super().model_copy(update=update, deep=deep)
        for key in [k for k in copied.__dict__ if k not in type(copied).model_fields]:
            del copied.__dict__[key]
        return copied


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


Eps = Annotated[float, BeforeValidator(_parse_eps)]  # a radius or step: a number or a fraction such as 8/255


def check_linf_eps(norm: str, eps: float) -> None:
    if norm == "Linf" and eps > 1:
        raise ValueError(f"an L-inf eps of {eps} exceeds the [0, 1] image range (write 8/255, not 8)")
