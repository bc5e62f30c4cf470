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
    """One image as float32 in [0, 1] (HxW or HxWx3), scaled by its own bit depth: converting a 16-bit image
    to 8 bits would clip it to almost all white."""
    image_module = require("PIL.Image", "image folders", "pip install 'bench[vision]'")
    try:
        with image_module.open(file) as img:
            if img.mode.startswith("I;16"):
                return np.asarray(img, dtype=np.float32) / 65535.0
            if img.mode == "F":
                pixels = np.asarray(img, dtype=np.float32)
                if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
                    raise DataError(f"{file} is a floating-point image with values outside [0, 1]",
                                    "save it as an 8- or 16-bit image, or scale it to [0, 1]")
                return pixels
            if img.mode == "I":
                raise DataError(f"{file} is a 32-bit integer image, which has no fixed range",
                                "save it as an 8- or 16-bit image")
            return np.asarray(img.convert("L" if img.mode in ("L", "1", "LA") else "RGB"), dtype=np.float32) / 255.0
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
    x = torch.from_numpy(np.stack(images))
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return Dataset(f"folder:{path}", split, x.contiguous(), torch.tensor(labels, dtype=torch.int64),
                   tuple(d.name for d in class_dirs))
