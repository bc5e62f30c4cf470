"""CIFAR-10 through torchvision: a verified local copy under the data root, else a download."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.data.base import DATASETS, data_root
from bench.data.dataset import Dataset
from bench.downloads import fetch
from bench.errors import DataError, require


def _torchvision_cifar10():
    return require("torchvision.datasets", "CIFAR-10", "pip install 'bench[vision]'").CIFAR10


ARCHIVE_BYTES = 170_498_071  # cifar-10-python.tar.gz: a download stops past it


def download_cifar10(root: Path | None = None) -> Path:
    """Fetch CIFAR-10 into the data root unless it is there: the archive through bench's checked download
    (capped, with a deadline; torchvision's has neither) and its md5, then torchvision unpacks it in place."""
    from torchvision.datasets.utils import check_integrity

    cifar, target = _torchvision_cifar10(), data_root(root)
    try:
        cifar(str(target), train=False)
        return target
    except RuntimeError:  # not there, or damaged
        pass
    fix = f"copy cifar-10-batches-py/ (from cifar-10-python.tar.gz) into {target} and pass --data-root"

    def check(tmp: Path) -> None:
        if not check_integrity(str(tmp), cifar.tgz_md5):
            raise DataError(f"the CIFAR-10 archive from {cifar.url} does not have its md5 {cifar.tgz_md5}", fix)

    archive = target / cifar.filename
    if not check_integrity(str(archive), cifar.tgz_md5):
        fetch(cifar.url, archive, size=ARCHIVE_BYTES, check=check, error=DataError, fix=fix)
    try:
        cifar(str(target), train=False, download=True)  # finds the checked archive: unpacks, fetches nothing
    except OSError as err:
        raise DataError(f"could not unpack CIFAR-10 into {target}: {err}", f"check the space there, or {fix}") from err
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
