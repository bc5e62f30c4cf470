"""The board of 1,500 runs, from their summaries, against the reference measured in the same run: reading every
run's rows and computing its metrics (what the board did before runs had ``summary.json``).

The runs are copies of one real run under 1,500 model hashes (four shards of 25 points each). Asserted: the
board from summaries is not slower than reading the rows, and it gives the same numbers.
"""
from __future__ import annotations

import json
import shutil
import time

import numpy as np

from bench.leaderboard import build_board
from bench.metrics import Metric
from bench.run import evaluate
from bench.store import Store, run_id_of, sealed, unsealed
from bench.testing import threat_card

RUNS = 1500


def _fill(root, digits_model):
    summary = evaluate(digits_model, threat_card("pgd", norm="Linf", eps=0.1, steps=2), dataset="digits", n=100,
                       batch_size=25, results=root, progress=False)
    source = root / "runs" / summary.run_id
    meta, record = (unsealed(json.loads((source / name).read_text()), source / name)
                    for name in ("run.json", "summary.json"))
    for k in range(RUNS - 1):
        key = {**meta["key"], "model": f"{k:064x}"}
        run_id = run_id_of(key)
        target = root / "runs" / run_id
        shutil.copytree(source, target)
        (target / "run.json").write_text(json.dumps(sealed({**meta, "run_id": run_id, "key": key,
                                                            "model_id": f"m{k}"})))
        (target / "summary.json").write_text(json.dumps(sealed({**record, "run_id": run_id, "key": key,
                                                                "model": f"m{k}"})))
    return summary


def _from_rows(store: Store) -> dict[str, float]:
    """The reference: every run's rows read and its headline computed from them."""
    out = {}
    for run_id in store.run_ids():
        meta = store.run_meta(run_id)
        specs = {m["name"]: Metric.from_dict(m) for m in meta["metrics"]}
        rows = store.read_run(run_id).rows
        spec = specs[meta["headline"]]
        out[run_id] = spec.compute(np.asarray(rows[spec.column])).value
    return out


def test_the_board_of_1500_runs_reads_summaries_not_rows(benchmark, digits_model, tmp_path):
    _fill(tmp_path, digits_model)
    store = Store(tmp_path)
    start = time.perf_counter()
    reference = _from_rows(store)
    reference_s = time.perf_counter() - start
    board = benchmark.pedantic(lambda: build_board(store), rounds=3, iterations=1)
    rows = board.blocks[0].rows
    assert len(rows) == RUNS and {r["run_id"]: r["robust_acc"] for r in rows} == reference
    ratio = benchmark.stats.stats.min / reference_s
    benchmark.extra_info |= {"reference_rows_s": reference_s, "ratio_vs_reading_rows": ratio}
    print(f"\nboard of {RUNS} runs: {benchmark.stats.stats.min:.2f} s from summaries, {reference_s:.2f} s to read "
          f"their rows ({ratio:.2f}x)")
    assert ratio <= 1.0, f"the board from summaries took {ratio:.2f}x the time of reading every run's rows"
