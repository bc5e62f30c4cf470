"""A threat at another eps and norm: ``bench run --threat pgd --eps 8/255 --norm Linf --dataset folder:DIR``.

``derive(card, ...)`` turns a threat card and an eps and/or norm into a new, in-memory card: the card's params
with ``eps`` and ``norm`` set (and a card's fixed ``step_size`` scaled with eps, so the attack keeps its steps
per radius), validated by the family's schema. Its id is derived, ``<threat as typed>@<norm>-<eps>`` (e.g.
``pgd@linf-8/255``, ``pgd-l2-2.0@l2-0.5``; ``learned-cvae@eps-p75`` for a family without a norm), and its
protocol hash covers the new params as any card's does, so the store and the board keep runs at different
radii apart while two spellings of one radius (8/255 and 0.03137254901960784) are one protocol. A derived card
accepts any dataset whose images the model takes, unless its params name another model card (a transfer
source, a CVAE): that card's data are fixed, so it keeps the datasets of the card it was derived from.
"""
from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any, get_args

import yaml

from bench.errors import BenchError, CardError
from bench.threats.card import ThreatCard

NORMS = ("Linf", "L2", "L1")
EPS_FIX = "pass a positive number or fraction, e.g. --eps 0.3 or --eps 8/255"


_PLAIN = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")


def _fraction(text: str) -> Fraction:
    """``a`` or ``a/b`` exactly; a part with an exponent goes through float first, since Fraction would build
    10**exponent as an integer (``1e999999999`` would hang)."""
    if any(c.isspace() for c in text):
        raise ValueError(text)
    num, slash, den = text.partition("/")
    parts = [num, den] if slash else [num]
    values = [Fraction(p) if _PLAIN.fullmatch(p) else Fraction(float(p)) for p in parts]
    return values[0] / values[1] if slash else values[0]


def parse_eps(value: Any) -> float | str:
    """``--eps``: a number or a fraction such as ``8/255`` (read as a fraction, never evaluated), as a float;
    or a named radius such as ``p50`` (families whose eps takes one, the learned sets), as text. Zero, negative
    and non-finite values are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BenchError(f"--eps must be a number or a fraction, got {value!r}", EPS_FIX)
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 64:
            raise BenchError(f"--eps {value[:20]!r}... is {len(value)} characters long", EPS_FIX)
        try:
            number = float(_fraction(text))
        except ZeroDivisionError:
            raise BenchError(f"--eps {value!r} divides by zero", EPS_FIX) from None
        except OverflowError:
            number = math.inf
        except ValueError:
            try:
                number = float(text)  # only nan, inf and infinity get here: refused below
            except ValueError:
                if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,31}", text):
                    return text  # a named radius, checked by the family's schema
                raise BenchError(f"--eps {value!r} is not a number or a fraction such as 8/255", EPS_FIX) from None
    else:
        number = float(value)
    if not math.isfinite(number):
        raise BenchError(f"--eps {value!r} is not a finite number", EPS_FIX)
    if number < 0:
        raise BenchError(f"--eps must not be negative, got {value!r}", EPS_FIX)
    if number == 0:
        raise BenchError("--eps 0 is no perturbation at all", "use --threat clean for clean accuracy, or "
                                                              "pass a positive eps")
    return number


def parse_norm(value: Any) -> str:
    """``--norm``: Linf, L2 or L1 (any case)."""
    names = {norm.lower(): norm for norm in NORMS}
    if not isinstance(value, str) or value.strip().lower() not in names:
        raise BenchError(f"unknown norm {value!r}", f"pass --norm {', '.join(NORMS[:-1])} or {NORMS[-1]}")
    return names[value.strip().lower()]


def eps_text(eps: float | str) -> str:
    """A radius as a short, readable word: 8/255 for a float that is exactly a small fraction's, else its
    shortest decimal (0.3, 2 for 2.0); a named radius as it is."""
    if isinstance(eps, str):
        return eps
    text = repr(float(eps)).removesuffix(".0")
    fraction = Fraction(eps).limit_denominator(1000)
    if len(text) > 8 and fraction.denominator > 1 and float(fraction) == eps:
        return f"{fraction.numerator}/{fraction.denominator}"
    return text


def ball(family_cls: type) -> tuple[bool, tuple[str, ...]]:
    """(whether the family's params have an eps, the norms its ``norm`` param takes; empty: no norm)."""
    fields = family_cls.Params.model_fields
    norms = tuple(a for a in get_args(fields["norm"].annotation) if isinstance(a, str)) if "norm" in fields else ()
    return "eps" in fields, norms


def ball_families() -> dict[str, tuple[str, ...]]:
    """Every threat family that takes --eps, with the norms it takes (empty: --eps only). Imports every family."""
    from bench.threats.base import THREAT_FAMILIES

    found = {}
    for name, cls in THREAT_FAMILIES.items():
        takes_eps, norms = ball(cls)
        if takes_eps:
            found[name] = norms
    return found


def ball_words(families: dict[str, tuple[str, ...]] | None = None) -> str:
    """Which families take --eps and --norm, in words: ``pgd, pgd-bpda (Linf, L2); ...; learned-cvae (--eps
    only)``, families with the same norms together."""
    families = ball_families() if families is None else families
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, norms in families.items():
        groups.setdefault(norms, []).append(name)
    order = sorted(groups, key=lambda norms: (not norms, len(norms)))
    return "; ".join(f"{', '.join(groups[norms])} ({', '.join(norms) if norms else '--eps only'})" for norms in order)


def check_applies(family: str, eps: Any, norm: Any) -> None:
    """Refuse --eps / --norm for a family without them, naming the families that take them."""
    from bench.threats.base import THREAT_FAMILIES

    takes_eps, norms = ball(THREAT_FAMILIES.get(family))
    if eps is not None and not takes_eps:
        raise BenchError(f"threat family {family} has no eps to set with --eps",
                         f"--eps applies to the families {ball_words()}; drop --eps, or name one of those")
    if norm is not None and not norms:
        raise BenchError(f"threat family {family} has no norm to set with --norm",
                         f"--norm applies to the families {ball_words({k: v for k, v in ball_families().items() if v})}"
                         "; drop --norm, or name one of those")
    if norm is not None and norm not in norms:
        raise BenchError(f"threat family {family} takes --norm {' or '.join(norms)}, not {norm}",
                         f"pass --norm {' or '.join(norms)}, or name a family that takes {norm} "
                         f"({', '.join(k for k, v in ball_families().items() if norm in v) or 'none'})")


def derive(card: ThreatCard, *, name: str, eps: float | str | None = None, norm: str | None = None) -> ThreatCard:
    """``card`` with eps and/or norm set (values already parsed): a new card with a derived id (``name@...``) and
    its own protocol hash; an error naming the problem where the family cannot take them."""
    from bench.cards import validate
    from bench.models.card import references

    check_applies(card.family, eps, norm)
    base = card.validated_params()
    params = dict(card.params)
    changes = []
    if norm is not None:
        params["norm"] = norm
    if eps is not None:
        params["eps"] = eps
        old, step = getattr(base, "eps", None), getattr(base, "step_size", None)
        if step is not None and isinstance(old, float) and isinstance(eps, float) and eps != old:
            params["step_size"] = step * (eps / old)
            changes.append(f"its step_size {step:g} scaled with eps to {params['step_size']:.4g}")
    datasets = list(card.datasets) if references(base) else []
    draft = {"family": card.family, "version": card.version, "datasets": datasets, "params": params,
             "default": False, "source_dir": card.source_dir}
    try:
        checked = validate(ThreatCard, {"id": name, **draft}, f"threat {name}").validated_params()
    except CardError as err:
        asked = " ".join(([f"--eps {eps_text(eps)}"] if eps is not None else []) + ([f"--norm {norm}"] if norm else []))
        problem = (err.problem.partition(" params: ")[2] or err.problem).removeprefix("field '(card)': ")
        raise BenchError(f"threat {name} with {asked}: {problem}",
                         "pass an eps and norm the family takes (`bench threats` shows each card's)") from None
    new_eps, new_norm = eps_text(checked.eps), getattr(checked, "norm", None)
    derived_id = f"{name}@{new_norm.lower() if new_norm else 'eps'}-{new_eps}"
    ball_text = f"{'norm ' + new_norm + ', ' if new_norm else ''}eps {new_eps}"
    where = f"datasets {', '.join(datasets)}" if datasets else "any dataset the model takes"
    description = f"{card.id} at {ball_text}" + (f" ({'; '.join(changes)})" if changes else "") + f"; {where}"
    return validate(ThreatCard, {"id": derived_id, **draft, "description": description}, f"threat {derived_id}")


def params_words(params: dict[str, Any]) -> str:
    """A card's params as YAML flow text, which pastes back into a card's ``params:``."""
    if not params:
        return "{}"
    return yaml.safe_dump(params, default_flow_style=True, sort_keys=False, width=10**6).strip()


def override_words(card: ThreatCard, family_cls: type) -> str:
    """What ``bench run --threat CARD`` also takes, with the card's own values, e.g. ``--eps 0.3 --norm Linf``."""
    takes_eps, norms = ball(family_cls)
    if not takes_eps:
        return "-"
    params = card.validated_params()
    eps = eps_text(card.params["eps"] if isinstance(card.params.get("eps"), str) else params.eps)
    return f"--eps {eps}" + (f" --norm {params.norm}" if norms else "")
