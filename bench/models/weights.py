"""Weight sources (local file, URL + sha256, RobustBench zoo, Python entry point) and safe loading.

Weight files are untrusted: safetensors, or ``torch.load(weights_only=True)``, always after a
sha256 check. A pickle that would run code is refused.
"""
from __future__ import annotations

import importlib
import os
import pickle
import re
import urllib.parse
from collections.abc import Collection
from pathlib import Path

import torch
from torch import nn

from bench.digests import sha256_cached, sha256_file  # noqa: F401  (sha256_cached: weights' public API)
from bench.files import cache_dir
from bench.downloads import fetch
from bench.errors import WeightsError


def readable(path: Path) -> Path:
    """``path``, if this user may read it: a weight file another user left unreadable (chmod 000, or 0600 in a
    shared cache) is a clear error, not a traceback from hashing or loading it."""
    try:
        with open(path, "rb"):
            return path
    except OSError as err:
        raise WeightsError(f"weight file {path} cannot be read ({err.strerror or err})",
                           "ask its owner to make it readable (chmod a+r), or use a $BENCH_CACHE of your own") from err


def verify_sha256(path: Path, expected: str, what: str) -> None:
    actual = sha256_file(readable(path))
    if actual != expected:
        raise WeightsError(f"sha256 mismatch for {what} ({path}): expected {expected}, got {actual}",
                           "the file is corrupted or not the one the card names; re-download it or fix the card's "
                           "sha256")


def download(url: str, sha256: str, size: int | None = None) -> Path:
    """Download once into the cache, keyed by sha256 (at most ``size`` bytes, if known); the file is checked
    before it is kept."""
    suffix = Path(urllib.parse.urlsplit(url).path).suffix or ".bin"
    target = cache_dir("weights") / f"{sha256}{suffix}"
    if target.is_file():
        verify_sha256(target, sha256, url)
        return target
    fetch(url, target, size=size, check=lambda tmp: verify_sha256(tmp, sha256, url), error=WeightsError,
          fix="download the file by hand and point weights.file at it")
    return target


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors only: safetensors, or a torch file through the weights-only unpickler."""
    if not path.is_file():
        raise WeightsError(f"weight file {path} does not exist",
                           "check weights.file in the card (it is relative to the card's folder), or run `bench train`")
    readable(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise WeightsError(f"{path} is not a valid safetensors file: {err}", "re-download or re-create it") from err
    if torch.torch_version.TorchVersion(torch.__version__) < "2.6":
        raise WeightsError(f"refused to load {path}: torch {torch.__version__} cannot read .pt files safely "
                           "(its weights-only loader could run code before torch 2.6, CVE-2025-32434)",
                           "upgrade torch to 2.6 or later, or convert the weights to safetensors")
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


def load_robustbench(name: str, dataset: str, threat_model: str, model_dir: Path | None = None) -> nn.Module:
    """A RobustBench zoo model through the optional robustbench package, which downloads its checkpoint into
    ``model_dir`` (default: the cache) unless it is there (``bench.models.zoo`` reads such files without it)."""
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
                           "pip install robustbench, or put its checkpoint where RobustBench keeps it "
                           f"({model_dir or cache_dir('robustbench')}/{dataset}/{threat_model}/{name}.pt), or "
                           "download the checkpoint and use weights.file") from err
    try:
        return load_model(model_name=name, dataset=dataset, threat_model=threat_model,
                          model_dir=str(model_dir or cache_dir("robustbench")))
    except Exception as err:  # gdown / requests raise many types; all mean "could not fetch"
        raise WeightsError(f"could not load RobustBench model {name}: {err}",
                           "check the network and the model name (robustbench.model_zoo lists them)") from err
