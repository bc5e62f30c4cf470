"""Several runs of one attack (its target classes and restarts) batched as one: the points repeated once per run,
run-major, so one pass serves every run where the official loops over them. A point's outcome is the same either
way: it counts as fooled when any run fools it, and each run's draws are keyed by point and run."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

# Rows (points x runs) per batch. On a GPU a pass costs about the same up to thousands of rows, so runs share
# passes up to 4096 rows. On a CPU the cost per row is flat from about 200 rows, and with all 9 target classes in
# one batch FAB's per-iteration work falls out of the cache; two runs of 176 points per batch measured 2-5% faster
# than one (2 cores, mnist-cnn-pgd-at, 176 points, 9 targets: APGD-T 6.95-7.18 s against 7.23-7.36 s, FAB-T
# 10.58-10.79 s against 10.61-11.52 s), so runs share a batch up to this many rows.
MAX_ROWS = {"cpu": 512}
MAX_ROWS_DEFAULT = 4096


def batches(runs: list, todo: Callable[[], Tensor], max_rows: int | None = None) -> Iterator[tuple[list, Tensor]]:
    """The runs in order, in consecutive groups of as many as fit in ``max_rows`` rows of the points still to
    attack (``todo()``, asked again before each group since earlier groups fool points; at least one run per
    group; by default ``MAX_ROWS`` for the points' device). Stops when no point is left."""
    i = 0
    while i < len(runs):
        points = todo()
        if not len(points):
            return
        k = max(1, (max_rows or MAX_ROWS.get(points.device.type, MAX_ROWS_DEFAULT)) // len(points))
        yield runs[i:i + k], points
        i += k


def repeat(values: Tensor, n_runs: int) -> Tensor:
    """``values`` (one row per point) stacked once per run, run-major."""
    return values.repeat(n_runs, *([1] * (values.dim() - 1)))


def rows_of(points: Tensor, n_runs: int) -> Tensor:
    """Each row's point (0..n-1) when ``n_runs`` runs of ``points`` are stacked run-major."""
    return torch.arange(len(points), device=points.device).repeat(n_runs)


def first_success(success: Tensor, rows: Tensor, n_runs: int) -> tuple[Tensor, Tensor]:
    """Per point, from run-major rows: whether any run succeeded, and the row of the first run that did (in run
    order, the official's), or of the first run where none did."""
    s = success.view(n_runs, -1)
    first = s.to(torch.uint8).argmax(0)  # argmax gives the first of equal maxima
    n = s.shape[1]
    return s.any(0), rows.view(n_runs, n, *rows.shape[1:])[first, torch.arange(n, device=rows.device)]


def siblings(group: Tensor, done: Tensor) -> Tensor:
    """Rows whose point some ``done`` row belongs to: once one run fools a point, its other runs can stop."""
    return torch.isin(group, group[done])
