"""Leaderboard entries: one JSON file per (model hash, protocol hash, dataset) under ``leaderboard/entries/``.

Unlike a RobustBench ``model_info`` file (percent strings, no seed, n or versions), an entry carries what
makes its numbers checkable: the model card and the sha256 of its weights, the protocol card and hash, the
dataset's content identity, the implementation identity and numerics, n, seed and batch size (so its points
and draws can be recomputed), every metric with its interval, versions, device, date, and provenance
(``verified``: recomputed by this suite; ``self-reported``: submitted numbers that passed a spot check;
``imported``: from RobustBench). The schema is versioned; ``leaderboard/schema/entry.schema.json`` is its
exported JSON Schema (a test keeps the two equal).
"""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bench.errors import BenchError
from bench.files import atomic_write, safe_filename
from bench.metrics import Metric
from bench.store import Store

ENTRY_VERSION = 1
MAX_ENTRY_BYTES = 64 * 2**20  # entries are untrusted input (a pull request's); 10,000 points take a few MB
Provenance = Literal["verified", "self-reported", "imported"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelPart(_Strict):
    id: str
    hash: str
    weights: dict[str, str] = Field(default_factory=dict, description="sha256 of every trained weight file")
    license: str | None = None
    paper: str | None = None
    card: dict[str, Any] | None = None


class ProtocolPart(_Strict):
    id: str
    hash: str
    family: str
    card: dict[str, Any]


class DatasetPart(_Strict):
    name: str
    identity: str | None = Field(description="name@sha256 of the decoded images, labels and classes (None: "
                                             "not known, for an imported entry)")


class MetricPart(_Strict):
    value: float | None
    low: float | None
    high: float | None
    n: int | None
    label: str
    column: str = Field(description="the per-point column it aggregates (in points)")
    agg: Literal["rate", "mean", "quantile"]
    q: float | None = None
    higher_is_better: bool
    percent: bool

    @model_validator(mode="after")
    def _valid(self) -> MetricPart:
        self.metric(self.label)  # a Metric's own checks (q exactly for a quantile, in [0, 1]) as a ValueError
        return self

    def metric(self, name: str) -> Metric:
        """The metric as bench computes it, to recompute it from the entry's points."""
        return Metric(name, self.column, self.label, self.agg, self.higher_is_better, self.q,
                      self.percent and self.agg != "rate")


WIDTHS = {"int64": "<i8", "float32": "<f4", "float64": "<f8"}  # bools are packed bits
VOLATILE = {"run_id", "shard", "index", "seconds"}  # where and how fast a point was computed, not its outcome


class Column(_Strict):
    dtype: Literal["bool", "int64", "float32", "float64"]
    data: str = Field(description="base64 of the little-endian values (bools packed 8 to a byte)")


class Points(_Strict):
    """Every evaluation point's outcome, compactly: what RobustBench cannot give and a check compares with."""

    index: str = Field(description="base64 of the little-endian int64 positions in the test split")
    columns: dict[str, Column]

    @classmethod
    def of(cls, rows: pd.DataFrame, columns: list[str]) -> Points:
        rows = rows.sort_values("index")
        out = {}
        for name in columns:
            values = rows[name].to_numpy()
            if values.dtype == bool:
                out[name] = Column(dtype="bool", data=_b64(np.packbits(values, bitorder="little")))
            else:
                dtype = ("int64" if np.issubdtype(values.dtype, np.integer) else
                         "float32" if values.dtype == np.float32 else "float64")
                out[name] = Column(dtype=dtype, data=_b64(values.astype(WIDTHS[dtype])))
        return cls(index=_b64(rows["index"].to_numpy().astype("<i8")), columns=out)

    @staticmethod
    def outcomes(rows: pd.DataFrame) -> list[str]:
        """The columns that are a point's outcome: every boolean or numeric one but where and how fast it ran."""
        return sorted(c for c in rows.columns if c not in VOLATILE and rows[c].dtype.kind in "biuf")

    @model_validator(mode="after")
    def _decodable(self) -> Points:
        """Every column decodes to one value per point, so no reader meets a truncated or forged payload."""
        try:
            self.frame()
        except ValueError as err:  # bad base64 included
            raise ValueError(f"the points do not decode ({err})") from None
        return self

    def frame(self) -> pd.DataFrame:
        """The points as rows (``index`` and one column per stored column)."""
        index = np.frombuffer(base64.b64decode(self.index, validate=True), "<i8")
        out = {"index": index}
        for name, column in self.columns.items():
            raw = base64.b64decode(column.data, validate=True)
            if column.dtype == "bool" and len(raw) != (len(index) + 7) // 8:
                raise ValueError(f"column {name} holds {len(raw)} bytes of bits for {len(index)} points")
            out[name] = (np.unpackbits(np.frombuffer(raw, np.uint8), count=len(index), bitorder="little").astype(bool)
                         if column.dtype == "bool" else np.frombuffer(raw, WIDTHS[column.dtype]))
        return pd.DataFrame(out)


def _b64(values: np.ndarray) -> str:
    return base64.b64encode(values.tobytes()).decode()


class Entry(_Strict):
    """One model's result under one protocol on one dataset."""

    schema_version: Literal[1] = ENTRY_VERSION
    model: ModelPart
    protocol: ProtocolPart
    dataset: DatasetPart
    implementation: dict[str, Any]
    numerics: dict[str, Any]
    n: int | None = Field(gt=0, description="None only for an imported entry (RobustBench records no n)")
    seed: int | None = Field(ge=0)
    batch_size: int | None = Field(gt=0)
    headline: str
    metrics: dict[str, MetricPart]
    versions: dict[str, str]
    device: str | None
    date: str | None
    provenance: Provenance
    run_id: str | None = None
    points: Points | None = Field(None, description="every point's outcome: each boolean or numeric column of the "
                                                      "run's rows but where and how fast it ran (None: imported)")
    source: dict[str, Any] | None = Field(None, description="an imported entry's original record, verbatim")

    @model_validator(mode="after")
    def _complete(self) -> Entry:
        """Only an imported entry may lack what makes a result recomputable."""
        missing = [name for name in ("n", "seed", "batch_size", "points", "date") if getattr(self, name) is None]
        if self.provenance != "imported" and (missing or self.dataset.identity is None):
            raise ValueError(f"a {self.provenance} entry needs {', '.join(missing) or 'the dataset identity'}")
        if self.headline not in self.metrics:
            raise ValueError(f"the headline {self.headline!r} is not among the metrics")
        return self

    @property
    def path(self) -> Path:
        """Where the entry lives under the leaderboard folder: one file per model, protocol and dataset."""
        name = f"{safe_filename(self.model.id)}--{self.model.hash[:12]}--{self.protocol.hash[:12]}.json"
        return Path("entries") / safe_filename(self.dataset.name) / name


def _number(value: float) -> float | None:
    return None if value != value else value  # NaN (no value) as JSON null


def entry_from_run(store: Store, summary: dict[str, Any], provenance: Provenance = "verified") -> Entry:
    """The entry of one complete run, from its summary and its record."""
    meta = store.run_meta(summary["run_id"])
    spec, key = summary["spec"], summary["key"]
    card = spec["model"]["card"] or {}
    specs = {m["name"]: m for m in summary["specs"]}
    metrics = {}
    for name, v in summary["metrics"].items():
        metric = Metric.from_dict(specs[name])
        metrics[name] = MetricPart(value=_number(v["value"]), low=_number(v["low"]), high=_number(v["high"]), n=v["n"],
                                   label=metric.label, column=metric.column, agg=metric.agg, q=metric.q,
                                   higher_is_better=metric.higher_is_better, percent=metric.percent)
    return Entry(model=ModelPart(id=summary["model"], hash=key["model"], weights=key["weights"],
                                 license=card.get("license"), paper=card.get("paper"), card=spec["model"]["card"]),
                 protocol=ProtocolPart(id=summary["threat"], hash=key["protocol"], family=summary["family"],
                                       card=spec["threat"]["card"]),
                 dataset=DatasetPart(name=summary["dataset"], identity=key["dataset"]),
                 implementation=key["implementation"], numerics=key["numerics"], n=summary["n"],
                 seed=summary["seed"], batch_size=key["batch_size"], headline=summary["headline"], metrics=metrics,
                 versions=meta["versions"], device=meta["device"], date=summary["finished"], provenance=provenance,
                 run_id=summary["run_id"], points=_points(store, summary))


def _points(store: Store, summary: dict[str, Any]) -> Points:
    rows = store.read_run(summary["run_id"]).rows
    return Points.of(rows, Points.outcomes(rows))


def write_entries(store: Store, out: Path, warnings: list[str]) -> list[Path]:
    """An entry for the chosen run of every (model, protocol, dataset) in the store (runs by the current code
    first, then the largest, then the latest: the board's choice), written atomically under ``out``. Runs of
    bare modules (no card to publish) are left out with a warning."""
    from bench.leaderboard.table import chosen_runs

    written = []
    for summary, stale in chosen_runs(store, warnings):
        if summary["spec"]["model"]["card"] is None:
            warnings.append(f"run {summary['run_id']} evaluates a bare module ({summary['model']}): no card to "
                            "publish, so no entry")
            continue
        if stale:
            warnings.append(f"run {summary['run_id']} was made by other code ({stale}): rerun it for an entry")
            continue
        written.append(save_entry(entry_from_run(store, summary), out))
    return written


def save_entry(entry: Entry, out: Path) -> Path:
    """Write the entry at its place under the leaderboard folder ``out``, atomically."""
    path = Path(out) / entry.path
    path.parent.mkdir(parents=True, exist_ok=True)
    text = entry.model_dump_json(indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def read_entry(path: Path) -> Entry:
    """An entry file, validated against the schema (a clear error naming the file otherwise)."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_ENTRY_BYTES:
            raise BenchError(f"leaderboard entry {path} is {size:,} bytes, over the {MAX_ENTRY_BYTES:,} an entry "
                             "may hold", "an entry of 10,000 points takes a few MB; is this an entry?")
        return Entry.model_validate_json(Path(path).read_bytes())
    except (OSError, ValidationError) as err:
        raise BenchError(f"leaderboard entry {path} is not a valid entry of schema version {ENTRY_VERSION}: "
                         f"{str(err).splitlines()[0] if isinstance(err, OSError) else err.errors()[0]['msg']}",
                         "regenerate it with `bench leaderboard entries`") from err


def entry_schema() -> str:
    """The JSON Schema of an entry, as committed in ``leaderboard/schema/entry.schema.json``."""
    return json.dumps(Entry.model_json_schema(), indent=2, sort_keys=True) + "\n"


class Protocols(_Strict):
    """``leaderboard/protocols.yaml``: the threat card ids an entry set must cover, per dataset and task."""

    version: Literal[1]
    datasets: dict[str, dict[str, list[str]]]

    def required(self, dataset: str, task: str) -> list[str]:
        return self.datasets.get(dataset, {}).get(task, [])


def read_protocols(path: Path) -> Protocols:
    from bench.cards import read_card

    try:
        return Protocols.model_validate(read_card(Path(path)))
    except ValidationError as err:
        raise BenchError(f"{path} is not a protocols file: {err.errors()[0]['msg']}",
                         "see the comment at the top of leaderboard/protocols.yaml") from err
