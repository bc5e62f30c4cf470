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
