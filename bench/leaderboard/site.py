"""The leaderboard as a static site (``bench leaderboard site``): HTML pages rendered from the entry files, with
their style and sorting script copied beside them, so the site works offline and opened from ``file://``.

Pages: an index (the datasets, a link per dataset and threat family, a clean-vs-robust plot per dataset, the
models), one page per dataset and threat family (a table per protocol, ranked by the family's headline in its
direction as the board ranks, with every metric's 95% interval; every column sorts on a click) and one page
per model (its card's facts and all its results). Entries are untrusted input: every string is escaped by the
templates (autoescape) and by the plots, and only http(s) papers become links. Stale results (made by other
code than the current: the board's test, ``marks.py``), non-adaptive families and results not recomputed here
(self-reported, imported) are marked, with a legend. The same entries give the same bytes: nothing depends on
the time, the order files are listed in or the machine.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from markupsafe import Markup

from bench.errors import BenchError
from bench.files import safe_filename
from bench.leaderboard import figures
from bench.leaderboard.entries import Entry, read_entry
from bench.leaderboard.marks import CurrentCode, adaptive, asked, stale_reason
from bench.leaderboard.table import cell_text
from bench.metrics import INTERVALS, Metric, rank_key

STATIC = ("site.css", "site.js")
PROVENANCE = {"verified": "recomputed by this suite", "self-reported": "submitted numbers that passed a spot check",
              "imported": "copied from RobustBench: no points, n or intervals to check"}


@dataclass(frozen=True)
class Cell:
    """A metric of one result as a table shows it: its value, its interval and the number it sorts by."""

    text: str
    interval: str
    sort: str  # '' when there is no value: such cells sort last


@dataclass
class Result:
    """One entry as the site shows it."""

    entry: Entry
    dataset: str  # the name, or name@identity where two datasets share a name
    name: str  # the model id, with its hash where another model has the same id
    page: str  # its model's page
    stale: str  # why its code is not the current ('' when it is, or for an imported entry)
    flags: list[tuple[str, str]] = field(default_factory=list)  # (kind, words)
    rank: int = 0
    of: int = 0  # results in its protocol's table
    table: str = ""  # its protocol's table: page#anchor

    def cell(self, name: str) -> Cell:
        part = self.entry.metrics.get(name)
        if part is None or part.value is None:
            return Cell("-", "", "")
        metric = part.metric(name)
        interval = "" if part.low is None or part.high is None else \
            f"[{cell_text(metric, part.low, 1)}, {cell_text(metric, part.high, 1)}]"
        return Cell(cell_text(metric, part.value), interval, repr(part.value) if math.isfinite(part.value) else "")

    @property
    def date(self) -> str:
        return (self.entry.date or "")[:16].replace("T", " ")


@dataclass
class Protocol:
    """The results of one protocol on one dataset, ranked."""

    hash: str
    ids: list[str]
    family: str
    params: dict[str, Any]
    headline_name: str
    headline: Metric
    metrics: list[tuple[str, Metric]]  # the headline first
    results: list[Result]
    page: str

    @property
    def title(self) -> str:
        return " = ".join(self.ids)

    @property
    def anchor(self) -> str:
        return "protocol-" + safe_filename(self.hash[:12])

    @property
    def ranking(self) -> str:
        direction = "higher" if self.headline.higher_is_better else "lower"
        return (f"ranked by {self.headline.label}, {direction} is better; "
                f"95% {INTERVALS[self.headline.agg]} intervals in brackets")

    @property
    def params_text(self) -> str:
        return json.dumps(self.params, sort_keys=True, default=str)


@dataclass
class FamilyPage:
    dataset: str
    family: str
    file: str
    adaptive: bool
    protocols: list[Protocol]
    plots: list[Markup]


@dataclass
class ModelPage:
    id: str
    hash: str
    name: str
    file: str
    results: list[Result]
    facts: list[tuple[str, str, str | None]]  # (label, text, link)
    card: str  # the model card as JSON ('' when the entries hold none)
    plots: list[Markup]


def read_entries(root: Path) -> list[tuple[Path, Entry]]:
    """Every entry under ``root/entries/`` (any depth), in path order; a file that is not an entry is an error
    naming it (``read_entry``)."""
    folder = Path(root) / "entries"
    paths = sorted(p for p in folder.rglob("*.json") if p.is_file()) if folder.is_dir() else []
    if not paths:
        raise BenchError(f"no leaderboard entries under {folder}", "pass the leaderboard folder with --entries "
                         "(write entries with `bench leaderboard entries`)")
    found = []
    for path in paths:
        found.append((path, read_entry(path)))  # points that do not decode are a schema error
    return found


class _Names:
    """File names for pages: readable, safe on every file system, distinct even where case is not (a second key
    that sanitises to a taken name gets a number), the same for the same keys asked in the same order."""

    def __init__(self) -> None:
        self._taken = {"index.html"}
        self._given: dict[tuple, str] = {}

    def __call__(self, key: tuple, *parts: str) -> str:
        if key not in self._given:
            stem = "--".join(safe_filename(p) for p in parts)
            name, k = f"{stem}.html", 1
            while name.lower() in self._taken:
                k += 1
                name = f"{stem}-{k}.html"
            self._taken.add(name.lower())
            self._given[key] = name
        return self._given[key]


def _dataset_names(entries: list[Entry]) -> dict[tuple[str, str | None], str]:
    """(name, identity) -> the name shown: the name, unless two contents share it (then name@identity, as the
    board shows them)."""
    contents: dict[str, set[str]] = {}
    for e in entries:
        if e.dataset.identity is not None:
            contents.setdefault(e.dataset.name, set()).add(e.dataset.identity)
    return {(e.dataset.name, e.dataset.identity): e.dataset.identity if e.dataset.identity is not None and
            len(contents[e.dataset.name]) > 1 else e.dataset.name for e in entries}


def _task(entry: Entry) -> str:
    task = entry.implementation.get("task")
    name = task.get("name") if isinstance(task, dict) else (entry.model.card or {}).get("task")
    return name if isinstance(name, str) else ""


def _results(found: list[tuple[Path, Entry]], source_dir: str | None, names: _Names) -> list[Result]:
    """Each entry with its marks and its model's page; two entries of one model, protocol and dataset are an
    error naming both files."""
    shown = _dataset_names([e for _, e in found])
    hashes: dict[str, set[str]] = {}
    for _, e in found:
        hashes.setdefault(e.model.id, set()).add(e.model.hash)
    current = CurrentCode()
    seen: dict[tuple, Path] = {}
    out = []
    for path, e in found:
        dataset = shown[(e.dataset.name, e.dataset.identity)]
        key = (dataset, e.protocol.hash, e.model.hash)
        if key in seen:
            raise BenchError(f"{seen[key]} and {path} are two entries of model {e.model.id} ({e.model.hash[:12]}) "
                             f"under protocol {e.protocol.id} on {dataset}", "keep one of them")
        seen[key] = path
        stale = "" if e.provenance == "imported" else stale_reason(
            e.implementation, current(e.protocol.card, source_dir, _task(e)))
        shared = len(hashes[e.model.id]) > 1
        result = Result(e, dataset, f"{e.model.id} ({e.model.hash[:8]})" if shared else e.model.id,
                        names(("model", e.model.id, e.model.hash), "model", e.model.id, e.model.hash[:12]), stale)
        if stale:
            result.flags.append(("stale" if stale.startswith("stale") else "unknown", stale))
        if shared:
            result.flags.append(("shared", f"name used by {len(hashes[e.model.id])} different models"))
        if not adaptive(e.protocol.family):
            result.flags.append(("non-adaptive", "non-adaptive: the attack ignores the evaluated model"))
        out.append(result)
    return out


def _protocols(results: list[Result], page: str) -> list[Protocol]:
    """The protocols of one family page, each with its results ranked (results by current code first, as on the
    board, then by the headline in its direction)."""
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.entry.protocol.hash, []).append(r)
    out = []
    for protocol_hash, members in groups.items():
        first = members[0].entry
        headline = first.metrics[first.headline].metric(first.headline)
        names = list(dict.fromkeys([first.headline] + [n for r in members for n in r.entry.metrics]))
        metrics = [(n, next(r.entry.metrics[n] for r in members if n in r.entry.metrics).metric(n)) for n in names]

        def value(r: Result) -> float:
            part = r.entry.metrics.get(first.headline)
            return math.nan if part is None or part.value is None else part.value

        members.sort(key=lambda r: (bool(r.stale), rank_key(headline, value(r)), r.entry.model.id, r.entry.model.hash))
        params = first.protocol.card.get("params")
        params = asked(first.protocol.family, params) if isinstance(params, dict) else {}
        protocol = Protocol(protocol_hash, sorted({r.entry.protocol.id for r in members}), first.protocol.family,
                            params, first.headline, headline, metrics, members, page)
        for rank, r in enumerate(members, 1):
            r.rank, r.of, r.table = rank, len(members), f"{page}#{protocol.anchor}"
        out.append(protocol)
    return sorted(out, key=lambda p: (p.ids[0], p.hash))


def _facts(page_results: list[Result]) -> list[tuple[str, str, str | None]]:
    """What the model card says: the task, data, architecture, weights and their sha256, licence and paper."""
    model = page_results[0].entry.model
    card = model.card or {}
    facts: list[tuple[str, str, str | None]] = [("hash", model.hash, None)]
    architecture = card.get("architecture")
    for label, value in (("task", card.get("task")), ("dataset", card.get("dataset")),
                         ("architecture", architecture.get("name") if isinstance(architecture, dict) else None),
                         ("description", card.get("description"))):
        if isinstance(value, str) and value:
            facts.append((label, value, None))
    weights = card.get("weights")
    if isinstance(weights, dict) and isinstance(weights.get("sha256"), str):
        facts.append(("weights sha256 (card)", weights["sha256"], None))
    for name, digest in sorted(model.weights.items()):
        facts.append((f"trained weights sha256 ({name})", digest, None))
    facts.append(("licence", model.license or "not stated", None))
    paper = model.paper
    facts.append(("paper", paper or "not stated",
                  paper if paper and paper.lower().startswith(("https://", "http://")) else None))
    return facts


def build_site(entries: Path, out: Path, cards: Path | None = None) -> list[Path]:
    """Render the site of the entries under ``entries/entries/`` into ``out``; the pages written, index first.
    ``cards``: the folder that relative card references in protocol cards resolve from (an entry does not record
    where its cards were; without it such a protocol's current code is unknown)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    names, source_dir = _Names(), None if cards is None else str(Path(cards).resolve())
    results = _results(read_entries(entries), source_dir, names)
    by_page: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        by_page.setdefault((r.dataset, r.entry.protocol.family), []).append(r)
    families = []
    for (dataset, family), members in sorted(by_page.items()):
        file = names(("family", dataset, family), dataset, family)
        protocols = _protocols(members, file)
        plots = [p for protocol in protocols for p in (figures.share_at_least(protocol), figures.versus_beta(protocol))
                 if p is not None]
        families.append(FamilyPage(dataset, family, file, adaptive(family), protocols,
                                   figures.versus_eps(protocols) + plots))
    datasets: dict[str, list[FamilyPage]] = {}
    for page in families:
        datasets.setdefault(page.dataset, []).append(page)
    scatter = {d: figures.clean_vs_robust(d, [p for page in pages for p in page.protocols])
               for d, pages in datasets.items()}
    models = _model_pages(results, source_dir)

    env = Environment(loader=PackageLoader("bench.leaderboard", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    common = {"provenance": PROVENANCE}
    pages = {"index.html": env.get_template("index.html").render(datasets=datasets, scatter=scatter, models=models,
                                                                 **common)}
    for page in families:
        pages[page.file] = env.get_template("family.html").render(page=page, **common)
    for page in models:
        pages[page.file] = env.get_template("model.html").render(page=page, **common)
    out = Path(out)
    (out / "static").mkdir(parents=True, exist_ok=True)
    for name in STATIC:
        (out / "static" / name).write_bytes(resources.files("bench.leaderboard").joinpath("static", name).read_bytes())
    written = []
    for name, html in pages.items():
        (out / name).write_text(html, encoding="utf-8", newline="\n")
        written.append(out / name)
    return written


def _model_pages(results: list[Result], source_dir: str | None) -> list[ModelPage]:
    """A page per model: its card's facts, its results, the heat map of each grid protocol it ran."""
    grouped: dict[str, list[Result]] = {}
    for r in results:
        grouped.setdefault(r.page, []).append(r)
    pages = []
    for file, members in grouped.items():
        members.sort(key=lambda r: (r.dataset, r.entry.protocol.family, r.entry.protocol.id, r.entry.protocol.hash))
        model = members[0].entry.model
        plots = []
        for r in members:
            cells = figures.grid_cells(r.entry.protocol.card, source_dir)
            plot = figures.grid_heatmap(r.entry, cells) if cells else None
            if plot is not None:
                plots.append(plot)
        card = json.dumps(model.card, indent=2, sort_keys=True, default=str) if model.card else ""
        pages.append(ModelPage(model.id, model.hash, members[0].name, file, members, _facts(members), card, plots))
    return sorted(pages, key=lambda p: (p.id, p.hash))
