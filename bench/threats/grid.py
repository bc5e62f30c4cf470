"""Evaluation on a grid of named input transforms at graded levels: every point under every cell.

A cell is (group, level), e.g. (fog, severity 3) or (darker, level 2). As in RobustBench's corruption
protocol, each point is classified under every cell of the card (not under one random cell per point),
so per-cell accuracies are paired across cells and models. A cell's random draws come from a generator
seeded by the shard's seed and the cell's name, so a cell gives the same images whichever other cells a
card lists. Accuracy here is plain accuracy on the transformed image, as in the corruption literature
(not "right both clean and transformed").

Columns: ``correct_<group>_<level>`` per cell, ``acc_<group>`` (the point's accuracy over the group's
levels) and the headline column (its accuracy over all cells).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from bench.errors import BenchError
from bench.metrics import Metric
from bench.tasks import Task
from bench.tasks.classifier import predict
from bench.threats.base import Batch, Outcome, Target, Threat


@dataclass(frozen=True)
class Cell:
    group: str  # the corruption or shift
    level: int  # 1 = mildest
    value: float | None = None  # the strength the level stands for, if the family has one

    @property
    def column(self) -> str:
        return f"correct_{self.group}_{self.level}"


class CellGrid(Threat):
    """A family that classifies every point under every cell of ``cells()``."""

    tasks = ("classifier",)
    mean_metric: ClassVar[Metric]  # the headline: the mean over cells
    level_names: ClassVar[tuple[str, str]] = ("level", "levels")  # a corruption's are severities

    def cells(self) -> list[Cell]:
        raise NotImplementedError

    def transform(self, x: Tensor, cell: Cell, batch: Batch, gen: torch.Generator) -> Tensor:
        """The batch's images under one cell (``x`` is ``batch.x``)."""
        raise NotImplementedError

    def groups(self) -> list[str]:
        return list(dict.fromkeys(cell.group for cell in self.cells()))

    def headline_for(self, task: Task) -> str:
        return self.mean_metric.name

    def metrics_for(self, task: Task) -> tuple[Metric, ...]:
        per_group = tuple(Metric(f"acc_{g}", f"acc_{g}", f"accuracy under {g} ({self._levels(g)})", agg="mean",
                                 as_percent=True) for g in self.groups())
        return task.clean_metrics + (self.mean_metric,) + per_group

    def _levels(self, group: str) -> str:
        """The levels a group runs at, as the run prints them: "severity 5", "severities 1-5"."""
        levels = sorted(cell.level for cell in self.cells() if cell.group == group)
        one, many = self.level_names
        if len(levels) == 1:
            return f"{one} {levels[0]}"
        run = levels == list(range(levels[0], levels[-1] + 1))
        return f"{many} " + (f"{levels[0]}-{levels[-1]}" if run else ", ".join(map(str, levels)))

    @staticmethod
    def cell_generator(seed: int, cell: Cell) -> torch.Generator:
        """Draws of one cell: the shard's seed and a stable hash of the cell's name (not Python's hash())."""
        return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(cell.column.encode())) % 2**63)

    def attack(self, target: Target, batch: Batch) -> Outcome:
        cells = self.cells()
        values: dict[str, Tensor] = {}
        for cell in cells:
            x = self.transform(batch.x, cell, batch, self.cell_generator(batch.seed, cell))
            if x.shape != batch.x.shape or not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
                raise BenchError(f"{cell.group} at level {cell.level} made images outside [0, 1] or of another shape",
                                 "report this as a bug in the transform, with the card and the dataset")
            values[cell.column] = predict(target.module, x, target.num_classes) == batch.y
        for group in self.groups():
            columns = [values[c.column] for c in cells if c.group == group]
            values[f"acc_{group}"] = torch.stack(columns).float().mean(0)
        values[self.mean_metric.column] = torch.stack([values[c.column] for c in cells]).float().mean(0)
        return Outcome(values=values)
