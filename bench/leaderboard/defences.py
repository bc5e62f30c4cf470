"""A defence is ranked on adaptive attacks only: for every composed model (a ``compose:`` card, such as an
input-translation defence), its worst robust accuracy over the adaptive attack blocks of one (dataset, norm,
eps), with the best non-adaptive number (e.g. transfer) beside it for contrast, never as its rank."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Ball:
    dataset: str
    norm: str
    eps: float


def _ball(dataset: str, params: dict) -> Ball | None:
    if "norm" not in params or not isinstance(params.get("eps"), (int, float)):
        return None
    return Ball(dataset, str(params["norm"]), float(params["eps"]))


def defence_rows(blocks, params: dict, defences: set[str]) -> list[dict]:
    """One row per (defence, ball): ``blocks`` as built by the board, ``params`` their threat params by
    (dataset, protocol), ``defences`` the 12-character hashes of composed models."""
    from bench.threats.base import family_class

    found: dict[tuple[str, Ball], dict] = {}
    for block in blocks:
        ball = _ball(block.dataset, params[(block.dataset, block.protocol)])
        cls = family_class(block.family)
        if ball is None or block.headline != "robust_acc" or cls is None:
            continue
        kind = "adaptive" if cls.adaptive else "non_adaptive"
        for row in block.rows:
            if row["model_hash"] not in defences or math.isnan(row["robust_acc"]):
                continue
            entry = found.setdefault((row["model_hash"], ball), {"model": row["model"], "hash": row["model_hash"],
                                                                 "ball": ball})
            better = min if kind == "adaptive" else max
            value, threat = row["robust_acc"], block.threats[0]
            if kind not in entry or better(entry[kind][0], value) == value:
                entry[kind] = (value, threat)
    rows = list(found.values())
    rows.sort(key=lambda r: (r["ball"].dataset, r["ball"].norm, r["ball"].eps,
                             -r["adaptive"][0] if "adaptive" in r else math.inf, r["model"]))
    return rows


def render_defences(rows: list[dict]) -> str:
    """The markdown section: ranked by the worst adaptive robust accuracy; a defence without an adaptive
    attack is listed last, unranked."""
    import pandas as pd

    if not rows:
        return ""
    table = []
    for row in rows:
        adaptive, other = row.get("adaptive"), row.get("non_adaptive")
        table.append({"model": row["model"], "hash": row["hash"][:8], "dataset": row["ball"].dataset,
                      "ball": f"{row['ball'].norm} {row['ball'].eps:g}",
                      "worst adaptive robust acc (%)": f"{100 * adaptive[0]:.1f} ({adaptive[1]})" if adaptive
                      else "not attacked adaptively: unranked",
                      "non-adaptive, for contrast (%)": f"{100 * other[0]:.1f} ({other[1]})" if other else "-"})
    return ("### Defences (composed models), ranked by their worst adaptive attack\n\n"
            "A defence's robustness is the lowest robust accuracy any adaptive attack on the same ball found; "
            "transfer and other non-adaptive numbers are shown only for contrast.\n\n"
            + pd.DataFrame(table).to_markdown(index=False))
