"""sha256 of files, remembered on disk so that a large file is hashed once, not on every run.

A file's sha256 names results (the data of a protocol, trained weights), so a stale or forged entry would let
other bytes resume old numbers. An entry is therefore keyed by device, inode, size, mtime_ns and ctime_ns
(rewriting a file changes its ctime, which no user can set back, unlike its mtime), used only if it is a
sha256 (else recomputed), and written atomically. An expected size is checked before hashing: a file padded
to gigabytes is refused at once, not hashed for minutes.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path

from bench.errors import DataError
from bench.files import atomic_write, cache_dir

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _sha256(f) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return _sha256(f)


def sha256_cached(path: Path, size: int | None = None) -> str:
    """sha256 of ``path`` (which must be ``size`` bytes, if given), from the digest cache when the file is
    unchanged."""
    with open(path, "rb") as f:
        stat = os.fstat(f.fileno())  # the file that is hashed, even if the path is replaced meanwhile
        if size is not None and stat.st_size != size:
            raise DataError(f"{path} is {stat.st_size} bytes, not the {size} it must be",
                            "it is cut short, padded or not the file expected: get it again")
        key = f"{stat.st_dev}-{stat.st_ino}-{stat.st_size}-{stat.st_mtime_ns}-{stat.st_ctime_ns}"
        entry = cache_dir("file-digests") / hashlib.sha256(key.encode()).hexdigest()
        if entry.is_file():
            with entry.open("rb") as cached:
                value = cached.read(65).decode("ascii", "replace")
            if _SHA256.fullmatch(value):
                return value
        value = _sha256(f)
    with contextlib.suppress(OSError):  # a cache that cannot be written only costs time
        atomic_write(entry, lambda tmp: tmp.write_text(value))
    return value
