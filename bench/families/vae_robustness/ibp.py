"""Interval bound propagation (IBP) through the layers bench's VAEs use, written by hand.

auto-LiRPA, the established library, was tried first: its latest release (0.3) fails to import with numpy
2 (``numpy.lib.arraysetops`` is gone), so it cannot be a dependency of a suite pinned to current numpy and
torch. The layers here are few: affine layers (Linear, Conv2d, ConvTranspose2d) in centre/radius form
(centre through the layer, radius through |W| without bias), monotone activations (ReLU, Sigmoid) on both
ends, and reshapes. Bounds are sound in exact arithmetic; float rounding is covered by widening each
affine output by a relative 1e-6 of its magnitude plus 1e-7.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

SLACK_REL, SLACK_ABS = 1e-6, 1e-7


def _widen(centre: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
    radius = radius + SLACK_REL * centre.abs() + SLACK_ABS
    return centre - radius, centre + radius


def _affine(layer: nn.Module, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    centre, radius = (upper + lower) / 2, (upper - lower) / 2
    out_centre = layer(centre)
    weight = layer.weight.abs()
    if isinstance(layer, nn.Linear):
        out_radius = F.linear(radius, weight)
    elif isinstance(layer, nn.Conv2d):
        out_radius = F.conv2d(radius, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    else:
        out_radius = F.conv_transpose2d(radius, weight, None, layer.stride, layer.padding, layer.output_padding,
                                        layer.groups, layer.dilation)
    return _widen(out_centre, out_radius)


def interval(module: nn.Module, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Elementwise bounds on ``module(x)`` for every x with lower <= x <= upper."""
    if isinstance(module, nn.Sequential):
        for layer in module:
            lower, upper = interval(layer, lower, upper)
        return lower, upper
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        return _affine(module, lower, upper)
    if isinstance(module, (nn.ReLU, nn.Sigmoid, nn.Flatten, nn.Unflatten, nn.Identity)):
        return module(lower), module(upper)
    raise NotImplementedError(f"no interval bound for {type(module).__name__}; bench's IBP covers Linear, Conv2d, "
                              "ConvTranspose2d, ReLU, Sigmoid and reshapes")
