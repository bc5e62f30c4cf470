"""`bench perf`: every engine timed on the same points, each stage against its pass-count limit."""
from __future__ import annotations

import math
import re

import pytest
import torch
from typer.testing import CliRunner

from bench.cli import app
from bench.data import load_dataset
from bench.threats.aa_engine.perf import PassCounter, measure, table

pytest.importorskip("pyautoattack")


def test_stages_account_for_every_pass_and_the_limit_is_below_the_time(digits_model):
    test = load_dataset("digits", "test")
    x, y = test.x[:24], test.y[:24]
    kw = dict(norm="Linf", eps=0.1, version="custom", attacks=["apgd-ce", "apgd-t"])
    bench = measure("bench", digits_model, x, y, **kw)
    official = measure("official", digits_model, x, y, **kw)
    for m in (bench, official):
        assert [s.name for s in m.stages] == ["apgd-ce", "apgd-t"]
        assert all(sum(s.backward_calls) > 0 for s in m.stages)  # the gradient attacks' passes are counted
        assert 0 < m.limit < m.seconds * 1.05  # no stage can beat its own passes (5% timing noise)
        assert 0 <= m.robust <= len(x)
        assert 0 < m.warm_up_s < math.inf  # timed apart, before the run
    assert all(p.requires_grad for p in digits_model.parameters())
    text = table([bench, official])
    assert "bench engine" in text and "official AutoAttack" in text and "| bench | apgd-ce |" in text


def test_the_counter_tells_gradient_passes_from_plain_ones(digits_model):
    counter = PassCounter(digits_model)
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        counter(x)
    probe = x.clone().requires_grad_(True)
    counter(probe)
    assert counter.between(0, float("inf")) == ([5], [5])


def test_bench_perf_times_each_engine_in_its_own_process():
    runner = CliRunner()
    out = runner.invoke(app, ["perf", "--model", "mnist-cnn-standard", "--n", "8", "--eps", "0.3", "--attack",
                              "apgd-ce", "--engine", "bench", "--engine", "official", "--threads", "1"])
    assert out.exit_code == 0, out.output
    rows = [line for line in out.output.splitlines() if re.match(r"\| (bench engine|official AutoAttack)", line)]
    assert len(rows) == 2 and all(re.search(r"\| \d+\.\d\dx \| \d+\.\d \(2\) \|$", r) for r in rows), out.output
    bad = runner.invoke(app, ["perf", "--model", "mnist-cnn-standard", "--eps", "0.3", "--engine", "fast"])
    assert bad.exit_code != 0 and "unknown engine 'fast'" in bad.output


def test_repeated_runs_report_the_median_and_the_range(digits_model):
    test = load_dataset("digits", "test")
    x, y = test.x[:12], test.y[:12]
    m = measure("bench", digits_model, x, y, norm="Linf", eps=0.1, version="custom", attacks=["apgd-ce"], repeats=3)
    assert len(m.runs) == 3 and m.seconds == sorted(m.runs)[1]  # the median run is the one reported
    assert m.differ == 0  # a seeded engine leaves the same points robust every time
    row = next(line for line in table([m]).splitlines() if line.startswith("| bench engine"))
    assert f"(median of 3: {min(m.runs):.1f}-{max(m.runs):.1f})" in row
    assert f"({min(m.runs) / m.limit:.2f}-{max(m.runs) / m.limit:.2f}x)" in row
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        measure("bench", digits_model, x, y, norm="Linf", eps=0.1, repeats=0)


def test_runs_that_leave_different_points_robust_are_counted_and_shown(digits_model, monkeypatch):
    from bench.threats.aa_engine import perf

    outcomes = iter([[True, True], [True, False], [False, False], [True, True]])  # the warm-up, then three runs
    monkeypatch.setattr(perf, "_run", lambda *args: ([], torch.tensor(next(outcomes))))
    x = torch.rand(2, 1, 8, 8)
    m = perf.measure("bench", digits_model, x, torch.zeros(2, dtype=torch.long), norm="Linf", eps=0.1, repeats=3)
    assert m.differ == 2 and "(2 differ between runs)" in table([m])  # each point is robust in some runs only


def test_a_batch_size_bounds_every_call_and_changes_no_outcome(digits_model):
    test = load_dataset("digits", "test")
    x, y = test.x[:12], test.y[:12]
    kw = dict(norm="Linf", eps=0.1, version="custom", attacks=["apgd-ce"])
    restarts = {"bench": 5, "official": 1}  # APGD-CE's 5 in version custom: our engine batches them, the official loops

    def calls(m):
        return [rows for s in m.stages for rows in s.forward_calls + s.backward_calls]

    whole = measure("bench", digits_model, x, y, **kw)
    assert max(calls(whole)) == len(x) * restarts["bench"] and 0 < whole.robust < len(x)
    for engine in ("bench", "official"):
        m = measure(engine, digits_model, x, y, batch_size=4, **kw)
        assert calls(m) and max(calls(m)) <= 4 * restarts[engine], (engine, calls(m))
        if engine == "bench":  # every draw is keyed by point: the chunking changes no outcome
            assert m.robust == whole.robust
    with pytest.raises(ValueError, match="no batch size"):
        measure("torchattacks", digits_model, x, y, norm="Linf", eps=0.1, batch_size=4)
