"""Checks on what an attack returns, before any point counts: finite, inside the ball, inside [0, 1]."""
from __future__ import annotations

import torch
from torch import Tensor

from bench.errors import BenchError


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
