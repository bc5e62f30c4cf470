"""Results store: one Parquet shard per planned shard of a run, queried per run.

Layout under the root (``--results``, ``$BENCH_RESULTS`` or ``./bench-results``):

- ``runs/<run_id>/run.json``: what the run is (its key, cards, metric specs, versions);
- ``runs/<run_id>/shard-<k>.parquet``: the rows of shard k, one per evaluation point, with per-shard
  stats and notes in the Parquet metadata;
- ``training/<card>-<hash>.parquet``: per-epoch metrics of a trained card.

Writers are safe to run twice at once: a shard is claimed with a file lock before it is computed, its
file name is fixed by the plan and written atomically, and readers count one row per evaluation
point, checking that any duplicates (e.g. a sync-conflict copy of a shard) agree. A shard that cannot
be read is named in the error, skipped by the board, and recomputed by the next run of the command.
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.errors import BenchError
from bench.files import atomic_write, exclusive, safe_filename

META_KEY = b"bench"
STORE_VERSION = 3  # 3: run keys hold numerics, implementation identity and trained weights
VOLATILE = {"seconds", "shard", "run_id"}  # columns that may differ between two computations of one point


class StoreError(BenchError):
    """Results that cannot be read, or that contradict each other."""


def results_root(results: str | os.PathLike | None = None) -> Path:
    """The argument, else $BENCH_RESULTS, else ./bench-results."""
    return Path(results if results is not None else os.environ.get("BENCH_RESULTS", "bench-results")).expanduser()


@dataclass
class RunRows:
    """One run's rows, one per evaluation point, with what its shards say and what could not be read."""

    rows: pd.DataFrame
    infos: list[dict[str, Any]] = field(default_factory=list)
    unreadable: dict[Path, str] = field(default_factory=dict)


class Store:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = results_root(root)

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def shard_path(self, run_id: str, shard: int) -> Path:
        return self.run_dir(run_id) / f"shard-{shard:06d}.parquet"

    def shard_files(self, run_id: str) -> list[Path]:
        """Every row file of the run, copies included (hidden and temporary files excluded)."""
        return sorted(p for p in self.run_dir(run_id).glob("*.parquet") if not p.name.startswith("."))

    def run_ids(self) -> list[str]:
        return sorted(p.parent.name for p in (self.root / "runs").glob("*/run.json"))

    # --- writing -----------------------------------------------------------------------------
    def open_run(self, run_id: str, meta: dict[str, Any]) -> dict[str, Any]:
        """Create the run's metadata, or return the stored one when resuming (the first writer wins)."""
        directory = self.run_dir(run_id)
        path = directory / "run.json"
        if not path.is_file():
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise BenchError(f"cannot create the results folder {directory}: {err}",
                                 "pass a writable --results folder (or set $BENCH_RESULTS)") from err
            tmp = directory / f".run.json.{uuid.uuid4().hex}.part"
            tmp.write_text(json.dumps(meta, indent=2, default=str))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # atomic, and never replaces another writer's file
            tmp.unlink()
        return self.run_meta(run_id)

    @contextlib.contextmanager
    def claim(self, run_id: str, shard: int, *, wait: bool) -> Iterator[bool]:
        """Hold shard k for computing: True when this process should compute it (nobody else is, and its
        file is missing or unreadable), False when it is done or (with ``wait=False``) busy elsewhere."""
        path = self.shard_path(run_id, shard)
        with exclusive(path.with_name(f".{path.stem}.lock"), wait=wait) as held:
            yield held and not self.shard_done(run_id, shard)

    def shard_done(self, run_id: str, shard: int) -> bool:
        """Whether shard k's file is there and sound; an unsound one is moved aside to be recomputed."""
        path = self.shard_path(run_id, shard)
        if not path.is_file():
            return False
        try:
            pq.read_metadata(path)
            return True
        except Exception:  # noqa: BLE001  (Arrow raises many types for a damaged file)
            path.rename(path.with_name(f".corrupt-{uuid.uuid4().hex[:8]}-{path.name}"))
            return False

    def write_shard(self, run_id: str, shard: int, table: pa.Table, info: dict[str, Any]) -> Path:
        schema_meta = {**(table.schema.metadata or {}), META_KEY: json.dumps(info).encode()}
        path = self.shard_path(run_id, shard)
        atomic_write(path, lambda tmp: pq.write_table(table.replace_schema_metadata(schema_meta), tmp))
        return path

    def write_training(self, card_id: str, training_hash: str, history: list[dict[str, float]]) -> Path:
        """Per-epoch metrics of one trained card (replacing an earlier record of the same training)."""
        folder = self.root / "training"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{safe_filename(card_id)}-{training_hash[:16]}.parquet"
        table = pa.Table.from_pylist([{"card": card_id, "training_hash": training_hash, **r} for r in history])
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))
        return path

    # --- reading -----------------------------------------------------------------------------
    def run_meta(self, run_id: str) -> dict[str, Any]:
        path = self.run_dir(run_id) / "run.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise StoreError(f"the run metadata {path} cannot be read ({err})",
                             "delete the run's folder and run it again") from err

    def read_run(self, run_id: str, columns: list[str] | None = None) -> RunRows:
        """The run's rows, one per evaluation point (duplicates from copies or concurrent writers are
        dropped once checked to agree), the shards' infos, and the files that could not be read."""
        tables, infos, unreadable = [], [], {}
        for path in self.shard_files(run_id):
            try:
                table = pq.read_table(path, columns=columns)
                infos.append(json.loads((table.schema.metadata or {}).get(META_KEY, b"{}")))
            except Exception as err:  # noqa: BLE001
                unreadable[path] = f"{type(err).__name__}: {err}"
                continue
            tables.append(table.append_column("_file", pa.array([path.name] * len(table))))
        if not tables:
            return RunRows(pd.DataFrame({"index": pd.Series([], dtype="int64")}), infos, unreadable)
        frame = pa.concat_tables(tables, promote_options="default").to_pandas()
        return RunRows(_dedupe(frame, run_id), _dedupe_infos(infos), unreadable)

    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        """Run SQL against the view ``rows`` (every readable shard under the root) and return pandas."""
        import duckdb

        shards = sorted((self.root / "runs").glob("*/shard-*.parquet"))
        if not shards:
            raise BenchError(f"no results under {self.root}", "run `bench run --model M --threat T` first, "
                             "or point --results / $BENCH_RESULTS at a results folder")
        con = duckdb.connect()
        try:
            files = [str(s) for s in shards]
            con.execute(f"CREATE VIEW rows AS SELECT * FROM read_parquet({files!r}, union_by_name=true)")
            return con.execute(sql, params or []).df()
        except (duckdb.IOException, duckdb.InvalidInputException) as err:  # a damaged shard
            raise StoreError(f"a shard under {self.root} cannot be read: {str(err).splitlines()[0]}",
                             "rerun the run's command (a damaged shard is set aside and recomputed)") from err
        finally:
            con.close()


def _dedupe(frame: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """One row per evaluation point; duplicates must agree on every non-volatile column."""
    frame = frame.sort_values(["index", "_file"], kind="stable")
    compared = [c for c in frame.columns if c not in VOLATILE and c != "_file"]
    distinct = frame.drop_duplicates(compared)
    clash = distinct["index"].duplicated(keep=False)
    if clash.any():
        first = distinct[clash].iloc[0]["index"]
        files = distinct[distinct["index"] == first]["_file"]
        raise StoreError(f"run {run_id} holds two different results for evaluation point {first}, in "
                         f"{' and '.join(files)}",
                         "keep one of the files (delete the other, e.g. a sync-conflict copy) and rerun")
    return distinct.drop(columns="_file").reset_index(drop=True)


def _dedupe_infos(infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One info per shard number (a copied shard brings its info twice)."""
    seen: dict[Any, dict[str, Any]] = {}
    for info in infos:
        seen.setdefault(info.get("shard"), info)
    return list(seen.values())


def now() -> str:
    """UTC time to the microsecond (orders runs started within the same second)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
