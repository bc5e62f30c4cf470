"""Image filters with scipy.ndimage's semantics (boundary modes, kernel truncation), in batched torch on the
images' own device: shared by the corruption library and the natural shifts."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> Tensor:
    """scipy.ndimage's 1-D Gaussian: radius int(truncate * sigma + 0.5), normalised."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def pad(x: Tensor, top: int, bottom: int, left: int, right: int, mode: str) -> Tensor:
    """Pad H and W with scipy's boundary modes: ``nearest`` (edge), ``mirror`` (reflect-101), ``reflect``
    (half-sample symmetric: the edge pixel repeated)."""
    if mode == "nearest":
        return F.pad(x, (left, right, top, bottom), mode="replicate")
    if mode == "mirror":
        return F.pad(x, (left, right, top, bottom), mode="reflect")
    flipped_w = x.flip(-1)
    x = torch.cat([flipped_w[..., -left:] if left else x[..., :0], x, flipped_w[..., :right]], -1)
    flipped_h = x.flip(-2)
    return torch.cat([flipped_h[..., -top:, :] if top else x[..., :0, :], x, flipped_h[..., :bottom, :]], -2)


def gaussian_blur(x: Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> Tensor:
    """Separable Gaussian filter with scipy's ``gaussian_filter`` kernel and boundary ``mode``."""
    if sigma <= 0:
        return x
    kernel = gaussian_kernel(sigma, truncate).to(x)
    r = (len(kernel) - 1) // 2
    c = x.shape[1]
    out = pad(x, r, r, r, r, mode)
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
