"""Card files: safe YAML reading with ``include:``, canonical hashing, discovery and look-up.

Model cards live under ``models/``, threat cards under ``attacks/`` (in a checkout at the repository
root, in a wheel under ``bench/_cards/``), in folders that may be nested by method family and are
searched recursively. Extra folders come from ``$BENCH_CARDS`` (separated by ``os.pathsep``), each
holding ``models/`` and/or ``attacks/``; a user card overrides a built-in card of the same id with a
warning. Files whose name starts with ``_`` are bases for ``include:`` only.

Card files are untrusted input: only regular files under a size limit are read, YAML aliases are
bounded (no "billion laughs"), and a card that cannot be read affects only itself: the catalogue
lists it as invalid, with its error, and every other card still works.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import stat
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.errors import CardError, did_you_mean

KINDS = {"model": "models", "threat": "attacks"}
MAX_CARD_BYTES = 256 * 1024
MAX_ALIASES = 64
MAX_DEPTH = 32  # nesting of lists and mappings; shipped cards nest at most 5 deep
MAX_REFERENCE_DEPTH = 16  # cards naming cards (parts, members, a CVAE); shipped cards chain at most 3


def builtin_root() -> Path:
    package = Path(__file__).resolve().parent
    shipped = package / "_cards"
    return shipped if shipped.is_dir() else package.parent


class _BoundedLoader(yaml.SafeLoader):
    """safe_load that refuses documents expanding more than MAX_ALIASES aliases, or nested deeper than MAX_DEPTH
    (the composer recurses per level: brackets nested 5,000 deep would end in a RecursionError)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases_seen = getattr(self, "aliases_seen", 0) + 1
            if self.aliases_seen > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (*name); a card has no need for them")
        self.depth = getattr(self, "depth", 0) + 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.YAMLError(f"lists or mappings nested more than {MAX_DEPTH} deep; a card has no need for it")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


_reads: ContextVar[list[tuple[str, str | None]] | None] = ContextVar("card_reads", default=None)


@contextlib.contextmanager
def recording_reads() -> Iterator[list[tuple[str, str | None]]]:
    """Within the block, every card file read (includes and referenced cards too) is appended to the list it
    gives, as (path, sha256 of the bytes read, or None where it could not be read): what a result computed from
    cards depends on (``bench.cli.listings`` keys what it keeps by it)."""
    token = _reads.set([])
    try:
        yield _reads.get()
    finally:
        _reads.reset(token)


def _read_text(path: Path) -> str:
    """A card file's text: only a regular file, and only up to MAX_CARD_BYTES."""
    raw = None
    try:
        raw = _read_bytes(path)
    finally:
        if (reads := _reads.get()) is not None:
            reads.append((str(path), None if raw is None else hashlib.sha256(raw).hexdigest()))
    if len(raw) > MAX_CARD_BYTES:
        raise CardError(f"{path} is larger than {MAX_CARD_BYTES // 1024} KiB", "a card is a short YAML file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CardError(f"{path} is not UTF-8 text", "save the card as a UTF-8 YAML file") from err


def _read_bytes(path: Path) -> bytes:
    """A card file's bytes: only a regular file, and only up to one byte past MAX_CARD_BYTES."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as err:
        raise CardError(f"card file {path} does not exist", "check the path") from err
    except OSError as err:
        raise CardError(f"card file {path} cannot be read: {err}", "check the path and its permissions") from err
    if not stat.S_ISREG(mode):
        raise CardError(f"{path} is not a regular file", "a card (or an include:) must name a YAML file")
    try:
        with open(path, "rb") as f:
            return f.read(MAX_CARD_BYTES + 1)
    except OSError as err:
        raise CardError(f"card file {path} cannot be read: {err}", "check the path and its permissions") from err


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_card(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Parse a card and resolve ``include:`` (relative to the card's folder). Any failure is a CardError, so a
    card that cannot be read is only listed as invalid, never breaks a command that does not use it."""
    try:
        return _read_card(path, _seen)
    except CardError:
        raise
    except Exception as err:  # noqa: BLE001  (whatever else fails on a hostile file, e.g. a symlink loop)
        raise CardError(f"{path}: cannot be read ({type(err).__name__}: {err})", "check the file") from err


_parsed: dict[str, Any] = {}  # card text -> its YAML, parsed (keyed by content, so never stale)


def _read_card(path: Path, _seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in _seen:
        raise CardError(f"{path}: include cycle", "remove the circular include:")
    text = _read_text(path)
    if text not in _parsed:  # a listing reads each card twice (its id, then the card): parse each text once
        try:
            parsed = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506  (a SafeLoader subclass)
        except yaml.YAMLError as err:
            raise CardError(f"{path}: not valid YAML ({err})", "fix the YAML syntax") from err
        except Exception as err:  # noqa: BLE001  (a value YAML cannot build: the date 2024-13-45, a 5,000-digit int)
            raise CardError(f"{path}: a value cannot be read ({type(err).__name__}: {err})",
                            "fix the value, or quote it to keep it as text") from err
        if len(_parsed) >= 1024:
            _parsed.clear()
        _parsed[text] = parsed
    data = copy.deepcopy(_parsed[text])  # callers change what they get
    if not isinstance(data, dict):
        raise CardError(f"{path}: a card must be a YAML mapping", "write it as `key: value` lines")
    include = data.pop("include", None)
    if include is not None and not isinstance(include, str):
        raise CardError(f"{path}: include must be one file name, got {include!r}", "write include: _base.yaml")
    if include is not None:
        data = _merge(_read_card(path.parent / include, _seen + (path,)), data)
    return data


class ReferenceChainError(CardError):
    """A reference cycle, or cards naming cards too deep: passed up as it is, not prefixed by every card on
    the chain."""


def check_chain(kind: str, card_id: str, key: str, stack: tuple[str, ...]) -> None:
    """Refuse resolving the card ``key`` (its resolved folder and id) under the cards ``stack`` being resolved:
    a cycle (also through ``..`` in paths), or a chain deeper than MAX_REFERENCE_DEPTH (Python's recursion
    limit would end it)."""
    if key in stack:
        raise ReferenceChainError(f"{kind} card {card_id}: a reference cycle ({' -> '.join(stack + (key,))})",
                                  "a card cannot refer to itself, directly or through other cards")
    if len(stack) >= MAX_REFERENCE_DEPTH:
        raise ReferenceChainError(f"{kind} card {card_id}: cards name cards more than {MAX_REFERENCE_DEPTH} deep "
                                  f"({stack[0]} -> ... -> {key})", "name the cards a card is built from directly")


def canonical_hash(data: Any) -> str:
    """sha256 of canonical JSON: the identity of a protocol, a model definition or a run."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def card_dirs(kind: str) -> list[Path]:
    sub = KINDS[kind]
    dirs = [builtin_root() / sub]
    for extra in filter(None, os.environ.get("BENCH_CARDS", "").split(os.pathsep)):
        dirs.append(Path(extra).expanduser() / sub)
    return [d for d in dirs if d.is_dir()]


def _card_files(directory: Path) -> list[Path]:
    """Card files under a folder, recursively, in sorted order; ``_`` bases and hidden folders skipped."""
    found = []
    for path in sorted(directory.rglob("*.yaml")):
        parts = path.relative_to(directory).parts
        if path.name.startswith("_") or any(p.startswith((".", "_")) for p in parts[:-1]):
            continue
        found.append(path)
    return found


@dataclass
class Catalogue:
    """Card id -> file, plus the files that could not be read (each with its error)."""

    cards: dict[str, Path] = field(default_factory=dict)
    invalid: dict[Path, CardError] = field(default_factory=dict)
    clashes: dict[str, list[Path]] = field(default_factory=dict)  # one id in two files of one folder


def _stamp(path: Path) -> tuple[int, int] | None:
    """A card file's modification time and size; None where it cannot be read (then reading it says why)."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_mtime_ns, found.st_size


_warned_overrides: set[Path] = set()
_cache: dict[tuple, Catalogue] = {}


def catalogue(kind: str) -> Catalogue:
    """Every card of a kind; later folders override earlier ones. Cached until a card file changes."""
    folders = [(d, _card_files(d)) for d in card_dirs(kind)]
    key = (kind, tuple((p, _stamp(p)) for _, files in folders for p in files))
    if key in _cache:
        return _cache[key]
    out = Catalogue()
    for i, (directory, files) in enumerate(folders):
        local: dict[str, Path] = {}
        for path in files:
            try:
                card_id = str(read_card(path).get("id", path.stem))
            except CardError as err:
                out.invalid[path] = err
                continue
            if card_id in local:
                out.clashes.setdefault(card_id, [local[card_id]]).append(path)
                continue
            local[card_id] = path
        for card_id, path in local.items():
            if card_id in out.cards and i > 0 and path not in _warned_overrides:
                _warned_overrides.add(path)  # once per process, not on every look-up
                warnings.warn(f"{path} overrides the {kind} card {card_id!r} from {out.cards[card_id]}", stacklevel=2)
            out.cards[card_id] = path
    _cache.clear()
    _cache[key] = out
    return out


def locate(kind: str, name: str | os.PathLike) -> Path:
    """A card id from the catalogue, or a path to a YAML file."""
    text = str(name)
    if text.endswith((".yaml", ".yml")):  # ids may contain "/" (autoattack-linf-8/255), so only suffixes mean paths
        path = Path(text).expanduser()
        if not path.is_file():
            raise CardError(f"{kind} card file {path} does not exist", "check the path")
        return path
    found = catalogue(kind)
    if text in found.clashes:
        raise CardError(f"{kind} card id {text!r} is defined twice: {', '.join(map(str, found.clashes[text]))}",
                        "give one of them another id")
    if text not in found.cards:
        broken = [p for p in found.invalid if p.stem == text]
        if broken:
            raise found.invalid[broken[0]]
        raise CardError(f"unknown {kind} {text!r}",
                        f"{did_you_mean(text, found.cards)}run `bench {'models' if kind == 'model' else 'threats'}` "
                        "to list them")
    return found.cards[text]


def validate(schema: type, data: dict, where: str, context: dict | None = None):
    """Build a pydantic schema object; a validation failure names the card and the field.

    ``context`` reaches field validators (e.g. the referring card's folder for card references)."""
    from pydantic import ValidationError

    try:
        return schema.model_validate(data, context=context)
    except ValidationError as err:
        first = err.errors()[0]
        field_name = ".".join(str(p) for p in first["loc"]) or "(card)"
        problem = ("unknown field (check its spelling)" if first["type"] == "extra_forbidden"
                   else first["msg"].removeprefix("Value error, "))
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise CardError(f"{where}: field {field_name!r}: {problem}{more}",
                        f"fix {field_name!r} in the card; the card's schema is "
                        f"{schema.__module__}.{schema.__name__}") from None
