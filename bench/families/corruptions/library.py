"""Common corruptions in torch, batched and device-agnostic (Hendrycks & Dietterich, 2019).

Each corruption is a ``Corruption``: per-severity constants for 32x32 images (``cifar``, from the
generator of CIFAR-10-C, ``make_cifar_c.py`` in hendrycks/robustness, Apache-2.0) and for large images
(``imagenet``, as in the ``imagecorruptions`` package), a ``draw`` step that samples every random choice
for the whole batch on the CPU from one seeded generator (so a seed gives the same images on every
device), and an ``apply`` step that runs on the images' own device. A batch equals the same images
corrupted one at a time with the same draws. Images are float tensors (N, C, H, W) in [0, 1]; outputs are
too. Where an operation differs from the reference generators it says so in its docstring.

No kornia: the tests hold each operation to the reference generators' scipy/scikit-image semantics
(boundary modes, kernel truncation, HSV round trips), which kornia does not promise, so the handful of
operations needed are written here in plain torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.ops.filters import correlate2d, gaussian_blur
from bench.registry import Registry

SCALES = ("cifar", "imagenet")
Draws = dict[str, Tensor]


@dataclass(frozen=True)
class Corruption:
    """``draw(x, c, gen) -> Draws`` (CPU, per-image leading dimension) and ``apply(x, c, draws) -> x``."""

    name: str
    constants: dict[str, tuple]  # scale -> the five severities' constants
    apply: Callable[[Tensor, Any, Draws], Tensor]
    draw: Callable[[Tensor, Any, torch.Generator], Draws] = lambda x, c, gen: {}

    def constant(self, severity: int, scale: str = "cifar") -> Any:
        if severity not in range(1, 6):
            raise ValueError(f"severity must be 1 to 5, got {severity}")
        return self.constants[scale][severity - 1]

    def __call__(self, x: Tensor, severity: int, gen: torch.Generator, scale: str = "cifar") -> Tensor:
        c = self.constant(severity, scale)
        x = x.contiguous()  # an NHWC-strided batch (a permuted numpy array) makes every convolution 2x slower
        draws = {k: v.to(x.device) for k, v in self.draw(x.detach().cpu(), c, gen).items()}
        return self.apply(x, c, draws).clamp(0, 1)


CORRUPTIONS: Registry[Corruption] = Registry("corruption")


def corruption(name: str, *, cifar: list, imagenet: list, draw: Callable | None = None):
    """Register ``apply`` (the decorated function) with its constants and its draw step."""
    def wrap(apply: Callable) -> Callable:
        CORRUPTIONS.register(name, Corruption(name, {"cifar": tuple(cifar), "imagenet": tuple(imagenet)}, apply,
                                              draw or (lambda x, c, gen: {})))
        return apply

    return wrap


# --- shared operations ---------------------------------------------------------------------------------


def _to_hsv(x: Tensor) -> Tensor:
    """RGB to HSV with H in [0, 1), as scikit-image (V = max, S = range / max)."""
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    delta = v - x.min(1).values
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    safe = delta.clamp_min(1e-12)
    h = torch.where(v == r, (g - b) / safe, torch.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = torch.where(delta > 0, (h / 6) % 1, torch.zeros_like(h))
    return torch.stack([h, s, v], 1)


def _to_rgb(hsv: Tensor) -> Tensor:
    h, s, v = hsv.unbind(1)
    i = torch.floor(h * 6)
    f = h * 6 - i
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    i = i.long() % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = [torch.zeros_like(v) for _ in range(3)]
    for k, rgb in enumerate(choices):
        mask = i == k
        for channel in range(3):
            out[channel] = torch.where(mask, rgb[channel], out[channel])
    return torch.stack(out, 1)


def _gray(x: Tensor) -> Tensor:
    """Luma as OpenCV's RGB2GRAY (0.299, 0.587, 0.114), shape (N, 1, H, W)."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def _shift_gather(x: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
    """out[n, :, h, w] = x[n, :, clamp(h - dy[n]), clamp(w - dx[n])]: a shift with the edge repeated."""
    n, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device).view(1, h) - dy.view(n, 1)).clamp(0, h - 1)
    cols = (torch.arange(w, device=x.device).view(1, w) - dx.view(n, 1)).clamp(0, w - 1)
    index = (rows.view(n, 1, h, 1) * w + cols.view(n, 1, 1, w)).expand(n, c, h, w)
    return x.flatten(2).gather(2, index.flatten(2)).view(n, c, h, w)


def motion_blur(x: Tensor, radius: int, sigma: float, angle_deg: Tensor) -> Tensor:
    """ImageMagick's MotionBlurImage as imagecorruptions reimplements it (no Wand): a one-sided Gaussian
    line kernel of width 2 * radius + 1, taps placed on the nearest pixel along ``angle`` (per image), the
    edge repeated. CIFAR-10-C called ImageMagick itself: read back as ImageMagick writes it (``_imagemagick_png``),
    this equals ImageMagick 6.9.11's value for value on the reference fixture."""
    width = 2 * radius + 1
    taps = torch.exp(-torch.arange(width, dtype=torch.float64) ** 2 / (2 * sigma ** 2))
    taps = (taps / taps.sum()).tolist()
    theta = torch.deg2rad(angle_deg.double())
    py, px = width * torch.sin(theta), width * torch.cos(theta)
    hypot = torch.hypot(py, px)
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    for i in range(width):
        dy = -torch.ceil(i * py / hypot - 0.5).long()
        dx = -torch.ceil(i * px / hypot - 0.5).long()
        inside = (dy.abs() < h) & (dx.abs() < w)  # the reference stops at the first tap past the border
        weight = torch.where(inside, taps[i], 0.0).to(x).view(-1, 1, 1, 1)
        out = out + weight * _shift_gather(x, dy.to(x.device), dx.to(x.device))
    return out


def clipped_zoom(x: Tensor, factor: float) -> Tensor:
    """Zoom into the centre by ``factor`` and crop back to size, as the reference ``clipped_zoom``
    (scipy's order-1 zoom of the centre crop, which is bilinear with aligned corners)."""
    h = x.shape[-2]
    crop = math.ceil(h / factor)
    top = (h - crop) // 2
    size = round(crop * factor)
    zoomed = F.interpolate(x[..., top:top + crop, top:top + crop], size=(size, size), mode="bilinear",
                           align_corners=True)
    trim = (size - h) // 2
    return zoomed[..., trim:trim + h, trim:trim + h]


# --- noise ---------------------------------------------------------------------------------------------


@corruption("gaussian_noise", cifar=[0.04, 0.06, .08, .09, .10], imagenet=[.08, .12, 0.18, 0.26, 0.38],
            draw=lambda x, c, gen: {"noise": torch.randn(x.shape, generator=gen)})
def _gaussian_noise(x: Tensor, c: float, d: Draws) -> Tensor:
    return x + c * d["noise"]


@corruption("shot_noise", cifar=[500, 250, 100, 75, 50], imagenet=[60, 25, 12, 5, 3],
            draw=lambda x, c, gen: {"counts": torch.poisson(x.double() * c, generator=gen)})
def _shot_noise(x: Tensor, c: float, d: Draws) -> Tensor:
    """Poisson counts are drawn on the CPU (torch has no device-independent Poisson sampler), once per batch."""
    return (d["counts"] / c).to(x.dtype)


@corruption("impulse_noise", cifar=[.01, .02, .03, .05, .07], imagenet=[.03, .06, .09, 0.17, 0.27],
            draw=lambda x, c, gen: {"flip": torch.rand(x.shape, generator=gen),
                                    "salt": torch.rand(x.shape, generator=gen)})
def _impulse_noise(x: Tensor, c: float, d: Draws) -> Tensor:
    """Salt and pepper per element, as scikit-image's ``random_noise(mode='s&p')``: a share ``c`` of the
    values flipped, half to 1 and half to 0."""
    flipped = d["flip"] <= c
    return torch.where(flipped, (d["salt"] <= 0.5).to(x.dtype), x)


@corruption("speckle_noise", cifar=[.06, .1, .12, .16, .2], imagenet=[.15, .2, 0.35, 0.45, 0.6],
            draw=lambda x, c, gen: {"noise": torch.randn(x.shape, generator=gen)})
def _speckle_noise(x: Tensor, c: float, d: Draws) -> Tensor:
    return x + x * c * d["noise"]


# --- blur ----------------------------------------------------------------------------------------------


@corruption("gaussian_blur", cifar=[.4, .6, 0.7, .8, 1], imagenet=[1, 2, 3, 4, 6])
def _gaussian_blur(x: Tensor, c: float, d: Draws) -> Tensor:
    return gaussian_blur(x, c)


def _glass_draw(x: Tensor, c: tuple, gen: torch.Generator) -> Draws:
    _, delta, iterations = c
    h, w = x.shape[-2:]
    steps = len(range(h - delta, delta, -1)) * len(range(w - delta, delta, -1))
    return {"offsets": torch.randint(-delta, delta, (len(x), iterations, steps, 2), generator=gen, dtype=torch.int8)}


@corruption("glass_blur", cifar=[(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
            imagenet=[(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)], draw=_glass_draw)
def _glass_blur(x: Tensor, c: tuple, d: Draws) -> Tensor:
    """Blur, quantise to 8 bits, shuffle pixels locally as the published generators do, blur again.

    The reference's shuffle visits each pixel (h, w) from the bottom right to the top left and runs
    ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on an (H, W, 3) array. Both sides are views of the same array, so
    the first assignment copies pixel (h', w') into (h, w) and the second copies (h, w)'s new value, that same
    pixel, back: a copy, not a swap. CIFAR-10-C, ImageNet-C and imagecorruptions were made that way, and so is
    this (``_copy_sources``). On a 2-D array the same line does swap; MNIST-C's glass blur (``mnist_c``) does."""
    sigma, delta, iterations = c
    n, channels, h, w = x.shape
    out = (torch.floor(gaussian_blur(x.double(), sigma) * 255) / 255).to(x.dtype)  # the reference's uint8 step
    source = torch.arange(h * w, device=x.device).expand(n, -1)
    for it in range(iterations):
        step = _copy_sources(h, w, delta, d["offsets"][:, it])
        source = source.gather(1, step)
    shuffled = out.flatten(2).gather(2, source[:, None, :].expand(-1, channels, -1))
    return gaussian_blur(shuffled.view(n, channels, h, w), sigma)


def _copy_sources(h: int, w: int, delta: int, offsets: Tensor) -> Tensor:
    """(n, h*w): which pixel each pixel holds after one sweep of the reference's copies ``x[p_k] = x[q_k]``, run in
    its order k (p_k from the bottom right to the top left, q_k = p_k + (dy, dx) from ``offsets`` (n, K, 2) as
    (dx, dy)). Pixel p_k ends up with what q_k held at step k: q_k's value before the sweep, or, where q_k was
    itself written at an earlier step j, what q_j held then, and so on. Those chains are followed for every
    pixel at once by pointer jumping (each round halves the chains), not by a loop over the h*w steps."""
    n, device = len(offsets), offsets.device
    hh = torch.arange(h - delta, delta, -1, device=device)
    ww = torch.arange(w - delta, delta, -1, device=device)
    here = (hh[:, None] * w + ww[None, :]).flatten()  # p_k, in the reference's order
    k = len(here)
    offsets = offsets.long()
    there = here[None, :] + offsets[..., 1] * w + offsets[..., 0]  # q_k, (n, K)
    visit = torch.full((h * w,), k, device=device, dtype=torch.long)
    visit[here] = torch.arange(k, device=device)
    earlier, steps = visit[there], torch.arange(k, device=device)[None, :]
    parent = torch.where(earlier < steps, earlier, steps)  # the step that wrote q_k before step k, else k itself
    value = there  # final where a step is its own parent: q_k's value before the sweep
    while True:
        value, up = value.gather(1, parent), parent.gather(1, parent)
        if torch.equal(up, parent):
            break
        parent = up
    source = torch.arange(h * w, device=device).repeat(n, 1)
    source[:, here] = value
    return source


def _disk(radius: float, alias_blur: float) -> Tensor:
    """The reference's anti-aliased disk: an aliased disk on a 17x17 grid (wider for radius > 8), blurred by
    OpenCV's 3x3 (5x5) Gaussian with sigma ``alias_blur`` and reflect-101 borders."""
    half, ksize = (8, 3) if radius <= 8 else (int(radius), 5)
    offsets = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((offsets.view(-1, 1) ** 2 + offsets.view(1, -1) ** 2) <= radius ** 2).double()
    disk = disk / disk.sum()
    taps = torch.exp(-torch.arange(-(ksize // 2), ksize // 2 + 1, dtype=torch.float64) ** 2 / (2 * alias_blur ** 2))
    taps = taps / taps.sum()
    padded = F.pad(disk[None, None], (ksize // 2,) * 4, mode="reflect")
    blurred = F.conv2d(F.conv2d(padded, taps.view(1, 1, 1, -1)), taps.view(1, 1, -1, 1))
    return blurred[0, 0].float()


@corruption("defocus_blur", cifar=[(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
            imagenet=[(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)])
def _defocus_blur(x: Tensor, c: tuple, d: Draws) -> Tensor:
    kernel = _disk(*c)
    r = (kernel.shape[0] - 1) // 2
    return correlate2d(x, kernel.to(x.device), "mirror" if r < min(x.shape[-2:]) else "nearest")


@corruption("motion_blur", cifar=[(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
            imagenet=[(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
            draw=lambda x, c, gen: {"angle": torch.rand(len(x), generator=gen) * 90 - 45})
def _motion_blur(x: Tensor, c: tuple, d: Draws) -> Tensor:
    return _imagemagick_png(motion_blur(x, c[0], c[1], d["angle"]))


def _imagemagick_png(x: Tensor) -> Tensor:
    """An ImageMagick result as the generators read it back: its Q16 quantum (rounded to 16 bits) written to an
    8-bit PNG, which truncates (q // 257): one level above plain truncation where the value lies within 1/514 of
    the next level."""
    return (torch.floor(torch.round(x.double().clamp(0, 1) * 65535) / 257) / 255).to(x.dtype)


@corruption("zoom_blur", cifar=[(1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)],
            imagenet=[(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)])
def _zoom_blur(x: Tensor, c: tuple, d: Draws) -> Tensor:
    """The mean of x and its clipped zooms by every factor of ``numpy.arange(*c)`` (numpy's, not torch's:
    their last digits differ, and 25 * 1.3000000000000003 rounds to another zoomed size than 25 * 1.3)."""
    import numpy as np

    factors = np.arange(*c).tolist()
    out = x.clone()
    for factor in factors:
        out = out + clipped_zoom(x, factor)
    return out / (len(factors) + 1)


# --- weather -------------------------------------------------------------------------------------------


def uniform_noise(gen: torch.Generator) -> Callable[[tuple, float], Tensor]:
    """``noise(shape, wibble)``: float64 draws uniform in [-wibble, wibble), as ``numpy.random.uniform``."""
    return lambda shape, wibble: torch.rand(shape, generator=gen, dtype=torch.float64) * 2 * wibble - wibble


def plasma_fractal(count: int, size: int, decay: float, noise: Callable[[tuple, float], Tensor]) -> Tensor:
    """(count, size, size) diamond-square height maps in [0, 1], as the reference ``plasma_fractal``, its
    random offsets from ``noise`` (``uniform_noise``) in the reference's order."""
    maps = torch.zeros(count, size, size, dtype=torch.float64)
    step, wibble = size, 100.0

    def wibbled(array: Tensor) -> Tensor:
        return array / 4 + wibble * noise(array.shape, wibble)

    while step >= 2:
        half = step // 2
        corners = maps[:, 0:size:step, 0:size:step]
        square = corners + corners.roll(-1, 1)
        square = square + square.roll(-1, 2)
        maps[:, half:size:step, half:size:step] = wibbled(square)
        centres = maps[:, half:size:step, half:size:step]
        corners = maps[:, 0:size:step, 0:size:step]
        maps[:, 0:size:step, half:size:step] = wibbled(centres + centres.roll(1, 1) + corners + corners.roll(-1, 2))
        maps[:, half:size:step, 0:size:step] = wibbled(centres + centres.roll(1, 2) + corners + corners.roll(-1, 1))
        step //= 2
        wibble /= decay
    low = maps.flatten(1).min(1).values.view(-1, 1, 1)
    maps = maps - low
    return maps / maps.flatten(1).max(1).values.view(-1, 1, 1)


def _fog_draw(x: Tensor, c: tuple, gen: torch.Generator) -> Draws:
    size = 1 << (max(x.shape[-2:]) - 1).bit_length()
    return {"plasma": plasma_fractal(len(x), size, c[1], uniform_noise(gen))[:, :x.shape[-2], :x.shape[-1]].float()}


@corruption("fog", cifar=[(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
            imagenet=[(1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)], draw=_fog_draw)
def _fog(x: Tensor, c: tuple, d: Draws) -> Tensor:
    peak = x.flatten(1).amax(1).view(-1, 1, 1, 1)
    return (x + c[0] * d["plasma"].unsqueeze(1)) * peak / (peak + c[0])


def _snow_draw(x: Tensor, c: tuple, gen: torch.Generator) -> Draws:
    return {"layer": torch.randn((len(x), 1, *x.shape[-2:]), generator=gen) * c[1] + c[0],
            "angle": torch.rand(len(x), generator=gen) * 90 - 135}


@corruption("snow", cifar=[(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                           (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                           (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
            imagenet=[(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
                      (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],
            draw=_snow_draw)
def _snow(x: Tensor, c: tuple, d: Draws) -> Tensor:
    """A thresholded, zoomed Gaussian layer, truncated to 8 bits (the generators hand it to ImageMagick as an
    8-bit image), motion-blurred (``motion_blur``) and read back as ImageMagick writes it (``_imagemagick_png``),
    added twice (once rotated by 180 degrees) to a brightened image."""
    layer = clipped_zoom(d["layer"], c[2])
    layer = torch.where(layer < c[3], torch.zeros_like(layer), layer).clamp(0, 1)
    layer = _imagemagick_png(motion_blur(torch.floor(layer * 255) / 255, c[4], c[5], d["angle"]))
    x = c[6] * x + (1 - c[6]) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return x + layer + layer.flip(-1, -2)


def _spatter_draw(x: Tensor, c: tuple, gen: torch.Generator) -> Draws:
    return {"liquid": torch.randn((len(x), 1, *x.shape[-2:]), generator=gen) * c[1] + c[0]}


@corruption("spatter", cifar=[(0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0),
                              (0.65, 0.3, 1, 0.69, 0.5, 0), (0.65, 0.1, 0.7, 0.69, 0.6, 1),
                              (0.65, 0.1, 0.5, 0.68, 0.6, 1)],
            imagenet=[(0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
                      (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1)], draw=_spatter_draw)
def _spatter(x: Tensor, c: tuple, d: Draws) -> Tensor:
    """Water drops (the first severities) or mud (the last), from a blurred, thresholded Gaussian layer, as the
    reference: the water's rims through its OpenCV chain (``_water_rims``), its pale turquoise added as
    (175, 238, 238) to the R, G and B channels (the reference adds that triple to an RGB array, though it names
    the conversions BGR); the mud as (63, 42, 20)."""
    liquid = gaussian_blur(d["liquid"].double(), c[2])
    liquid = torch.where(liquid < c[3], torch.zeros_like(liquid), liquid)
    if c[5] == 0:
        m = _water_rims(liquid).to(x.dtype)
        m = m / m.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1) * c[4]
        water = torch.tensor([175, 238, 238], dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 255  # R, G, B
        return x + m * (water if x.shape[1] == 3 else _gray(water))
    mask = gaussian_blur((liquid > c[3]).to(x.dtype), c[4])
    mask = torch.where(mask < 0.8, torch.zeros_like(mask), mask)
    mud = torch.tensor([63, 42, 20], dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 255
    return x * (1 - mask) + mask * (mud if x.shape[1] == 3 else _gray(mud))


def _water_rims(liquid: Tensor) -> Tensor:
    """(n, 1, h, w): the reference's water map, per image with OpenCV on the CPU: the liquid layer in 8 bits
    (truncated), its Canny edges, the distance to them (truncated at 20 px, box-blurred, back to 8 bits),
    histogram-equalised, embossed and box-blurred again, times the 8-bit liquid layer."""
    import numpy as np

    from bench.errors import require

    cv2 = require("cv2", "the spatter corruption", "pip install opencv-python")
    emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
    out = []
    for layer in (liquid[:, 0] * 255).cpu().numpy().astype(np.uint8):
        edges = cv2.distanceTransform(255 - cv2.Canny(layer, 50, 150), cv2.DIST_L2, 5)
        edges = cv2.blur(cv2.threshold(edges, 20, 20, cv2.THRESH_TRUNC)[1], (3, 3)).astype(np.uint8)
        ridges = cv2.blur(cv2.filter2D(cv2.equalizeHist(edges), cv2.CV_8U, emboss), (3, 3)).astype(np.float32)
        out.append(torch.from_numpy(layer * ridges))
    return torch.stack(out)[:, None].to(liquid.device)


# --- digital -------------------------------------------------------------------------------------------


@corruption("contrast", cifar=[.75, .5, .4, .3, 0.15], imagenet=[0.4, .3, .2, .1, .05])
def _contrast(x: Tensor, c: float, d: Draws) -> Tensor:
    means = x.mean((-2, -1), keepdim=True)
    return (x - means) * c + means


@corruption("brightness", cifar=[.05, .1, .15, .2, .3], imagenet=[.1, .2, .3, .4, .5])
def _brightness(x: Tensor, c: float, d: Draws) -> Tensor:
    if x.shape[1] == 1:
        return x + c
    hsv = _to_hsv(x)
    return _to_rgb(torch.cat([hsv[:, :2], (hsv[:, 2:] + c).clamp(0, 1)], 1))


@corruption("saturate", cifar=[(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
            imagenet=[(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)])
def _saturate(x: Tensor, c: tuple, d: Draws) -> Tensor:
    if x.shape[1] == 1:
        return x  # a grey image has no saturation to change (the reference round-trips it unchanged)
    hsv = _to_hsv(x)
    return _to_rgb(torch.cat([hsv[:, :1], (hsv[:, 1:2] * c[0] + c[1]).clamp(0, 1), hsv[:, 2:]], 1))


# --- frost, elastic, pixelate, JPEG --------------------------------------------------------------------

FROST_DIR = Path(__file__).with_name("frost")
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")


@lru_cache(maxsize=None)
def _frost_image(index: int) -> Tensor:
    """A frost photograph of the reference generators (hendrycks/robustness, Apache-2.0), (3, H, W) in [0, 1]."""
    from bench.errors import require

    import numpy as np

    image = require("PIL.Image", "the frost corruption", "pip install pillow")
    with image.open(FROST_DIR / FROST_FILES[index]) as picture:
        return torch.from_numpy(np.array(picture.convert("RGB"))).permute(2, 0, 1).float() / 255


@lru_cache(maxsize=None)
def _frost_layer(index: int, h: int, w: int, scale: str) -> Tensor:
    """The frost image resized as the reference, once per process. CIFAR-10-C: OpenCV reads it and scales it by
    exactly 0.2 (``cv2.resize(..., fx=0.2, fy=0.2)``, bilinear; the output size is rounded but the sampling grid
    keeps the 0.2, which resizing to that size would not). Else (imagecorruptions): to cover the image with a
    margin of 1.1 (bicubic)."""
    if scale == "cifar":
        import numpy as np

        from bench.errors import require

        cv2 = require("cv2", "the frost corruption", "pip install opencv-python")
        picture = cv2.resize(cv2.imread(str(FROST_DIR / FROST_FILES[index])), (0, 0), fx=0.2, fy=0.2)
        return torch.from_numpy(np.ascontiguousarray(picture[..., ::-1])).permute(2, 0, 1).float() / 255
    frost = _frost_image(index)[None]
    fh, fw = frost.shape[-2:]
    factor = 1.1 * max(1.0, h / fh, w / fw)
    size = (int(math.ceil(fh * factor)), int(math.ceil(fw * factor)))
    return F.interpolate(frost, size=size, mode="bicubic", align_corners=False).clamp(0, 1)[0]


def _frost_draw(x: Tensor, c: tuple, gen: torch.Generator) -> Draws:
    images, h, w = c[2], *x.shape[-2:]
    index = torch.randint(images, (len(x),), generator=gen)
    layers = [_frost_layer(int(i), h, w, c[3]) for i in index]
    tops = torch.stack([torch.randint(layer.shape[1] - h, (1,), generator=gen)[0] for layer in layers])
    lefts = torch.stack([torch.randint(layer.shape[2] - w, (1,), generator=gen)[0] for layer in layers])
    crops = torch.stack([layer[:, t:t + h, s:s + w] for layer, t, s in zip(layers, tops, lefts)])
    return {"frost": crops}


@corruption("frost", cifar=[(1, 0.2, 5, "cifar"), (1, 0.3, 5, "cifar"), (0.9, 0.4, 5, "cifar"),
                            (0.85, 0.4, 5, "cifar"), (0.75, 0.45, 5, "cifar")],
            imagenet=[(1, 0.4, 6, "imagenet"), (0.8, 0.6, 6, "imagenet"), (0.7, 0.7, 6, "imagenet"),
                      (0.65, 0.7, 6, "imagenet"), (0.6, 0.75, 6, "imagenet")], draw=_frost_draw)
def _frost(x: Tensor, c: tuple, d: Draws) -> Tensor:
    """x * c[0] + a random crop of a frost photograph * c[1] (CIFAR-10-C drew from the first five
    photographs only, and so do we at its constants)."""
    frost = d["frost"] if x.shape[1] == 3 else _gray(d["frost"])
    return c[0] * x + c[1] * frost


def _elastic_draw(x: Tensor, c: tuple, gen: torch.Generator) -> Draws:
    n, _, h, w = x.shape
    return {"corners": (torch.rand(n, 3, 2, generator=gen) * 2 - 1) * c[2] * h,
            "dx": torch.rand(n, 1, h, w, generator=gen) * 2 - 1, "dy": torch.rand(n, 1, h, w, generator=gen) * 2 - 1}


def _warp(x: Tensor, rows: Tensor, cols: Tensor, align_corners: bool) -> Tensor:
    """Bilinear sampling of x at pixel coordinates (rows, cols), reflecting at the borders: about the border
    pixels' centres with ``align_corners`` (OpenCV's reflect-101), about their outer edges otherwise (scipy's
    ``reflect``)."""
    h, w = x.shape[-2:]
    if align_corners:
        grid = torch.stack([cols / (w - 1) * 2 - 1, rows / (h - 1) * 2 - 1], -1)
    else:
        grid = torch.stack([(2 * cols + 1) / w - 1, (2 * rows + 1) / h - 1], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=align_corners)


def _opencv_affine_grid(inverse: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """(rows, cols), each (n, h, w) on x's device: where OpenCV's ``warpAffine`` (bilinear) samples x for the
    inverse maps ``inverse`` (n, 2, 3, float64 on the CPU). It evaluates them in fixed point, the column and the
    row terms each rounded to 1/1024 pixel, and rounds the sum to 1/32 pixel, the grid its bilinear weights are
    tabulated on; exact bilinear sampling put CIFAR-10-C's values up to 2 levels off on 18% of them."""
    h, w = x.shape[-2:]
    terms_x = torch.round(inverse[:, :, :1] * torch.arange(w, dtype=torch.float64) * 1024).to(x)  # (n, 2, w)
    terms_y = torch.round((inverse[:, :, 1:2] * torch.arange(h, dtype=torch.float64) + inverse[:, :, 2:]) * 1024)
    fixed = torch.floor((terms_y.to(x)[..., :, None] + terms_x[..., None, :] + 16) / 32) / 32  # exact in float32
    return fixed[:, 1], fixed[:, 0]


def _scipy_2019_reflect(coords: Tensor, size: int) -> Tensor:
    """Where scipy before 1.6 sampled ``coords`` along an axis of ``size`` in ``map_coordinates(order=1,
    mode='reflect')``, as a position in [0, size - 1]. More than a pixel past the border pixel's centre, it
    reflects about the border's outer edge, as scipy does now; within a pixel of it, it shifts by one pixel at the
    low end (-0.3 reads 0.7) and reflects about the last pixel's centre at the high end (size - 0.8 reads
    size - 1.2), where scipy now reads the border pixel. CIFAR-10-C was made so: today's borders put its elastic
    transform up to 69 levels off on 3% of the values."""
    low = torch.where(coords < -1, -coords - 1, torch.where(coords < 0, coords + 1, coords))
    high = torch.where(low >= size, 2 * size - 1 - low, torch.where(low > size - 1, 2 * (size - 1) - low, low))
    return high.clamp(0, size - 1)


@corruption("elastic_transform",
            cifar=[(0, 0, 0.08, "cifar"), (0.05, 0.2, 0.07, "cifar"), (0.08, 0.06, 0.06, "cifar"),
                   (0.1, 0.04, 0.05, "cifar"), (0.1, 0.03, 0.03, "cifar")],
            imagenet=[(0.0625, 0.01, 0, "imagenet"), (0.08125, 0.01, 0, "imagenet"), (0.10625, 0.01, 0, "imagenet"),
                      (0.125, 0.01, 0, "imagenet"), (0.15, 0.01, 0, "imagenet")],
            draw=_elastic_draw)
def _elastic_transform(x: Tensor, c: tuple, d: Draws) -> Tensor:
    """A random affine map moving three points by up to c[2] of the side, sampled as OpenCV's ``warpAffine``
    (``_opencv_affine_grid``, reflect-101 borders), then a displacement field: uniform noise blurred by sigma c[1]
    of the side (truncate 3) times c[0] of the side, sampled as scipy's ``map_coordinates(order=1,
    mode='reflect')``: the 2019 scipy's borders at CIFAR-10-C's constants (``_scipy_2019_reflect``), today's at
    imagecorruptions'. The constants are fractions of the side (CIFAR-10-C's are for 32 px); imagecorruptions'
    ImageNet variant, which has no affine step, is the same form."""
    n, _, h, w = x.shape
    rows, cols = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype),
                                torch.arange(w, device=x.device, dtype=x.dtype), indexing="ij")
    if c[2] > 0:
        centre, size = h // 2, min(h, w) // 3
        src = torch.tensor([[centre + size, centre + size], [centre + size, centre - size],
                            [centre - size, centre - size]], dtype=torch.float64)  # (x, y) points, as OpenCV
        dst = (src.float() + d["corners"].float().cpu()).double()  # float32 points, as the generator's
        ones = torch.ones(n, 3, 1, dtype=torch.float64)
        forward = torch.linalg.solve(torch.cat([src.expand(n, 3, 2), ones], 2), dst).transpose(1, 2)  # (n, 2, 3)
        full = torch.cat([forward, torch.tensor([0, 0, 1.0], dtype=torch.float64).expand(n, 1, 3)], 1)
        x = _warp(x, *_opencv_affine_grid(torch.linalg.inv(full)[:, :2], x), align_corners=True)
    if c[0] > 0:
        dx = gaussian_blur(d["dx"], c[1] * h, mode="reflect", truncate=3) * c[0] * h
        dy = gaussian_blur(d["dy"], c[1] * h, mode="reflect", truncate=3) * c[0] * h
        if c[3] == "cifar":
            x = _warp(x, _scipy_2019_reflect(rows + dy[:, 0], h), _scipy_2019_reflect(cols + dx[:, 0], w),
                      align_corners=True)
        else:
            x = _warp(x, rows + dy[:, 0], cols + dx[:, 0], align_corners=False)
    return x


@lru_cache(maxsize=None)
def _box_matrix(size_in: int, size_out: int) -> Tensor:
    """Pillow's BOX resampling weights (out x in) along one axis (Resample.c's precompute_coeffs)."""
    scale = size_in / size_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    for out in range(size_out):
        centre = (out + 0.5) * scale
        low, high = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), size_in)
        for i in range(low, high):
            position = (i - centre + 0.5) / filterscale
            weights[out, i] = 1.0 if -0.5 < position <= 0.5 else 0.0
        weights[out] /= weights[out].sum()
    return weights


@lru_cache(maxsize=None)
def _nearest_matrix(size_in: int, size_out: int) -> Tensor:
    """Pillow's NEAREST: output pixel k takes input pixel int((k + 0.5) * in / out)."""
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    for out in range(size_out):
        weights[out, min(int((out + 0.5) * size_in / size_out), size_in - 1)] = 1.0
    return weights


@corruption("pixelate", cifar=[(0.95, "box"), (0.9, "box"), (0.85, "box"), (0.75, "box"), (0.65, "box")],
            imagenet=[(0.6, "nearest"), (0.5, "nearest"), (0.4, "nearest"), (0.3, "nearest"), (0.25, "nearest")])
def _pixelate(x: Tensor, c: tuple, d: Draws) -> Tensor:
    """Pillow's BOX resize down to c[0] of the side, then back up with BOX (CIFAR-10-C) or NEAREST
    (imagecorruptions), on the image in 8 bits. Like Pillow, each resize runs along the rows, then the columns,
    and rounds to 8 bits (half up) after each of those passes: four roundings, where staying in float put the
    generator's stored values one level higher on up to 68% of them. Computed on levels (0-255), in float32
    where that is exact (``_resample``)."""
    h, w = x.shape[-2:]
    small_h, small_w = int(h * c[0]), int(w * c[0])
    up = _box_matrix if c[1] == "box" else _nearest_matrix
    # 8 bits, half up, from the exact float64 product (1e-6: a half computed a hair below)
    levels = x.to(torch.float64, copy=True).mul_(255).add_(0.5 + 1e-6).floor_().float()
    for rows, cols in ((_box_matrix(h, small_h), _box_matrix(w, small_w)), (up(small_h, h), up(small_w, w))):
        levels = _resample(levels, cols, -1) if cols.shape[0] != cols.shape[1] else levels
        levels = _resample(levels, rows, -2) if rows.shape[0] != rows.shape[1] else levels
    return levels.div_(255).to(x.dtype)


_HALF_MARGIN = 1e-3  # in levels: above float32's error on a mean of m <= 64 levels ((m + 1) * 255 * 2**-24),
# below the distance 1 / (2m) from a half of any other fraction j/m


def _resample(levels: Tensor, weights: Tensor, dim: int) -> Tensor:
    """One Pillow resampling pass of 8-bit ``levels`` along ``dim`` (-1 or -2), rounded half up as Pillow stores
    it. A pass whose every output copies one input (NEAREST; BOX enlarging) is a gather. Otherwise each output is
    an equal-weight mean of m levels (m <= 5 at the constants, which shrink by at most 4x), so its fraction is
    j/m, which float32 rounds as exactly as Pillow: an exact half stays above the rounding point by the margin, and
    any other fraction stays on its side."""
    if bool((weights.amax(1) == 1).all()):
        return levels.index_select(dim, weights.argmax(1).to(levels.device))
    weights = weights.to(levels)
    mean = levels @ weights.T if dim == -1 else weights @ levels
    return mean.add_(0.5 + _HALF_MARGIN).floor_()


@corruption("jpeg_compression", cifar=[80, 65, 58, 50, 40], imagenet=[25, 18, 15, 10, 7])
def _jpeg_compression(x: Tensor, c: int, d: Draws) -> Tensor:
    """A real JPEG round trip at quality c (libjpeg through torchvision, on the CPU or with nvJPEG on a GPU),
    from the image rounded to 8 bits, as Pillow encodes it."""
    from bench.errors import require

    io = require("torchvision.io", "the jpeg_compression corruption", "pip install 'bench[vision]'")
    images = [img for img in torch.round(x * 255).to(torch.uint8)]
    decoded = io.decode_jpeg(io.encode_jpeg(images, quality=int(c)), device=x.device)
    return torch.stack(decoded).to(x.dtype) / 255
