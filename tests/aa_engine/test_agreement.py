"""Agreement, the condition for our engine being the default: on every case of ``agreement.CASES`` (each shipped
MNIST classifier, robust and not, and the official package's own CIFAR-10 ResNet-18), the same model, points and
seed give the official's robust accuracy within paired sampling error, the official's per-stage accuracy within
sampling error, and the same checks (the Square check where the Square stage's outcome calls for it). The
official's outcomes are a committed fixture (``agreement.py`` makes it); the question each answers (model
weights, protocol, data, n, seed) must be the one asked here."""
from __future__ import annotations

import math

import pytest

from aa_engine.agreement import CASES, official_outcomes, run

OFFICIAL = official_outcomes()


def paired_tolerance(a: str, b: str) -> float:
    """3.5 standard errors of a paired difference of counts (sd sqrt of the points only one side breaks), plus
    one."""
    return 3.5 * math.sqrt(sum(p != q for p, q in zip(a, b))) + 1


def binomial_tolerance(k_a: int, k_b: int, n: int) -> float:
    """3.5 standard errors of the difference of two independent counts out of n at their pooled rate, plus one."""
    p = (k_a + k_b) / (2 * n)
    return 3.5 * math.sqrt(2 * n * p * (1 - p)) + 1


def survivors(outcome: dict) -> list[int]:
    """Robust points after each stage, from the clean count down (the stages in the official's order)."""
    left = [outcome["clean"].count("1")]
    for broken in outcome["broken_by"].values():
        left.append(left[-1] - broken)
    return left


def test_every_case_has_an_official_outcome():
    assert set(OFFICIAL) == {case.name for case in CASES}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_our_engine_agrees_with_the_official_package(case, tmp_path):
    official = OFFICIAL[case.name]
    ours = run(case, "bench", tmp_path)
    assert ours["key"] == official["key"], "the fixture answers another question: regenerate it (agreement.py)"
    assert ours["clean"] == official["clean"]
    a, b = official["robust"], ours["robust"]
    assert abs(a.count("1") - b.count("1")) <= paired_tolerance(a, b), (a, b)
    stages = min(len(ours["broken_by"]), len(official["broken_by"]))  # a run stops once no point is left
    assert list(ours["broken_by"])[:stages] == list(official["broken_by"])[:stages]
    for k_o, k_b in zip(survivors(official), survivors(ours)):
        assert abs(k_o - k_b) <= binomial_tolerance(k_o, k_b, case.n), (official["broken_by"], ours["broken_by"])
    square = "Square Attack has decreased the robust accuracy"  # follows from the Square stage's own outcome
    assert [n for n in ours["checks"] if square not in n] == [n for n in official["checks"] if square not in n]
    for outcome in (official, ours):
        assert any(square in n for n in outcome["checks"]) == (outcome["broken_by"].get("square", 0) > 0)
