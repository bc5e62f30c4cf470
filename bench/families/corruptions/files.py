"""Corrupted test sets on disk: the published CIFAR-10-C and MNIST-C files, and equivalents that
`bench data make` generates with our library (always marked as generated, never passed off as published).

Layouts, as published:
- CIFAR-10-C (Hendrycks & Dietterich, zenodo.org/records/2535967): ``CIFAR-10-C/<corruption>.npy``, uint8
  (5 x 10000, 32, 32, 3) with severities 1-5 stacked in order over the CIFAR-10 test set, and ``labels.npy``.
- MNIST-C (Mu & Gilmer, zenodo.org/records/3239543): ``mnist_c/<corruption>/test_images.npy``, uint8
  (10000, 28, 28, 1), one severity per corruption, and ``test_labels.npy`` beside it.

A folder that ``bench data make`` wrote holds ``GENERATED.json`` (generator, seed, cells). The files are
untrusted: runs check each one's .npy header (dtype, shape) and size against the layout before reading any
data, read them memory-mapped (never unpickled), check every batch's labels against the dataset's, and name
the files' sha256 in the protocol, so other files never share results with these.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from bench.data import MAKERS, data_root, load_dataset
from bench.digests import sha256_cached
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


# .npy header readers by format version; they refuse headers over numpy's safe size and never unpickle
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
_MARKER_KEYS = {"generated_by", "layout", "seed", "batch_size", "corruptions"}


def _read_marker(folder: Path, layout: Layout) -> dict | None:
    """The GENERATED.json that `bench data make` wrote in ``folder`` (None if there is none), checked: a
    damaged marker must neither crash nor let generated files pass for the published ones."""
    path = folder / MARKER
    if not path.exists():
        return None
    marker = None
    if path.is_file():  # not a FIFO or a folder
        try:
            with path.open("rb") as f:
                text = f.read((1 << 16) + 1)
            marker = json.loads(text) if len(text) <= 1 << 16 else None
        except (OSError, ValueError, RecursionError):  # ValueError: not JSON or not UTF-8
            pass
    if not isinstance(marker, dict) or not _MARKER_KEYS <= marker.keys() or marker["layout"] != layout.name:
        raise DataError(f"{path} is not a marker that `bench data make {layout.name}` wrote",
                        f"delete {folder} and run `bench data make {layout.name}` again")
    return marker


class CorruptedFiles:
    """One folder of corrupted copies of a test split, in a ``Layout``."""

    def __init__(self, layout: Layout, folder: Path):
        self.layout, self.folder = layout, folder.expanduser()
        self.generated = _read_marker(self.folder, layout)
        self._maps: dict[str, dict[Path, np.memmap]] = {}

    def _fix(self) -> str:
        return (f"{self.layout.published} into {self.folder.parent} (or set $BENCH_DATA / the card's files:), "
                f"or run `bench data make {self.layout.name}` (a card without files: then reads what it writes, "
                f"marked as generated), or use source: generated (corrupted on the fly by bench)")

    def _header(self, path: Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
        """Shape, dtype, Fortran order and data offset of a .npy file, from its header alone."""
        if not path.is_file():
            raise DataError(f"{self.layout.name} file {path} does not exist", self._fix())
        try:
            with path.open("rb") as f:
                read = _NPY_HEADERS.get(np.lib.format.read_magic(f))
                if read is None:
                    raise ValueError("unsupported .npy version")
                shape, fortran, dtype = read(f)
                if dtype.hasobject:
                    raise ValueError("it holds pickled Python objects, which are never loaded")
                return shape, dtype, fortran, f.tell()
        except (OSError, ValueError, TypeError) as err:  # TypeError: a header naming no dtype
            raise DataError(f"{path} is not a plain .npy array ({err})", self._fix()) from err

    def _map(self, path: Path, shape: tuple[int, ...], dtype: np.dtype | None = None) -> np.memmap:
        """``path`` memory-mapped once its header matches the layout's ``shape`` and ``dtype`` (None: any
        integer type) and its size matches its header: no data is read from a file that is not right."""
        found, stored, fortran, offset = self._header(path)
        if found != shape or (stored.kind not in "iu" if dtype is None else stored != dtype):
            raise DataError(f"{path} holds {stored} {found}, but the {self.layout.name} layout has "
                            f"{'integer' if dtype is None else dtype} {shape}", self._fix())
        size, actual = offset + stored.itemsize * math.prod(shape), path.stat().st_size
        if actual != size:
            raise DataError(f"{path} is {actual} bytes, but its .npy header makes {size}: it is cut short or padded",
                            self._fix())
        return np.memmap(path, stored, "r", offset, shape, "F" if fortran else "C")

    def _arrays(self, corruption: str) -> dict[Path, np.memmap]:
        """The labels and images files of one corruption, checked against the layout and mapped."""
        if corruption not in self._maps:
            labels = self.layout.labels_file(self.folder, corruption)
            shape = self._header(labels)[0]
            if len(shape) != 1 or shape[0] <= 0 or shape[0] % self.layout.severities:
                raise DataError(f"{labels} holds labels of shape {shape}, not {self.layout.severities} "
                                "severities of equal size", self._fix())
            images = self.layout.images_file(self.folder, corruption)
            self._maps[corruption] = {
                labels: self._map(labels, shape),
                images: self._map(images, (shape[0], *self.layout.image_shape), np.dtype(np.uint8))}
        return self._maps[corruption]

    def check(self, corruption: str) -> None:
        """Raise a DataError with the fix unless the corruption's files are there and in the layout."""
        self._arrays(corruption)

    def files(self, corruptions: list[str]) -> list[Path]:
        paths = {self.layout.images_file(self.folder, c) for c in corruptions}
        paths |= {self.layout.labels_file(self.folder, c) for c in corruptions}
        return sorted(paths)

    def present(self, corruptions: list[str]) -> bool:
        return all(path.is_file() for path in self.files(corruptions))

    def digest(self, corruptions: list[str]) -> str:
        """One sha256 over the sha256 of every file the corruptions read (names relative to the folder), each
        file checked against the layout first."""
        sizes = {path: array.offset + array.nbytes for c in corruptions for path, array in self._arrays(c).items()}
        return hashlib.sha256("\n".join(f"{path.relative_to(self.folder)} {sha256_cached(path, size)}"
                                         for path, size in sorted(sizes.items())).encode()).hexdigest()

    def images(self, corruption: str, severity: int, index: Tensor, labels: Tensor) -> Tensor:
        """The corrupted images at positions ``index`` of the test split, float NCHW in [0, 1], after
        checking the files' labels at those positions against ``labels``."""
        labels_path = self.layout.labels_file(self.folder, corruption)
        stored, images = self._arrays(corruption).values()
        n = len(stored) // self.layout.severities
        index = index.cpu().numpy()
        if index.size and index.max() >= n:
            raise DataError(f"{labels_path} has {n} points per severity, fewer than the test split", self._fix())
        positions = index + self.layout.offset(severity, n)
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
    existing = _read_marker(folder, layout)
    if existing is not None and {k: v for k, v in existing.items() if k != "created"} != marker:
        raise DataError(f"{folder} holds files made with other settings ({folder / MARKER})",
                        "delete that folder, or make with the same seed and batch size")
    folder.mkdir(parents=True, exist_ok=True)
    created = json.dumps({**marker, "created": datetime.now(timezone.utc).isoformat()}, indent=2)
    atomic_write(folder / MARKER, lambda tmp: tmp.write_text(created))
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
