"""Corrupted test sets on disk: the published CIFAR-10-C and MNIST-C files, and equivalents that
`bench data make` generates with our library (always marked as generated, never passed off as published).

Layouts, as published:
- CIFAR-10-C (Hendrycks & Dietterich, zenodo.org/records/2535967): ``CIFAR-10-C/<corruption>.npy``, uint8
  (5 x 10000, 32, 32, 3) with severities 1-5 stacked in order over the CIFAR-10 test set, and ``labels.npy``.
- MNIST-C (Mu & Gilmer, zenodo.org/records/3239543): ``mnist_c/<corruption>/test_images.npy``, uint8
  (10000, 28, 28, 1), one severity per corruption, and ``test_labels.npy`` beside it.

A folder that ``bench data make`` wrote holds ``GENERATED.json`` (generator, seed, cells). Runs read the
files memory-mapped (``allow_pickle`` off), check every batch's labels against the dataset's, and name
the files' sha256 in the protocol, so other files never share results with these.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from bench.data import MAKERS, data_root, load_dataset
from bench.errors import DataError
from bench.files import atomic_write

MARKER = "GENERATED.json"


@dataclass(frozen=True)
class Layout:
    name: str  # cifar10-c, mnist-c
    dataset: str  # the clean test split it corrupts
    folder: str  # the published folder name under the data root
    image_shape: tuple[int, int, int]  # H, W, C as stored
    severities: int  # stacked per file (5), or 1 for one file per corruption
    published: str  # where to get the real files

    def images_file(self, folder: Path, corruption: str) -> Path:
        return folder / (f"{corruption}.npy" if self.severities > 1 else f"{corruption}/test_images.npy")

    def labels_file(self, folder: Path, corruption: str) -> Path:
        return folder / ("labels.npy" if self.severities > 1 else f"{corruption}/test_labels.npy")

    def offset(self, severity: int, n: int) -> int:
        """The first row of one severity in a file of ``severities`` x n images (MNIST-C: the whole file)."""
        return (severity - 1) * n if self.severities > 1 else 0


LAYOUTS = {
    "cifar10-c": Layout("cifar10-c", "cifar10", "CIFAR-10-C", (32, 32, 3), 5,
                        "download CIFAR-10-C.tar from https://zenodo.org/records/2535967 and extract it"),
    "mnist-c": Layout("mnist-c", "mnist", "mnist_c", (28, 28, 1), 1,
                      "download mnist_c.zip from https://zenodo.org/records/3239543 and extract it"),
}


def default_folder(layout: Layout, generated: bool = False) -> Path:
    return data_root() / (f"{layout.folder}-generated" if generated else layout.folder)


def _digest(path: Path) -> str:
    """sha256 of a file, cached by (path, size, mtime) so a 150 MB file is hashed once."""
    from bench.models.weights import cache_dir, sha256_file

    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    cached = cache_dir("file-digests") / key
    if cached.is_file():
        return cached.read_text().strip()
    value = sha256_file(path)
    cached.write_text(value)
    return value


class CorruptedFiles:
    """One folder of corrupted copies of a test split, in a ``Layout``."""

    def __init__(self, layout: Layout, folder: Path):
        self.layout, self.folder = layout, folder.expanduser()
        marker = self.folder / MARKER
        self.generated = json.loads(marker.read_text()) if marker.is_file() else None
        self._arrays: dict[Path, np.ndarray] = {}

    def _fix(self) -> str:
        return (f"{self.layout.published} into {self.folder.parent} (or set $BENCH_DATA / the card's files:), "
                f"run `bench data make {self.layout.name}` and use a card with files: pointing at what it writes, "
                f"or use source: generated (corrupted on the fly by bench)")

    def _array(self, path: Path, shape: tuple[int, ...]) -> np.ndarray:
        if path not in self._arrays:
            if not path.is_file():
                raise DataError(f"{self.layout.name} file {path} does not exist", self._fix())
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as err:
                raise DataError(f"{path} is not a plain .npy array ({err})", self._fix()) from err
            if array.dtype != np.uint8 or array.shape[1:] != shape[1:] or len(array) != shape[0]:
                raise DataError(f"{path} holds {array.dtype} {array.shape}, but the {self.layout.name} layout has "
                                f"uint8 {shape}", self._fix())
            self._arrays[path] = array
        return self._arrays[path]

    def files(self, corruptions: list[str]) -> list[Path]:
        paths = {self.layout.images_file(self.folder, c) for c in corruptions}
        paths |= {self.layout.labels_file(self.folder, c) for c in corruptions}
        return sorted(paths)

    def present(self, corruptions: list[str]) -> bool:
        return all(path.is_file() for path in self.files(corruptions))

    def digest(self, corruptions: list[str]) -> str:
        """One sha256 over the sha256 of every file the corruptions read (names relative to the folder)."""
        lines = []
        for path in self.files(corruptions):
            if not path.is_file():
                raise DataError(f"{self.layout.name} file {path} does not exist", self._fix())
            lines.append(f"{path.relative_to(self.folder)} {_digest(path)}")
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    def images(self, corruption: str, severity: int, index: Tensor, labels: Tensor) -> Tensor:
        """The corrupted images at positions ``index`` of the test split, float NCHW in [0, 1], after
        checking the files' labels at those positions against ``labels``."""
        h, w, c = self.layout.image_shape
        labels_path = self.layout.labels_file(self.folder, corruption)
        if not labels_path.is_file():
            raise DataError(f"{self.layout.name} file {labels_path} does not exist", self._fix())
        stacked = len(np.load(labels_path, mmap_mode="r", allow_pickle=False))
        if stacked % self.layout.severities:
            raise DataError(f"{labels_path} has {stacked} labels, not {self.layout.severities} severities of equal "
                            "size", self._fix())
        n = stacked // self.layout.severities
        images = self._array(self.layout.images_file(self.folder, corruption), (stacked, h, w, c))
        stored = self._array(labels_path, (stacked,))
        positions = index.cpu().numpy() + self.layout.offset(severity, n)
        if positions.size and positions.max() >= stacked:
            raise DataError(f"{labels_path} has {n} points per severity, fewer than the test split", self._fix())
        if not np.array_equal(stored[positions].astype(np.int64), labels.cpu().numpy()):
            raise DataError(f"the labels in {labels_path} disagree with the {self.layout.dataset} test labels: these "
                            f"files are not {self.layout.name} of this test split, in its order", self._fix())
        return torch.from_numpy(np.ascontiguousarray(images[positions])).permute(0, 3, 1, 2).float() / 255


def _save(path: Path, array: np.ndarray) -> None:
    """Write atomically: an interrupted make never leaves a half-written file that looks complete."""
    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.save would add .npy to a name
            np.save(f, array, allow_pickle=False)

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


def make_files(layout_name: str, *, root: Path | None = None, seed: int = 0, batch_size: int = 500,
               progress: bool = True) -> Path:
    """Write ``<data root>/<folder>-generated`` with bench's library: the layout's corruptions and
    severities over the whole clean test split, each (corruption, severity, batch) with its own draws.
    Corruptions already written are kept (resumable)."""
    from bench.threats.grid import Cell, CellGrid
    from bench.families.corruptions.suites import SUITES

    layout = LAYOUTS[layout_name]
    suite = SUITES[layout_name]
    test = load_dataset(layout.dataset, "test", root)
    folder = data_root(root) / f"{layout.folder}-generated"
    marker = {"generated_by": "bench data make", "warning": f"generated by bench's corruption library, NOT the "
              f"published {layout.name} files", "layout": layout.name, "seed": seed, "batch_size": batch_size,
              "corruptions": list(suite.names + suite.extra)}
    existing = folder / MARKER
    if existing.is_file() and {k: v for k, v in json.loads(existing.read_text()).items() if k != "created"} != marker:
        raise DataError(f"{folder} holds files made with other settings ({existing})",
                        "delete that folder, or make with the same seed and batch size")
    folder.mkdir(parents=True, exist_ok=True)
    existing.write_text(json.dumps({**marker, "created": datetime.now(timezone.utc).isoformat()}, indent=2))
    n = len(test)
    labels = test.y.numpy().astype(np.uint8)
    for name in tqdm(suite.names + suite.extra, desc=f"bench data make {layout.name}", disable=not progress):
        target = layout.images_file(folder, name)
        if target.is_file():
            continue
        severities = range(1, 6) if layout.severities > 1 else [suite.published[name]]
        out = np.empty((len(severities) * n, *layout.image_shape), dtype=np.uint8)
        for k, severity in enumerate(severities):
            for start in range(0, n, batch_size):
                x = test.x[start:start + batch_size]
                gen = CellGrid.cell_generator(seed * 1_000_003 + start, Cell(name, severity))
                corrupted = suite.corrupt(name, x, severity, gen)
                rows = slice(k * n + start, k * n + start + len(x))
                out[rows] = torch.round(corrupted * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        _save(layout.labels_file(folder, name), np.tile(labels, len(severities)))
        _save(target, out)
    return folder


for _name in LAYOUTS:
    MAKERS.register(_name, partial(make_files, _name))
