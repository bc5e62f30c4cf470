"""A user's own images: ``PATH/<class>/<image>``, or ``PATH/{train,test}/<class>/<image>``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.data import Dataset
from bench.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def load_folder(path: str, split: str) -> Dataset:
    from PIL import Image

    root = Path(path).expanduser()
    if (root / split).is_dir():
        root = root / split
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist", "pass folder:PATH with PATH/<class>/<image> files")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not class_dirs:
        raise DataError(f"image folder {root} has no class sub-folders", "lay images out as PATH/<class>/<image>")
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(file) as img:
                    images.append(np.asarray(img.convert("L" if img.mode in ("L", "1", "I;16") else "RGB")))
                labels.append(label)
    if not images:
        raise DataError(f"no images found under {root}", f"supported suffixes: {', '.join(sorted(IMAGE_SUFFIXES))}")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"images under {root} have different sizes: {sorted(shapes)[:3]}",
                        "resize them to one size before evaluating")
    x = torch.from_numpy(np.stack(images)).float() / 255.0
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return Dataset(f"folder:{path}", split, x.contiguous(), torch.tensor(labels, dtype=torch.int64),
                   tuple(d.name for d in class_dirs))
