"""Checks on what an attack returns, before any point counts: finite, inside the ball, inside [0, 1]."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.errors import BenchError
from bench.ops.gradients import input_gradient
from bench.ops.losses import margin


def distance(delta: Tensor, norm: str) -> Tensor:
    flat = delta.flatten(1)
    return {"Linf": lambda: flat.abs().amax(1), "L2": lambda: flat.norm(dim=1), "L1": lambda: flat.abs().sum(1)}[norm]()


def check_points(x: Tensor, x_adv: Tensor, norm: str, eps: float, who: str) -> None:
    """Refuse adversarial points that are non-finite, outside the ``norm`` ball of radius eps, or outside [0, 1]."""
    if x_adv.shape != x.shape or not torch.isfinite(x_adv).all():
        raise BenchError(f"{who} returned non-finite points (NaN or inf) or points of the wrong shape",
                         "check the attack's parameters (e.g. a step size) in the threat card")
    dist = distance(x_adv - x, norm)
    if bool((dist > eps * (1 + 1e-4) + 1e-6).any()) or bool(((x_adv < 0) | (x_adv > 1)).any()):
        raise BenchError(f"{who} returned points outside the {norm} ball of radius {eps} or the [0, 1] box "
                         f"(max distance {dist.max().item():.6g})",
                         "this is a bug in the attack, not the model: report it with the model and threat")


def gradient_notes(model: nn.Module, x: Tensor, y: Tensor) -> list[str]:
    """What a gradient attack cannot see on its own: inputs whose loss gradient is exactly zero (masked or
    detached gradients; the margin loss is used, so a confident softmax does not count), and predictions
    that change between two identical calls (randomness in the forward pass)."""
    notes = []
    with torch.no_grad():
        first, second = model(x), model(x)
    changed = int((first.argmax(1) != second.argmax(1)).sum())
    if not torch.allclose(first, second, atol=1e-5, rtol=1e-4, equal_nan=True):
        notes.append(f"the model's outputs differ between two identical calls ({changed} of {len(x)} predictions "
                     "changed): a randomized defence needs an attack built for it (EOT, autoattack-rand), and "
                     "single-draw robust accuracy overstates it")
    probe = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        grad = input_gradient(margin(model(probe), y, None).sum(), probe)
    zero = int((grad.flatten(1).abs().amax(1) == 0).sum())
    if zero:
        notes.append(f"the input gradient is exactly zero for {zero} of {len(x)} points (masked, detached or "
                     "quantised gradients): gradient attacks cannot move them; check with a gradient-free attack "
                     "(AutoAttack's Square) or a transfer attack before trusting the robust accuracy")
    return notes
