"""The ``ensemble`` family: the per-point worst case over other threat cards of one task.

``members`` lists threat cards whose family is a perturb step (``bench.threats.step``). A point counts as
robust only if it survives every member; the members run in order, each attacking only the points still
standing, matched by evaluation point. Every member draws its noise for its own whole point set and keeps
the survivors' rows, so a survivor meets exactly the attack it meets in the member's own run: the robust
accuracy equals that of the members' separate runs combined point by point, at a fraction of their cost.
A member whose randomness is its own (AutoAttack seeds itself per batch) is the exception, and a run with
one says so. Per point and member k, ``broken_by_<k>`` says whether member k broke it (at most one does);
per member, the share of points it broke is a metric, and its count a stat.
"""
from __future__ import annotations

from pydantic import Field, model_validator
from torch import Tensor

from bench.metrics import Metric
from bench.params import Params
from bench.progress import stage
from bench.tasks import Task
from bench.threats.base import THREAT_FAMILIES, Batch, ClassifierAttack, Outcome, Target
from bench.threats.card import ThreatCard, threat_ref
from bench.threats.step import PerturbStep


class EnsembleParams(Params):
    members: list[threat_ref()] = Field(min_length=2)

    @model_validator(mode="after")
    def _members_are_steps(self) -> "EnsembleParams":
        for ref in self.members:
            family = THREAT_FAMILIES.get(ref.card.family, f"ensemble member {ref.card.id}")
            if not issubclass(family, PerturbStep):
                raise ValueError(f"member {ref.card.id} is a {ref.card.family} card; an ensemble's members must be "
                                 "attacks that perturb inputs point by point (families built on the perturb step, "
                                 "e.g. pgd, autoattack, learned-cvae), and not ensembles themselves")
        if len({ref.hash for ref in self.members}) != len(self.members):
            raise ValueError("a member is listed twice (the same protocol)")
        return self


@THREAT_FAMILIES.register("ensemble")
class Ensemble(ClassifierAttack):
    Params = EnsembleParams
    params: EnsembleParams

    def __init__(self, params: EnsembleParams):
        super().__init__(params)
        from bench.threats import make_threat

        self.members: list[tuple[str, PerturbStep]] = [(ref.card.id, make_threat(ref.card)[1])
                                                       for ref in params.members]

    def member_cards(self) -> list[ThreatCard]:
        return [ref.card for ref in self.params.members]

    def implementation(self) -> dict:
        return {**super().implementation(), "members": [{"card": name, "family": ref.card.family,
                                                         **member.implementation()}
                                                        for (name, member), ref in zip(self.members,
                                                                                       self.params.members)]}

    def metrics_for(self, task: Task) -> tuple[Metric, ...]:
        broken = tuple(Metric(f"broken_by_{k}", f"broken_by_{k}", f"broken by {name}", agg="rate",
                              higher_is_better=False) for k, (name, _) in enumerate(self.members))
        return super().metrics_for(task) + broken

    def checks(self, target: Target, batch: Batch) -> list[str]:
        notes = [f"{name}: {note}" for name, member in self.members for note in member.checks(target, batch)]
        notes += [f"member {name} draws its own randomness ({type(member).__name__}), so attacking only the "
                  "survivors may change its outcome on a point compared with its own run"
                  for name, member in self.members if not member.aligned_draws]
        return list(dict.fromkeys(notes))

    def attack(self, target: Target, batch: Batch) -> Outcome:
        survivors = batch.clean["clean_correct"].clone()
        adv_pred = batch.clean["clean_pred"].clone()
        columns: dict[str, Tensor] = {}
        stats: dict[str, int] = {}
        notes: list[str] = []
        inputs = batch.x.clone()
        for k, (name, member) in enumerate(self.members):
            stage(f"member {k + 1}/{len(self.members)} {name} on {int(survivors.sum())} standing")
            result = member.step(target, batch, survivors)
            inputs[result.attacked] = result.inputs[result.attacked]  # a survivor keeps the last member's try
            broken = survivors & (result.adv_pred != batch.y)
            adv_pred[broken] = result.adv_pred[broken]
            survivors &= ~broken
            columns[f"broken_by_{k}"] = broken.cpu()
            stats[f"broken_by:{name}"] = int(broken.sum())
            stats |= {f"{name}/{key}": value for key, value in result.stats.items()}
            notes += [f"{name}: {note}" for note in result.notes]
        return Outcome(values=self.scored(batch, adv_pred, **columns), stats=stats, notes=notes, inputs=inputs)

