"""Attack correctness: stays in the ball, breaks non-robust models, respects attack ordering."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.threats import make_threat
from bench.threats.autoattack import AutoAttack
from bench.ops.pgd import pgd
from bench.data import load_dataset
from bench.errors import BenchError
from bench.run import evaluate
from bench.store import Store
from conftest import threat


def digits_points(n=64):
    test = load_dataset("digits", "test")
    return test.x[:n], test.y[:n]


@pytest.mark.parametrize("norm, eps", [("Linf", 0.1), ("L2", 0.5)])
@pytest.mark.parametrize("keep", ["first_success", "last"])
def test_pgd_never_leaves_the_ball_or_the_box(digits_model, norm, eps, keep):
    x, y = digits_points()
    x_adv = pgd(digits_model, x, y, norm=norm, eps=eps, steps=15, step_size=eps / 4, restarts=2,
                gen=torch.Generator().manual_seed(0), keep=keep)
    delta = (x_adv - x).flatten(1)
    dist = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    assert dist.max() <= eps * (1 + 1e-5)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert dist.max() > eps / 2, "the attack should use its budget"


def test_pgd_leaves_model_gradients_alone(digits_model):
    x, y = digits_points(8)
    digits_model.zero_grad(set_to_none=True)
    pgd(digits_model, x, y, norm="Linf", eps=0.1, steps=3, step_size=0.03, gen=torch.Generator().manual_seed(0))
    assert all(p.grad is None for p in digits_model.parameters())


@pytest.mark.parametrize("family, params", [
    ("pgd", dict(norm="Linf", eps=0.3, steps=20)),
    ("pgd", dict(norm="L2", eps=3.0, steps=20)),
    ("autoattack", dict(norm="Linf", eps=0.3, version="standard")),
])
def test_non_robust_model_falls_to_about_zero(digits_model, tmp_path, family, params):
    s = evaluate(digits_model, threat(family, **params), dataset="digits", n=100, batch_size=100,
                 results=tmp_path, progress=False)
    assert s.clean_acc > 0.85
    assert s.robust_acc <= 0.03


@pytest.mark.parametrize("norm, eps", [("L2", 2.0), ("L1", 12.0)])
def test_autoattack_l2_and_l1_break_a_non_robust_model_within_budget(digits_model, tmp_path, norm, eps):
    # the adapter re-checks every returned point against the norm ball, so passing means in-budget
    s = evaluate(digits_model, threat("autoattack", norm=norm, eps=eps, version="custom", attacks=["apgd-ce"]),
                 dataset="digits", n=50, batch_size=50, results=tmp_path, progress=False)
    assert s.clean_acc > 0.85 and s.robust_acc <= 0.05


def test_autoattack_is_never_weaker_than_pgd_on_the_same_points(digits_model, tmp_path):
    kw = dict(dataset="digits", n=100, batch_size=100, results=tmp_path, progress=False)
    for eps in (0.05, 0.1):
        p = evaluate(digits_model, threat("pgd", norm="Linf", eps=eps, steps=20), **kw)
        a = evaluate(digits_model, threat("autoattack", norm="Linf", eps=eps), **kw)
        assert 0.2 < p.robust_acc < 0.9, "the test needs an eps where PGD does not break everything"
        assert a.robust_acc <= p.robust_acc


def test_a_longer_cascade_is_at_least_as_strong_per_point(digits_model, tmp_path):
    """[apgd-ce, apgd-t] starts with the same APGD-CE stage under the same seed: every point it leaves
    robust must survive APGD-CE alone, and its first stage must break exactly the same points."""
    kw = dict(dataset="digits", n=100, batch_size=100, results=tmp_path, progress=False)
    first = evaluate(digits_model, threat("autoattack", "aa-ce", norm="Linf", eps=0.1, version="custom",
                                          attacks=["apgd-ce"]), **kw)
    full = evaluate(digits_model, threat("autoattack", "aa-ce-t", norm="Linf", eps=0.1, version="custom",
                                         attacks=["apgd-ce", "apgd-t"]), **kw)
    q = "SELECT index, clean_correct, robust FROM rows WHERE run_id = ? ORDER BY index"
    r_first = Store(tmp_path).query(q, [first.run_id])
    r_full = Store(tmp_path).query(q, [full.run_id])
    assert not (r_full.robust & ~r_first.robust).any()
    broken_by_ce = int((r_first.clean_correct & ~r_first.robust).sum())
    assert first.stats == {"broken_by:apgd-ce": broken_by_ce}
    assert full.stats["broken_by:apgd-ce"] == broken_by_ce
    assert full.robust_acc == pytest.approx(first.robust_acc - full.stats["broken_by:apgd-t"] / 100)


class NoisyModel(nn.Module):
    """A randomized defence: AutoAttack's own check must flag it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x + 0.05 * torch.randn_like(x))


class GradientInForward(nn.Module):
    """Calls autograd inside forward: AutoAttack's dynamic-defence check must flag it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.enable_grad():
            probe = x.detach().requires_grad_(True)
            torch.autograd.grad(self.inner(probe).sum(), probe)
        return self.inner(x)


CHEAP_AA = dict(norm="Linf", eps=0.1, version="custom", attacks=["apgd-ce"])


def test_autoattack_checks_become_run_notes(digits_model, tmp_path):
    kw = dict(dataset="digits", n=20, batch_size=20, results=tmp_path, progress=False)
    noisy = evaluate(NoisyModel(digits_model), threat("autoattack", **CHEAP_AA), **kw)
    assert any("randomized" in note for note in noisy.notes)
    dynamic = evaluate(GradientInForward(digits_model), threat("autoattack", **CHEAP_AA), **kw)
    assert any("dynamic defense" in note for note in dynamic.notes)
    # upstream keeps a module-global counter: a plain model checked afterwards must not be flagged
    plain = evaluate(digits_model, threat("autoattack", **CHEAP_AA), **kw)
    assert not any("dynamic" in note for note in plain.notes)


def test_autoattack_does_not_reseed_the_callers_rng(digits_model, tmp_path):
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    evaluate(digits_model, threat("autoattack", **CHEAP_AA), dataset="digits", n=20, results=tmp_path,
             progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_out_of_ball_non_finite_and_out_of_box_points_are_refused():
    from bench.threats.checks import check_points

    x = torch.full((2, 1, 8, 8), 0.5)
    with pytest.raises(BenchError, match="outside the Linf ball"):
        check_points(x, x + 0.2, "Linf", 0.1, "AutoAttack")
    check_points(x, x + 0.1, "Linf", 0.1, "AutoAttack")  # exactly on the boundary is allowed
    with pytest.raises(BenchError, match="non-finite"):
        check_points(x, torch.full_like(x, float("nan")), "L2", 1.0, "PGD")
    with pytest.raises(BenchError, match=r"\[0, 1\] box"):
        check_points(x, x.clone().fill_(1.05), "L2", 5.0, "PGD")


def test_custom_attack_list_only_with_custom_version():
    from bench.errors import CardError

    with pytest.raises(CardError, match="attacks"):
        make_threat(threat("autoattack", norm="Linf", eps=0.1, attacks=["apgd-ce"]))
    assert isinstance(make_threat(threat("autoattack", **CHEAP_AA))[1], AutoAttack)


def test_clean_threat_reports_clean_accuracy(digits_model, tmp_path):
    s = evaluate(digits_model, threat("clean"), dataset="digits", n=200, results=tmp_path, progress=False)
    assert s.clean_acc > 0.85 and s.headline == "clean_acc"


def test_autoattack_warnings_reach_the_user_once_and_its_stages_show_as_progress(digits_model, tmp_path, capfd,
                                                                                     caplog):
    """Its checks' warnings went on to the root logger (printed by logging's last resort) and again as notes; the
    bar showed 0/n until the whole cascade ended. Now a warning is a note only, and each stage shows in the bar."""
    kw = dict(dataset="digits", n=20, batch_size=20, results=tmp_path, progress=True)
    capfd.readouterr()
    noisy = evaluate(NoisyModel(digits_model), threat("autoattack", **CHEAP_AA), **kw)
    assert any(note.startswith("AutoAttack check:") for note in noisy.notes)
    assert not [r for r in caplog.records if r.name == "auto-attack"]  # nothing left for the root logger to print
    err = capfd.readouterr().err
    assert "AutoAttack robust accuracy after APGD-CE" in err and "shard 1/1" in err
