"""One registry implementation for every open vocabulary: architectures, recipes, tasks, threat
families, datasets, composers, attack losses, and the families' own (pair sources, corruptions).

A registry is filled by decorators in the modules that define its entries. Which modules those are is
explicit: each registry names its core ``providers``, either as modules imported on the first look-up or,
where a cheap answer matters (``TASKS``: validating a card must not import torch), as module -> the names
it registers, so that membership needs no import and a look-up imports only the module holding the name
(a test checks each declaration against what the module registers). The method families are found
through the family index ``bench.families.FAMILIES``, which says what each family provides without
importing it. A look-up imports only the family that provides the name; listing every name imports every
family. A family that fails to import is recorded as broken with its error (``broken_families()``): its
names give that error, and every other family goes on working. A duplicate name is an error, and an unknown
name a BenchError with a did-you-mean hint.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from bench.errors import BenchError, CardError, did_you_mean

T = TypeVar("T")

FAMILY_INDEX = "bench.families"  # the module holding FAMILIES (see docs/architecture.md)


@dataclass(frozen=True)
class Family:
    """One method family in the index: its package, the names it registers per registry (``what`` ->
    names: what a look-up may import it for), and its `bench COMMAND` if it has commands."""

    package: str
    provides: dict[str, tuple[str, ...]] = field(default_factory=dict)
    command: str | None = None
    summary: str = ""

    @property
    def name(self) -> str:
        return self.package.rpartition(".")[2]


_loaded: set[str] = set()
_broken: dict[str, str] = {}


def families() -> tuple[Family, ...]:
    return importlib.import_module(FAMILY_INDEX).FAMILIES


def load_family(family: Family) -> bool:
    """Import a family and let it register its entries (once per process); False if it is broken."""
    if family.package in _loaded:
        return True
    if family.package in _broken:
        return False
    try:
        importlib.import_module(family.package).register()
    except Exception as err:  # noqa: BLE001  (any failure to import makes the family unusable, nothing else)
        _broken[family.package] = f"{type(err).__name__}: {err}"
        return False
    _loaded.add(family.package)
    return True


def load_families() -> None:
    """Import every family that imports; the others are recorded as broken."""
    for family in families():
        load_family(family)


def broken_families() -> dict[str, str]:
    """Family name -> the error its import raised, for every family that failed to import so far."""
    return {package.rpartition(".")[2]: error for package, error in _broken.items()}


def provider(what: str, name: str) -> Family | None:
    """The family the index names as providing ``name`` to the registry of ``what``."""
    return next((f for f in families() if name in f.provides.get(what, ())), None)


class Registry(Generic[T]):
    """Name -> entry, e.g. ``ARCHITECTURES.register("small-cnn")(builder)`` and ``ARCHITECTURES.get(name)``.

    ``what`` names an entry in error messages ("architecture") and is the key of the family index;
    ``hint`` ends the fix of an unknown name (e.g. the command that lists them); ``error`` is the
    BenchError subclass raised for an unknown name.
    """

    def __init__(self, what: str, *, providers: tuple[str, ...] | dict[str, tuple[str, ...]] = (),
                 hint: str | None = None, error: type[BenchError] = CardError):
        self.what, self.hint, self.error = what, hint, error
        self.providers = tuple(providers)
        # module -> the names it registers, where the registry declares them (then nothing is imported up front)
        self._declared: dict[str, tuple[str, ...]] | None = dict(providers) if isinstance(providers, dict) else None
        self._entries: dict[str, T] = {}
        self._core_loaded = False

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        """Register ``entry`` under ``name``, or use as a decorator: ``@REGISTRY.register("name")``."""
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add if entry is None else add(entry)

    def _load_core(self) -> None:
        if not self._core_loaded:
            self._core_loaded = True
            for module in self.providers:
                importlib.import_module(module)

    def _core_module(self, name: str) -> str | None:
        """The core module declared as registering ``name`` (None if none is, or nothing is declared)."""
        return next((m for m, names in (self._declared or {}).items() if name in names), None)

    def _load_lazily(self, name: str | None = None) -> None:
        """What a look-up of ``name`` needs of the core: every provider, or where the registry declares its
        names, only the module declared for ``name`` (none for a name no core module declares)."""
        if self._declared is None:
            self._load_core()
        elif name is not None and (module := self._core_module(name)) is not None:
            importlib.import_module(module)

    def _find(self, name: str) -> None:
        """Import the core provider(s) of ``name``, then the family the index names for it (if any)."""
        self._load_lazily(name)
        if name not in self._entries:
            family = provider(self.what, name)
            if family is not None and not load_family(family):
                raise self.error(f"{self.what} {name!r} comes from the method family {family.name}, which cannot be "
                                 f"imported ({_broken[family.package]})",
                                 "install what that family needs, or fix it; every other family still works "
                                 "(`bench threats` lists broken families)")

    def get(self, name: str, where: str | None = None) -> T:
        self._find(name)
        if name not in self._entries:
            prefix = f"{where}: " if where else ""
            hint = f"; {self.hint}" if self.hint else ""
            raise self.error(f"{prefix}unknown {self.what} {name!r}",
                             f"{did_you_mean(str(name), self.names())}known: {', '.join(self.names())}{hint}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is registered or declared by a family (or a declaring core module), without
        importing that family or module."""
        self._load_lazily()
        return name in self._entries or (isinstance(name, str) and (
            self._core_module(name) is not None or provider(self.what, name) is not None))

    def names(self) -> list[str]:
        """Every name that loads (a broken family's names are left out: see ``broken_families``)."""
        self._load_core()
        load_families()
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        self.names()
        return iter(sorted(self._entries.items()))
