"""scikit-learn's 8x8 digits (1,797 images): tiny, offline, for very fast tests."""
from __future__ import annotations

from pathlib import Path

import torch

from bench.data.base import DATASETS
from bench.data.dataset import Dataset

N_TRAIN = 1297  # the last 500 images form the test split


@DATASETS.register("digits")
def load_digits(split: str, root: Path | None) -> Dataset:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    part = slice(None, N_TRAIN) if split == "train" else slice(N_TRAIN, None)
    return Dataset("digits", split, x[part].contiguous(), y[part].contiguous(), tuple(str(i) for i in range(10)))
