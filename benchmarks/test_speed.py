"""Speed of bench's own layers, as ratios against a reference timed in the same run.

Run with `make benchmark`. Each test times bench's path and the bare reference, prints the ratio
and asserts the overhead stays bounded.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from bench.ops.pgd import pgd
from bench.data import load_dataset
from bench.run import evaluate
from bench.testing import threat_card as threat


def _best_of(fn, repeats=3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _reference_pgd(model, x, y, eps, alpha, steps):
    """The textbook L-inf PGD loop (no best tracking, no restarts)."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv


def test_pgd_core_overhead(benchmark, digits_model):
    test = load_dataset("digits", "test")
    x, y = test.x, test.y
    reference = _best_of(lambda: _reference_pgd(digits_model, x, y, 0.1, 0.025, 40))
    run = lambda: pgd(digits_model, x, y, norm="Linf", eps=0.1, steps=40, step_size=0.025,  # noqa: E731
                      gen=torch.Generator().manual_seed(0))
    benchmark.pedantic(run, rounds=3, iterations=1)
    ratio = benchmark.stats.stats.min / reference
    benchmark.extra_info["ratio_vs_textbook_pgd"] = ratio
    assert ratio < 1.5, f"per-example best tracking costs {ratio:.2f}x the textbook loop"


def test_run_loop_overhead_on_autoattack(benchmark, digits_model, tmp_path):
    """evaluate() (subset, batching, shards, DuckDB summary) around AutoAttack vs calling it bare."""
    from pyautoattack import AutoAttack

    test = load_dataset("digits", "test")
    x, y = test.x[:100], test.y[:100]
    card = threat("autoattack", norm="Linf", eps=0.1, version="custom", attacks=["apgd-ce"])
    reference = _best_of(lambda: AutoAttack(digits_model, eps=0.1, norm="Linf", seed=0, version="custom",
                                            attacks=["apgd-ce"]).run_standard_evaluation(x, y, batch_size=100))
    counter = iter(range(10**6))
    run = lambda: evaluate(digits_model, card, dataset="digits", n=100, batch_size=100,  # noqa: E731
                           results=tmp_path / str(next(counter)), progress=False)
    benchmark.pedantic(run, rounds=3, iterations=1)
    ratio = benchmark.stats.stats.min / reference
    benchmark.extra_info["ratio_vs_bare_autoattack"] = ratio
    assert ratio < 1.3, f"the run loop adds {ratio:.2f}x around AutoAttack"
