"""Would twice the budget change the answer? The convergence check of a gradient attack's robust accuracy.

A family names the params that set its budget (``Threat.budget``: steps, restarts, samples). The check takes
a seeded subset of the run's surviving points (robust: right clean and under the attack), attacks them again
with every budget param doubled, and turns the share it breaks into the drop of robust accuracy, with a
Clopper-Pearson interval (exact when every survivor was checked). The verdict compares the drop with a
tolerance of one point: ``converged`` when its interval lies below it, ``not converged`` when above, ``not
resolved`` otherwise (check more survivors). The doubled run is an ordinary stored run on the survivors'
images, so the check resumes; its result is written beside the run (``convergence.json``), where the board
and the summary find it. Its random starts are fresh: an attack keyed by point draws by the survivor's place
in the checked images, so twice the budget also means other starts, and a check of other survivors (another
n) may break a point that this one leaves standing: on a few points the verdict is a sample, not a property.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.errors import BenchError
from bench.files import atomic_write
from bench.stats import clopper_pearson
from bench.store import Store

TOLERANCE = 0.01  # a drop of robust accuracy up to one point counts as converged
FILE = "convergence.json"


@dataclass(frozen=True)
class Convergence:
    """The check of one run: the doubled card, how many survivors it attacked of how many, how many it broke,
    and the resulting drop of robust accuracy with its 95% interval and verdict."""

    doubled: dict[str, Any]  # the doubled card's params that differ
    doubled_run: str
    survivors: int
    checked: int
    broken: int
    n: int
    drop: float
    low: float
    high: float
    verdict: str

    def __str__(self) -> str:
        budget = ", ".join(f"{k} {v}" for k, v in self.doubled.items())
        return (f"convergence ({budget}, on {self.checked} of {self.survivors} surviving points): "
                f"{self.broken} broken, robust accuracy drops {100 * self.drop:.1f} points "
                f"[{100 * self.low:.1f}, {100 * self.high:.1f}]: {self.verdict}")


def doubled_card(card, threat) -> tuple[Any, dict[str, Any]]:
    """The card with every budget param of its family doubled, and those params; an error where the check does
    not apply (a family with no budget, or whose points are not robust or not)."""
    from bench.threats.base import ClassifierAttack

    if not threat.budget or not isinstance(threat, ClassifierAttack):
        raise BenchError(f"threat family {card.family} has no budget to double (steps, restarts or samples) "
                         "or no robust points to attack again",
                         "--check-convergence applies to gradient and sampling attacks on classifiers")
    params = threat.params
    doubled = {name: 2 * getattr(params, name) for name in threat.budget}
    return card.model_copy(update={"id": f"{card.id}-budget-x2", "params": {**card.params, **doubled},
                                   "default": False}), doubled


def planned_check(model, threat, **run_args):
    """(plan, doubled card, doubled params) of the check for a run of these arguments; an error, before anything
    runs, where the check does not apply."""
    from bench.spec import plan

    p = plan(model, threat, **run_args)
    return (p, *doubled_card(p.threat_card, p.threat))


def verdict(low: float, high: float) -> str:
    return "converged" if high <= TOLERANCE else "not converged" if low > TOLERANCE else "not resolved"


def drop_interval(broken: int, checked: int, survivors: int, n: int) -> tuple[float, float, float]:
    """The drop of robust accuracy (a share of all n points) when ``broken`` of ``checked`` sampled survivors
    fall: exact when every survivor was checked, else a Clopper-Pearson interval scaled by survivors / n."""
    scale = survivors / n
    if checked == survivors:
        exact = broken / n
        return exact, exact, exact
    low, high = clopper_pearson(broken, checked)
    return scale * broken / checked, scale * low, scale * high


def check_convergence(summary, *, model, threat, points: int = 200, results=None, progress: bool = True,
                      planned: tuple | None = None, **run_args) -> Convergence:
    """Run the check for a finished run (``summary``) of ``model`` against ``threat`` (the card it ran), with
    ``run_args`` as that run had them (dataset, n, seed, device, batch_size, threads, data_root); ``planned``:
    what ``planned_check`` already returned for them, so the plan is not made again."""
    from bench.run import evaluate

    store = Store(results)
    p, card, doubled = planned or planned_check(model, threat, **run_args)
    rows = store.read_run(summary.run_id).rows
    survivors = np.sort(rows.loc[rows["robust"].astype(bool), "index"].to_numpy())
    chosen = np.sort(np.random.default_rng(p.seed).permutation(survivors)[:points]) if len(survivors) else survivors
    broken, doubled_run = 0, ""
    if len(chosen):
        where = torch.as_tensor(chosen, dtype=torch.long)
        again = evaluate(model, card, x=p.data.x[where], y=p.data.y[where], dataset=summary.dataset,
                         seed=p.seed, device=run_args.get("device", "auto"), batch_size=p.batch_size,
                         threads=p.threads, results=results, progress=progress)
        robust = store.read_run(again.run_id).rows["robust"].astype(bool)
        broken, doubled_run = int((~robust).sum()), again.run_id
    drop, low, high = drop_interval(broken, len(chosen), len(survivors), summary.n)
    result = Convergence(doubled, doubled_run, len(survivors), len(chosen), broken, summary.n, drop, low, high,
                         verdict(low, high))
    atomic_write(store.run_dir(summary.run_id) / FILE, lambda tmp: tmp.write_text(json.dumps(asdict(result))))
    return result


def stored_convergence(store: Store, run_id: str) -> Convergence | None:
    """The run's convergence check, where one was made (None otherwise, or where its file is unreadable)."""
    path: Path = store.run_dir(run_id) / FILE
    try:
        return Convergence(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
