"""Our AutoAttack engine's speed goals (issue 23), as ratios measured in the same run: standard AutoAttack at L-inf
0.3 on the shipped mnist-cnn-pgd-at and the first 200 evaluation points, our engine against the official package,
and each against its pass-count limit (``bench.threats.aa_engine.perf``). ``bench perf --model mnist-cnn-pgd-at
--eps 0.3 --n 200 --repeat 3`` prints the same figures as a table. Both run in this process, one after the other, each
after its warm-up on 2 points, each timed three times, and compared on its median run (about 5 min on 2 CPU cores).
"""
from __future__ import annotations

from bench.perf import load_points
from bench.threats.aa_engine.perf import measure

CARD, N, EPS, REPEATS = "mnist-cnn-pgd-at", 200, 0.3, 3


def test_our_engine_outruns_the_official_near_its_pass_count_limit(benchmark):
    model, x, y = load_points(CARD, N, "cpu")
    official = measure("official", model, x, y, norm="Linf", eps=EPS, repeats=REPEATS)
    ours = benchmark.pedantic(lambda: measure("bench", model, x, y, norm="Linf", eps=EPS, repeats=REPEATS), rounds=1,
                              iterations=1)
    speedup = ours.examples_per_s / official.examples_per_s
    ratios = {s.name: s.seconds / s.limit(ours.rates) for s in ours.stages if s.limit(ours.rates) > 0}
    benchmark.extra_info.update(speedup_vs_official=speedup, limit_ratio=ours.seconds / ours.limit,
                                stage_ratios=ratios, robust=[ours.robust, official.robust])
    assert speedup >= 1.5, f"our engine runs {speedup:.2f}x the official's examples/s"
    assert ours.seconds <= 1.2 * ours.limit, f"{ours.seconds / ours.limit:.2f}x the pass-count limit"
    assert all(ratios.get(name, 0) <= 1.3 for name in ("fab-t", "square")), ratios
