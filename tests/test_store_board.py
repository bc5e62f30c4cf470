"""Store and leaderboard: ranking, protocol separation, formats, incomplete runs."""
from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from bench.errors import BenchError
from bench.leaderboard import leaderboard, render
from bench.run import evaluate
from bench.stats import wilson_interval
from bench.store import Store
from conftest import threat


@pytest.fixture
def filled(digits_model, tmp_path):
    """Two models x two protocols of one threat id, plus an incomplete run."""
    kw = dict(dataset="digits", n=60, batch_size=30, results=tmp_path, progress=False)
    weak = evaluate(digits_model, threat("pgd", "pgd-digits", norm="Linf", eps=0.05, steps=5), model_name="a", **kw)
    strong = evaluate(digits_model, threat("pgd", "pgd-digits", norm="Linf", eps=0.2, steps=5), model_name="a", **kw)
    clean = evaluate(digits_model, threat("clean", "pgd-digits"), model_name="b", **kw)
    return tmp_path, weak, strong, clean


def test_board_ranks_within_one_protocol(filled):
    root, weak, strong, clean = filled
    table = leaderboard(Store(root))
    assert len(table) == 3
    assert table.protocol.nunique() == 3  # same threat id, three protocol hashes: never ranked together
    row = table[table.run_id == weak.run_id].iloc[0]
    assert row.robust_acc == pytest.approx(weak.robust_acc) and row.n == 60
    assert (row.robust_ci_low, row.robust_ci_high) == pytest.approx(wilson_interval(round(weak.robust_acc * 60), 60))
    text = render(table, "markdown")
    assert text.count("### digits / pgd-digits") == 3


def test_board_keeps_only_the_latest_complete_run(filled, digits_model):
    root, weak, *_ = filled
    evaluate(digits_model, threat("pgd", "pgd-digits", norm="Linf", eps=0.05, steps=5), model_name="a",
             dataset="digits", n=90, batch_size=30, results=root, progress=False)
    table = leaderboard(Store(root))
    same_protocol = table[table.protocol == weak.threat_hash[:12]]
    assert same_protocol.n.tolist() == [90]  # the newer n=90 run replaced the n=60 one
    assert len(table) == 3


def test_incomplete_runs_are_not_ranked(digits_model, tmp_path):
    store = Store(tmp_path)
    summary = evaluate(digits_model, threat("clean"), dataset="digits", n=40, batch_size=20, results=tmp_path,
                       progress=False)
    shards = sorted((tmp_path / "runs" / summary.run_id).glob("batch-*.parquet"))
    shards[-1].unlink()
    assert leaderboard(store).empty
    assert render(leaderboard(store)) == "(no complete runs match)"


def test_formats_round_trip(filled):
    root, *_ = filled
    table = leaderboard(Store(root))
    csv = pd.read_csv(io.StringIO(render(table, "csv")))
    assert csv.robust_acc.tolist() == pytest.approx(table.robust_acc.tolist())
    records = json.loads(render(table, "json"))
    assert {r["model"] for r in records} == {"a", "b"}


def test_filters(filled):
    root, *_ = filled
    assert leaderboard(Store(root), dataset="mnist").empty
    assert len(leaderboard(Store(root), threat="pgd-digits")) == 3


def test_empty_store_is_a_clear_error(tmp_path):
    with pytest.raises(BenchError, match="no results under"):
        leaderboard(Store(tmp_path / "nothing"))


def test_run_metadata_records_protocol_and_versions(filled):
    root, weak, *_ = filled
    meta = Store(root).run_meta(weak.run_id)
    assert meta["threat"] == weak.threat_hash and meta["n"] == 60 and meta["seed"] == 0
    assert {"torch", "python"} <= set(meta["versions"])


def test_wilson_interval_known_values():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)
