"""Perturbation pairs (x, x~) for learning perturbation sets (Wong & Kolter, 2021), batched and seeded.

``rts``: random rotation, translation and scale (the paper's MNIST-RTS setting: +-45 degrees,
scale 0.7-1.3, translation up to 7 px of a 42 px canvas). ``linf_noise``: x + U[-eps, eps]
clipped to [0, 1] (the paper's sanity setting).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def affine_warp(x: Tensor, theta: Tensor) -> Tensor:
    """Warp images with per-example 2x3 affine matrices (normalised coordinates), zero outside."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def rts_pairs(x: Tensor, gen: torch.Generator, *, rotation: float = 45.0, scale: tuple[float, float] = (0.7, 1.3),
              translate: float = 7 / 42) -> Tensor:
    """x~ = a random rotation (degrees), scale and translation (fraction of the side) of each x."""
    n = len(x)

    def uniform(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    angle = uniform(-rotation, rotation) * math.pi / 180
    s = uniform(*scale)
    tx, ty = uniform(-translate, translate) * 2, uniform(-translate, translate) * 2  # normalised coords span 2
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s  # the grid maps output -> input, so invert the scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    return affine_warp(x, theta.to(x.device, x.dtype))


def linf_noise_pairs(x: Tensor, gen: torch.Generator, *, eps: float = 0.3) -> Tensor:
    noise = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    return (x + noise.to(x.device, x.dtype)).clamp(0, 1)
