"""Restarts and target classes batched together (``runs``) give every point the outcome it gets run by run, in
fewer passes."""
from __future__ import annotations

import pytest
import torch

from bench.data import load_dataset
from bench.threats.aa_engine import runs
from bench.threats.aa_engine.apgd import apgd
from bench.threats.aa_engine.fab import fab
from bench.threats.aa_engine.geometry import norms


@pytest.fixture(scope="module")
def points(model):
    test = load_dataset("digits", "test")
    x, y = test.x[:64], test.y[:64]
    keep = model(x).argmax(1) == y
    return x[keep][:24], y[keep][:24]


def _counted(model, calls):
    def call(x):
        calls.append(len(x))
        return model(x)
    return call


ATTACKS = {
    "apgd-t": lambda m, x, y, keys: apgd(m, x, y, norm="Linf", eps=0.12, keys=keys, loss="dlr-targeted", n_iter=15,
                                         n_target_classes=5),
    "apgd-ce-restarts": lambda m, x, y, keys: apgd(m, x, y, norm="L2", eps=0.8, keys=keys, n_iter=10, n_restarts=4),
    "fab-t": lambda m, x, y, keys: fab(m, x, y, norm="Linf", eps=0.12, keys=keys, n_target_classes=5, n_iter=10),
    "fab-restarts": lambda m, x, y, keys: fab(m, x, y, norm="L2", eps=0.8, keys=keys, targeted=False, n_restarts=3,
                                              n_iter=8),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_batched_runs_give_the_run_by_run_outcome_in_fewer_passes(model, points, attack, monkeypatch):
    x, y = points
    keys = torch.arange(500, 500 + len(x))
    calls_batched, calls_single = [], []
    monkeypatch.setitem(runs.MAX_ROWS, "cpu", 4096)
    x_batched, fooled_batched = ATTACKS[attack](_counted(model, calls_batched), x, y, keys)
    monkeypatch.setitem(runs.MAX_ROWS, "cpu", 1)  # one run per batch: the official's loop
    x_single, fooled_single = ATTACKS[attack](_counted(model, calls_single), x, y, keys)
    assert 0 < int(fooled_single.sum()) < len(x)  # some points fooled by a later run, some never
    assert torch.equal(fooled_batched, fooled_single)
    assert len(calls_batched) < len(calls_single) / 2
    norm, eps = ("Linf", 0.12) if attack.endswith("-t") else ("L2", 0.8)
    for x_adv, fooled in ((x_batched, fooled_batched), (x_single, fooled_single)):
        assert (norms(x_adv - x, norm) <= eps * (1 + 1e-5)).all()
        with torch.no_grad():
            assert torch.equal(model(x_adv).argmax(1) != y, fooled)


def test_first_success_takes_the_first_run_in_order():
    success = torch.tensor([[False, True, False], [True, True, False]]).flatten()  # 2 runs x 3 points
    rows = torch.arange(6.0)
    hit, pick = runs.first_success(success, rows, 2)
    assert hit.tolist() == [True, True, False]
    assert pick[:2].tolist() == [3.0, 1.0]  # point 0 only by run 1; point 1 by run 0 first


def test_batches_ask_for_the_points_left_before_each_group():
    left = [torch.arange(100), torch.arange(30), torch.arange(0)]
    got = list(runs.batches(list(range(9)), lambda: left.pop(0), max_rows=256))
    assert [(g, len(p)) for g, p in got] == [([0, 1], 100), ([2, 3, 4, 5, 6, 7, 8], 30)]
    assert runs.siblings(torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 0, 0, 0, 1, 0], dtype=torch.bool)
                         ).tolist() == [False, True, False, False, True, False]
