"""The objectives of the robust-training recipes against independent computations: the TRADES and MART
losses written out by hand, the alpha-divergence conjugate against a numerical Legendre transform, the KL
dual's bisection against direct minimisation and against the primal problem, and the sample weights."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize, minimize_scalar

from bench.families.robust_training.objectives import (alpha_dual, f_alpha, f_alpha_conjugate,
                                                       f_alpha_conjugate_grad, kl_dual, kl_lambda, kl_to_uniform,
                                                       mart_losses, pgd_at_losses, softplus_inverse,
                                                       trades_losses)


def _logits(seed=0, n=6, k=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g, dtype=torch.float64) * 2, torch.randn(n, k, generator=g,
                                                                                 dtype=torch.float64) * 2


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_the_base_losses_match_their_formulas_written_out():
    clean, adv = _logits()
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    c, a, yy = clean.numpy(), adv.numpy(), y.numpy()
    pc, pa = _softmax(c), _softmax(a)
    rows = np.arange(len(yy))
    ce_adv = -np.log(pa[rows, yy])
    ce_clean = -np.log(pc[rows, yy])
    kl = (pc * (np.log(pc) - np.log(pa))).sum(1)
    assert np.allclose(pgd_at_losses(clean, adv, y).numpy(), ce_adv)
    assert np.allclose(trades_losses(clean, adv, y, 6.0).numpy(), ce_clean + 6.0 * kl)
    wrong = pa.copy()
    wrong[rows, yy] = -1
    other = wrong.max(1)  # the largest probability of a wrong class
    kl_mart = (pc * (np.log(pc) - np.log(pa + 1e-12))).sum(1)
    expected = ce_adv - np.log(1.0001 - other + 1e-12) + 5.0 * kl_mart * (1.0000001 - pc[rows, yy])
    assert np.allclose(mart_losses(clean, adv, y, 5.0).numpy(), expected)
    # TRADES is CE alone when the adversarial point predicts what the clean one does
    assert torch.allclose(trades_losses(clean, clean, y, 6.0), torch.tensor(ce_clean))
    assert torch.allclose(mart_losses(clean, adv, y, 0.0), torch.tensor(ce_adv - np.log(1.0001 - other + 1e-12)))


@pytest.mark.parametrize("alpha", [1.5, 2.0, 6.0, 10.0])
@pytest.mark.parametrize("y", [-1.0, 0.0, 0.3, 2.0])
def test_the_alpha_conjugate_is_the_numerical_legendre_transform(alpha, y):
    # sup over t >= 0 of y t - f_alpha(t), by a bounded scalar search (t* = ((alpha - 1) y)^(1/(alpha - 1)) < 2)
    def negative(t):
        return -(y * t - float(f_alpha(torch.tensor(t, dtype=torch.float64), alpha)))

    found = minimize_scalar(negative, bounds=(0.0, 10.0), method="bounded", options={"xatol": 1e-12})
    numeric = max(-found.fun, -negative(0.0))
    assert float(f_alpha_conjugate(torch.tensor(y, dtype=torch.float64), alpha)) == pytest.approx(numeric, abs=1e-8)
    # and on a dense grid, independently of the optimiser
    grid = np.linspace(0, 10, 2_000_001)
    dense = np.max(y * grid - (grid ** alpha - 1) / (alpha * (alpha - 1)))
    assert float(f_alpha_conjugate(torch.tensor(y, dtype=torch.float64), alpha)) == pytest.approx(dense, abs=1e-6)
    if y == 0:  # f*' is not differentiable at 0 for alpha > 2 (an infinite slope from the right)
        return
    # its derivative is the maximising t, the weight
    h = 1e-6
    yt = torch.tensor([y - h, y + h], dtype=torch.float64)
    slope = float(f_alpha_conjugate(yt, alpha).diff()) / (2 * h)
    assert float(f_alpha_conjugate_grad(torch.tensor(y, dtype=torch.float64), alpha)) == pytest.approx(
        slope, abs=1e-5)


def _objective(losses: np.ndarray, eps: float, kappa: float):
    def h(lam):
        tau = lam + kappa
        z = losses / tau
        return eps * lam + tau * (np.log(np.mean(np.exp(z - z.max()))) + z.max())
    return h


def test_the_bisection_root_is_the_direct_minimiser():
    losses = torch.from_numpy(np.random.default_rng(0).exponential(size=200))
    for eps, kappa in ((0.2, 0.1), (0.02, 0.1), (0.002, 0.12)):
        lam = kl_lambda(losses, eps, kappa)
        h = _objective(losses.numpy(), eps, kappa)
        direct = minimize_scalar(h, bounds=(0.0, 100.0), method="bounded", options={"xatol": 1e-10})
        assert lam > 0 and lam == pytest.approx(direct.x, rel=1e-4)
        value, step = kl_dual(losses, eps, kappa)
        assert float(value) == pytest.approx(direct.fun, rel=1e-9)
        # at lambda* the implied weights sit on the boundary of the divergence ball
        assert kl_to_uniform(losses, lam + kappa) == pytest.approx(eps, rel=1e-6)
        assert step.lam == lam and math.log(200) - step.stats()["weight_entropy"] == pytest.approx(eps, rel=1e-3)


def test_the_kl_dual_equals_the_primal_without_transport():
    """The note's check (there with 200 losses): kappa = 0, exponential losses, eps = 0.2: inf over lambda of the
    dual = sup over distributions Q with KL(Q || P_n) <= eps of E_Q L, the latter solved over the simplex by SLSQP."""
    losses = np.random.default_rng(1).exponential(size=40)
    eps, n = 0.2, 40
    dual, step = kl_dual(torch.from_numpy(losses), eps, 0.0)

    def weights(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    def kl(z):
        w = weights(z)
        return float(np.sum(w * np.log(n * w)))

    # over the simplex through w = softmax(z): no bounds, one constraint
    primal = minimize(lambda z: -weights(z) @ losses, np.zeros(n), method="SLSQP",
                      constraints=[{"type": "ineq", "fun": lambda z: eps - kl(z)}],
                      options={"ftol": 1e-12, "maxiter": 1000})
    primal.x = weights(primal.x)
    assert primal.success, primal.message
    assert float(dual) == pytest.approx(-primal.fun, rel=1e-5)
    assert float(dual) > losses.mean()  # the worst case in the ball costs more than the empirical mean
    assert np.allclose(step.weights.numpy(), primal.x, atol=2e-4)  # and the weights are the maximiser


def test_kl_weights_are_positive_sum_to_one_and_grow_with_the_loss():
    losses = torch.from_numpy(np.random.default_rng(2).exponential(size=64)).float().requires_grad_(True)
    value, step = kl_dual(losses, 0.02, 0.1)
    w = step.weights
    assert step.lam > 0
    assert bool((w > 0).all()) and float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    order = torch.argsort(losses.detach())
    assert bool((w[order].diff() >= 0).all()) and float(w.max()) > 1 / 64
    # the dual's gradient in each loss is its weight (lambda* held fixed: the envelope theorem)
    value.backward()
    assert torch.allclose(losses.grad, w, atol=1e-6)


def test_a_radius_too_large_for_the_batch_gives_lambda_zero_and_the_temperature_floor():
    losses = torch.tensor([1.0, 1.0, 1.2, 0.8], dtype=torch.float64)
    assert kl_lambda(losses, 5.0, 0.1) == 0.0  # any radius above KL(softmax(L / kappa) || uniform)
    value, step = kl_dual(losses, 5.0, 0.1)
    assert float(value) == pytest.approx(0.1 * math.log(torch.exp(losses / 0.1).mean().item()))
    with pytest.raises(ValueError, match="radius must be positive"):
        kl_lambda(losses, 0.0, 0.1)


def test_alpha_weights_are_non_negative_sum_to_one_and_truncate_below_nu():
    losses = torch.from_numpy(np.random.default_rng(3).exponential(size=64))
    lam, nu = torch.tensor(1.0, dtype=torch.float64, requires_grad=True), torch.tensor(0.5, dtype=torch.float64,
                                                                                       requires_grad=True)
    L = losses.clone().requires_grad_(True)
    value, step = alpha_dual(L, lam, nu, 0.5, 6.0)
    w = step.weights.double()
    assert bool((w >= 0).all()) and float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    assert bool((w[losses <= 0.5] == 0).all()) and bool((w[losses > 0.5] > 0).all())
    assert step.lam == 1.0 and step.nu == 0.5 and step.stats()["weight_zero"] == pytest.approx(
        float((losses <= 0.5).double().mean()))
    value.backward()
    # d/dL_i = f*'((L_i - nu) / lam) / n, proportional to the weights; d/dnu = 1 - mean f*'
    raw = f_alpha_conjugate_grad((losses - 0.5) / 1.0, 6.0)
    assert torch.allclose(L.grad, raw / 64) and float(nu.grad) == pytest.approx(1 - float(raw.mean()))


def test_alpha_dual_at_its_optimum_equals_the_primal():
    """Minimising the alpha dual over (lambda, nu) gives sup E_Q L over D_alpha(Q || P_n) <= eps, found over the
    simplex by SLSQP: the conjugate and the dual form are the divergence's."""
    losses = np.random.default_rng(4).exponential(size=40)
    eps, alpha, n = 0.1, 3.0, 40

    def dual(v):
        lam, nu = np.exp(v[0]), v[1]
        value, _ = alpha_dual(torch.from_numpy(losses), torch.tensor(lam, dtype=torch.float64),
                              torch.tensor(nu, dtype=torch.float64), eps, alpha)
        return float(value)

    best = minimize(dual, np.array([0.0, 0.0]), method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12,
                                                                                "maxiter": 20000})

    def divergence(w):
        t = np.clip(n * w, 0, None)
        return float(np.mean((t ** alpha - 1) / (alpha * (alpha - 1))))

    primal = minimize(lambda w: -w @ losses, np.full(n, 1 / n), jac=lambda w: -losses, method="SLSQP",
                      bounds=[(0, 1)] * n, constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1},
                                                        {"type": "ineq", "fun": lambda w: eps - divergence(w),
                                                         "jac": lambda w: -np.clip(n * w, 0, None) ** (alpha - 1)
                                                         / (alpha - 1)}],
                      options={"ftol": 1e-12, "maxiter": 500})
    assert primal.success and best.fun == pytest.approx(-primal.fun, rel=1e-4)


def test_softplus_inverse():
    for x in (1e-3, 1.0, 30.0, 1e8):
        assert float(torch.nn.functional.softplus(torch.tensor(softplus_inverse(x), dtype=torch.float64))) == \
            pytest.approx(x, rel=1e-12)
