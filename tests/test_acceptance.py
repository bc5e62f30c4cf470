"""The headline numbers of the built-in default, on 200 MNIST test points (about 2 minutes on 2 cores).

mnist-cnn-standard is trained on first use (its recipe, seed 0); mnist-cnn-pgd-at loads the
weights its card ships, made by the same suite's pgd-at recipe.
"""
from __future__ import annotations

import pytest

from bench.run import evaluate
from bench.store import Store

pytestmark = pytest.mark.slow
N = 200


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("acceptance")


def test_standard_model_falls_under_autoattack(results):
    s = evaluate("mnist-cnn-standard", "autoattack-linf-0.3", n=N, device="cpu", results=results, progress=False)
    assert s.clean_acc >= 0.95  # 98.5% on the full test split; these 200 points are harder than average
    assert s.robust_acc < 0.05


def test_pgd_trained_model_resists_autoattack(results):
    aa = evaluate("mnist-cnn-pgd-at", "autoattack-linf-0.3", n=N, device="cpu", results=results, progress=False)
    assert aa.clean_acc >= 0.97
    assert aa.robust_acc >= 0.70
    pgd = evaluate("mnist-cnn-pgd-at", "pgd-linf-0.3", n=N, device="cpu", results=results, progress=False)
    assert pgd.clean_acc == aa.clean_acc
    assert aa.robust_acc <= pgd.robust_acc
    # same points, same clean predictions: the two runs are paired row by row
    q = "SELECT index, clean_pred FROM rows WHERE run_id = ? ORDER BY index"
    assert Store(results).query(q, [aa.run_id]).equals(Store(results).query(q, [pgd.run_id]))
