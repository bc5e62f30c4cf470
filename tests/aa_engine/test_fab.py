"""FAB in the batched AutoAttack engine against the official one (pyautoattack): its hyperplane projections, the
trajectory of a run, and the robust accuracy of FAB-T and untargeted FAB on the small digits model."""
from __future__ import annotations

import pytest
import torch

from bench.data import load_dataset
from bench.threats.aa_engine.fab import _class_jacobian, _run, fab, project_hyperplane
from bench.threats.aa_engine.geometry import norms

official = pytest.importorskip("pyautoattack.fab_projections")
FABAttack_PT = pytest.importorskip("pyautoattack.fab_pt").FABAttack_PT

OFFICIAL = {"Linf": official.projection_linf, "L2": official.projection_l2, "L1": official.projection_l1}
EPS = {"Linf": 0.1, "L2": 0.5, "L1": 2.0}  # robust accuracy of the digits model about 0.4, 0.4 and 0.1: not 0 or 1


def _planes(rows: int, dim: int, seed: int, dtype=torch.float64):
    """Random points in [0, 1] (a fifth of the coordinates on the box's faces), weights with a fifth exactly 0,
    and offsets that put the hyperplane at a random share (0 to 1.3) of the farthest the box lets the point go:
    on the plane, reachable without and with coordinates stopped by the box, and out of reach."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(rows, dim, generator=g, dtype=dtype)
    t[:, : dim // 5] = t[:, : dim // 5].round()
    w = torch.randn(rows, dim, generator=g, dtype=dtype)
    w[torch.rand(rows, dim, generator=g) < 0.2] = 0
    down = torch.minimum(-w * t, w * (1 - t)).sum(1)  # the most <w, .> can drop inside the box
    up = torch.maximum(-w * t, w * (1 - t)).sum(1)  # and rise
    share = torch.rand(rows, generator=g, dtype=dtype) * 1.3
    share[:10] = 0
    reach = torch.where(torch.rand(rows, generator=g) < 0.5, down, up)
    return t, w, (w * t).sum(1) + share * reach, share


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
@pytest.mark.parametrize("dim", [5, 64, 300])
def test_projection_equals_official(norm, dim):
    """The key exactness check: our sort-based projections give the official's answer, in float64 to 1e-10 (the
    problem has one solution; both are exact up to rounding), and in float32 as close to the float64 answer as
    the official's own float32 run is (its L2 loses ~3e-4 to cancellation; ours stays within 1e-4)."""
    t, w, b, share = _planes(400, dim, seed=dim)
    ours = project_hyperplane(norm, t, w, b)
    theirs = OFFICIAL[norm](t.clone(), w.clone(), b.clone())
    assert torch.isfinite(theirs).all()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    reachable = share < 1
    assert reachable.sum() > 200 and (~reachable).sum() > 50
    on_plane = (w * (t + ours)).sum(1) - b
    assert on_plane[reachable].abs().max() < 1e-9
    assert ((t + ours) >= -1e-12).all() and ((t + ours) <= 1 + 1e-12).all()
    single = project_hyperplane(norm, t.float(), w.float(), b.float())
    assert (single.double() - theirs).abs().max() < 1e-4


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_projection_degenerate_rows(norm):
    """A zero gradient (no direction to move) gives a zero step, not NaN; a point on the plane does not move."""
    t = torch.rand(3, 10, dtype=torch.float64)
    w = torch.randn(3, 10, dtype=torch.float64)
    w[0] = 0
    b = (w * t).sum(1)
    b[0] = 1.0
    d = project_hyperplane(norm, t, w, b)
    assert torch.equal(d, torch.zeros_like(d))


def _digits(model, n: int = 100):
    data = load_dataset("digits", "test")
    return data.x[:n], data.y[:n]


def _official_fooled(model, x, y, norm, **kwargs):
    attack = FABAttack_PT(model, norm=norm, eps=EPS[norm], seed=0, device=x.device, **kwargs)
    adv = attack.perturb(x, y)
    with torch.no_grad():
        return model(adv).argmax(1) != y


@pytest.mark.parametrize("norm, n_targets", [("Linf", 9), ("L2", 9), ("L1", 9), ("L2", 2)])
def test_fab_t_agrees_with_official(model, norm, n_targets):
    """FAB-T has no randomness (one restart, no random start), so ours and the official run the same
    deterministic trajectories up to float rounding: per point the outcome agrees except where rounding tips a
    decision. Tolerance: at most 2 of the 100 points differ, hence robust accuracy within 0.02, well inside the
    binomial sampling error of a robust accuracy on 100 points (about 0.05 at 0.4); a wrong projection or step
    moves many points. With 9 of the 9 other classes the target order hardly matters, hence also 2 targets."""
    x, y = _digits(model)
    _, ours = fab(model, x, y, norm=norm, eps=EPS[norm], keys=torch.arange(len(x)), n_iter=30,
                  n_target_classes=n_targets)
    theirs = _official_fooled(model, x, y, norm, targeted=True, n_restarts=1, n_iter=30, n_target_classes=n_targets)
    assert 0.05 < 1 - theirs.float().mean() < 0.95  # the comparison has something to show
    assert (ours != theirs).sum() <= 2
    assert abs(ours.float().mean() - theirs.float().mean()) <= 0.02


def test_untargeted_fab_agrees_with_official(model):
    """Untargeted FAB's first restart starts at the clean point, so it too is deterministic: same tolerance."""
    x, y = _digits(model, 60)
    _, ours = fab(model, x, y, norm="Linf", eps=EPS["Linf"], keys=torch.arange(len(x)), targeted=False,
                  n_restarts=1, n_iter=20)
    theirs = _official_fooled(model, x, y, "Linf", targeted=False, n_restarts=1, n_iter=20)
    assert 0.05 < 1 - theirs.float().mean() < 0.95
    assert (ours != theirs).sum() <= 2


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
@pytest.mark.parametrize("targeted", [True, False])
def test_run_minimises_like_official(model, norm, targeted):
    """Without the early exit a run is the official's single run: the smallest adversarial norm found per point
    matches to 1e-3 relative for at least 95% of the points (float rounding can tip a few trajectories)."""
    x, y = _digits(model, 60)
    with torch.no_grad():
        right = model(x).argmax(1) == y
        x, y = x[right], y[right]
        target = model(x).argsort(1)[:, -2]
    attack = FABAttack_PT(model, norm=norm, n_restarts=1, n_iter=20, eps=1.0, seed=0, targeted=targeted)
    attack.target_class = 2
    adv = attack.attack_single_run(x, y, use_rand_start=False, is_targeted=targeted)
    theirs = norms(adv - x, norm)
    theirs[theirs == 0] = float("inf")  # the official returns the clean point where it found nothing
    _, ours = _run(model, x, y, target if targeted else None, norm=norm, eps=1.0, start=x, n_iter=20,
                   alpha_max=0.1, eta=1.05, beta=0.9, stop_within_eps=False)
    assert torch.isfinite(theirs).float().mean() > 0.8
    close = ((ours - theirs).abs() <= 1e-3 * theirs) | (torch.isinf(ours) & torch.isinf(theirs))
    assert close.float().mean() >= 0.95


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_outputs_inside_threat_model_and_fooled_is_reclassification(model, norm):
    x, y = _digits(model, 40)
    x_adv, fooled = fab(model, x, y, norm=norm, eps=EPS[norm], keys=torch.arange(len(x)), targeted=False,
                        n_restarts=2, n_iter=10)
    assert fooled.dtype == torch.bool and fooled.shape == y.shape
    assert (norms(x_adv - x, norm) <= EPS[norm] * (1 + 1e-6)).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert torch.equal(fooled, model(x_adv).argmax(1) != y)
    assert torch.equal(x_adv[~fooled], x[~fooled])
    assert 0 < fooled.sum() < len(x)


def test_batch_independence(model):
    """A point's outcome does not depend on its batch-mates, random restarts included (rng keyed by point)."""
    x, y = _digits(model, 8)
    keys = torch.arange(100, 108)
    kwargs = dict(norm="L2", eps=EPS["L2"], targeted=False, n_restarts=3, n_iter=8)
    x_all, fooled_all = fab(model, x, y, keys=keys, **kwargs)
    for i in range(len(x)):
        x_one, fooled_one = fab(model, x[i:i + 1], y[i:i + 1], keys=keys[i:i + 1], **kwargs)
        assert fooled_one.item() == fooled_all[i].item()
        torch.testing.assert_close(x_one[0], x_all[i], rtol=0, atol=1e-5)


def test_fewer_classes_than_targets(model):
    """With 4 classes only ranks 2..4 exist: FAB-T attacks those (the official would index past the end)."""
    def four(z):
        return model(z)[:, :4]

    data = load_dataset("digits", "test")
    keep = data.y < 4
    x, y = data.x[keep][:30], data.y[keep][:30]
    x_adv, fooled = fab(four, x, y, norm="Linf", eps=0.2, keys=torch.arange(len(x)), n_iter=10)
    with torch.no_grad():
        assert torch.equal(fooled, four(x_adv).argmax(1) != y)
    assert fooled.any()


class _NoVmap(torch.autograd.Function):
    """Identity whose backward calls .item(), which vmap cannot batch."""

    @staticmethod
    def forward(ctx, z):
        return z.clone()

    @staticmethod
    def backward(ctx, grad):
        assert grad.abs().sum().item() >= 0
        return grad


def test_class_jacobian_rows_and_fallback():
    """Row k of the Jacobian is the gradient of logit[k] - logit[y] (one backward per class gives the reference);
    a model vmap cannot batch gets the same from the replicated-input pass."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5))
    x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 4])
    logits, jac = _class_jacobian(net, x, y)
    z = x.clone().requires_grad_(True)
    out = net(z)
    for k in range(5):
        (g,) = torch.autograd.grad((out[:, k] - out.gather(1, y[:, None])[:, 0]).sum(), z, retain_graph=True)
        torch.testing.assert_close(jac[:, k], g.flatten(1))
    torch.testing.assert_close(logits, out.detach())
    _, fallback = _class_jacobian(lambda v: net(_NoVmap.apply(v)), x, y)
    torch.testing.assert_close(fallback, jac)
