"""Results store: append-only Parquet shards (one per finished batch) queried with DuckDB.

Layout: ``<root>/<table>/<run_id>/run.json`` (run metadata) and ``batch-<k>-<uuid>.parquet``
shards. Table ``runs`` holds classifier-under-threat rows; ``quality`` holds set-quality rows of
learned perturbation sets (one row per pair). Shards are written to a temporary name and renamed,
so a killed run never leaves a half-written shard; per-batch stats and notes travel in the shard's
Parquet metadata.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.errors import BenchError

META_KEY = b"bench"


def results_root(results: str | os.PathLike | None = None) -> Path:
    """The argument, else $BENCH_RESULTS, else ./bench-results."""
    return Path(results if results is not None else os.environ.get("BENCH_RESULTS", "bench-results")).expanduser()


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


TABLES = ("runs", "quality")


class Store:
    def __init__(self, root: str | os.PathLike | None = None, table: str = "runs"):
        if table not in TABLES:
            raise ValueError(f"unknown store table {table!r}")
        self.root = results_root(root)
        self.table = table

    def run_dir(self, run_id: str) -> Path:
        return self.root / self.table / run_id

    def _shards(self, run_id: str | None = None) -> list[Path]:
        pattern = f"{run_id}/batch-*.parquet" if run_id else "*/batch-*.parquet"
        return sorted((self.root / self.table).glob(pattern))

    def has_rows(self) -> bool:
        return bool(self._shards())

    # --- writing -----------------------------------------------------------------------------
    def open_run(self, run_id: str, meta: dict[str, Any]) -> dict[str, Any]:
        """Create the run's metadata, or return the stored one when resuming."""
        directory = self.run_dir(run_id)
        path = directory / "run.json"
        if path.is_file():
            return json.loads(path.read_text())
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BenchError(f"cannot create the results folder {directory}: {err}",
                             "pass a writable --results folder (or set $BENCH_RESULTS)") from err
        _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(meta, indent=2, default=str)))
        return meta

    def write_shard(self, run_id: str, batch: int, table: pa.Table, info: dict[str, Any]) -> Path:
        schema_meta = {**(table.schema.metadata or {}), META_KEY: json.dumps(info).encode()}
        table = table.replace_schema_metadata(schema_meta)
        path = self.run_dir(run_id) / f"batch-{batch:06d}-{uuid.uuid4().hex[:8]}.parquet"
        _atomic_write(path, lambda tmp: pq.write_table(table, tmp))
        return path

    # --- reading -----------------------------------------------------------------------------
    def done_indices(self, run_id: str) -> set[int]:
        done: set[int] = set()
        for shard in self._shards(run_id):
            done.update(pq.read_table(shard, columns=["index"]).column("index").to_pylist())
        return done

    def shard_infos(self, run_id: str) -> list[dict[str, Any]]:
        return [json.loads(pq.read_schema(s).metadata[META_KEY]) for s in self._shards(run_id)]

    def run_meta(self, run_id: str) -> dict[str, Any]:
        return json.loads((self.run_dir(run_id) / "run.json").read_text())

    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        """Run SQL against the view ``rows`` (every shard under the root) and return pandas."""
        import duckdb

        shards = self._shards()
        if not shards:
            raise BenchError(f"no results under {self.root}", "run `bench run --model M --threat T` first, "
                             "or point --results / $BENCH_RESULTS at a results folder")
        con = duckdb.connect()
        try:
            files = [str(s) for s in shards]
            con.execute(f"CREATE VIEW rows AS SELECT * FROM read_parquet({files!r}, union_by_name=true)")
            return con.execute(sql, params or []).df()
        finally:
            con.close()
