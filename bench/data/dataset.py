"""The dataset record every loader returns: images in [0, 1] (NCHW), int64 labels, class names."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class Dataset:
    name: str
    split: str
    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int | None:
        """None where the classes are not known (tensors given without them)."""
        return len(self.classes) or None

    def __len__(self) -> int:
        return len(self.y)

    @cached_property
    def content_hash(self) -> str:
        """sha256 of the decoded images, labels and class names: what the run actually reads, whatever the
        files were called or wherever they came from."""
        digest = hashlib.sha256()
        for tensor in (self.x, self.y):
            digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        digest.update("\0".join(self.classes).encode())
        return digest.hexdigest()

    @property
    def identity(self) -> str:
        """What runs are keyed by: the name and the content hash, so a relabelled or replaced copy of a
        built-in dataset (another --data-root) never shares results with the real one."""
        return f"{self.name}@{self.content_hash[:16]}"
