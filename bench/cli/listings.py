"""The catalogue listings (`bench models`, `bench threats`): one record per card, for the table, CSV and JSON.

A listing must answer in about a second, without torch. A model card's fields are read and validated each
time, which needs no family code. What does need it is computed once and kept: a threat card's tasks, ball
and protocol hash (its family's schema and class) and a model card's hash (its recipe's schema), with the
families that load and those that do not. The kept result (``$BENCH_CACHE/listings/<kind>.json``) is used
only while it is keyed exactly as now: bench's version and Python, the content of every module of the
``bench`` package (families included), of every card file in the catalogue folders and of every other card
file the computation read (a card named by path from another folder), the folders of installed packages (a
package installed or removed changes their mtime), ``$BENCH_CARDS``, the family index and any family module
blocked in this process. A process that has imported torch already gains nothing from it: it computes afresh (and keeps
the result), so what a test or a caller registered in-process is always listed as it is.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from bench.errors import BenchError

LISTINGS_VERSION = 1
MODEL_COLUMNS = ["id", "task", "dataset", "architecture", "weights", "description"]
THREAT_COLUMNS = ["id", "family", "tasks", "datasets", "params", "ball", "protocol", "description"]


# --- the kept results and their key ---------------------------------------------------------------------


def _digest(path: str | Path, limit: int = -1) -> str | None:
    """sha256 of a file's content (not its mtime, which a copy may keep while changing the content), or of its
    first ``limit`` bytes (as much as reading a card takes)."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read(limit)).hexdigest()
    except OSError:
        return None


def _stamp(path: str | Path) -> list[int] | None:
    """A folder's mtime (it changes when an entry is added or removed) and inode."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return [found.st_mtime_ns, found.st_ino]


def _code_stamps() -> list:
    """Every module of the bench package (families included), by path relative to the package and content."""
    import bench

    root = Path(bench.__file__).resolve().parent
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                found.append([os.path.relpath(path, root), _digest(path)])
    return found


def _card_stamps() -> list:
    """Every YAML file under the model and threat card folders (bases starting with ``_`` included)."""
    from bench.cards import card_dirs

    found = []
    for kind in ("model", "threat"):
        for directory in card_dirs(kind):
            for folder, dirs, files in os.walk(directory):
                dirs.sort()
                for name in sorted(files):
                    if name.endswith((".yaml", ".yml")):
                        path = os.path.join(folder, name)
                        found.append([path, _digest(path)])
    return found


def fingerprint() -> dict[str, Any]:
    """What a kept listing depends on besides the card files its computation read (see the module's text)."""
    import bench
    from bench.registry import families

    packages = [p for p in sys.path if p and p.rstrip("/").endswith(("site-packages", "dist-packages"))]
    return {"version": LISTINGS_VERSION, "bench": bench.__version__, "python": sys.version,
            "executable": sys.executable, "code": _code_stamps(), "cards": _card_stamps(),
            "packages": [[p, _stamp(p)] for p in packages], "bench_cards": os.environ.get("BENCH_CARDS", ""),
            "families": repr(families()),
            "blocked": sorted(name for name, module in sys.modules.items() if module is None and
                              name.startswith("bench"))}


def _cache_file(kind: str) -> Path:
    from bench.files import cache_dir

    return cache_dir("listings") / f"{kind}.json"


def _kept(kind: str, key: str) -> dict[str, Any] | None:
    try:
        record = json.loads(_cache_file(kind).read_text())
    except (OSError, ValueError):
        return None
    from bench.cards import MAX_CARD_BYTES

    try:
        if record["key"] != key or any(_digest(path, MAX_CARD_BYTES + 1) != digest for path, digest in record["reads"]):
            return None
    except (KeyError, TypeError, ValueError):  # not a kept listing of this version
        return None
    return record["listing"] if isinstance(record.get("listing"), dict) else None


def _keep(kind: str, key: str, reads: list[tuple[str, str | None]], listing: dict[str, Any]) -> None:
    """Keep ``listing`` under ``key``, with the digest of each card file read while computing it (as read: a file
    read twice with two contents is recorded so that it never matches)."""
    from bench.files import atomic_write

    digests: dict[str, str | None] = {}
    for path, digest in reads:
        digests[path] = digest if digests.get(path, digest) == digest else "changed while read"
    text = json.dumps({"key": key, "reads": sorted(digests.items()), "listing": listing})
    try:
        path = _cache_file(kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_text(text))
    except OSError:
        pass  # a read-only cache only makes the next listing slower


def kept_or_computed(kind: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()``'s result as kept for the current key, or computed now (and kept); computed now whenever
    torch is imported already (nothing to save, and in-process registrations must be seen)."""
    from bench.cards import recording_reads

    key = hashlib.sha256(json.dumps(fingerprint(), sort_keys=True).encode()).hexdigest()
    if "torch" not in sys.modules and (found := _kept(kind, key)) is not None:
        return found
    with recording_reads() as reads:
        listing = compute()
    _keep(kind, key, reads, listing)
    return listing


# --- model cards ----------------------------------------------------------------------------------------

# JSON's fields: ``weights`` is the source named in the card (None: trained from its recipe on first use, or
# composed of other cards' models); ``prebuilt``: the suite ships weights for the card (``bench.models.prebuilt``;
# a run uses them only for the training hash they were made under); ``error`` why a card cannot be used.
MODEL_FIELDS = ["id", "task", "dataset", "architecture", "compose", "weights", "entry_point", "recipe",
                "trained_on_first_use", "prebuilt", "hash", "paper", "license", "description", "path", "error"]


def _model_record(card_id: str, path: Path) -> dict[str, Any]:
    from bench.models.card import load_model_card
    from bench.models.prebuilt import shipped_for

    record: dict[str, Any] = {"id": card_id, "path": str(path), "error": None}
    try:
        c = load_model_card(path)
    except BenchError as err:
        return {**record, "error": err.problem}
    weights = c.weights.source if c.weights else None
    return {**record, "id": c.id, "task": c.task, "dataset": c.dataset,
            "architecture": c.architecture.name if c.architecture else None,
            "compose": {"name": c.compose.name, "parts": dict(c.compose.parts)} if c.compose else None,
            "weights": weights, "entry_point": c.weights.entry_point if c.weights else None,
            "recipe": c.recipe.name if c.recipe else None,
            "trained_on_first_use": c.weights is None and c.compose is None and not shipped_for(c.id),
            "prebuilt": c.weights is None and c.compose is None and shipped_for(c.id),
            "paper": c.paper, "license": c.license, "description": c.description}


def _model_hashes() -> dict[str, Any]:
    """Each catalogue model card's hash (its recipe's schema may import a family, and torch), or its error."""
    from bench.cards import catalogue
    from bench.models.card import load_model_card
    from bench.registry import broken_families

    hashes: dict[str, dict[str, str | None]] = {}
    for path in catalogue("model").cards.values():
        try:
            hashes[str(path)] = {"hash": load_model_card(path).hash, "error": None}
        except BenchError as err:
            hashes[str(path)] = {"hash": None, "error": err.problem}
    return {"hashes": hashes, "broken": broken_families()}


def model_listing(task: str | None = None, *, hashes: bool = False) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(one record per model card, broken families seen): the cards of ``task``, and every card that cannot
    be read. ``hashes`` adds each card's hash (kept, see the module's text)."""
    from bench.cards import catalogue

    found = catalogue("model")
    records = [_model_record(card_id, path) for card_id, path in found.cards.items()]
    records += [{"id": path.stem, "path": str(path), "error": err.problem} for path, err in found.invalid.items()]
    records = [r for r in records if r["error"] is not None or task is None or r["task"] == task]
    broken: dict[str, str] = {}
    if hashes:
        kept = kept_or_computed("models", _model_hashes)
        broken = kept["broken"]
        for r in records:
            known = kept["hashes"].get(r["path"], {"hash": None, "error": None})
            r["hash"] = known["hash"]
            if r["error"] is None and known["error"] is not None:
                r["error"] = known["error"]
    fields = [name for name in MODEL_FIELDS if hashes or name != "hash"]
    return [{name: r.get(name) for name in fields} for r in records], broken  # None where a card has no value


def model_row(r: dict[str, Any]) -> list[str]:
    """A model record as the table's (and CSV's) row."""
    if r["error"] is not None and r.get("task") is None:
        return [r["id"], "", "", "", "", f"invalid: {r['error']}"]
    source = r["weights"] or ("prebuilt (models/prebuilt)" if r["prebuilt"] else "trained on first use")
    if r["compose"] is not None:
        source = "composed of " + ", ".join(f"{role} {ref}" for role, ref in r["compose"]["parts"].items())
    if r["weights"] == "entry_point":
        source = f"entry_point {r['entry_point']} (runs code)"
    recipe = f" / recipe {r['recipe']}" if r["recipe"] else ""
    arch = r["architecture"] or (r["compose"]["name"] if r["compose"] else "-")
    return [r["id"], r["task"], r["dataset"], arch, source + recipe, r["description"] or ""]


# --- threat cards ---------------------------------------------------------------------------------------


THREAT_FIELDS = ["id", "family", "default", "tasks", "datasets", "params", "ball", "protocol", "description",
                 "path", "error"]


def _threat_footer(families: dict[str, list[str]], balls: dict[str, list[str]], task: str | None) -> list[str]:
    from bench.threats.override import ball_words

    names = [name for name, tasks in families.items() if task is None or task in tasks]
    shown = {name: tuple(norms) for name, norms in balls.items() if name in names}
    return [f"\nfamilies (`bench run --threat FAMILY` runs its default card): {', '.join(names)}",
            "--eps E [--norm N] run a card or family at another ball, on any dataset the model takes (e.g. "
            "--dataset folder:DIR) unless the card names another model (a CVAE, a transfer source): "
            f"{ball_words(shown)}"]


def _threat_listing() -> dict[str, Any]:
    """Every catalogue threat card's record, the families that load (with their tasks), the table's closing
    lines for each task and the broken families: what needs every family's code."""
    from bench.cards import catalogue
    from bench.registry import broken_families
    from bench.threats import THREAT_FAMILIES, make_threat
    from bench.threats.override import ball_families, override_words, params_words

    found = catalogue("threat")
    cards = []
    for card_id, path in found.cards.items():
        record: dict[str, Any] = {"id": card_id, "path": str(path), "error": None}
        try:
            c, threat = make_threat(path)
            record |= {"id": c.id, "family": c.family, "default": c.default, "tasks": list(type(threat).tasks),
                       "datasets": list(c.datasets), "params": c.params, "params_text": params_words(c.params),
                       "ball": override_words(c, type(threat)), "protocol": c.hash, "description": c.description}
        except BenchError as err:
            record["error"] = err.problem
        cards.append(record)
    cards += [{"id": path.stem, "path": str(path), "error": err.problem} for path, err in found.invalid.items()]
    families = {name: list(cls.tasks) for name, cls in THREAT_FAMILIES.items()}
    balls = {name: list(norms) for name, norms in ball_families().items()}
    tasks = sorted({t for ts in families.values() for t in ts})
    footers = {task: _threat_footer(families, balls, task or None) for task in ["", *tasks]}
    footers["*"] = _threat_footer(families, balls, "*")  # a task no family takes
    return {"cards": json.loads(json.dumps(cards, default=str)), "families": families, "footers": footers,
            "broken": broken_families()}


def threat_listing(task: str | None = None) -> tuple[list[dict[str, Any]], list[str], dict[str, str]]:
    """(one record per threat card of ``task`` and per card that cannot be read, the table's closing lines,
    broken families)."""
    kept = kept_or_computed("threats", _threat_listing)
    records = [r for r in kept["cards"] if r["error"] is not None or task is None or task in r["tasks"]]
    footer = kept["footers"].get(task or "", kept["footers"]["*"])
    return [{name: r.get(name) for name in [*THREAT_FIELDS, "params_text"]} for r in records], footer, kept["broken"]


def threat_json(r: dict[str, Any]) -> dict[str, Any]:
    """A threat record as JSON gives it (params as the card writes them, an object; the full protocol hash)."""
    return {name: r[name] for name in THREAT_FIELDS}


def threat_row(r: dict[str, Any]) -> list[str]:
    """A threat record as the table's (and CSV's) row."""
    if r["error"] is not None:
        return [r["id"], "", "", "", "", "", "", f"invalid: {r['error']}"]
    return [r["id"], r["family"] + (" (default)" if r["default"] else ""), ", ".join(r["tasks"]),
            ", ".join(r["datasets"]) or "any", r["params_text"], r["ball"], r["protocol"][:12], r["description"] or ""]
