"""Card files: YAML loading with ``include:``, canonical hashing and the catalogues.

Model cards live in ``models/``, threat cards in ``attacks/`` (in a checkout at the repository
root, in a wheel under ``bench/_cards/``). Extra folders come from ``$BENCH_CARDS`` (separated
by ``os.pathsep``), each holding ``models/`` and/or ``attacks/``; a user card overrides a
built-in card of the same id with a warning. Files whose name starts with ``_`` are bases for
``include:`` only.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import yaml

from bench.errors import CardError, did_you_mean

KINDS = {"model": "models", "threat": "attacks"}


def builtin_root() -> Path:
    package = Path(__file__).resolve().parent
    shipped = package / "_cards"
    return shipped if shipped.is_dir() else package.parent


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_card(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Parse a card with yaml.safe_load and resolve ``include:`` (relative to the card's folder)."""
    path = path.resolve()
    if path in _seen:
        raise CardError(f"{path}: include cycle", "remove the circular include:")
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise CardError(f"card file {path} does not exist", "check the path") from err
    except yaml.YAMLError as err:
        raise CardError(f"{path}: not valid YAML ({err})", "fix the YAML syntax") from err
    if not isinstance(data, dict):
        raise CardError(f"{path}: a card must be a YAML mapping", "write it as `key: value` lines")
    include = data.pop("include", None)
    if include is not None and not isinstance(include, str):
        raise CardError(f"{path}: include must be one file name, got {include!r}", "write include: _base.yaml")
    if include is not None:
        data = _merge(read_card(path.parent / include, _seen + (path,)), data)
    return data


def canonical_hash(data: Any) -> str:
    """sha256 of the card's canonical JSON: the identity of a protocol or model definition."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def card_dirs(kind: str) -> list[Path]:
    sub = KINDS[kind]
    dirs = [builtin_root() / sub]
    for extra in filter(None, os.environ.get("BENCH_CARDS", "").split(os.pathsep)):
        dirs.append(Path(extra).expanduser() / sub)
    return [d for d in dirs if d.is_dir()]


_warned_overrides: set[Path] = set()


def catalogue(kind: str) -> dict[str, Path]:
    """Card id -> file, in sorted discovery order; later folders override earlier ones."""
    found: dict[str, Path] = {}
    for i, directory in enumerate(card_dirs(kind)):
        local: dict[str, Path] = {}
        for path in sorted(directory.glob("*.yaml")):
            if path.name.startswith("_"):
                continue
            card_id = read_card(path).get("id", path.stem)
            if card_id in local:
                raise CardError(f"{kind} card id {card_id!r} is defined twice: {local[card_id]} and {path}",
                                "give one of them another id")
            local[card_id] = path
        for card_id, path in local.items():
            if card_id in found and i > 0 and path not in _warned_overrides:
                _warned_overrides.add(path)  # once per process, not on every look-up
                warnings.warn(f"{path} overrides the {kind} card {card_id!r} from {found[card_id]}", stacklevel=2)
            found[card_id] = path
    return found


def locate(kind: str, name: str | os.PathLike) -> Path:
    """A card id from the catalogue, or a path to a YAML file."""
    text = str(name)
    if text.endswith((".yaml", ".yml")):  # ids may contain "/" (autoattack-linf-8/255), so only suffixes mean paths
        path = Path(text).expanduser()
        if not path.is_file():
            raise CardError(f"{kind} card file {path} does not exist", "check the path")
        return path
    known = catalogue(kind)
    if text not in known:
        raise CardError(f"unknown {kind} {text!r}",
                        f"{did_you_mean(text, known)}run `bench {'models' if kind == 'model' else 'threats'}` to list them")
    return known[text]


def validate(schema: type, data: dict, where: str):
    """Build a pydantic schema object; a validation failure names the card and the field."""
    from pydantic import ValidationError

    try:
        return schema.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(card)"
        problem = "unknown field (check its spelling)" if first["type"] == "extra_forbidden" else first["msg"]
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise CardError(f"{where}: field {field!r}: {problem}{more}",
                        f"fix {field!r} in the card; the card's schema is {schema.__module__}.{schema.__name__}") from None
