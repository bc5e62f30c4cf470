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
from bench.store import Store
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
    rows = Store(results).read_run(pgd.run_id).rows.sort_values("index").reset_index(drop=True)
    points = entry.points.frame()  # every point's outcome, as stored
    assert set(points.columns) == {"index", "label", "clean_pred", "clean_correct", "adv_pred", "robust"}
    for column in points.columns:  # exactly, dtypes included (no run id, shard or timing)
        assert points[column].tolist() == rows[column].tolist() and points[column].dtype == rows[column].dtype

    broken = json.loads(files[0].read_text())
    broken["provenance"] = "trust me"
    files[0].write_text(json.dumps(broken))
    with pytest.raises(BenchError, match="not a valid entry"):
        read_entry(files[0])


COMMITTED = sorted((LEADERBOARD / "entries").glob("*/*.json"))


def test_the_committed_entries_cover_the_mnist_cnns_and_their_protocols():
    protocols = read_protocols(LEADERBOARD / "protocols.yaml")
    entries = [read_entry(path) for path in COMMITTED]
    for model in ("mnist-cnn-standard", "mnist-cnn-pgd-at", "mnist-lenet-standard"):
        covered = {e.protocol.id for e in entries if e.model.id == model}
        assert covered == set(protocols.required("mnist", "classifier")), model


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_every_committed_entry_says_what_its_points_say(path):
    entry = read_entry(path)
    assert entry.provenance == "verified" and path.relative_to(LEADERBOARD) == entry.path
    assert load_threat_card(entry.protocol.id).hash == entry.protocol.hash  # the catalogue's card, unchanged
    points = entry.points.frame()
    assert len(points) == entry.n and points["index"].is_unique
    for name, value in entry.metrics.items():
        recomputed = value.metric(name).compute(points[value.column].to_numpy())
        assert recomputed.value == pytest.approx(value.value, nan_ok=True) and recomputed.n == value.n, name
        assert (recomputed.low, recomputed.high) == pytest.approx((value.low, value.high), nan_ok=True), name


def test_points_that_do_not_decode_to_one_value_per_point_are_a_schema_error(tmp_path, monkeypatch):
    """A truncated bit column would unpack padded with False (points silently 'not robust'): refused instead, as
    are bad base64, a column of another length and a file too large to be an entry."""
    import base64

    from bench.leaderboard import entries as E

    (committed,) = LEADERBOARD.glob("entries/mnist/mnist-cnn-pgd-at--*--9b307cdb82c2.json")
    good = json.loads(committed.read_text())
    robust = good["points"]["columns"]["robust"]
    for damage in (lambda c: base64.b64encode(base64.b64decode(c["data"])[:-1]).decode(), lambda c: "%%%",
                   lambda c: base64.b64encode(b"\0" * 3).decode()):
        bad = json.loads(json.dumps(good))
        bad["points"]["columns"]["robust"] = {**robust, "dtype": "bool", "data": damage(robust)}
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(BenchError, match="not a valid entry.*the points do not decode"):
            read_entry(path)
    monkeypatch.setattr(E, "MAX_ENTRY_BYTES", 1000)
    with pytest.raises(BenchError, match="bytes, over the 1,000 an entry may hold"):
        read_entry(committed)
