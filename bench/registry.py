"""One registry implementation for every open vocabulary: architectures, recipes, tasks, threat
families, datasets, pair sources, attack losses.

A registry is filled by decorators in the modules that define its entries. Which modules those are
is explicit: each registry names its core ``providers`` (imported on the first look-up), and the
method families are found through the family index ``bench.families`` (each family's
``register()`` imports its own modules). A duplicate name is an error, and an unknown name is a
BenchError with a did-you-mean hint.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Generic, TypeVar

from bench.errors import BenchError, CardError, did_you_mean

T = TypeVar("T")

FAMILY_INDEX = "bench.families"  # the package that lists the method families (see docs/architecture.md)
_families_loaded = False


def family_packages() -> list[ModuleType]:
    """The method family packages, in the order the family index lists them."""
    index = importlib.import_module(FAMILY_INDEX)
    return [importlib.import_module(name) for name in index.PACKAGES]


def load_families() -> None:
    """Let every method family register its entries (once per process)."""
    global _families_loaded
    if _families_loaded:
        return
    _families_loaded = True
    for package in family_packages():
        package.register()


class Registry(Generic[T]):
    """Name -> entry, e.g. ``ARCHITECTURES.register("small-cnn")(builder)`` and ``ARCHITECTURES.get(name)``.

    ``what`` names an entry in error messages ("architecture"); ``hint`` ends the fix of an unknown name
    (e.g. the command that lists them); ``error`` is the BenchError subclass raised for an unknown name.
    """

    def __init__(self, what: str, *, providers: tuple[str, ...] = (), hint: str | None = None,
                 error: type[BenchError] = CardError):
        self.what, self.providers, self.hint, self.error = what, providers, hint, error
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        """Register ``entry`` under ``name``, or use as a decorator: ``@REGISTRY.register("name")``."""
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add if entry is None else add(entry)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self.providers:
                importlib.import_module(module)
            load_families()

    def get(self, name: str, where: str | None = None) -> T:
        self._load()
        if name not in self._entries:
            prefix = f"{where}: " if where else ""
            hint = f"; {self.hint}" if self.hint else ""
            raise self.error(f"{prefix}unknown {self.what} {name!r}",
                             f"{did_you_mean(str(name), self._entries)}known: {', '.join(sorted(self._entries))}{hint}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        self._load()
        return iter(sorted(self._entries.items()))
