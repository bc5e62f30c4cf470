"""CIFAR-10 through torchvision: a verified local copy under the data root, else a download."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.data.base import DATASETS, data_root
from bench.data.dataset import Dataset
from bench.errors import DataError, require


def _torchvision_cifar10():
    return require("torchvision.datasets", "CIFAR-10", "pip install 'bench[vision]'").CIFAR10


def download_cifar10(root: Path | None = None) -> Path:
    """Fetch CIFAR-10 into the data root (torchvision checks the archive's md5)."""
    target = data_root(root)
    try:
        _torchvision_cifar10()(str(target), train=False, download=True)
    except OSError as err:  # URLError and socket errors are OSErrors
        raise DataError(f"could not download CIFAR-10 into {target}: {err}",
                        "check the network, or copy cifar-10-batches-py/ (from cifar-10-python.tar.gz) "
                        f"into {target} and pass --data-root") from err
    return target


@DATASETS.register("cifar10")
def load_cifar10(split: str, root: Path | None) -> Dataset:
    target = data_root(root)
    try:
        ds = _torchvision_cifar10()(str(target), train=split == "train", download=False)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise DataError(f"CIFAR-10 not found or corrupted under {target}",
                        "run `bench data download cifar10` (needs the network), or copy the extracted "
                        "cifar-10-batches-py/ folder there, or point --data-root / $BENCH_DATA at it") from err
    x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))).float() / 255.0
    return Dataset("cifar10", split, x, torch.tensor(ds.targets, dtype=torch.int64), tuple(ds.classes))
