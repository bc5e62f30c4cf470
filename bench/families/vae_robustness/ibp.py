"""Interval bound propagation (IBP) through the layers bench's VAEs use, written by hand, sound in floating point.

auto_LiRPA is not a dependency (its releases on the package index pin torch < 1.13), but it is the tests'
oracle: ``tests/vae_robustness/lirpa_reference.py`` records its bounds for a tiny VAE into a fixture, and these
bounds contain them (equal up to our outward rounding). The layers are few: affine layers (Linear, Conv2d,
ConvTranspose2d) in centre/radius form (centre through the layer, radius through |W| without bias), monotone
activations (ReLU, Sigmoid) on both ends, and reshapes.

The bounds hold for the network in exact arithmetic, whatever cancels, when computed in float64: ``propagate``
widens each affine output j by a bound on float64's rounding error, 8 (n + 2) u (||W_j||_1 max_i max(|l_i|,
|u_i|) + |b_j|) for n terms summed and u = 2^-53. That is gamma_n = n u / (1 - n u) of |W| max(|l|, |u|) + |b|
eight times over, which also covers the centre and radius of the input box (each within u of its value) and
any summation order. A slack relative to the output itself would not: it vanishes where large terms cancel.
``interval`` propagates in float64 (far below float32's resolution, and clear of TF32 and the like that GPUs
use in float32) and rounds the results outward to the input's dtype (``outward``). proVAE trains on
``propagate`` run in float32, a close approximation of the same bound at a third of the cost: training needs
no soundness, and a bound on float32's own rounding would cost mnist-vae's bound 18 nats at eps 0 even with
the exact |W| max(|l|, |u|) (1,600 with the row norms used here).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROUNDING = 2.0 ** -50  # 8 u for float64's unit roundoff u = 2^-53
AFFINE = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
RESHAPES = (nn.Flatten, nn.Unflatten, nn.Identity)


def outward(lower: Tensor, upper: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """float64 bounds in ``dtype``, each rounded away from the box's inside (gradients pass straight through)."""
    if dtype == lower.dtype:
        return lower, upper
    lo, hi = lower.to(dtype), upper.to(dtype)
    lo_out = torch.where(lo.to(lower.dtype) > lower, torch.nextafter(lo, torch.full_like(lo, -torch.inf)), lo)
    hi_out = torch.where(hi.to(upper.dtype) < upper, torch.nextafter(hi, torch.full_like(hi, torch.inf)), hi)
    return lo + (lo_out - lo).detach(), hi + (hi_out - hi).detach()


def fan_in(layer: nn.Module) -> int:
    """How many products an output of the affine layer sums (its weight's size over its output channels)."""
    out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    return layer.weight.numel() // out


def row_norms(layer: nn.Module, weight: Tensor) -> Tensor:
    """Per output channel, the sum of |W| over everything it reads (over every group's inputs for a transposed
    convolution: an upper bound)."""
    if isinstance(layer, nn.ConvTranspose2d):
        return weight.abs().sum((0, 2, 3)).repeat(layer.groups)
    return weight.abs().flatten(1).sum(1)


def linear_part(layer: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    """The affine layer's linear map with ``weight`` in place of its own, without bias."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight)
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    return F.conv_transpose2d(x, weight, None, layer.stride, layer.padding, layer.output_padding, layer.groups,
                              layer.dilation)


def bias_of(layer: nn.Module, like: Tensor) -> Tensor:
    """The affine layer's bias, shaped to broadcast over its output ``like`` (zero if it has none)."""
    if layer.bias is None:
        return like.new_zeros(())
    return layer.bias.to(like.dtype).view(-1, *[1] * (like.dim() - 2))


def _affine(layer: nn.Module, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    weight = layer.weight.to(lower.dtype)
    centre, radius = (upper + lower) / 2, (upper - lower) / 2
    out_centre = linear_part(layer, centre, weight)
    bias = bias_of(layer, out_centre)
    out_centre = out_centre + bias
    out_radius = linear_part(layer, radius, weight.abs())
    largest = torch.maximum(lower.abs(), upper.abs()).flatten(1).amax(1).view(-1, *[1] * (out_centre.dim() - 1))
    magnitude = largest * row_norms(layer, weight).view(-1, *[1] * (out_centre.dim() - 2)) + bias.abs()
    out_radius = out_radius + (fan_in(layer) + 2) * ROUNDING * magnitude
    return out_centre - out_radius, out_centre + out_radius


def propagate(layer: nn.Module, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Bounds on ``layer(x)`` for every x in the box [lower, upper], computed in the box's dtype (sound in
    float64)."""
    if isinstance(layer, nn.Sequential):
        for part in layer:
            lower, upper = propagate(part, lower, upper)
        return lower, upper
    if isinstance(layer, AFFINE):
        return _affine(layer, lower, upper)
    if isinstance(layer, (nn.ReLU, *RESHAPES)):
        return layer(lower), layer(upper)
    if isinstance(layer, nn.Sigmoid):  # torch's sigmoid is within a few units of the last place
        lower, upper = layer(lower), layer(upper)
        return lower - lower.abs() * ROUNDING, upper + upper.abs() * ROUNDING
    raise NotImplementedError(f"no interval bound for {type(layer).__name__}; bench's IBP covers Linear, Conv2d, "
                              "ConvTranspose2d, ReLU, Sigmoid and reshapes")


def interval(module: nn.Module, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Elementwise bounds on ``module(x)`` for every x with lower <= x <= upper, in the bounds' dtype."""
    return outward(*propagate(module, lower.double(), upper.double()), lower.dtype)
