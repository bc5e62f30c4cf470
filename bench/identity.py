"""Identity of a bare ``nn.Module``: what must differ for two modules to get different results.

A module passed to ``bench.evaluate`` has no card, so its identity is computed from what decides its
outputs: the class and code of every submodule (the functions of each class outside torch, and any
function stored on an instance, such as a monkey-patched ``forward`` or a hook, with the module-level
globals that code reads: a flag in the model's module switches it as surely as an attribute), its plain attributes
(a flag that flips the logits), every tensor in its state, and a fingerprint of its outputs on a
few evaluation points. A module that differs in any of them never gets another module's stored rows.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import sys
import types
from typing import Any

import torch
from torch import Tensor, nn

_TORCH_STATE = {"training", "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"}
_LIBRARIES = {"torch", "numpy", "builtins"} | set(sys.stdlib_module_names)  # named, not hashed
MAX_DEPTH = 4


def _library(module_name: str) -> bool:
    return module_name.split(".")[0] in _LIBRARIES


def _names(code: types.CodeType) -> set[str]:
    """Every global or attribute name a function's code (nested functions included) refers to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


class _Digest:
    """sha256 over code, the values it reads and tensors; ``seen`` stops at code already hashed (recursion)."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.seen: set[int] = set()

    def text(self, value: str) -> None:
        self.sha.update(value.encode())

    def code(self, code: types.CodeType) -> None:
        self.sha.update(code.co_code)
        self.text(repr(code.co_names))
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self.code(const)
            else:
                self.text(repr(const))

    def function(self, function: types.FunctionType, depth: int) -> None:
        """Code, closure, defaults, and the module-level globals it reads (a flag in the model's module
        switches its behaviour as surely as an attribute does)."""
        if id(function.__code__) in self.seen:
            return
        self.seen.add(id(function.__code__))
        self.code(function.__code__)
        for cell in function.__closure__ or ():
            with contextlib.suppress(ValueError):  # an empty cell
                self.value(cell.cell_contents, depth + 1)
        self.text(repr(function.__defaults__) + repr(function.__kwdefaults__))
        names = _names(function.__code__)
        for name in sorted(names & set(function.__globals__)):
            self.text(name)
            found = function.__globals__[name]
            if isinstance(found, types.ModuleType) and not _library(found.__name__):
                for attr in sorted(names & set(vars(found))):  # mymodule.FLAG
                    self.text(attr)
                    self.value(vars(found)[attr], depth + 1)
            else:
                self.value(found, depth + 1)

    def cls(self, cls: type, depth: int) -> None:
        for klass in inspect.getmro(cls):
            if _library(klass.__module__):
                continue
            self.text(f"{klass.__module__}.{klass.__qualname__}")
            for name, member in sorted(vars(klass).items()):
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if isinstance(member, property):
                    member = member.fget
                if isinstance(member, types.FunctionType):
                    self.text(name)
                    self.function(member, depth)
                elif not name.startswith("__"):
                    self.text(name)
                    self.value(member, depth + 1)

    def value(self, value: Any, depth: int = 0) -> None:
        """Add a value: code for functions and classes, bytes for tensors, repr for simple values, contents
        of containers and plain objects (to a depth)."""
        if isinstance(value, types.MethodType):
            value = value.__func__
        if isinstance(value, types.ModuleType):
            self.text(value.__name__)
        elif isinstance(value, types.FunctionType) and not _library(value.__module__ or ""):
            self.function(value, depth)
        elif isinstance(value, type) and depth < MAX_DEPTH:
            self.cls(value, depth)
        elif isinstance(value, (types.FunctionType, type)):  # a library's function, or a class too deep to open
            self.text(value.__qualname__)
        elif isinstance(value, Tensor):
            self.sha.update(value.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(value, (int, float, str, bool, type(None), bytes)):
            self.text(repr(value))
        elif depth >= MAX_DEPTH or isinstance(value, nn.Module):  # submodules are hashed on their own
            self.text(type(value).__qualname__)
        elif isinstance(value, dict):
            for key in sorted(value, key=repr):
                self.text(repr(key))
                self.value(value[key], depth + 1)
        elif isinstance(value, (list, tuple, set, frozenset)):
            for item in (sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value):
                self.value(item, depth + 1)
        else:
            self.text(type(value).__qualname__)
            with contextlib.suppress(TypeError):  # objects without __dict__ (slots, C types)
                self.value(vars(value), depth + 1)


def static_hash(model: nn.Module) -> str:
    """Code (and the globals it reads), attributes and tensors of every submodule (not its outputs)."""
    digest = _Digest()
    for name, module in model.named_modules():
        digest.text(f"{name}:{type(module).__qualname__}")
        digest.cls(type(module), 0)
        for key, value in sorted(vars(module).items()):
            if key not in _TORCH_STATE:
                digest.text(key)
                digest.value(value)
    for name, tensor in sorted(model.state_dict().items()):
        digest.text(name)
        digest.sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.sha.hexdigest()


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
