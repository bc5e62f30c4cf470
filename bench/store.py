"""Results store: one Parquet shard per planned shard of a run, queried per run.

Layout under the root (``--results``, ``$BENCH_RESULTS`` or ``./bench-results``):

- ``runs/<run_id>/run.json``: what the run is (its key, cards, metric specs, versions), sealed with the
  sha256 of its content;
- ``runs/<run_id>/shard-<k>.parquet``: the rows of shard k, one per evaluation point, with per-shard
  stats and notes in the Parquet metadata, and ``shard-<k>.parquet.sha256``, the file's checksum;
- ``runs/<run_id>/inputs-<k>.npz`` (only with ``--save-adv``): the adversarial input of each point of shard
  k, as compressed float32 arrays ``index`` and ``x``, with its checksum beside it;
- ``training/<card>-<hash>.parquet``: per-epoch metrics of a trained card.

Integrity at rest: a shard whose bytes do not match the checksum recorded when it was written (one
flipped bit), a ``run.json`` whose seal or run id does not match its content (damaged or edited), is
never read as results: it is set aside under a ``.corrupt-`` name and recomputed by the next run.

Writers are safe to run twice at once: a shard is claimed with a file lock before it is computed, its
file name is fixed by the plan and written atomically, and readers count one row per evaluation
point, checking that any duplicates (e.g. a sync-conflict copy of a shard) agree. A shard that cannot
be read is named in the error, skipped by the board, and recomputed by the next run of the command.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.digests import sha256_file
from bench.errors import BenchError
from bench.files import atomic_write, exclusive, safe_filename

if TYPE_CHECKING:
    import torch

META_KEY = b"bench"
STORE_VERSION = 4  # 3: run keys hold numerics, implementation identity and trained weights; 4: sealed records
SEAL = "sha256"
VOLATILE = {"seconds", "shard", "run_id"}  # columns that may differ between two computations of one point


class StoreError(BenchError):
    """Results that cannot be read, or that contradict each other."""


def _json_digest(record: dict[str, Any]) -> str:
    text = json.dumps({k: v for k, v in record.items() if k != SEAL}, sort_keys=True, separators=(",", ":"),
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def sealed(record: dict[str, Any]) -> dict[str, Any]:
    """The record with the sha256 of its content, so a flipped bit or an edit is caught when it is read."""
    return {**record, SEAL: _json_digest(record)}


def unsealed(record: Any, path: Path) -> dict[str, Any]:
    """The record, after checking its seal."""
    if not isinstance(record, dict) or record.get(SEAL) != _json_digest(record):
        raise StoreError(f"{path} does not match its checksum: it was damaged or edited, or written by an older "
                         "bench", "rerun the run's command: the record is set aside and the run computed again")
    return {k: v for k, v in record.items() if k != SEAL}


def set_aside(path: Path, why: str) -> None:
    """Move a damaged file or run folder out of the way (kept for inspection, never read again)."""
    with contextlib.suppress(FileNotFoundError):  # another process set it aside first
        path.rename(path.with_name(f".corrupt-{uuid.uuid4().hex[:8]}-{path.name}"))
        print(f"note: set aside {path} ({why}); it will be computed again", file=sys.stderr)


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
        return sorted(p.parent.name for p in (self.root / "runs").glob("*/run.json")
                      if not p.parent.name.startswith("."))

    def checksum_path(self, shard_file: Path) -> Path:
        return shard_file.with_name(f"{shard_file.name}.sha256")

    def recorded_checksums(self, run_id: str) -> dict[str, str]:
        """The checksum recorded for each of the run's shard files when it was written."""
        shards = (path.with_name(path.name.removesuffix(".sha256"))
                  for path in self.run_dir(run_id).glob("*.parquet.sha256"))
        return {shard.name: self.recorded_checksum(shard) for shard in shards}

    def damage(self, path: Path, recorded: dict[str, str]) -> str | None:
        """Why a shard file cannot be trusted (None when it can): its bytes must match the checksum recorded
        for it, or, for a copy (a sync-conflict copy), the checksum of one of the run's shards."""
        try:
            digest = sha256_file(path)
        except OSError as err:
            return f"cannot be read ({err})"
        if recorded.get(path.name) == digest or (path.name not in recorded and digest in recorded.values()):
            return None
        return ("does not match the checksum recorded when it was written" if path.name in recorded
                else "has no checksum on record")

    # --- writing -----------------------------------------------------------------------------
    def open_run(self, run_id: str, meta: dict[str, Any]) -> dict[str, Any]:
        """Create the run's metadata, or return the stored one when resuming (the first writer wins)."""
        directory = self.run_dir(run_id)
        path = directory / "run.json"
        if path.is_file():
            try:
                return self.run_meta(run_id)
            except StoreError as err:
                set_aside(directory, err.problem)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            tmp = directory / f".run.json.{uuid.uuid4().hex}.part"
            tmp.write_text(json.dumps(sealed(meta), indent=2, default=str))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # atomic, and never replaces another writer's file
            tmp.unlink()
        except OSError as err:
            raise _unwritable(directory, err) from err
        return self.run_meta(run_id)

    @contextlib.contextmanager
    def claim(self, run_id: str, shard: int, *, wait: bool) -> Iterator[bool]:
        """Hold shard k for computing: True when this process should compute it (nobody else is, and its
        file is missing or unreadable), False when it is done or (with ``wait=False``) busy elsewhere."""
        path = self.shard_path(run_id, shard)
        with contextlib.ExitStack() as stack:
            try:
                held = stack.enter_context(exclusive(path.with_name(f".{path.stem}.lock"), wait=wait))
            except OSError as err:
                raise _unwritable(path.parent, err) from err
            yield held and not self.shard_done(run_id, shard)

    def shard_done(self, run_id: str, shard: int) -> bool:
        """Whether shard k's file is there and matches its recorded checksum; one that does not is set aside
        (with its checksum) to be recomputed."""
        path = self.shard_path(run_id, shard)
        if not path.is_file():
            return False
        problem = self.damage(path, {path.name: self.recorded_checksum(path)})
        if problem is None:
            return True
        set_aside(path, problem)
        set_aside(self.checksum_path(path), problem)
        return False

    def recorded_checksum(self, path: Path) -> str:
        """The checksum recorded beside a shard file ("" where there is none that can be read)."""
        with contextlib.suppress(OSError, UnicodeDecodeError):
            return self.checksum_path(path).read_text().strip()
        return ""

    def write_shard(self, run_id: str, shard: int, table: pa.Table, info: dict[str, Any]) -> Path:
        """Write the shard with its checksum beside it; the checksum goes first, so a reader never sees the
        shard without it."""
        schema_meta = {**(table.schema.metadata or {}), META_KEY: json.dumps(info).encode()}
        return self._write_checked(self.shard_path(run_id, shard),
                                   lambda tmp: pq.write_table(table.replace_schema_metadata(schema_meta), tmp))

    def _write_checked(self, path: Path, write: Callable[[Path], None]) -> Path:
        """Write a file atomically with its checksum beside it, the checksum first."""
        def checked(tmp: Path) -> None:
            write(tmp)
            digest = sha256_file(tmp)
            atomic_write(self.checksum_path(path), lambda side: side.write_text(digest))

        try:
            atomic_write(path, checked)
        except OSError as err:
            raise _unwritable(path.parent, err) from err
        return path

    def inputs_path(self, run_id: str, shard: int) -> Path:
        return self.run_dir(run_id) / f"inputs-{shard:06d}.npz"

    def write_inputs(self, run_id: str, shard: int, index: list[int], x: torch.Tensor) -> Path:
        """Store a shard's adversarial inputs (compressed), checksum first as for its rows."""
        def write(tmp: Path) -> None:
            with tmp.open("wb") as f:
                np.savez_compressed(f, index=np.asarray(index, dtype=np.int64), x=x.detach().cpu().float().numpy())

        return self._write_checked(self.inputs_path(run_id, shard), write)

    def inputs_done(self, run_id: str, shard: int) -> bool:
        path = self.inputs_path(run_id, shard)
        return path.is_file() and self.damage(path, {path.name: self.recorded_checksum(path)}) is None

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
            meta = unsealed(json.loads(path.read_text()), path)
        except (OSError, ValueError, RecursionError) as err:
            raise StoreError(f"the run metadata {path} cannot be read ({err})",
                             "rerun the run's command: the record is set aside and the run computed again") from err
        if meta.get("run_id") != run_id or run_id_of(meta.get("key")) != run_id:
            raise StoreError(f"{path} describes another run than {run_id} (it was edited or moved)",
                             "rerun the run's command: the record is set aside and the run computed again")
        return meta

    def read_shard(self, run_id: str, shard: int) -> pa.Table:
        """One shard's rows, checked against its recorded checksum."""
        path = self.shard_path(run_id, shard)
        if not self.shard_done(run_id, shard):
            raise StoreError(f"shard {shard} of run {run_id} is missing or damaged", "rerun the run's command")
        return pq.read_table(path)

    def read_inputs(self, run_id: str) -> tuple[np.ndarray, torch.Tensor]:
        """The run's saved adversarial inputs (evaluation-point index, input), shard by shard; a file that does not
        match its checksum is an error, never read."""
        import torch

        indices, xs = [], []
        for path in sorted(self.run_dir(run_id).glob("inputs-*.npz")):
            problem = self.damage(path, {path.name: self.recorded_checksum(path)})
            if problem is not None:
                raise StoreError(f"the saved inputs {path} {problem}",
                                 "delete the file and rerun the run's command with --save-adv")
            with np.load(path, allow_pickle=False) as data:
                indices.append(data["index"])
                xs.append(torch.from_numpy(data["x"]))
        if not xs:
            raise StoreError(f"run {run_id} has no saved adversarial inputs", "rerun its command with --save-adv")
        return np.concatenate(indices), torch.cat(xs)

    def read_run(self, run_id: str, columns: list[str] | None = None) -> RunRows:
        """The run's rows, one per evaluation point (duplicates from copies or concurrent writers are
        dropped once checked to agree), the shards' infos, and the files that could not be read."""
        tables, infos, unreadable = [], [], {}
        recorded = self.recorded_checksums(run_id)
        for path in self.shard_files(run_id):
            problem = self.damage(path, recorded)
            if problem is not None:
                unreadable[path] = problem
                set_aside(path, problem)
                continue
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
        """Run SQL against the view ``rows`` (every shard under the root that matches its checksum) and return
        pandas."""
        import duckdb

        shards = []
        for run_id in self.run_ids():
            recorded = self.recorded_checksums(run_id)
            shards += [path for path in self.shard_files(run_id) if self.damage(path, recorded) is None]
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


def _unwritable(folder: Path, err: OSError) -> StoreError:
    return StoreError(f"cannot write to the results folder {folder} ({err.strerror or err})",
                      "pass a writable --results folder (or set $BENCH_RESULTS), or copy the results to one")


def run_id_of(key: Any) -> str:
    """A run's id: the hash of its key (so a record cannot claim another run's id)."""
    from bench.cards import canonical_hash

    return canonical_hash(key)[:16] if isinstance(key, dict) else ""


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
