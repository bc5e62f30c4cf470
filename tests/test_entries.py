"""Leaderboard entries: made from real runs, validated by a versioned schema whose JSON Schema is committed,
and a protocols file whose every protocol exists and fits its dataset and task."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import bench
from bench.cli import app
from bench.errors import BenchError
from bench.leaderboard.entries import entry_schema, read_entry, read_protocols
from bench.testing import threat_card
from bench.threats import THREAT_FAMILIES, load_threat_card

LEADERBOARD = Path(bench.__file__).resolve().parent.parent / "leaderboard"


def test_the_committed_json_schema_is_the_entry_schema():
    assert (LEADERBOARD / "schema" / "entry.schema.json").read_text() == entry_schema(), (
        "the entry schema changed: bump ENTRY_VERSION if old entries no longer validate, then run "
        "`bench leaderboard schema --out leaderboard/schema/entry.schema.json`")


def test_every_required_protocol_exists_and_fits_its_dataset_and_task():
    protocols = read_protocols(LEADERBOARD / "protocols.yaml")
    assert {"mnist", "mnist42"} <= set(protocols.datasets)
    for dataset, tasks in protocols.datasets.items():
        for task, ids in tasks.items():
            assert ids and len(ids) == len(set(ids)), (dataset, task)
            for threat_id in ids:
                card = load_threat_card(threat_id)
                assert not card.datasets or dataset in card.datasets, (threat_id, dataset)
                assert task in THREAT_FAMILIES.get(card.family).tasks, (threat_id, task)


def test_entries_are_written_for_the_runs_the_board_shows(digits_card, digits_model, tmp_path):
    results, out = tmp_path / "results", tmp_path / "leaderboard"
    kw = dict(dataset="digits", batch_size=30, results=results, progress=False)
    pgd = bench.evaluate(str(digits_card), threat_card("pgd", norm="Linf", eps=0.1, steps=3), n=60, **kw)
    small = bench.evaluate(str(digits_card), threat_card("pgd", norm="Linf", eps=0.1, steps=3), n=30, **kw)
    clean = bench.evaluate(str(digits_card), "clean", n=60, **kw)
    bench.evaluate(digits_model, "clean", n=60, **kw)  # a bare module: nothing to publish
    runner = CliRunner()
    done = runner.invoke(app, ["leaderboard", "entries", "--results", str(results), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "bare module" in done.output
    files = sorted(out.glob("entries/digits/*.json"))
    assert len(files) == 2  # pgd (its 60-point run, not the 30-point one) and clean
    entries = {e.protocol.family: e for e in map(read_entry, files)}
    assert entries["pgd"].run_id == pgd.run_id != small.run_id and entries["clean"].run_id == clean.run_id
    entry = entries["pgd"]
    assert entry.provenance == "verified" and entry.n == 60 and entry.seed == 0 and entry.batch_size == 30
    assert entry.metrics["robust_acc"].value == pytest.approx(pgd.robust_acc)
    assert (entry.metrics["robust_acc"].low, entry.metrics["robust_acc"].high) == pytest.approx(pgd.robust_acc_ci)
    assert entry.model.id == "digits-cnn" and entry.model.card["architecture"]["name"] == "small-cnn"
    assert entry.dataset.identity.startswith("digits@") and entry.implementation["family"]["name"] == "pgd"
    assert {"torch", "python"} <= set(entry.versions)

    broken = json.loads(files[0].read_text())
    broken["provenance"] = "trust me"
    files[0].write_text(json.dumps(broken))
    with pytest.raises(BenchError, match="not a valid entry"):
        read_entry(files[0])
