"""Identity of a bare ``nn.Module``: what must differ for two modules to get different results.

A module passed to ``bench.evaluate`` has no card, so its identity is computed from what decides its
outputs: the class and code of every submodule (the functions of each class outside torch, and any
function stored on an instance, such as a monkey-patched ``forward`` or a hook), its plain attributes
(a flag that flips the logits), every tensor in its state, and a fingerprint of its outputs on a
few evaluation points. A module that differs in any of them never gets another module's stored rows.
"""
from __future__ import annotations

import hashlib
import inspect
import types
from typing import Any

import torch
from torch import Tensor, nn

_TORCH_STATE = {"training", "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"}


def _update_code(digest: "hashlib._Hash", code: types.CodeType) -> None:
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _update_code(digest, const)
        else:
            digest.update(repr(const).encode())


def _update_value(digest: "hashlib._Hash", value: Any, depth: int = 0) -> None:
    """Add a plain attribute: code for functions, bytes for tensors, repr for simple values."""
    if isinstance(value, (types.FunctionType, types.MethodType)):
        function = value.__func__ if isinstance(value, types.MethodType) else value
        _update_code(digest, function.__code__)
        for cell in function.__closure__ or ():
            _update_value(digest, cell.cell_contents, depth + 1)
        digest.update(repr(function.__defaults__).encode())
    elif isinstance(value, Tensor):
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(value, dict) and depth < 3:
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _update_value(digest, value[key], depth + 1)
    elif isinstance(value, (list, tuple)) and depth < 3:
        for item in value:
            _update_value(digest, item, depth + 1)
    elif isinstance(value, (int, float, str, bool, type(None), bytes)):
        digest.update(repr(value).encode())
    else:
        digest.update(type(value).__qualname__.encode())


def _class_code(digest: "hashlib._Hash", cls: type) -> None:
    for klass in inspect.getmro(cls):
        if klass.__module__.startswith(("torch", "builtins")):
            continue
        digest.update(f"{klass.__module__}.{klass.__qualname__}".encode())
        for name, member in sorted(vars(klass).items()):
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if isinstance(member, types.FunctionType):
                digest.update(name.encode())
                _update_code(digest, member.__code__)


def static_hash(model: nn.Module) -> str:
    """Code, attributes and tensors of every submodule (not its outputs)."""
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        digest.update(f"{name}:{type(module).__qualname__}".encode())
        _class_code(digest, type(module))
        for key, value in sorted(vars(module).items()):
            if key not in _TORCH_STATE:
                digest.update(key.encode())
                _update_value(digest, value)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def output_fingerprint(outputs: list[Tensor]) -> tuple[str | None, bool]:
    """(hash of the outputs, deterministic): two probes of the same inputs must agree to 1e-4 to count;
    the hash rounds to that resolution."""
    first, second = outputs
    if first.shape != second.shape or not torch.allclose(first, second, atol=1e-4, rtol=0, equal_nan=True):
        return None, False
    rounded = torch.round(first.detach().double().cpu() * 1e4).to(torch.int64)
    return hashlib.sha256(rounded.numpy().tobytes()).hexdigest(), True


def module_hash(model: nn.Module, outputs: list[Tensor] | None = None) -> tuple[str, bool]:
    """(identity, deterministic) of a bare module; ``outputs`` are two probes of its outputs on the same
    points (None where its task has no probe)."""
    static = static_hash(model)
    if outputs is None:
        return static, True
    fingerprint, deterministic = output_fingerprint(outputs)
    if fingerprint is None:  # a random module is identified by code and weights alone
        return static, False
    return hashlib.sha256(f"{static}:{fingerprint}".encode()).hexdigest(), True
