"""scikit-learn's 8x8 digits (1,797 images): tiny, offline, for very fast tests; and ``digits28``, the same
images made MNIST-like for dataset-shift evaluation of MNIST models."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

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


def mnist_like(x: torch.Tensor, box: int = 20, canvas: int = 28) -> torch.Tensor:
    """Images (N, 1, h, w) as MNIST was made: resized (bilinear, antialiased) to ``box`` x ``box``, then put in
    a black ``canvas`` x ``canvas`` field at the integer shift that brings their centre of mass nearest to the
    field's centre ((canvas - 1) / 2 in pixel indices), the shift kept such that the box stays inside."""
    small = F.interpolate(x, size=(box, box), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    index = torch.arange(box, dtype=small.dtype)
    mass = small.sum((1, 2, 3)).clamp_min(1e-12)
    com_row = (small.sum((1, 3)) * index).sum(1) / mass
    com_col = (small.sum((1, 2)) * index).sum(1) / mass
    centre = (canvas - 1) / 2
    tops = torch.round(centre - com_row).long().clamp(0, canvas - box).tolist()
    lefts = torch.round(centre - com_col).long().clamp(0, canvas - box).tolist()
    out = small.new_zeros(len(x), x.shape[1], canvas, canvas)
    for i, (top, left) in enumerate(zip(tops, lefts)):
        out[i, :, top:top + box, left:left + box] = small[i]
    return out


@DATASETS.register("digits28")
def load_digits28(split: str, root: Path | None) -> Dataset:
    """``digits`` (same split and labels) upscaled to 20x20 and centred by centre of mass in 28x28, as MNIST."""
    from bench.data.base import load_dataset

    base = load_dataset("digits", split, root)
    return Dataset("digits28", split, mnist_like(base.x), base.y, base.classes)
