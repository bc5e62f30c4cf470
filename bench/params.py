"""Parameter schemas shared by threat families and recipes: frozen, strict, finite, with eps syntax."""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

Norm = Literal["Linf", "L2"]
MAX_STEPS = 100_000  # iterations; shipped cards use at most 200 steps, 100 epochs
MAX_SAMPLES = 10_000_000  # sizes; shipped cards use at most 20,000 (train_subset), smoothing papers 100,000


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


def budget(maximum: int) -> Any:
    """A positive int bounded by ``maximum``: a card's budget (``steps: 1000000000000``) never runs until killed."""
    def bounded(value: int) -> int:
        if not 0 < value <= maximum:
            raise ValueError(f"must be between 1 and {maximum:,} (a larger budget would run for days), got {value:,}")
        return value

    return Annotated[int, AfterValidator(bounded)]


Steps = budget(MAX_STEPS)  # iterations: attack steps, restarts, epochs, bisection halvings, passes
Samples = budget(MAX_SAMPLES)  # sizes: noise draws, n0 / n, batch sizes, chunks, subsets, calibration images
