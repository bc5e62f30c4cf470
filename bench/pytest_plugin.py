"""pytest plugin (registered as ``bench`` in ``pytest11``): gate a test suite on robustness.

    def test_stays_robust(bench_check):
        assert bench_check("my-model.yaml", "autoattack-linf-0.3").passed

The baseline is ``--bench-baseline RUN`` (a run id or folder; give it once per protocol, repeatable) or the
``baseline`` argument; the protocol must be the baseline's. Failures print the per-metric diff.
"""
from __future__ import annotations

from typing import Any, Callable

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-baseline", action="append", default=[], metavar="RUN",
                     help="bench: a baseline run (id or folder) for the bench_check fixture; repeatable")


@pytest.fixture
def bench_check(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``bench_check(model, threat=None, baseline=None, **options)``: a ``bench.check.CheckResult`` whose
    ``passed`` is False when a headline regressed or the runs cannot be compared (its text says which)."""
    from bench.check import check
    from bench.errors import BenchError

    def run(model: Any, threat: str | None = None, baseline: str | None = None, **options: Any):
        candidates = [baseline] if baseline is not None else request.config.getoption("--bench-baseline")
        if not candidates:
            pytest.fail("bench_check needs a baseline: pass --bench-baseline RUN or baseline=...", pytrace=False)
        results = []
        for candidate in candidates:
            try:
                results.append(check(model, candidate, threat=threat, progress=False, **options))
            except BenchError as err:
                pytest.fail(f"bench_check: {err}", pytrace=False)
        chosen = next((r for r in results if not r.reasons), results[0])  # the baseline of this protocol
        print(chosen)
        return chosen

    return run
