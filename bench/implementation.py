"""Implementation identity and numerics: which code computed a run's rows, and on what arithmetic.

A protocol hash says what is asked; the implementation identity says which code answered it: the core's
revision (the run loop, shards and seeds), the task's (its clean pass), the threat family's, and the name
and version of every backend that computes numbers for it (the official AutoAttack package). A revision
changes whenever numbers may change; the committed fingerprints under ``tests/fingerprints/`` make a
forgotten bump fail a test that names it. Numerics are the arithmetic rows depend on: the device type and
torch version, the CPU thread count, and on CUDA its version, cuDNN's and the GPU. Both are in the run
key: a run is never resumed or reused under other code or other numerics, and ``differences`` says what
differs where two are compared.
"""
from __future__ import annotations

from typing import Any

import torch

CORE_REVISION = 2  # the run loop: shards, seeds, the store's row format (2: batch seeds never wrap)


def implementation(family: str, threat: Any, task: Any) -> dict[str, Any]:
    """The identity of the code that computes a run of ``threat`` (of ``family``) on a model of ``task``."""
    return {"core": CORE_REVISION, "task": {"name": task.name, "revision": task.revision},
            "family": {"name": family, **threat.implementation()}}


def numerics(device: torch.device, threads: int | None = None) -> dict[str, Any]:
    """The arithmetic a run on ``device`` uses (``threads``: the CPU threads it runs with, default the
    process's current count)."""
    out: dict[str, Any] = {"device": device.type, "torch": torch.__version__}
    if device.type == "cpu":
        out["threads"] = threads or torch.get_num_threads()
    elif device.type == "cuda":
        out |= {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                "gpu": torch.cuda.get_device_name(device)}
    return out


def differences(first: dict[str, Any], second: dict[str, Any], names: tuple[str, str] = ("recorded", "here"),
                path: str = "") -> list[str]:
    """What differs between two identities (or numerics), e.g. ``family.revision: 1 recorded, 2 here``."""
    out = []
    for key in sorted(set(first) | set(second), key=str):
        a, b = first.get(key), second.get(key)
        name = f"{path}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, names, f"{name}.")
        elif a != b:
            out.append(f"{name}: {a} {names[0]}, {b} {names[1]}")
    return out
