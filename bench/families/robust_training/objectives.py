"""The objectives of the robust-training recipes, per example and as duals, with no training state.

Per-example base losses at the adversarial point (their batch mean is the base method's loss):

- ``pgd_at_losses``: cross-entropy at x' (Madry et al., 2018);
- ``trades_losses``: CE(f(x), y) + beta * KL(p(x) || p(x')) (Zhang et al., 2019);
- ``mart_losses``: BCE(p(x'), y) + beta * KL(p(x) || p(x')) * (1 - p_y(x)) (Wang et al., 2020), with the
  boosted cross-entropy BCE = CE(p(x'), y) - log(1 - max_{k != y} p_k(x')).

ARMOR_D (Birrell & Ebrahimi, arXiv 2309.03791) with the hard-ball transport cost: the per-example loss L_i is
the base method's at its own adversarial point, and the divergence re-weights the examples through its dual:

- KL (``kl_dual``): min over lambda >= 0 of eps * lambda + (lambda + kappa) * log mean_i exp(L_i / (lambda +
  kappa)); lambda* is found per batch by bisection on the derivative, eps - KL(w || uniform), so at lambda* > 0
  the implied weights w = softmax(L / (lambda* + kappa)) sit exactly on the divergence ball's boundary;
- alpha (``alpha_dual``): lambda * eps + nu + lambda * mean_i f*_alpha((L_i - nu) / lambda), with (lambda, nu)
  trained beside the model; the implied weights are f*_alpha'((L_i - nu) / lambda), normalised, and are zero
  for every example whose loss is below nu.

The duals are computed in float64 (the values stay exact when lambda is large, e.g. near the eps -> 0 limit,
where the weights tend to uniform and the dual to the base method's mean loss).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_DOUBLINGS = 200  # bisection bracket: lambda up to 2**200 (reached only as eps -> 0)
BISECTION_STEPS = 200  # halvings; stops earlier once the bracket is at float64 resolution


# --- per-example base losses ----------------------------------------------------------------------------


def pgd_at_losses(clean: Tensor | None, adv: Tensor, y: Tensor, beta: float | None = None) -> Tensor:
    """Cross-entropy at the adversarial point, per example."""
    return F.cross_entropy(adv, y, reduction="none")


def trades_losses(clean: Tensor, adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """TRADES per example: CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x')), the KL summed over classes
    (the reference code's ``KLDivLoss(size_average=False) / batch_size``, per example)."""
    kl = F.kl_div(F.log_softmax(adv, 1), F.log_softmax(clean, 1), reduction="none", log_target=True).sum(1)
    return F.cross_entropy(clean, y, reduction="none") + beta * kl


def mart_losses(clean: Tensor, adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """MART per example, with the reference code's stabilising constants (1.0001, 1e-12, 1.0000001)."""
    adv_probs = F.softmax(adv, 1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    other = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])  # the most likely wrong class
    bce = F.cross_entropy(adv, y, reduction="none") - torch.log(
        1.0001 - adv_probs.gather(1, other.view(-1, 1)).squeeze(1) + 1e-12)
    clean_probs = F.softmax(clean, 1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), clean_probs, reduction="none").sum(1)
    true = clean_probs.gather(1, y.view(-1, 1)).squeeze(1)
    return bce + beta * kl * (1.0000001 - true)


BASE_LOSSES = {"pgd-at": pgd_at_losses, "trades": trades_losses, "mart": mart_losses}
NEEDS_CLEAN_LOGITS = {"trades", "mart"}


# --- sample weights -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DualStep:
    """One batch's dual: the variables (``nu`` only for alpha), the normalised sample weights (detached), the
    dual value and the mean base loss it re-weights."""

    lam: float
    nu: float | None
    weights: Tensor
    value: float
    mean_loss: float

    def stats(self) -> dict[str, float]:
        """What the training record keeps per batch (averaged per epoch): the duals, the weights' entropy
        (nats; log n is uniform), their maximum times n (1 is uniform), their KL to uniform, the share of
        examples with zero weight, and the dual value against the plain mean loss."""
        w = self.weights
        n = len(w)
        entropy = float(-(w[w > 0] * w[w > 0].log()).sum()) if bool((w > 0).any()) else 0.0
        out = {"dual_lambda": self.lam, "weight_entropy": entropy, "weight_max_n": float(w.max()) * n,
               "weight_kl": math.log(n) - entropy if bool((w > 0).any()) else float("nan"),
               "weight_zero": float((w == 0).float().mean()), "dual_value": self.value,
               "base_loss": self.mean_loss}
        if self.nu is not None:
            out["dual_nu"] = self.nu
        return out


def _float(x: Tensor) -> Tensor:
    """float64 where the device has it (the duals are a handful of numbers per batch)."""
    return x.double() if x.device.type != "mps" else x.float()


# --- KL -------------------------------------------------------------------------------------------------


def kl_to_uniform(losses: Tensor, tau: float) -> float:
    """KL(softmax(L / tau) || uniform); tau = 0 is the limit: uniform over the largest losses."""
    n = len(losses)
    if tau == 0:
        return math.log(n / int((losses == losses.max()).sum()))
    log_w = torch.log_softmax(losses / tau, 0)
    return float((log_w.exp() * (log_w + math.log(n))).sum())


def kl_lambda(losses: Tensor, eps: float, kappa: float) -> float:
    """lambda* = argmin over lambda >= 0 of eps * lambda + (lambda + kappa) * log mean exp(L / (lambda + kappa)).

    The derivative in lambda is eps - KL(softmax(L / (lambda + kappa)) || uniform), increasing in lambda:
    lambda* = 0 when it is already >= 0 there, else its root, bracketed by doubling and found by bisection
    (as the reference code's ``*_KL_bisec.py``, there with a bracket of 2**100)."""
    L = _float(losses.detach())
    if eps <= 0:
        raise ValueError("the divergence radius must be positive (eps -> 0 is the base method itself)")

    def slope(lam: float) -> float:
        return eps - kl_to_uniform(L, lam + kappa)

    if slope(0.0) >= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(MAX_DOUBLINGS):
        if slope(hi) >= 0:
            break
        lo, hi = hi, 2 * hi
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return hi


def kl_dual(losses: Tensor, eps: float, kappa: float) -> tuple[Tensor, DualStep]:
    """The KL dual at lambda* (``kl_lambda``), differentiable in the losses (lambda* held fixed, which is
    exact at the minimiser), and the batch's ``DualStep``. Its gradient in L_i is the weight w_i."""
    lam = kl_lambda(losses, eps, kappa)
    tau = lam + kappa
    L = _float(losses)
    n = len(L)
    if tau == 0:
        value = L.max() + eps * lam  # the limit kappa = lambda = 0: the worst example (eps >= log n)
        top = (L.detach() == L.detach().max()).to(L.dtype)
        weights = top / top.sum()
    else:
        value = eps * lam + tau * (torch.logsumexp(L / tau, 0) - math.log(n))
        weights = torch.softmax(L.detach() / tau, 0)
    step = DualStep(lam, None, weights.float(), float(value.detach()), float(L.detach().mean()))
    return value.to(losses.dtype), step


# --- alpha ----------------------------------------------------------------------------------------------


def f_alpha(t: Tensor, alpha: float) -> Tensor:
    """f_alpha(t) = (t^alpha - 1) / (alpha (alpha - 1)), t >= 0."""
    return (t ** alpha - 1) / (alpha * (alpha - 1))


def f_alpha_conjugate(y: Tensor, alpha: float) -> Tensor:
    """f*_alpha(y) = sup_{t >= 0} y t - f_alpha(t)
    = alpha^-1 (alpha - 1)^(alpha / (alpha - 1)) max(y, 0)^(alpha / (alpha - 1)) + 1 / (alpha (alpha - 1))."""
    power = alpha / (alpha - 1)
    return (alpha - 1) ** power / alpha * torch.clamp(y, min=0) ** power + 1 / (alpha * (alpha - 1))


def f_alpha_conjugate_grad(y: Tensor, alpha: float) -> Tensor:
    """d f*_alpha / dy = ((alpha - 1) max(y, 0))^(1 / (alpha - 1)): the maximising t, the unnormalised weight."""
    return ((alpha - 1) * torch.clamp(y, min=0)) ** (1 / (alpha - 1))


def alpha_dual(losses: Tensor, lam: Tensor, nu: Tensor, eps: float, alpha: float) -> tuple[Tensor, DualStep]:
    """lambda * eps + nu + lambda * mean_i f*_alpha((L_i - nu) / lambda), differentiable in the losses, lambda
    and nu (all three are trained: the model through L, the duals in their own parameter group)."""
    L, lam64, nu64 = _float(losses), _float(lam), _float(nu)
    y = (L - nu64) / lam64
    value = lam64 * eps + nu64 + lam64 * f_alpha_conjugate(y, alpha).mean()
    grad = f_alpha_conjugate_grad(y.detach(), alpha)
    total = grad.sum()
    weights = grad / total if float(total) > 0 else torch.zeros_like(grad)
    step = DualStep(float(lam.detach()), float(nu.detach()), weights.float(), float(value.detach()),
                    float(L.detach().mean()))
    return value.to(losses.dtype), step


def softplus_inverse(x: float) -> float:
    """The raw parameter whose softplus is x > 0 (exact for large x, where softplus is the identity)."""
    return x + math.log(-math.expm1(-x))
