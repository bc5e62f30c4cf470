"""Leaderboard tables from the results store, generic over tasks and metrics.

The board reads each complete run's ``summary.json`` (one small file per run) and goes to the rows only for
families whose board hooks need them (the corruptions family's mCE). One block per (dataset, protocol):
every threat card id that ran that protocol is named in its title, so one protocol is one table. Models
are identified by their hash (a name used by two different models is flagged), and each model shows its
best run of the protocol: one made by the current code first, then the largest, then the latest, so a
small smoke run never replaces a larger one. A run made by other code than the current (another revision
of its family, task or core, or another backend version) is flagged stale; runs whose numerics differ
(threads, device, torch) are said to differ under their table. Blocks are ranked by the family's headline
metric in its direction; every metric comes with its 95% interval.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bench.errors import BenchError, did_you_mean
from bench.leaderboard.defences import defence_rows, render_defences
from bench.convergence import stored_convergence
from bench.leaderboard.marks import CurrentCode, adaptive, stale_reason
from bench.metrics import INTERVALS, Metric, MetricValue, rank_key
from bench.store import STORE_VERSION, Store, StoreError
from bench.summary import Summary, read_summary, summarize, summary_record
from bench.threats.base import BoardRun

FORMATS = ("markdown", "csv", "json")


@dataclass
class Block:
    """One ranked table: the runs of one protocol on one dataset."""

    dataset: str
    protocol: str
    family: str
    threats: list[str]
    metrics: list[Metric]
    headline: str
    rows: list[dict] = field(default_factory=list)
    details: str = ""  # the family's markdown under the table (e.g. a per-cell breakdown)
    base_metrics: int = 0  # how many of ``metrics`` the runs report themselves (the rest the family derives)
    notes: list[str] = field(default_factory=list)  # e.g. runs computed with different numerics


@dataclass
class Board:
    blocks: list[Block]
    warnings: list[str]
    defences: list[dict] = field(default_factory=list)  # composed models by their worst adaptive attack

    def frame(self) -> pd.DataFrame:
        """Every block's rows as one table: one column per metric and interval end."""
        records = []
        for block in self.blocks:
            for rank, row in enumerate(block.rows, 1):
                records.append({"dataset": block.dataset, "threat": " = ".join(block.threats),
                                "family": block.family, "protocol": block.protocol[:12], "rank": rank, **row})
        return pd.DataFrame.from_records(records)


def complete_runs(store: Store, warnings: list[str]) -> list[dict[str, Any]]:
    """The summary of every complete run (incomplete runs have none yet and are left out). A run whose shard
    files changed after its summary was written (a copy appeared, one was damaged or removed) is summarised
    again from its rows, and left out with a warning where they no longer add up."""
    found = []
    for run_id in store.run_ids():
        try:
            try:
                summary = read_summary(store, run_id)
            except StoreError:  # damaged: the rows (checked against their checksums) say it again
                summary = {"shards": None}
            if summary is None:
                if store.run_meta(run_id).get("store_version") != STORE_VERSION:
                    warnings.append(f"skipped run {run_id}: written by an older bench (rerun its command to redo it)")
                continue
            files = _files(store, run_id)
            if files != summary["shards"]:
                fresh = summarize(store, run_id)
                if not fresh.complete:
                    gone = sorted(set(summary["shards"] or ()) - set(files))
                    raise StoreError(f"shards of run {run_id} went missing or were set aside as damaged"
                                     f"{' (' + ', '.join(gone) + ')' if gone else ''}",
                                     "rerun its command to recompute them")
                summary = summary_record(store, fresh, summary.get("wall_seconds"))
        except StoreError as err:
            warnings.append(f"skipped run {run_id}: {err.problem}")
            continue
        found.append(summary)
    return found


def _files(store: Store, run_id: str) -> dict[str, int]:
    """The run's row files and their sizes, as ``Store.shard_files`` finds them (one directory scan)."""
    with os.scandir(store.run_dir(run_id)) as entries:
        return {e.name: e.stat().st_size for e in entries
                if e.name.endswith(".parquet") and not e.name.startswith(".") and e.is_file()}


def _stale(summary: dict[str, Any], current: CurrentCode) -> str:
    """Why a run was made by other code than the current one ('' when it was not)."""
    spec = summary["spec"]
    now = current(spec["threat"]["card"], spec["threat"]["source_dir"], spec["model"]["task"])
    return stale_reason(summary["key"]["implementation"], now)


def _protocols_named(threat: str, summaries: list[dict]) -> set[str]:
    """Protocols a threat filter selects: those any run recorded under this card id or family ran, and the
    one the card of that id names now."""
    from bench.cards import catalogue
    from bench.threats import THREAT_FAMILIES, load_threat_card

    protocols = {s["key"]["protocol"] for s in summaries if threat in (s["threat"], s["family"])}
    try:
        protocols.add(load_threat_card(threat).hash)
    except BenchError:
        known = {name for s in summaries for name in (s["threat"], s["family"])}
        known |= set(catalogue("threat").cards) | set(THREAT_FAMILIES.names())
        if not protocols and threat not in known:
            raise BenchError(f"no threat card, family or stored run is called {threat!r}",
                             f"{did_you_mean(threat, known)}`bench threats` lists the cards and families") from None
    return protocols


def _check_dataset(dataset: str, summaries: list[dict]) -> None:
    """Refuse a dataset filter that names neither a stored run's dataset nor a known dataset (a typo), instead of
    printing an empty board."""
    from bench.data import DATASETS

    stored = {name for s in summaries for name in (s["dataset"], s["key"]["dataset"])}
    if dataset in stored or dataset.startswith("folder:"):
        return
    known = stored | set(DATASETS.names())
    if dataset not in known:
        raise BenchError(f"no dataset or stored run's dataset is called {dataset!r}",
                         f"{did_you_mean(dataset, known)}`bench data list` lists the datasets")


def _needs_rows(family: str) -> bool:
    """Whether the family's board hooks read stored rows (only they make the board open shard files)."""
    from bench.threats.base import Threat, family_class

    cls = family_class(family)
    return cls is not None and any(getattr(cls, hook).__func__ is not getattr(Threat, hook).__func__
                                   for hook in ("board_columns", "board_details"))


def build_board(store: Store, dataset: str | None = None, threat: str | None = None) -> Board:
    if not store.run_ids():
        raise BenchError(f"no results under {store.root}", "run `bench run --model M --threat T` first, "
                         "or point --results / $BENCH_RESULTS at a results folder")
    warnings: list[str] = []
    summaries = complete_runs(store, warnings)
    names: dict[str, set[str]] = {}  # protocol -> every threat id recorded for it
    for s in summaries:
        names.setdefault(s["key"]["protocol"], set()).add(s["threat"])
    wanted = None if threat is None else _protocols_named(threat, summaries)
    if dataset is not None:
        _check_dataset(dataset, summaries)
    best = _best(s for s in summaries if (dataset is None or dataset in (s["dataset"], s["key"]["dataset"])) and
                 (wanted is None or s["key"]["protocol"] in wanted))
    contents: dict[str, set[str]] = {}  # dataset name -> the content identities stored under it
    for _, s, _ in best.values():
        contents.setdefault(s["dataset"], set()).add(s["key"]["dataset"])
    blocks: dict[tuple, Block] = {}
    chosen: dict[tuple, list[dict]] = {}
    for (model_hash, protocol, data_key), (_, s, stale) in sorted(best.items(), key=lambda kv: kv[0]):
        specs = [Metric.from_dict(m) for m in s["specs"]]
        shown = s["dataset"] if len(contents[s["dataset"]]) == 1 else data_key  # two contents, one name: name@hash
        block = blocks.setdefault((shown, protocol), Block(
            shown, protocol, s["family"], sorted(names[protocol]), specs, s["headline"]))
        chosen.setdefault((shown, protocol), []).append(s)
        row = {"model": s["model"], "model_hash": model_hash[:12]}
        for spec in specs:
            value = s["metrics"].get(spec.name, {"value": math.nan, "low": math.nan, "high": math.nan})
            row |= {spec.name: value["value"], f"{spec.name}_ci_low": value["low"],
                    f"{spec.name}_ci_high": value["high"]}
        row |= {"n": s["n"], "seed": s["seed"], "date": s["created"][:16].replace("T", " "), "run_id": s["run_id"],
                "stale": stale}
        block.rows.append(row)
    for key, block in blocks.items():
        runs = chosen[key]
        if _needs_rows(block.family):
            _add_family_columns(store, block, runs, warnings)
        block.notes += _numerics_notes(runs)
        headline = next(m for m in block.metrics if m.name == block.headline)
        block.rows.sort(key=lambda r: (bool(r["stale"]), rank_key(headline, r[headline.name]), r["model"]))
        _mark_smaller_n(block)
        hashes: dict[str, set[str]] = {}
        for row in block.rows:
            hashes.setdefault(row["model"], set()).add(row["model_hash"])
        for row in block.rows:
            flags = [f"name used by {len(hashes[row['model']])} different models"] \
                if len(hashes[row["model"]]) > 1 else []
            checked = stored_convergence(store, row["run_id"])
            row["convergence"] = checked.verdict if checked else "not checked"
            if checked and checked.verdict != "converged":
                flags.append(f"{checked.verdict}: twice the budget drops it {100 * checked.drop:.1f} points "
                             f"[{100 * checked.low:.1f}, {100 * checked.high:.1f}]")
            row["flag"] = "; ".join(flags + ([row["stale"]] if row["stale"] else []))
    ordered = sorted(blocks.values(), key=lambda b: (b.dataset, b.threats[0], b.protocol))
    composed = {s["key"]["model"][:12] for _, s, _ in best.values()
                if (s["spec"]["model"]["card"] or {}).get("compose")}
    params = {key: runs[0]["spec"]["threat"]["card"].get("params", {}) for key, runs in chosen.items()}
    return Board(ordered, warnings, defence_rows(ordered, params, composed))


N_MARK = "*"


def _mark_smaller_n(block: Block) -> None:
    """Mark the rows evaluated on fewer points than the block's largest run (``n_differs``, ``largest_n``), and
    say so under the table: their points are a subset of that run's, their intervals wider."""
    largest = max(row["n"] for row in block.rows)
    for row in block.rows:
        row |= {"n_differs": row["n"] != largest, "largest_n": largest}
    smaller = [f"{row['model']} (n = {row['n']})" for row in block.rows if row["n_differs"]]
    if smaller:
        block.notes.append(f"{N_MARK} n differs: {', '.join(smaller)} evaluated fewer points than the largest run "
                           f"here (n = {largest}): a subset of its points, with wider intervals")


def _best(summaries) -> dict[tuple, tuple]:
    """Per (model, protocol, dataset): (rank, summary, stale) of the run shown: by the current code first, then
    the largest, then the latest."""
    current = CurrentCode()
    best: dict[tuple, tuple] = {}
    for s in summaries:
        key = s["key"]
        stale = _stale(s, current)
        group = (key["model"], key["protocol"], key["dataset"])
        rank = (not stale, key["n"], s["created"])
        if group not in best or rank > best[group][0]:
            best[group] = (rank, s, stale)
    return best


def chosen_runs(store: Store, warnings: list[str]) -> list[tuple[dict[str, Any], str]]:
    """(summary, stale flag) of the run the board shows for each (model, protocol, dataset)."""
    return [(s, stale) for _, (_, s, stale) in sorted(_best(complete_runs(store, warnings)).items())]


def _numerics_notes(runs: list[dict]) -> list[str]:
    """Say when the block's runs were computed with different numerics (their last digits may differ)."""
    seen: dict[str, set[str]] = {}
    for s in runs:
        for k, v in s["key"]["numerics"].items():
            seen.setdefault(k, set()).add(json.dumps(v))
    varying = sorted(k for k, values in seen.items()
                     if len(values) > 1 or any(k not in s["key"]["numerics"] for s in runs))
    if not varying:
        return []
    groups: dict[str, list[str]] = {}
    for s in runs:
        numerics = s["key"]["numerics"]
        groups.setdefault(", ".join(f"{k} {numerics.get(k)}" for k in varying), []).append(s["model"])
    parts = [f"{text} ({', '.join(sorted(models))})" for text, models in sorted(groups.items())]
    return ["these runs were computed with different numerics, so their last digits may differ: " + "; ".join(parts)]


def _add_family_columns(store: Store, block: Block, runs: list[dict], warnings: list[str]) -> None:
    """The metrics and details the block's family derives from all its runs' rows."""
    from bench.threats.base import family_class

    board_runs = {}
    for s in runs:
        rows = store.read_run(s["run_id"])
        if rows.unreadable:
            warnings.append(f"run {s['run_id']}: shard {next(iter(rows.unreadable))} cannot be read, so the "
                            f"{block.family} columns leave it out (rerun its command to recompute it)")
            continue
        board_runs[s["run_id"]] = BoardRun(s["model"], rows.rows)
    family = family_class(block.family)
    params = runs[0]["spec"]["threat"]["card"].get("params", {})
    specs, values = family.board_columns(params, board_runs)
    block.base_metrics = len(block.metrics)
    block.metrics += list(specs)
    for row in block.rows:
        for spec in specs:
            value = values.get(row["run_id"], {}).get(spec.name) or MetricValue(math.nan, math.nan, math.nan, 0)
            row |= {spec.name: value.value, f"{spec.name}_ci_low": value.low, f"{spec.name}_ci_high": value.high}
    block.details = family.board_details(params, board_runs)


def derived_lines(store: Store, summary: Summary) -> list[str]:
    """What the board derives for one run from the other runs of its protocol (e.g. mCE against the card's
    baseline), as `bench run` prints it under the run's own metrics; where a value is missing, why."""
    if not summary.complete or not _needs_rows(summary.family):
        return []
    for block in build_board(store, threat=summary.threat).blocks:
        row = next((r for r in block.rows if r["run_id"] == summary.run_id), None)
        if row is None or block.protocol != summary.protocol:
            continue
        derived = block.metrics[block.base_metrics:]
        width = max((len(m.label) for m in derived), default=0)
        nothing = all(math.isnan(row.get(m.name, math.nan)) for m in derived)
        lines = []
        for spec in derived:
            value = row.get(spec.name, math.nan)
            text = ("-   (no single run of the baseline on this protocol and dataset yet)" if nothing else
                    "-   (undefined for this run: `bench board` shows why)") if math.isnan(value) else (
                f"{value:.3f}   (95% paired bootstrap interval {row[f'{spec.name}_ci_low']:.3f} - "
                f"{row[f'{spec.name}_ci_high']:.3f})")
            lines.append(f"{spec.label:<{width}}  {text}")
        return lines
    return []


def leaderboard(store: Store, dataset: str | None = None, threat: str | None = None) -> pd.DataFrame:
    """The board as one pandas table (what ``bench.board()`` returns)."""
    return build_board(store, dataset, threat).frame()


def cell_text(spec: Metric, value: float, digits: int = 2) -> str:
    """A metric's value as the board and the site show it (percent metrics in %, without the sign)."""
    if math.isnan(value) or math.isinf(value):
        return "-" if math.isnan(value) else f"{value}"
    return f"{100 * value:.{digits}f}" if spec.percent else f"{value:.{digits + 2}g}"


def render(board: Board, fmt: str = "markdown") -> str:
    if fmt not in FORMATS:
        raise BenchError(f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    frame = board.frame()
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "json":
        return frame.to_json(orient="records", indent=2)
    if not board.blocks:
        return "(no complete runs match)"
    out = []
    for block in board.blocks:
        headline = next(m for m in block.metrics if m.name == block.headline)
        table = []
        for rank, row in enumerate(block.rows, 1):
            cells = {"rank": rank, "model": row["model"] + (f" ({row['flag']})" if row["flag"] else ""),
                     "hash": row["model_hash"][:8]}
            for spec in block.metrics:
                header = f"{spec.name} (%)" if spec.percent else spec.name
                cells[header] = cell_text(spec, row[spec.name])
                if spec.name == block.headline:
                    low, high = row[f"{spec.name}_ci_low"], row[f"{spec.name}_ci_high"]
                    cells["95% interval"] = f"{cell_text(spec, low, 1)} - {cell_text(spec, high, 1)}"
            if any(r["convergence"] != "not checked" for r in block.rows):  # --check-convergence ran for some
                cells["twice the budget"] = row["convergence"]
            cells |= {"n": f"{row['n']} {N_MARK}" if row["n_differs"] else row["n"], "seed": row["seed"],
                      "date": row["date"]}
            table.append(cells)
        direction = "higher" if headline.higher_is_better else "lower"
        caveat = "" if adaptive(block.family) else "non-adaptive: not a defence's robustness, see Defences; "
        extra = "".join(f"\n\nnote: {note}" for note in block.notes) + (f"\n\n{block.details}" if block.details else "")
        out.append(f"### {block.dataset} / {' = '.join(block.threats)}  ({block.family}, protocol "
                   f"{block.protocol[:12]}; {caveat}ranked by {headline.label}, {direction} is better; "
                   f"{INTERVALS[headline.agg]} interval)\n\n" + pd.DataFrame(table).to_markdown(index=False) + extra)
    defences = render_defences(board.defences)
    return "\n\n".join(out + ([defences] if defences else []))

