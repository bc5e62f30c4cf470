"""RobustBench both ways: its ``model_info/<dataset>/<threat_model>/<ModelID>.json`` files as ``imported``
entries, and our entries in that format.

What cannot map, and how it is handled: RobustBench records no n, seed, batch size, attack version or
parameters, package versions, weights checksum, data identity or per-point outcomes, so an imported entry
has none of them (no intervals either: they need n) and keeps the original record verbatim in ``source``
(``reported``, ``external``, ``unreliable``, ``footnote``, ``additional_data``, ``number_forward_passes``,
``venue``, ``authors``). Exported files carry only what RobustBench has fields for: our seed, n, intervals,
identities and points are lost, and only AutoAttack and corruption entries have a RobustBench threat model.
"""
from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.files import atomic_write, safe_filename
from bench.leaderboard.entries import (DatasetPart, Entry, MetricPart, ModelPart, ProtocolPart, read_entry,
                                      save_entry)

THREAT_MODELS = {"Linf": "autoattack", "L2": "autoattack", "corruptions": "corruptions"}
MAX_FILE = 1 << 20  # a model_info file is a few hundred bytes


def _percent(value: Any, field: str, path: Path) -> float:
    """A RobustBench percent string ("91.08", or a number) as a fraction in [0, 1]."""
    try:
        number = Decimal(str(value).strip().rstrip("%"))
        inside = number.is_finite() and 0 <= number <= 100
    except ArithmeticError:  # not a number (decimal.InvalidOperation)
        raise BenchError(f"{path}: {field} is {value!r}, not a percentage", "fix or remove the file") from None
    if not inside:
        raise BenchError(f"{path}: {field} is {value!r}, outside 0-100", "fix or remove the file")
    return float(number / 100)  # exact in decimal: "55.3" is 0.553, not 0.5529999


def _eps(value: Any, path: Path) -> float:
    try:
        eps = float(Fraction(str(value).strip()))
    except (ValueError, ZeroDivisionError):
        raise BenchError(f"{path}: eps is {value!r}, not a number or fraction", "fix or remove the file") from None
    if not 0 < eps < 100:
        raise BenchError(f"{path}: eps {eps} is out of range", "fix or remove the file")
    return eps


def _metric(value: float, label: str) -> MetricPart:
    return MetricPart(value=value, low=None, high=None, n=None, label=label, column="", agg="rate",
                      higher_is_better=True, percent=True)


def import_file(path: Path, dataset: str, threat_model: str) -> Entry:
    """One ``model_info`` JSON as an imported entry."""
    if path.stat().st_size > MAX_FILE:
        raise BenchError(f"{path} is larger than {MAX_FILE} bytes, not a model_info file", "remove it")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise BenchError(f"{path} is not JSON ({err})", "fix or remove the file") from None
    if not isinstance(record, dict):
        raise BenchError(f"{path} holds {type(record).__name__}, not a model_info object", "fix or remove the file")
    family = THREAT_MODELS[threat_model]
    metrics = {"clean_acc": _metric(_percent(record.get("clean_acc"), "clean_acc", path), "clean accuracy")}
    if family == "autoattack":
        eps = _eps(record.get("eps"), path)
        metrics["robust_acc"] = _metric(_percent(record.get("autoattack_acc"), "autoattack_acc", path),
                                        "robust accuracy (AutoAttack)")
        if record.get("external") not in (None, ""):
            metrics["robust_acc_external"] = _metric(_percent(record["external"], "external", path),
                                                     "robust accuracy (best known attack)")
        params = {"norm": threat_model, "eps": eps, "version": "standard"}
        headline = "robust_acc_external" if "robust_acc_external" in metrics else "robust_acc"
        protocol_id = f"robustbench-{threat_model.lower()}-{record.get('eps')}"
    else:
        metrics["corruption_acc"] = _metric(_percent(record.get("corruptions_acc"), "corruptions_acc", path),
                                            "mean corruption accuracy")
        params, headline, protocol_id = {"suite": f"{dataset}-c"}, "corruption_acc", f"robustbench-{dataset}-c"
    card = {"id": protocol_id, "family": family, "params": params}
    name = path.stem
    return Entry(model=ModelPart(id=name, hash=_hash(["robustbench", dataset, threat_model, name]),
                                 paper=record.get("link") or None, card=None),
                 protocol=ProtocolPart(id=protocol_id, hash=_hash(card), family=family, card=card),
                 dataset=DatasetPart(name=dataset, identity=None), implementation={}, numerics={}, n=None,
                 seed=None, batch_size=None, headline=headline, metrics=metrics, versions={}, device=None, date=None,
                 provenance="imported", source=record)


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def import_robustbench(root: Path, out: Path, warnings: list[str]) -> list[Path]:
    """Every ``<dataset>/<threat_model>/<ModelID>.json`` under ``root`` (a ``model_info`` folder) as an imported
    entry under ``out``; a file that cannot be read is skipped with a warning naming it."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise BenchError(f"{root} is not a folder", "pass RobustBench's model_info folder")
    written = []
    for path in sorted(root.glob("*/*/*.json")):
        dataset, threat_model = path.parent.parent.name, path.parent.name
        if threat_model not in THREAT_MODELS or not path.is_file():
            warnings.append(f"skipped {path}: threat model {threat_model!r} has no bench family")
            continue
        try:
            entry = import_file(path, dataset, threat_model)
        except BenchError as err:
            warnings.append(f"skipped {err.problem}")
            continue
        written.append(save_entry(entry, out))
    return written


def export_entry(entry: Entry) -> tuple[Path, dict[str, Any]] | None:
    """Our entry as (``<dataset>/<threat_model>/<id>.json``, its record), or None where RobustBench has no threat
    model for it (only standard AutoAttack and corruptions have one)."""
    params = entry.protocol.card.get("params", {})
    if entry.protocol.family == "autoattack" and params.get("version", "standard") == "standard":
        threat_model, field, metric = params.get("norm"), "autoattack_acc", "robust_acc"
        eps = str(Fraction(params["eps"]).limit_denominator(1000))
    elif entry.protocol.family == "corruptions":
        threat_model, field, metric, eps = "corruptions", "corruptions_acc", "corruption_acc", None
    else:
        return None
    if threat_model not in THREAT_MODELS or metric not in entry.metrics or "clean_acc" not in entry.metrics:
        return None
    card = entry.model.card or {}
    record = {"link": entry.model.paper or "", "name": entry.model.id, "authors": "", "additional_data": False,
              "number_forward_passes": 1, "dataset": entry.dataset.name, "venue": "",
              "architecture": (card.get("architecture") or {}).get("name", ""), "eps": eps,
              "clean_acc": f"{100 * entry.metrics['clean_acc'].value:.2f}", "reported": "",
              field: f"{100 * entry.metrics[metric].value:.2f}",
              "footnote": f"bench entry: n {entry.n}, seed {entry.seed}, protocol {entry.protocol.hash[:12]}"}
    return Path(entry.dataset.name) / threat_model / f"{safe_filename(entry.model.id)}.json", record


def export_robustbench(entries: list[Path], out: Path, warnings: list[str]) -> list[Path]:
    """Our entries as a ``model_info`` folder under ``out``; entries RobustBench has no field for are skipped
    with a warning."""
    written = []
    for path in entries:
        entry = read_entry(path)
        exported = export_entry(entry)
        if exported is None:
            warnings.append(f"skipped {path}: RobustBench has no threat model for {entry.protocol.id}")
            continue
        relative, record = exported
        target = Path(out) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
        written.append(target)
    return written
