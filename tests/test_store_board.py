"""Store and leaderboard: ranking, one table per protocol, models by hash, which run is shown, formats,
and the store's safety under copies, concurrent writers and damaged shards."""
from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from bench.data import load_dataset
from bench.errors import BenchError
from bench.leaderboard import build_board, leaderboard, render
from bench.metrics import Metric
from bench.run import evaluate
from bench.summary import summarize
from bench.stats import wilson_interval
from bench.implementation import CORE_REVISION
from bench.spec import RunSpec
from bench.digests import sha256_file
from bench.store import Store, StoreError
from bench.threats.pgd import PGD
from conftest import threat, write_threat

KW = dict(dataset="digits", batch_size=30, progress=False)


@pytest.fixture
def filled(digits_model, tmp_path):
    """Two protocols of one threat id on model a, plus a clean run of model b under the same id."""
    kw = dict(KW, n=60, results=tmp_path)
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
    assert (row.robust_acc_ci_low, row.robust_acc_ci_high) == pytest.approx(
        wilson_interval(round(weak.robust_acc * 60), 60))
    text = render(build_board(Store(root)), "markdown")
    assert text.count("### digits / pgd-digits") == 3
    assert "ranked by robust accuracy, higher is better" in text and "ranked by clean accuracy" in text


def test_one_protocol_is_one_table_under_every_card_name(digits_model, tmp_path):
    kw = dict(KW, n=30, results=tmp_path)
    params = dict(norm="Linf", eps=0.1, steps=3)
    evaluate(digits_model, threat("pgd", "first-name", **params), model_name="a", **kw)
    other = copy.deepcopy(digits_model)
    with torch.no_grad():
        other[-1].bias.add_(0.5)  # another model
    evaluate(other, threat("pgd", "second-name", **params), model_name="b", **kw)
    board = build_board(Store(tmp_path))
    assert len(board.blocks) == 1 and board.blocks[0].threats == ["first-name", "second-name"]
    assert [r["model"] for r in board.blocks[0].rows] in (["a", "b"], ["b", "a"])
    for name in ("first-name", "second-name"):  # either name finds the whole table
        assert sorted(leaderboard(Store(tmp_path), threat=name).model) == ["a", "b"]
    assert sorted(leaderboard(Store(tmp_path), threat="pgd").model) == ["a", "b"]  # a family name too


def test_models_are_told_apart_by_hash_and_a_shared_name_is_flagged(digits_model, tmp_path):
    kw = dict(KW, n=30, results=tmp_path)
    other = copy.deepcopy(digits_model)
    with torch.no_grad():
        other[-1].bias.add_(0.5)
    for module in (digits_model, other):
        evaluate(module, threat("clean"), model_name="net", **kw)  # two different modules, one name
    table = leaderboard(Store(tmp_path))
    assert len(table) == 2 and table.model_hash.nunique() == 2
    assert (table.flag == "name used by 2 different models").all()
    assert "net (name used by 2 different models)" in render(build_board(Store(tmp_path)))


def test_board_shows_the_largest_complete_run_then_the_latest(digits_model, tmp_path):
    card = threat("pgd", "pgd-digits", norm="Linf", eps=0.05, steps=3)

    def shown():
        return leaderboard(Store(tmp_path))[["n", "run_id"]].values.tolist()

    full = evaluate(digits_model, card, n=90, results=tmp_path, **KW)
    smoke = evaluate(digits_model, card, n=30, results=tmp_path, **KW)  # later, smaller
    assert smoke.run_id != full.run_id and shown() == [[90, full.run_id]]
    again = evaluate(digits_model, card, n=90, results=tmp_path, **{**KW, "batch_size": 45})  # later, as large
    assert shown() == [[90, again.run_id]]


def test_incomplete_runs_are_not_ranked(digits_model, tmp_path):
    summary = evaluate(digits_model, threat("clean"), n=40, results=tmp_path, **{**KW, "batch_size": 20})
    shards = sorted((tmp_path / "runs" / summary.run_id).glob("shard-*.parquet"))
    shards[-1].unlink()
    assert leaderboard(Store(tmp_path)).empty
    assert render(build_board(Store(tmp_path))) == "(no complete runs match)"
    assert not summarize(Store(tmp_path), summary.run_id).complete


def test_formats_round_trip(filled):
    root, *_ = filled
    board = build_board(Store(root))
    table = board.frame()
    csv = pd.read_csv(io.StringIO(render(board, "csv")))
    assert csv.robust_acc.dropna().tolist() == pytest.approx(table.robust_acc.dropna().tolist())
    records = json.loads(render(board, "json"))
    assert {r["model"] for r in records} == {"a", "b"}
    with pytest.raises(BenchError, match="unknown format"):
        render(board, "xml")


def test_filters(filled):
    root, *_ = filled
    assert leaderboard(Store(root), dataset="mnist").empty
    assert len(leaderboard(Store(root), threat="pgd-digits")) == 3


def test_empty_store_is_a_clear_error(tmp_path):
    with pytest.raises(BenchError, match="no results under"):
        leaderboard(Store(tmp_path / "nothing"))


def test_run_metadata_records_identity_metrics_and_versions(filled):
    root, weak, *_ = filled
    meta = Store(root).run_meta(weak.run_id)
    assert meta["key"] == {"model": weak.model_hash, "weights": {}, "protocol": weak.protocol,
                           "dataset": f"digits@{load_dataset('digits').content_hash[:16]}",
                           "n": 60, "seed": 0, "batch_size": 30,
                           "numerics": {"device": "cpu", "torch": torch.__version__,
                                        "threads": torch.get_num_threads()},
                           "implementation": {"core": CORE_REVISION, "task": {"name": "classifier", "revision": 1},
                                              "family": {"name": "pgd", "revision": PGD.revision}}}
    assert RunSpec.from_dict(meta["spec"]).run_id == weak.run_id  # the spec in run.json is the run
    assert [m["name"] for m in meta["metrics"]] == ["clean_acc", "robust_acc"] and meta["headline"] == "robust_acc"
    assert {"torch", "python"} <= set(meta["versions"]) and meta["threads"] >= 1


# --- two writers, copies, damage -------------------------------------------------------------------


def test_a_copied_shard_is_counted_once_and_a_contradicting_copy_is_refused(digits_model, tmp_path):
    card = threat("pgd", norm="Linf", eps=0.1, steps=3)
    summary = evaluate(digits_model, card, n=60, results=tmp_path, **KW)
    shard = sorted((tmp_path / "runs" / summary.run_id).glob("shard-*.parquet"))[0]
    copy = shard.with_name(f"{shard.stem} (sync-conflict copy).parquet")
    shutil.copy(shard, copy)
    again = summarize(Store(tmp_path), summary.run_id)
    assert again.n == 60 and again.robust_acc == summary.robust_acc and again.robust_acc_ci == summary.robust_acc_ci
    assert leaderboard(Store(tmp_path)).n.tolist() == [60]  # the run stays on the board

    import pyarrow.parquet as pq

    table = pq.read_table(copy)
    flipped = table.set_column(table.schema.get_field_index("robust"), "robust",
                               [[not v for v in table.column("robust").to_pylist()]])
    pq.write_table(flipped, copy)
    with pytest.raises(StoreError, match="has no checksum on record"):  # not what bench wrote: never counted
        summarize(Store(tmp_path), summary.run_id)
    assert not copy.exists() and summarize(Store(tmp_path), summary.run_id).robust_acc == summary.robust_acc

    pq.write_table(flipped, copy)  # a copy that brings a checksum of its own still must agree
    Store(tmp_path).checksum_path(copy).write_text(sha256_file(copy))
    with pytest.raises(StoreError, match="two different results for evaluation point"):
        summarize(Store(tmp_path), summary.run_id)


def test_two_processes_running_the_same_command_share_its_shards(digits_card, tmp_path):
    slow = write_threat(tmp_path, "pgd", norm="Linf", eps=0.1, steps=150)
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "bench", "run", "--model", str(digits_card), "--threat", str(slow), "--n", "200",
           "--batch-size", "20", "--results", str(results), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    summaries = [json.loads(out[out.index("{"):]) for out, _ in outs]
    assert summaries[0]["run_id"] == summaries[1]["run_id"]
    assert summaries[0]["n"] == summaries[1]["n"] == 200
    assert summaries[0]["robust_acc"] == summaries[1]["robust_acc"]
    shards = list((results / "runs" / summaries[0]["run_id"]).glob("shard-*.parquet"))
    assert len(shards) == 10  # one file per shard, whoever computed it
    counts = Store(results).query("SELECT count(*) AS n, count(DISTINCT index) AS d FROM rows").iloc[0]
    assert counts.n == counts.d == 200
    assert leaderboard(Store(results)).n.tolist() == [200]


def test_a_damaged_shard_is_named_skipped_by_the_board_and_recomputed(digits_model, tmp_path, capsys):
    card = threat("pgd", norm="Linf", eps=0.1, steps=3)
    good = evaluate(digits_model, card, n=60, results=tmp_path, **KW)
    other = evaluate(digits_model, threat("clean"), n=60, results=tmp_path, **KW)
    shard = sorted((tmp_path / "runs" / good.run_id).glob("shard-*.parquet"))[1]
    shard.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(StoreError, match=shard.name):
        summarize(Store(tmp_path), good.run_id)
    board = build_board(Store(tmp_path))
    assert [b.family for b in board.blocks] == ["clean"]  # the other run still shows
    assert any(shard.name in w for w in board.warnings)
    resumed = evaluate(digits_model, card, n=60, results=tmp_path, **KW)
    assert resumed.run_id == good.run_id and resumed.n == 60 and resumed.robust_acc == good.robust_acc
    assert other.n == 60


def test_the_batch_size_is_part_of_the_run_and_a_mismatched_resume_says_so(digits_model, tmp_path, capsys):
    card = threat("pgd", norm="Linf", eps=0.1, steps=5)
    a = evaluate(digits_model, card, n=60, results=tmp_path, **{**KW, "batch_size": 60})
    b = evaluate(digits_model, card, n=60, results=tmp_path, **{**KW, "batch_size": 20})
    assert a.run_id != b.run_id and (a.batch_size, b.batch_size) == (60, 20)
    assert any("--batch-size 60" in note and "separate run" in note for note in b.notes)
    assert "--batch-size 60" in capsys.readouterr().err
    same = evaluate(digits_model, card, n=60, results=tmp_path, **{**KW, "batch_size": 20})
    assert same.run_id == b.run_id


def test_wilson_interval_known_values():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)


# --- summaries --------------------------------------------------------------------------------------


def test_a_complete_run_has_a_summary_and_the_board_reads_only_summaries(filled, monkeypatch):
    root, weak, strong, clean = filled
    for run in (weak, strong, clean):
        record = json.loads((root / "runs" / run.run_id / "summary.json").read_text())
        assert record["metrics"]["robust_acc" if run is not clean else "clean_acc"]["value"] == \
            run.metrics[run.headline].value
        assert record["key"] == Store(root).run_meta(run.run_id)["key"] and record["spec"]["n"] == 60
        assert set(record["shards"]) == {"shard-000000.parquet", "shard-000001.parquet"}
    before = leaderboard(Store(root))
    monkeypatch.setattr(Store, "read_run", lambda *a, **k: pytest.fail("the board opened a shard file"))
    after = leaderboard(Store(root))
    assert after.equals(before) and len(after) == 3


def test_a_run_without_its_summary_is_left_off_until_its_command_is_rerun(digits_model, tmp_path):
    card = threat("pgd", norm="Linf", eps=0.1, steps=3)
    summary = evaluate(digits_model, card, n=60, results=tmp_path, **KW)
    (tmp_path / "runs" / summary.run_id / "summary.json").unlink()  # killed after its last shard
    assert build_board(Store(tmp_path)).blocks == []
    evaluate(digits_model, card, n=60, results=tmp_path, **KW)
    assert (tmp_path / "runs" / summary.run_id / "summary.json").is_file()
    assert [r["run_id"] for r in build_board(Store(tmp_path)).blocks[0].rows] == [summary.run_id]


def test_rerunning_a_complete_run_keeps_its_summary_date_and_time(digits_model, tmp_path):
    """A rerun computes nothing, so its summary (when the run finished, how long it took) stays as it was."""
    card = threat("pgd", norm="Linf", eps=0.1, steps=3)
    summary = evaluate(digits_model, card, n=60, results=tmp_path, **KW)
    path = tmp_path / "runs" / summary.run_id / "summary.json"
    first = path.read_bytes()
    evaluate(digits_model, card, n=60, results=tmp_path, **KW)
    assert path.read_bytes() == first and json.loads(first)["wall_seconds"] > 0


def test_a_percent_mean_interval_stays_inside_zero_to_one():
    values = np.array([1.0] * 48 + [0.0, 0.5])  # the normal interval runs past 1
    spec = Metric("acc_fog", "acc_fog", "accuracy under fog", agg="mean", as_percent=True)
    out = spec.compute(values)
    assert out.high == 1.0 and 0 < out.low < out.value < 1
    plain = Metric("m", "m", "m", agg="mean").compute(values)
    assert plain.high > 1.0  # a mean that is not a share keeps its normal interval
