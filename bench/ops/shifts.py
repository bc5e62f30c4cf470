"""Named natural distribution shifts at graded strengths: the ``ood`` threat family evaluates under them, and
the OOD-to-ID translator is trained to undo them.

A ``Shift`` maps a batch of float images (N, C, H, W) in [0, 1] to the shifted batch at a ``strength``; the
output is clamped to [0, 1]. Every shift runs on the images' own device; the one random shift (``noise``)
draws its values on the CPU from the ``torch.Generator`` it is given, one image after the other, so a seed
gives the same images on every device and a batch equals its images shifted one at a time with the same
generator. ``strengths`` are the default graded levels, mild to strong (the mean distance from the clean
image grows along them); ``identity`` is the strength that leaves an image unchanged.

The shifts (x the image, s the strength):

- ``darker``: x * s, s in (0, 1). Its levels include the OOD-to-ID notes' dark range s in [0.2, 0.6].
- ``brighter``: 1 - (1 - x) * s, s in (0, 1): the darkening of the inverted image.
- ``contrast``: (x - m) * s + m, s in (0, 1), m the image's mean grey level (the mean of its luma
  0.2989 R + 0.587 G + 0.114 B, as torchvision's and Pillow's contrast; the plain mean for one channel).
- ``gamma``: x ** s, s > 1 (darkens the mid-tones, keeps black and white): the notes' gamma curve.
- ``sharper``: x + s * (x - blur(x)), blur a Gaussian of sigma 1 (scipy's kernel, edge repeated): an unsharp
  mask; its levels are the notes' sharp range s in [1, 3].
- ``blur``: a Gaussian of sigma s pixels (scipy's ``gaussian_filter`` kernel, truncate 4, edge repeated).
- ``rotation``: a rotation by s degrees counter-clockwise about the image centre, bilinear, zero fill (as
  torchvision's ``rotate``). A fixed angle and sign, so that the levels are deterministic and graded.
- ``translation``: a shift by s whole pixels right and down, zero fill (s must be an integer). Graded by the
  size of the move: the mean pixel distance from the clean image stops growing at about 4 px on MNIST digits,
  where a shifted stroke no longer overlaps its original.
- ``noise``: x + s * z, z standard Gaussian per value, drawn from the generator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.ops.filters import gaussian_blur
from bench.registry import Registry

LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
SHARPEN_SIGMA = 1.0


@dataclass(frozen=True)
class Shift:
    """``shift(x, strength, gen) -> x`` with default graded ``strengths`` and the ``identity`` strength."""

    name: str
    strengths: tuple[float, ...]
    identity: float
    apply: Callable[[Tensor, float, torch.Generator | None], Tensor]

    def __call__(self, x: Tensor, strength: float, gen: torch.Generator | None = None) -> Tensor:
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"x must be a float tensor of images (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
        return self.apply(x, float(strength), gen).clamp(0, 1)


SHIFTS: Registry[Shift] = Registry("shift")


def shift(name: str, strengths: tuple[float, ...], identity: float):
    """Register the decorated ``apply(x, strength, gen)`` as the shift ``name``."""
    def wrap(apply: Callable) -> Callable:
        SHIFTS.register(name, Shift(name, tuple(float(s) for s in strengths), float(identity), apply))
        return apply

    return wrap


@shift("darker", (0.8, 0.6, 0.4, 0.3, 0.2), identity=1.0)
def _darker(x: Tensor, s: float, gen: torch.Generator | None) -> Tensor:
    return x * s


@shift("brighter", (0.8, 0.6, 0.4, 0.3, 0.2), identity=1.0)
def _brighter(x: Tensor, s: float, gen: torch.Generator | None) -> Tensor:
    return 1 - (1 - x) * s


@shift("contrast", (0.8, 0.6, 0.4, 0.3, 0.2), identity=1.0)
def _contrast(x: Tensor, s: float, gen: torch.Generator | None) -> Tensor:
    grey = x if x.shape[1] == 1 else (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    mean = grey.mean((1, 2, 3), keepdim=True)
    return (x - mean) * s + mean


@shift("gamma", (1.5, 2.0, 3.0, 4.0, 5.0), identity=1.0)
def _gamma(x: Tensor, s: float, gen: torch.Generator | None) -> Tensor:
    return x.clamp(0, 1) ** s


@shift("sharper", (1.0, 1.5, 2.0, 2.5, 3.0), identity=0.0)
def _sharper(x: Tensor, s: float, gen: torch.Generator | None) -> Tensor:
    return x + s * (x - gaussian_blur(x, SHARPEN_SIGMA))


@shift("blur", (0.5, 1.0, 1.5, 2.0, 3.0), identity=0.0)
def _blur(x: Tensor, s: float, gen: torch.Generator | None) -> Tensor:
    return gaussian_blur(x, s)


@shift("rotation", (10.0, 20.0, 30.0, 45.0, 60.0), identity=0.0)
def _rotation(x: Tensor, s: float, gen: torch.Generator | None) -> Tensor:
    """Each output pixel samples the input at its position rotated by -s about the centre ((w - 1) / 2,
    (h - 1) / 2) in pixel coordinates (y down), bilinearly, with zeros outside."""
    n, _, h, w = x.shape
    theta = math.radians(s)
    cos, sin = math.cos(theta), math.sin(theta)
    rows = torch.arange(h, device=x.device, dtype=torch.float64) - (h - 1) / 2
    cols = torch.arange(w, device=x.device, dtype=torch.float64) - (w - 1) / 2
    yo, xo = torch.meshgrid(rows, cols, indexing="ij")
    xs, ys = cos * xo - sin * yo, sin * xo + cos * yo
    grid = torch.stack([2 * xs / w, 2 * ys / h], -1).to(x.dtype)  # align_corners=False: pixel edges at +-1
    return F.grid_sample(x, grid.expand(n, h, w, 2), mode="bilinear", padding_mode="zeros", align_corners=False)


@shift("translation", (2.0, 3.0, 4.0, 6.0, 8.0), identity=0.0)
def _translation(x: Tensor, s: float, gen: torch.Generator | None) -> Tensor:
    if s != int(s):
        raise ValueError(f"translation is by whole pixels, got {s}")
    t = int(s)
    h, w = x.shape[-2:]
    if t == 0:
        return x.clone()
    out = torch.zeros_like(x)
    if abs(t) < min(h, w):
        target = slice(max(t, 0), h + min(t, 0)), slice(max(t, 0), w + min(t, 0))
        source = slice(max(-t, 0), h + min(-t, 0)), slice(max(-t, 0), w + min(-t, 0))
        out[..., target[0], target[1]] = x[..., source[0], source[1]]
    return out


@shift("noise", (0.05, 0.1, 0.2, 0.3, 0.5), identity=0.0)
def _noise(x: Tensor, s: float, gen: torch.Generator | None) -> Tensor:
    if gen is None:
        raise ValueError("the noise shift draws from a torch.Generator: pass gen=torch.Generator().manual_seed(k)")
    noise = torch.stack([torch.randn(x.shape[1:], generator=gen) for _ in range(len(x))]) if len(x) else \
        torch.zeros(x.shape)
    return x + s * noise.to(device=x.device, dtype=x.dtype)
