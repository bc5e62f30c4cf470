"""The ``clean`` family: no perturbation; it reports the task's clean pass alone."""
from __future__ import annotations

from bench.tasks import Task
from bench.threats.base import THREAT_FAMILIES, Batch, Outcome, Target, Threat


@THREAT_FAMILIES.register("clean")
class Clean(Threat):
    tasks = ("classifier", "generative")

    def headline_for(self, task: Task) -> str:
        return task.clean_metrics[0].name

    def attack(self, target: Target, batch: Batch) -> Outcome:
        return Outcome(values={})
