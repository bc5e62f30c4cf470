"""The ``ood`` family: accuracy under named natural shifts (``shifts.py``: darker, brighter, contrast,
gamma, sharper, blur, rotation, translation, noise) at graded strengths, every point under every cell.

Level k of a shift is its k-th strength (mild to strong); the card may replace a shift's default strengths.
Dataset shifts (another dataset with the same classes, e.g. scikit-learn digits made MNIST-like) are runs
on that dataset: ``bench run --model M --threat clean --dataset digits28``.
"""
from __future__ import annotations

import torch
from pydantic import model_validator
from torch import Tensor

from bench.threats.grid_board import cell_table
from bench.threats.grid import Cell, CellGrid
from bench.ops.shifts import SHIFTS
from bench.metrics import Metric
from bench.params import Params
from bench.threats.base import THREAT_FAMILIES, Batch, BoardRun


class OODParams(Params):
    shifts: list[str] | None = None  # default: every shift
    strengths: dict[str, list[float]] = {}  # per shift, replacing its default levels

    @model_validator(mode="after")
    def _check(self) -> "OODParams":
        names = self.names
        if len(set(names)) != len(names) or not names:
            raise ValueError("list each shift once, and at least one")
        for name in names + list(self.strengths):
            SHIFTS.get(name, "ood params")
        unused = set(self.strengths) - set(names)
        if unused:
            raise ValueError(f"strengths given for shifts not evaluated: {', '.join(sorted(unused))}")
        if any(not levels for levels in self.strengths.values()):
            raise ValueError("give at least one strength per shift")
        return self

    @property
    def names(self) -> list[str]:
        return list(self.shifts) if self.shifts is not None else SHIFTS.names()

    def cells(self) -> list[Cell]:
        return [Cell(name, k, float(value)) for name in self.names
                for k, value in enumerate(self.strengths.get(name, SHIFTS.get(name).strengths), 1)]


@THREAT_FAMILIES.register("ood")
class OOD(CellGrid):
    Params = OODParams
    mean_metric = Metric("ood_acc", "ood_acc", "mean accuracy under the shifts", agg="mean", as_percent=True)
    revision = 2  # 2: Gaussian filters (blur, sharpen) as two matrix products (another order of float sums)
    params: OODParams

    def cells(self) -> list[Cell]:
        return self.params.cells()

    def transform(self, x: Tensor, cell: Cell, batch: Batch, gen: torch.Generator) -> Tensor:
        return SHIFTS.get(cell.group)(x, cell.value, gen)

    @classmethod
    def board_details(cls, params: dict, runs: dict[str, BoardRun]) -> str:
        return cell_table(runs, "shift")

    @classmethod
    def protocol(cls, params: OODParams) -> dict:
        return {"cells": [[c.group, c.level, c.value] for c in params.cells()]}
