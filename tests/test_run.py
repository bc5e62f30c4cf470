"""The run loop: determinism, resume without loss or double counting, validation of inputs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import bench
from bench.threats.pgd import PGD
from bench.errors import BenchError
from bench.identity import static_hash
from bench.run import evaluate
from bench.store import Store
from conftest import threat, write_threat

PGD_CARD = dict(norm="Linf", eps=0.1, steps=10)


def rows(results, run_id):
    return Store(results).query(
        "SELECT index, label, clean_pred, adv_pred, robust FROM rows WHERE run_id = ? ORDER BY index", [run_id])


def test_same_seed_same_rows_and_other_seed_other_run(digits_model, tmp_path):
    card = threat("pgd", **PGD_CARD)
    a = evaluate(digits_model, card, dataset="digits", n=120, batch_size=50, results=tmp_path / "a", progress=False)
    b = evaluate(digits_model, card, dataset="digits", n=120, batch_size=50, results=tmp_path / "b", progress=False)
    assert a.run_id == b.run_id
    assert rows(tmp_path / "a", a.run_id).equals(rows(tmp_path / "b", b.run_id))
    c = evaluate(digits_model, card, dataset="digits", n=120, batch_size=50, seed=1, results=tmp_path / "a",
                 progress=False)
    assert c.run_id != a.run_id
    assert len(Store(tmp_path / "a").query("SELECT DISTINCT run_id FROM rows")) == 2


def test_autoattack_is_deterministic_under_a_seed(digits_model, tmp_path):
    card = threat("autoattack", norm="Linf", eps=0.1, version="custom", attacks=["apgd-ce", "square"])
    runs = [evaluate(digits_model, card, dataset="digits", n=40, batch_size=40, results=tmp_path / k, progress=False)
            for k in ("a", "b")]
    assert rows(tmp_path / "a", runs[0].run_id).equals(rows(tmp_path / "b", runs[1].run_id))


def test_resume_after_interrupt_equals_uninterrupted_run(digits_model, tmp_path, monkeypatch):
    card = threat("pgd", **PGD_CARD)
    full = evaluate(digits_model, card, dataset="digits", n=100, batch_size=20, results=tmp_path / "full",
                    progress=False)
    calls = {"n": 0}
    original = PGD.attack

    def dies_on_third_batch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PGD, "attack", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate(digits_model, card, dataset="digits", n=100, batch_size=20, results=tmp_path / "cut", progress=False)
    store = Store(tmp_path / "cut")
    assert len(store.read_run(full.run_id).rows) == 40  # two finished batches kept, the third not written
    assert not list((tmp_path / "cut").rglob("*.part"))
    monkeypatch.setattr(PGD, "attack", original)
    resumed = evaluate(digits_model, card, dataset="digits", n=100, batch_size=20, results=tmp_path / "cut",
                       progress=False)
    assert calls["n"] == 3  # the two finished batches were not attacked again
    assert resumed.n == 100 and resumed.robust_acc == full.robust_acc
    assert rows(tmp_path / "cut", resumed.run_id).equals(rows(tmp_path / "full", full.run_id))


def test_resume_after_kill_of_the_cli(digits_card, tmp_path):
    """SIGKILL mid-run, rerun the same command: every point exactly once, same rows as a clean run."""
    slow_pgd = write_threat(tmp_path, "pgd", norm="Linf", eps=0.1, steps=400)
    results = tmp_path / "results-kill"
    cmd = [sys.executable, "-m", "bench", "run", "--model", str(digits_card), "--threat", str(slow_pgd),
           "--n", "200", "--batch-size", "20", "--results", str(results)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(results.rglob("shard-*.parquet"))) < 2 and time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shards_at_kill = len(list(results.rglob("shard-*.parquet")))
    assert 2 <= shards_at_kill < 10, "the run must be killed part way"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    counts = Store(results).query("SELECT count(*) AS n, count(DISTINCT index) AS d FROM rows").iloc[0]
    assert counts.n == counts.d == 200
    clean_run = subprocess.run(cmd[:-1] + [str(tmp_path / "results-clean")], env=env, capture_output=True,
                               text=True, timeout=300)
    assert clean_run.returncode == 0
    q = "SELECT index, adv_pred, robust FROM rows ORDER BY index"
    assert Store(results).query(q).equals(Store(tmp_path / "results-clean").query(q))


def test_bare_module_through_the_api(digits_model, tmp_path):
    summary = bench.evaluate(digits_model, threat("clean"), dataset="digits", n=50, results=tmp_path, progress=False,
                             model_name="my-net")
    x, y = bench.load_data("digits", n=50)
    with torch.no_grad():
        expected = (digits_model(x).argmax(1) == y).float().mean().item()
    assert summary.model == "my-net" and summary.n == 50
    assert summary.clean_acc == pytest.approx(expected) and list(summary.metrics) == ["clean_acc"]
    assert bench.board(results=tmp_path).model.tolist() == ["my-net"]


def test_module_hash_tracks_weights(digits_model):
    twin = type(digits_model)(*[m for m in digits_model])  # same layers, same tensors
    assert static_hash(twin) == static_hash(digits_model)
    changed = torch.nn.Linear(2, 2)
    before = static_hash(changed)
    with torch.no_grad():
        changed.weight.add_(1)
    assert static_hash(changed) != before


def test_training_mode_is_restored(digits_model, tmp_path):
    digits_model.train()
    try:
        evaluate(digits_model, threat("clean"), dataset="digits", n=10, results=tmp_path, progress=False)
        assert digits_model.training
    finally:
        digits_model.eval()


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=0), "--n must be positive"),
    (dict(n=10**6), "larger than the split"),
    (dict(batch_size=0), "--batch-size must be positive"),
    (dict(device="tpu:7"), "unknown device"),
])
def test_bad_run_arguments_are_clear_errors(digits_model, tmp_path, kwargs, message):
    with pytest.raises(BenchError, match=message):
        evaluate(digits_model, threat("clean"), dataset="digits", results=tmp_path, progress=False,
                 **{"n": 10, **kwargs})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_gpu_is_a_clear_error(digits_model, tmp_path):
    with pytest.raises(BenchError, match="CUDA is not available"):
        evaluate(digits_model, threat("clean"), dataset="digits", n=10, device="cuda", results=tmp_path)


def test_a_bare_module_is_evaluated_where_it_lives(digits_model, tmp_path):
    s = evaluate(digits_model, threat("clean"), dataset="digits", n=10, device="auto", results=tmp_path,
                 progress=False)
    assert Store(tmp_path).run_meta(s.run_id)["device"] == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(BenchError, match="CUDA is not available"):
            evaluate(digits_model, threat("clean"), dataset="digits", n=10, device="cuda", results=tmp_path)
    else:
        with pytest.raises(BenchError, match="model is on cpu"):
            evaluate(digits_model, threat("clean"), dataset="digits", n=10, device="cuda", results=tmp_path)


def test_threat_for_another_dataset_is_refused(digits_model, tmp_path):
    with pytest.raises(BenchError, match="defined for mnist"):
        evaluate(digits_model, "autoattack-linf-0.3", dataset="digits", n=10, results=tmp_path)


def test_bare_module_needs_a_dataset(digits_model, tmp_path):
    with pytest.raises(BenchError, match="no dataset given"):
        evaluate(digits_model, threat("clean"), n=10, results=tmp_path)
