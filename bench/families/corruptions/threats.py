"""The ``corruptions`` family: accuracy under every (corruption, severity) of a suite.

Suites: ``cifar10-c`` (the 15 benchmark corruptions of CIFAR-10-C with its own constants, as RobustBench
evaluates; the 4 extra ones can be listed), ``imagenet-c`` (the same corruptions with the ImageNet-C
constants) and ``mnist-c`` (the 15 MNIST-C corruptions, each at the severity the published set used).
``source: generated`` corrupts the points on the fly with bench's library, quantised to 8 bits as the
published files are; ``source: files`` reads a folder in the published layout (``files.py``).

The headline is the mean corruption accuracy over the card's cells; the board adds the corruption error
normalised by a named baseline model (mCE) and its relative version where the baseline has been run on
the same protocol (``board.py``). The baseline is not part of the protocol: it changes no row.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import model_validator
from torch import Tensor

from bench.errors import BenchError
from bench.threats.grid_board import cell_table, error_table, mce_columns
from bench.threats.grid import Cell, CellGrid
from bench.families.corruptions.suites import SUITES
from bench.metrics import Metric
from bench.params import Params
from bench.threats.base import THREAT_FAMILIES, Batch, BoardRun, Target, installed_version


class CorruptionParams(Params):
    suite: Literal["cifar10-c", "imagenet-c", "mnist-c"]
    corruptions: list[str] | None = None  # default: the suite's standard list ("all": with the extra ones)
    severities: list[int] | None = None  # default: 1-5 (mnist-c: the severity each published corruption used)
    source: Literal["generated", "files"] = "generated"
    files: str | None = None  # source files: the folder (default: the published folder name under the data root)
    baseline: str | None = None  # the model card id whose errors normalise mCE (not part of the protocol)

    @model_validator(mode="after")
    def _check(self) -> "CorruptionParams":
        suite = SUITES[self.suite]
        for name in self.names:
            suite.get(name)
        if self.severities is not None and (not self.severities or any(s not in range(1, 6) for s in self.severities)):
            raise ValueError("severities must be a non-empty list of numbers 1 to 5")
        if len(set(self.names)) != len(self.names) or len(set(self.severities or [])) != len(self.severities or []):
            raise ValueError("a corruption or severity is listed twice")
        if self.source == "generated" and self.files is not None:
            raise ValueError("files: is for source: files")
        if self.source == "files" and self.suite == "imagenet-c":
            raise ValueError("there is no file layout for the imagenet-c suite here; use source: generated")
        if self.source == "files" and self.suite == "mnist-c" and self.severities is not None:
            raise ValueError("MNIST-C files hold one severity per corruption; leave severities out")
        return self

    @property
    def names(self) -> list[str]:
        suite = SUITES[self.suite]
        if self.corruptions is None:
            return list(suite.names)
        if self.corruptions == ["all"]:
            return list(suite.names + suite.extra)
        return list(self.corruptions)

    def cells(self) -> list[Cell]:
        suite = SUITES[self.suite]
        if self.severities is None and self.suite == "mnist-c":
            return [Cell(name, suite.published[name]) for name in self.names]
        return [Cell(name, s) for name in self.names for s in sorted(self.severities or range(1, 6))]


@THREAT_FAMILIES.register("corruptions")
class Corruptions(CellGrid):
    Params = CorruptionParams
    revision = 5  # 2: CIFAR-10-C's glass blur copies, spatter's water colour and OpenCV rims, frost scaled by 0.2
    # exactly, 8-bit truncation for cifar10-c and imagenet-c (each as the published generators); 3: motion blur and
    # snow read back as ImageMagick writes its PNG (snow's layer in 8 bits before), CIFAR-10-C's elastic transform
    # sampled as OpenCV's warpAffine and the 2019 scipy's map_coordinates (each as its 2019 generator); 4: Gaussian
    # filters as two matrix products (the same filter, another order of float sums); 5: defocus blur's disk as its
    # SVD's separable matrix products on small images (the same filter to float32's precision)
    mean_metric = Metric("corruption_acc", "corruption_acc", "mean corruption accuracy", agg="mean", as_percent=True)
    level_names = ("severity", "severities")
    params: CorruptionParams

    def __init__(self, params: CorruptionParams):
        super().__init__(params)
        self.suite = SUITES[params.suite]
        self._files = None

    @classmethod
    def backends(cls) -> dict[str, str]:
        """OpenCV computes spatter's water and CIFAR-10-C's frost; JPEG compression is torchvision's libjpeg (its
        bundled libjpeg-turbo; the generators used Pillow's)."""
        return {"opencv": installed_version("opencv-python", "opencv-python-headless", "opencv-contrib-python"),
                "torchvision": installed_version("torchvision")}

    def cells(self) -> list[Cell]:
        return self.params.cells()

    def files(self):
        if self._files is None:
            self._files = source_files(self.params)
        return self._files

    def ready(self) -> None:
        """Every file a ``source: files`` card reads is there and in its layout (headers only)."""
        if self.params.source == "files":
            for name in self.params.names:
                self.files().check(name)

    def transform(self, x: Tensor, cell: Cell, batch: Batch, gen: torch.Generator) -> Tensor:
        if self.params.source == "files":
            return self.files().images(cell.group, cell.level, batch.index, batch.y).to(x.device)
        try:
            return self.suite.corrupt(cell.group, x, cell.level, gen)
        except (RuntimeError, ValueError) as err:
            raise BenchError(f"corruption {cell.group} cannot corrupt images of shape {tuple(x.shape[1:])}: {err}",
                             f"the {self.suite.name} suite is for {_SIZES[self.suite.scale]} images; pick a suite "
                             "or corruptions for this dataset") from err

    def checks(self, target: Target, batch: Batch) -> list[str]:
        if self.params.source == "files" and self.files().generated:
            return [f"{self.files().folder} was generated by `bench data make`, not the published files"]
        return []

    @classmethod
    def board_columns(cls, params: dict, runs: dict[str, BoardRun]) -> tuple[tuple[Metric, ...], dict]:
        """mCE over the suite's benchmark corruptions (CIFAR-10-C's 15), the extra ones in columns of their own."""
        return mce_columns(params.get("baseline"), runs, SUITES[params["suite"]].names)

    @classmethod
    def board_details(cls, params: dict, runs: dict[str, BoardRun]) -> str:
        errors = error_table(params.get("baseline"), runs, "corruption")
        return cell_table(runs, "corruption") + (f"\n\n{errors}" if errors else "")

    @classmethod
    def protocol(cls, params: CorruptionParams) -> dict:
        """The cells and the source; for files, their sha256 instead of their path (files not there yet: a
        marker, so the card still lists; a run on it stops at its first batch, saying how to get them).
        Not the baseline."""
        out = {"suite": params.suite, "cells": [[c.group, c.level] for c in params.cells()], "source": params.source}
        if params.source == "files":
            files = source_files(params)
            out |= {"files_sha256": files.digest(params.names) if files.present(params.names) else
                    f"missing: {files.folder}", "generated_files": files.generated is not None}
        return out


_SIZES = {"cifar": "32x32", "imagenet": "large (224x224)", "mnist": "28x28 grey"}


def source_files(params: CorruptionParams):
    """The card's folder: ``files:``, else the published folder under the data root, else (only when that is
    absent) what `bench data make` wrote, which its marker, the run's notes and the protocol call generated."""
    from bench.families.corruptions.files import LAYOUTS, CorruptedFiles, default_folder

    layout = LAYOUTS[params.suite]
    if params.files:
        return CorruptedFiles(layout, Path(params.files))
    published, generated = default_folder(layout), default_folder(layout, generated=True)
    return CorruptedFiles(layout, generated if not published.exists() and generated.exists() else published)
