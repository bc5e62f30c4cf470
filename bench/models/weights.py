"""Weight sources (local file, URL + sha256, RobustBench zoo, Python entry point) and safe loading.

Weight files are untrusted: safetensors, or ``torch.load(weights_only=True)``, always after a
sha256 check. A pickle that would run code is refused.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Collection
from pathlib import Path

import torch
from torch import nn

from bench.errors import WeightsError


def cache_dir(kind: str) -> Path:
    """$BENCH_CACHE/<kind>, default ~/.cache/bench/<kind>."""
    root = os.environ.get("BENCH_CACHE")
    path = (Path(root).expanduser() if root else Path.home() / ".cache" / "bench") / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_cached(path: Path) -> str:
    """sha256 of a file, remembered per process while its path, size and modification time stay the same."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def verify_sha256(path: Path, expected: str, what: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsError(f"sha256 mismatch for {what} ({path}): expected {expected}, got {actual}",
                           "the file is corrupted or not the one the card names; re-download it or fix the card's "
                           "sha256")


def download_timeout() -> float:
    """Seconds a whole download may take: $BENCH_DOWNLOAD_TIMEOUT, default 30 minutes."""
    return float(os.environ.get("BENCH_DOWNLOAD_TIMEOUT", 1800))


def _copy_with_deadline(response, out, url: str, deadline: float) -> None:
    """Copy in chunks with a progress bar; a server too slow to finish before the deadline is given up on."""
    from tqdm.auto import tqdm

    total = response.headers.get("Content-Length")
    with tqdm(total=int(total) if total and total.isdigit() else None, unit="B", unit_scale=True,
              desc=f"download {Path(urllib.request.urlparse(url).path).name or url}", dynamic_ncols=True) as bar:
        while chunk := response.read1(1 << 20):
            out.write(chunk)
            bar.update(len(chunk))
            if time.monotonic() > deadline:
                raise TimeoutError(f"the download did not finish within {download_timeout():g} s")


def download(url: str, sha256: str) -> Path:
    """Download once into the cache, keyed by sha256; the file is checked before it is kept, and nothing
    is left behind when a download fails or runs past its deadline."""
    suffix = Path(urllib.request.urlparse(url).path).suffix or ".bin"
    target = cache_dir("weights") / f"{sha256}{suffix}"
    if target.is_file():
        verify_sha256(target, sha256, url)
        return target
    deadline = time.monotonic() + download_timeout()
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=min(60.0, download_timeout())) as response:
            _copy_with_deadline(response, out, url, deadline)
        verify_sha256(Path(tmp), sha256, url)
        os.replace(tmp, target)
    except urllib.error.HTTPError as err:
        err.close()  # an HTTPError holds the open response
        raise WeightsError(f"could not download {url}: HTTP {err.code} {err.reason}",
                           "check the URL in the card, or download the file and use weights.file") from None
    except (OSError, ValueError) as err:  # ValueError: a malformed URL; TimeoutError is an OSError
        raise WeightsError(f"could not download {url}: {err}",
                           "check the network (or raise $BENCH_DOWNLOAD_TIMEOUT), or download the file by hand "
                           "and point weights.file at it") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors only: safetensors, or a torch file through the weights-only unpickler."""
    if not path.is_file():
        raise WeightsError(f"weight file {path} does not exist",
                           "check weights.file in the card (it is relative to the card's folder), or run `bench train`")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise WeightsError(f"{path} is not a valid safetensors file: {err}", "re-download or re-create it") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        blocked = re.search(r"GLOBAL (\S+)", str(err))  # torch names the object it refused to build
        if blocked:
            raise WeightsError(f"refused to load {path}: it holds Python objects beyond tensors ({blocked[1]}), "
                               "which could run code when unpickled", "save only the state_dict "
                               "(torch.save(model.state_dict(), f)) or convert it to safetensors") from err
        raise WeightsError(f"{path} is not a readable torch weight file", "re-download or re-create it") from err
    except (RuntimeError, EOFError, ValueError) as err:
        raise WeightsError(f"{path} is not a readable torch weight file: {err}", "re-download or re-create it") from err
    for key in ("state_dict", "model_state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict", "save model.state_dict()")
    return state


def _fit_problems(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """What keeps a state dict from loading: missing and unexpected keys, and shapes that differ."""
    own = model.state_dict()
    problems = [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    problems += [f"{k} is {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the architecture"
                 for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    return problems


def apply_state_dict(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel checkpoints
    problems = _fit_problems(model, state)
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise WeightsError(f"weights of {what} do not fit its architecture: {shown}",
                           "check architecture.name and kwargs in the card against the checkpoint")
    model.load_state_dict(state)


def trusted_packages(extra: Collection[str] = ()) -> set[str]:
    """Packages whose code cards may run: those passed in, plus $BENCH_TRUST_CODE (comma-separated)."""
    env = {p.strip() for p in os.environ.get("BENCH_TRUST_CODE", "").split(",") if p.strip()}
    return set(extra) | env


def load_entry_point(spec: str, kwargs: dict, trusted: Collection[str], card_id: str) -> nn.Module:
    """``package.module:factory`` called with the architecture kwargs; must return an nn.Module.

    An entry point is code: nothing is imported unless its top-level package is trusted."""
    module_name, attr = spec.split(":")
    package = module_name.split(".")[0]
    if package not in trusted:
        raise WeightsError(f"model card {card_id} builds its model by running code: the entry point {spec} "
                           f"(package {package}); nothing was run",
                           f"if you trust {package}, pass --trust-code {package} (bench run / train), "
                           f"trust_code=['{package}'] (Python), or set BENCH_TRUST_CODE={package}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise WeightsError(f"entry point {spec} cannot be imported: {err}",
                           "install the package that provides it, or fix weights.entry_point") from err
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise WeightsError(f"entry point {spec} returned {type(model).__name__}, not an nn.Module",
                           "make the factory return the model")
    return model


def load_robustbench(name: str, dataset: str, threat_model: str) -> nn.Module:
    """A RobustBench zoo model (needs the optional robustbench package and the network)."""
    import sys

    try:
        import pyautoattack
        import pyautoattack.state

        # robustbench imports `autoattack`, which no published package provides; pyautoattack is its code.
        sys.modules.setdefault("autoattack", pyautoattack)
        sys.modules.setdefault("autoattack.state", pyautoattack.state)
        from robustbench.utils import load_model
    except ImportError as err:
        raise WeightsError(f"RobustBench model {name} needs the robustbench package ({err})",
                           "pip install robustbench, or download the checkpoint and use weights.file") from err
    try:
        return load_model(model_name=name, dataset=dataset, threat_model=threat_model,
                          model_dir=str(cache_dir("robustbench")))
    except Exception as err:  # gdown / requests raise many types; all mean "could not fetch"
        raise WeightsError(f"could not load RobustBench model {name}: {err}",
                           "check the network and the model name (robustbench.model_zoo lists them)") from err
