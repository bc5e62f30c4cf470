"""A user's own images: ``PATH/<class>/<image>``, or ``PATH/{train,test}/<class>/<image>``.

Hidden folders (``.ipynb_checkpoints``, ``.git``) and folders without images are not classes: one of
them would shift every label after it. The dataset is identified by its content, not its path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.data.dataset import Dataset
from bench.errors import DataError, require

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _images(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                  and not f.name.startswith("."))


def _read(file: Path) -> np.ndarray:
    image_module = require("PIL.Image", "image folders", "pip install 'bench[vision]'")
    try:
        with image_module.open(file) as img:
            return np.asarray(img.convert("L" if img.mode in ("L", "1", "I;16") else "RGB"))
    except (OSError, ValueError, image_module.DecompressionBombError) as err:
        raise DataError(f"cannot read image {file}: {err}", "remove or replace the file") from err


def load_folder(path: str, split: str) -> Dataset:
    root = Path(path).expanduser()
    if (root / split).is_dir():
        root = root / split
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist", "pass folder:PATH with PATH/<class>/<image> files")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and _images(d))
    if not class_dirs:
        raise DataError(f"image folder {root} has no class sub-folders with images",
                        f"lay images out as PATH/<class>/<image> (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        for file in _images(class_dir):
            images.append(_read(file))
            labels.append(label)
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"images under {root} have different sizes: {sorted(shapes)[:3]}",
                        "resize them to one size before evaluating")
    x = torch.from_numpy(np.stack(images)).float() / 255.0
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return Dataset(f"folder:{path}", split, x.contiguous(), torch.tensor(labels, dtype=torch.int64),
                   tuple(d.name for d in class_dirs), by_content=True)
