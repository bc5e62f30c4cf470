"""Leaderboard tables from the results store, generic over tasks and metrics.

One block per (dataset, protocol): every threat card id that ran that protocol is named in its title,
so one protocol is one table. Models are identified by their hash (a name used by two different
models is flagged), and each model shows its largest complete run of the protocol (then the latest):
a small smoke run never replaces a larger one. Blocks are ranked by the family's headline metric in
its direction; every metric comes with its 95% interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from bench.errors import BenchError
from bench.leaderboard.defences import defence_rows, render_defences
from bench.metrics import INTERVALS, Metric, MetricValue, rank_key
from bench.store import STORE_VERSION, Store, StoreError
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


def _protocols_named(threat: str, metas: list[dict]) -> set[str]:
    """Protocols a threat filter selects: those any run recorded under this card id or family ran, and the
    one the card of that id names now."""
    protocols = {m["key"]["protocol"] for m in metas if threat in (m["threat_id"], m["family"])}
    try:
        from bench.threats import load_threat_card

        protocols.add(load_threat_card(threat).hash)
    except BenchError:
        pass
    return protocols


def build_board(store: Store, dataset: str | None = None, threat: str | None = None) -> Board:
    if not store.run_ids():
        raise BenchError(f"no results under {store.root}", "run `bench run --model M --threat T` first, "
                         "or point --results / $BENCH_RESULTS at a results folder")
    warnings: list[str] = []
    metas = []
    for run_id in store.run_ids():
        try:
            meta = store.run_meta(run_id)
        except StoreError as err:
            warnings.append(f"skipped run {run_id}: {err.problem}")
            continue
        if meta.get("store_version") != STORE_VERSION:
            warnings.append(f"skipped run {run_id}: written by an older bench (rerun its command to redo it)")
            continue
        metas.append(meta)
    names: dict[str, set[str]] = {}  # protocol -> every threat id recorded for it
    for meta in metas:
        names.setdefault(meta["key"]["protocol"], set()).add(meta["threat_id"])
    wanted = None if threat is None else _protocols_named(threat, metas)
    best: dict[tuple, tuple] = {}
    for meta in metas:
        key = meta["key"]
        if (dataset is not None and dataset not in (meta["dataset"], key["dataset"])) or \
                (wanted is not None and key["protocol"] not in wanted):
            continue
        try:
            run = store.read_run(meta["run_id"])
        except StoreError as err:
            warnings.append(f"skipped run {meta['run_id']}: {err.problem}")
            continue
        if run.unreadable:
            warnings.append(f"skipped run {meta['run_id']}: shard {next(iter(run.unreadable))} cannot be read "
                            "(rerun its command to recompute it)")
            continue
        if len(run.rows) != key["n"]:
            continue  # incomplete
        group = (key["model"], key["protocol"], key["dataset"])
        rank = (key["n"], meta["created"])
        if group not in best or rank > best[group][0]:
            best[group] = (rank, meta, run.rows)
    blocks: dict[tuple, Block] = {}
    runs: dict[tuple, dict[str, BoardRun]] = {}
    params: dict[tuple, dict] = {}
    for (model_hash, protocol, data_key), (_, meta, rows) in sorted(best.items(), key=lambda kv: kv[0]):
        specs = [Metric.from_dict(m) for m in meta["metrics"]]
        block = blocks.setdefault((data_key, protocol), Block(  # user data shows its content hash: name@hash
            data_key, protocol, meta["family"], sorted(names[protocol]), specs, meta["headline"]))
        runs.setdefault((data_key, protocol), {})[meta["run_id"]] = BoardRun(meta["model_id"], rows)
        params[(data_key, protocol)] = meta["threat_card"].get("params", {})
        row = {"model": meta["model_id"], "model_hash": model_hash[:12]}
        for spec in specs:
            value = spec.compute(rows[spec.column].to_numpy())
            row |= {spec.name: value.value, f"{spec.name}_ci_low": value.low, f"{spec.name}_ci_high": value.high}
        row |= {"n": meta["key"]["n"], "seed": meta["key"]["seed"], "date": meta["created"][:16].replace("T", " "),
                "run_id": meta["run_id"]}
        block.rows.append(row)
    for key, block in blocks.items():
        _add_family_columns(block, params[key], runs[key])
        headline = next(m for m in block.metrics if m.name == block.headline)
        block.rows.sort(key=lambda r: (rank_key(headline, r[headline.name]), r["model"]))
        hashes: dict[str, set[str]] = {}
        for row in block.rows:
            hashes.setdefault(row["model"], set()).add(row["model_hash"])
        for row in block.rows:
            row["flag"] = f"name used by {len(hashes[row['model']])} different models" \
                if len(hashes[row["model"]]) > 1 else ""
    ordered = sorted(blocks.values(), key=lambda b: (b.dataset, b.threats[0], b.protocol))
    composed = {meta["key"]["model"][:12] for _, meta, _ in best.values()
                if (meta.get("model_card") or {}).get("compose")}
    return Board(ordered, warnings, defence_rows(ordered, params, composed))


def _add_family_columns(block: Block, params: dict, runs: dict[str, BoardRun]) -> None:
    """The metrics and details the block's family derives from all its runs (a family no longer installed
    derives nothing: its stored metrics still show)."""
    from bench.threats.base import THREAT_FAMILIES

    if block.family not in THREAT_FAMILIES:
        return
    family = THREAT_FAMILIES.get(block.family)
    specs, values = family.board_columns(params, runs)
    block.metrics += list(specs)
    for row in block.rows:
        for spec in specs:
            value = values.get(row["run_id"], {}).get(spec.name) or MetricValue(math.nan, math.nan, math.nan, 0)
            row |= {spec.name: value.value, f"{spec.name}_ci_low": value.low, f"{spec.name}_ci_high": value.high}
    block.details = family.board_details(params, runs)


def leaderboard(store: Store, dataset: str | None = None, threat: str | None = None) -> pd.DataFrame:
    """The board as one pandas table (what ``bench.board()`` returns)."""
    return build_board(store, dataset, threat).frame()


def _cell(spec: Metric, value: float, digits: int = 2) -> str:
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
                cells[header] = _cell(spec, row[spec.name])
                if spec.name == block.headline:
                    low, high = row[f"{spec.name}_ci_low"], row[f"{spec.name}_ci_high"]
                    cells["95% interval"] = f"{_cell(spec, low, 1)} - {_cell(spec, high, 1)}"
            cells |= {"n": row["n"], "seed": row["seed"], "date": row["date"]}
            table.append(cells)
        direction = "higher" if headline.higher_is_better else "lower"
        caveat = "" if _adaptive(block.family) else "non-adaptive: not a defence's robustness, see Defences; "
        out.append(f"### {block.dataset} / {' = '.join(block.threats)}  ({block.family}, protocol "
                   f"{block.protocol[:12]}; {caveat}ranked by {headline.label}, {direction} is better; "
                   f"{INTERVALS[headline.agg]} interval)\n\n" + pd.DataFrame(table).to_markdown(index=False)
                   + (f"\n\n{block.details}" if block.details else ""))
    defences = render_defences(board.defences)
    return "\n\n".join(out + ([defences] if defences else []))


def _adaptive(family: str) -> bool:
    from bench.threats.base import THREAT_FAMILIES

    return family not in THREAT_FAMILIES or THREAT_FAMILIES.get(family).adaptive
