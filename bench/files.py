"""What every writer of files shares: atomic writes (an interrupted run never leaves a half-written file under
the final name), advisory locks (two processes never compute the same thing at once) and safe file names."""
from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None


def _umask() -> int:
    """This process's umask: from /proc where Linux shows it (setting it to read it back would change it for
    every thread meanwhile), else set and restored."""
    try:
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write`` on a hidden temporary file beside ``path``, then move it into place (removed on failure).
    The file gets the mode of a plain ``open`` (0666 less the umask) whatever the writer gave it (safetensors
    writes 0600), so what lands in a shared cache is readable by others as the umask allows."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive(lock_file: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold an advisory lock on ``lock_file`` (created if missing): True while held; with ``wait=False``,
    False at once when another process holds it. The lock dies with its process, so a killed holder never
    blocks the others. Where the system has no advisory locks, always True."""
    if fcntl is None:
        yield True
        return
    with open(lock_file, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cache_dir(kind: str) -> Path:
    """$BENCH_CACHE/<kind>, default ~/.cache/bench/<kind>."""
    root = os.environ.get("BENCH_CACHE")
    path = (Path(root).expanduser() if root else Path.home() / ".cache" / "bench") / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def safe_filename(name: str) -> str:
    """A card id as a file name: ids may contain '/', file names may not."""
    return re.sub(r"[^\w.-]", "_", name)
