"""Atomic file writes: an interrupted run never leaves a half-written file under the final name."""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write`` on a hidden temporary file beside ``path``, then move it into place (removed on failure)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
