"""MNIST-C (Mu & Gilmer, 2019): the 15 corruptions of the published MNIST-C dataset, batched in torch.

Source: the generator ``corruptions.py`` of google-research/mnist-c (Apache-2.0), which corrupted one 28x28
uint8 PIL image at a time with numpy, scikit-image (2019), scipy, OpenCV and ImageMagick. Its constants are
here as ``Corruption`` entries of the library (``library.py``) under the one scale ``"mnist"``, in a registry of
their own, ``MNIST_C``: several names (shot_noise, fog, spatter, ...) are also CIFAR-10-C corruptions, with
other constants and, for glass blur and spatter, another algorithm. Call ``MNIST_C.get(name)(x, severity, gen,
scale="mnist")``. The published dataset used one severity per corruption, the reference function's default
argument: ``MNIST_C_SEVERITY``. Stripe, dotted line, zigzag and Canny edges have no severity: their one
constant is repeated at all five levels and their severity is 1. ``MNIST_C_NAMES`` lists the 15 in the
reference's order.

As in the library, ``draw`` samples every random choice for the whole batch on the CPU from one seeded
``torch.Generator`` and ``apply`` runs batched on the images' device; a batch equals the same images corrupted
one at a time with the same draws. Images are float (N, 1, H, W) in [0, 1], outputs too (same shape, dtype and
device). Operations defined for 28x28 images only (the centred affine maps, stripe, dotted line, zigzag) raise
a ValueError for other sizes; every corruption raises one for images that are not (N, 1, H, W).

Deliberate differences from the reference:

* Random numbers come from torch, not numpy's global state: the same seed gives other images than the
  published files, with the same distributions (per-pixel coins and offsets, Poisson counts, signs, angles,
  the plasma fractal and Gaussian fields).
* The outputs stay in float. The reference returns floats in [0, 255] that were rounded to uint8 for the
  published files. Where the reference quantises to 8 bits half-way (glass blur's ``np.uint8``, motion blur's
  PNG round trip through ImageMagick) we do too, as each docstring says.
* Motion blur uses the library's reimplementation of ImageMagick's MotionBlurImage (no Wand), not ImageMagick.
* The affine maps use the 2019 scikit-image's ``AffineTransform`` parameters, with which MNIST-C was made:
  shear ``s`` is the matrix [[1, -sin s], [0, cos s]]. (scikit-image >= 0.20 reads a scalar shear as
  [[1, -tan s], [0, 1]], so running the reference today shears differently.)
* Brightness is clip(x + c): the reference's grey -> RGB -> HSV -> V + c -> RGB -> grey round trip is that for
  grey images, up to the last bit of the luma weights' sum.
* Canny edges follow the installed scikit-image's ``feature.canny`` (0.26) step by step, including its
  float32 low threshold; the 2019 version sorted gradient directions with ties resolved otherwise.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.families.corruptions.library import Corruption, Draws, motion_blur, plasma_fractal, uniform_noise
from bench.registry import Registry

MNIST_C: Registry[Corruption] = Registry("MNIST-C corruption")
SCALE = "mnist"
SIDE = 28  # MNIST's 28x28 images
CENTRE = 13.5  # the fixed point of the reference's shear, scale and rotation: (SIDE - 1) / 2

MNIST_C_NAMES = ["shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate", "brightness",
                 "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag", "canny_edges"]
MNIST_C_SEVERITY: dict[str, int] = {
    "shot_noise": 5, "impulse_noise": 4, "glass_blur": 1, "motion_blur": 1, "shear": 2, "scale": 3, "rotate": 2,
    "brightness": 5, "translate": 3, "stripe": 1, "fog": 5, "spatter": 4, "dotted_line": 1, "zigzag": 1,
    "canny_edges": 1,
}


def _no_draws(x: Tensor, c: Any, gen: torch.Generator) -> Draws:
    return {}


def mnist_corruption(name: str, constants: list, draw: Callable | None = None):
    """Register ``apply`` (the decorated function) in ``MNIST_C`` with its five constants and its draw step."""
    if len(constants) != 5:
        raise ValueError(f"{name}: five severities' constants expected, got {len(constants)}")

    def wrap(apply: Callable) -> Callable:
        MNIST_C.register(name, Corruption(name, {SCALE: tuple(constants)}, apply, draw or _no_draws))
        return apply

    return wrap


def _check(x: Tensor, name: str, mnist_size: bool = False) -> None:
    """Grey images (N, 1, H, W); 28x28 where the operation is defined for MNIST's size only."""
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"MNIST-C {name}: expected grey images of shape (N, 1, H, W), got {tuple(x.shape)}")
    if mnist_size and tuple(x.shape[-2:]) != (SIDE, SIDE):
        raise ValueError(f"MNIST-C {name} is defined for 28x28 images (MNIST) only, got "
                         f"{x.shape[-2]}x{x.shape[-1]}")


# --- scipy-exact filters (float64) ---------------------------------------------------------------------


def _scipy_gaussian_weights(sigma: float, truncate: float = 4.0) -> list[float]:
    """scipy.ndimage's 1-D Gaussian weights, computed with numpy's operations so that they are bit-equal."""
    import numpy as np

    radius = int(truncate * float(sigma) + 0.5)
    offsets = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * offsets ** 2)
    return (phi / phi.sum()).tolist()


def _extend(x: Tensor, radius: int, dim: int, mode: str) -> Tensor:
    """x extended by ``radius`` on both ends of ``dim`` with scipy's ``nearest``, ``reflect`` (the edge pixel
    repeated) or ``constant`` (zeros) boundary."""
    n = x.shape[dim]
    index = torch.arange(-radius, n + radius, device=x.device)
    if mode == "reflect":
        index = torch.where(index < 0, -index - 1, torch.where(index >= n, 2 * n - 1 - index, index))
    out = x.index_select(dim, index.clamp(0, n - 1))
    if mode == "constant":
        shape = [1] * x.ndim
        shape[dim] = -1
        out = out * ((index >= 0) & (index < n)).to(x.dtype).view(shape)
    elif mode not in ("nearest", "reflect"):
        raise ValueError(f"unknown boundary mode {mode!r}")
    return out


def _correlate_symmetric(x: Tensor, weights: list[float], dim: int, mode: str) -> Tensor:
    """scipy.ndimage.correlate1d with a symmetric kernel, summed in scipy's order (centre tap, then the outer
    pairs inwards), so that float64 results are bit-equal to scipy's."""
    radius = (len(weights) - 1) // 2
    n = x.shape[dim]
    padded = _extend(x, radius, dim, mode)
    out = x * weights[radius]
    for j in range(radius, 0, -1):
        out = out + (padded.narrow(dim, radius - j, n) + padded.narrow(dim, radius + j, n)) * weights[radius - j]
    return out


def _gaussian(x: Tensor, sigma: float, mode: str = "nearest", dims: tuple[int, ...] = (-2, -1)) -> Tensor:
    """scipy.ndimage.gaussian_filter (truncate 4) along ``dims`` in turn; bit-equal to scipy in float64.
    scikit-image's ``gaussian`` defaults to ``mode='nearest'``."""
    weights = _scipy_gaussian_weights(sigma)
    for dim in dims:
        x = _correlate_symmetric(x, weights, dim % x.ndim, mode)
    return x


def _sobel(x: Tensor, dim: int) -> Tensor:
    """scipy.ndimage.sobel of (N, H, W) maps along ``dim`` (-2 rows, -1 columns), ``reflect`` boundaries: the
    central difference along ``dim``, then [1, 2, 1] along the other axis."""
    n = x.shape[dim]
    padded = _extend(x, 1, dim % x.ndim, "reflect")
    derivative = padded.narrow(dim, 2, n) - padded.narrow(dim, 0, n)
    other = -1 if dim % x.ndim == x.ndim - 2 else -2
    return _correlate_symmetric(derivative, [1.0, 2.0, 1.0], other % x.ndim, "reflect")


# --- noise ---------------------------------------------------------------------------------------------


@mnist_corruption("shot_noise", [60, 25, 12, 5, 3],
                  draw=lambda x, c, gen: {"counts": torch.poisson(x.double() * c, generator=gen)})
def _shot_noise(x: Tensor, c: float, d: Draws) -> Tensor:
    """Poisson(x * c) / c, the counts drawn on the CPU."""
    _check(x, "shot_noise")
    return (d["counts"] / c).to(x.dtype).clamp(0, 1)


@mnist_corruption("impulse_noise", [.03, .06, .09, 0.17, 0.27],
                  draw=lambda x, c, gen: {"flip": torch.rand(x.shape, generator=gen),
                                          "salt": torch.rand(x.shape, generator=gen)})
def _impulse_noise(x: Tensor, c: float, d: Draws) -> Tensor:
    """Salt and pepper, as scikit-image's ``random_noise(mode='s&p', amount=c)``: each pixel flipped with
    probability c, to 1 or 0 with equal odds."""
    _check(x, "impulse_noise")
    return torch.where(d["flip"] <= c, (d["salt"] <= 0.5).to(x.dtype), x)


# --- blur ----------------------------------------------------------------------------------------------


def _glass_positions(h: int, w: int, delta: int) -> list[tuple[int, int]]:
    return [(row, col) for row in range(h - delta, delta, -1) for col in range(w - delta, delta, -1)]


def _glass_draw(x: Tensor, c: tuple, gen: torch.Generator) -> Draws:
    _, delta, iterations = c
    _check(x, "glass_blur")
    steps = len(_glass_positions(x.shape[-2], x.shape[-1], delta))
    n = len(x)
    return {"swap": torch.rand((n, iterations, steps), generator=gen) < 0.5,
            "offsets": torch.randint(-delta, delta, (n, iterations, steps, 2), generator=gen)}


@mnist_corruption("glass_blur", [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)], draw=_glass_draw)
def _glass_blur(x: Tensor, c: tuple, d: Draws) -> Tensor:
    """The MNIST variant: blur, quantise to 8 bits, locally shuffle, blur again.

    * Both blurs are vertical only (Gaussian along the rows' axis, ``nearest`` boundary), as in the reference:
      scikit-image's ``gaussian(..., multichannel=True)`` took the last axis of the 2-D digit for a channel axis.
    * The input is first rounded to 8 bits (the reference's uint8 PIL image) and the first blur is floored to
      8 bits (its ``np.uint8(... * 255)``); the blurs are scipy-exact in float64, so the floor matches the
      reference's at every pixel.
    * Pixels are visited from bottom-right to top-left (rows and columns from size - delta down to delta + 1),
      ``iterations`` times; at each a coin (``swap``) decides whether it is swapped with the pixel at offset
      (dy, dx), each in [-delta, delta), sequentially as the reference (vectorised over the batch only).
    """
    _check(x, "glass_blur")
    sigma, delta, iterations = c
    n, _, h, w = x.shape
    image = torch.round(x.double() * 255) / 255
    levels = torch.floor(_gaussian(image, sigma, dims=(-2,)) * 255).clamp(0, 255)
    flat = levels.flatten(1).clone()
    here = [row * w + col for row, col in _glass_positions(h, w, delta)]
    offsets = d["offsets"].to(x.device) * d["swap"].to(x.device).unsqueeze(-1)
    there = torch.tensor(here, device=x.device).view(1, 1, -1) + offsets[..., 1] * w + offsets[..., 0]
    batch = torch.arange(n, device=x.device)
    for it in range(iterations):
        for k, index in enumerate(here):
            a, target = flat[:, index].clone(), there[:, it, k]
            flat[:, index] = flat[batch, target]
            flat[batch, target] = a
    out = _gaussian(flat.view(n, 1, h, w) / 255, sigma, dims=(-2,))
    return out.clamp(0, 1).to(x.dtype)


@mnist_corruption("motion_blur", [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
                  draw=lambda x, c, gen: {"angle": torch.rand(len(x), generator=gen) * 90 - 45})
def _motion_blur(x: Tensor, c: tuple, d: Draws) -> Tensor:
    """ImageMagick's motion blur of radius c[0] and sigma c[1] at a uniform angle in [-45, 45) degrees, by the
    library's reimplementation (the reference called ImageMagick through Wand); rounded to 8 bits, as the
    reference's PNG round trip through ImageMagick."""
    _check(x, "motion_blur")
    out = motion_blur(x, c[0], c[1], d["angle"])
    return torch.round(out.clamp(0, 1) * 255) / 255


# --- affine maps ---------------------------------------------------------------------------------------


def _affine_params(scale: tuple[float, float] = (1.0, 1.0), rotation: float = 0.0, shear: float = 0.0,
                   translation: tuple[float, float] = (0.0, 0.0)) -> list[list[float]]:
    """The 2x3 matrix of the 2019 scikit-image's ``AffineTransform`` (x = column, y = row)."""
    sx, sy = scale
    return [[sx * math.cos(rotation), -sy * math.sin(rotation + shear), translation[0]],
            [sx * math.sin(rotation), sy * math.cos(rotation + shear), translation[1]]]


def _centred(**kwargs) -> list[list[float]]:
    """The reference's fix: the translation that keeps the image centre (13.5, 13.5) in place."""
    (a1, a2, _), (b1, b2, _) = _affine_params(**kwargs)
    return _affine_params(**kwargs, translation=(CENTRE * (1 - a1 - a2), CENTRE * (1 - b1 - b2)))


def warp(x: Tensor, matrices: Tensor) -> Tensor:
    """scikit-image's ``warp(x, inverse_map)`` for (N, 2, 3) affine inverse maps (output (column, row, 1) to
    input (column, row)): bilinear, zero outside the image (``mode='constant'``, ``order=1``). Computed in
    float64 by grid_sample with aligned corners, which weighs the taps outside the image by zero as
    scikit-image does."""
    n, _, h, w = x.shape
    m = matrices.to(device=x.device, dtype=torch.float64)
    rows = torch.arange(h, device=x.device, dtype=torch.float64).view(1, h, 1)
    cols = torch.arange(w, device=x.device, dtype=torch.float64).view(1, 1, w)
    src_cols = m[:, 0, 0].view(n, 1, 1) * cols + m[:, 0, 1].view(n, 1, 1) * rows + m[:, 0, 2].view(n, 1, 1)
    src_rows = m[:, 1, 0].view(n, 1, 1) * cols + m[:, 1, 1].view(n, 1, 1) * rows + m[:, 1, 2].view(n, 1, 1)
    grid = torch.stack([src_cols / (w - 1) * 2 - 1, src_rows / (h - 1) * 2 - 1], -1)
    out = F.grid_sample(x.double(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.to(x.dtype)


def _sign_draw(x: Tensor, c: Any, gen: torch.Generator) -> Draws:
    return {"sign": torch.randint(0, 2, (len(x),), generator=gen) * 2 - 1}


def _signed_matrices(signs: Tensor, build: Callable[[float], list[list[float]]], c: float) -> Tensor:
    plus = torch.tensor(build(c), dtype=torch.float64, device=signs.device)
    minus = torch.tensor(build(-c), dtype=torch.float64, device=signs.device)
    return torch.where(signs.view(-1, 1, 1) > 0, plus, minus)


@mnist_corruption("shear", [0.2, 0.4, 0.6, 0.8, 1.], draw=_sign_draw)
def _shear(x: Tensor, c: float, d: Draws) -> Tensor:
    """Shear by +-c (a random sign per image) about the centre (13.5, 13.5): the inverse map
    [[1, -sin s], [0, cos s]] of the 2019 scikit-image."""
    _check(x, "shear", mnist_size=True)
    return warp(x, _signed_matrices(d["sign"], lambda s: _centred(shear=s), c))


@mnist_corruption("rotate", [0.2, 0.4, 0.6, 0.8, 1.], draw=_sign_draw)
def _rotate(x: Tensor, c: float, d: Draws) -> Tensor:
    """Rotation by +-c radians (a random sign per image) about the centre (13.5, 13.5)."""
    _check(x, "rotate", mnist_size=True)
    return warp(x, _signed_matrices(d["sign"], lambda s: _centred(rotation=s), c))


@mnist_corruption("scale", [(1 / .9, 1 / .9), (1 / .8, 1 / .8), (1 / .7, 1 / .7), (1 / .6, 1 / .6), (1 / .5, 1 / .5)])
def _scale(x: Tensor, c: tuple, d: Draws) -> Tensor:
    """Shrink by 1 / c about the centre (13.5, 13.5) (the inverse map scales by c); no randomness."""
    _check(x, "scale", mnist_size=True)
    return warp(x, torch.tensor(_centred(scale=c), dtype=torch.float64).expand(len(x), 2, 3))


@mnist_corruption("translate", [1, 2, 3, 4, 5],
                  draw=lambda x, c, gen: {"signs": torch.randint(0, 2, (len(x), 2), generator=gen) * 2 - 1})
def _translate(x: Tensor, c: int, d: Draws) -> Tensor:
    """Shift by c pixels along both axes, each direction a random sign (the inverse map adds (c * sx, c * sy)
    to the (column, row) coordinates, so the digit moves by minus that); zero fill."""
    _check(x, "translate")
    signs = d["signs"].to(torch.float64)
    m = torch.tensor(_affine_params(), dtype=torch.float64, device=signs.device).repeat(len(x), 1, 1)
    m[:, 0, 2], m[:, 1, 2] = c * signs[:, 0], c * signs[:, 1]
    return warp(x, m)


# --- photometric, weather ------------------------------------------------------------------------------


@mnist_corruption("brightness", [.1, .2, .3, .4, .5])
def _brightness(x: Tensor, c: float, d: Draws) -> Tensor:
    """clip(x + c): the reference's round trip through HSV, adding c to V, for a grey image."""
    _check(x, "brightness")
    return (x + c).clamp(0, 1)


PLASMA_SIZE = 256  # the reference's plasma_fractal(mapsize=256), cropped to the image
PLASMA_CHUNK = 64  # maps made at a time (64 x 256 x 256 float64 = 32 MiB), so big batches fit in memory


def _fog_draw(x: Tensor, c: tuple, gen: torch.Generator) -> Draws:
    _check(x, "fog")
    h, w = x.shape[-2:]
    if h > PLASMA_SIZE or w > PLASMA_SIZE:
        raise ValueError(f"MNIST-C fog crops a {PLASMA_SIZE}x{PLASMA_SIZE} plasma fractal; images are {h}x{w}")
    chunks = [plasma_fractal(min(PLASMA_CHUNK, len(x) - start), PLASMA_SIZE, c[1], uniform_noise(gen))[:, :h, :w]
              for start in range(0, len(x), PLASMA_CHUNK)]
    return {"plasma": torch.cat(chunks).unsqueeze(1) if chunks else torch.zeros(0, 1, h, w, dtype=torch.float64)}


@mnist_corruption("fog", [(1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)], draw=_fog_draw)
def _fog(x: Tensor, c: tuple, d: Draws) -> Tensor:
    """(x + c[0] * plasma) * max(x) / (max(x) + c[0]), the plasma the top-left 28x28 of a 256x256 diamond-square
    map with decay c[1] (float64, as the reference)."""
    _check(x, "fog")
    peak = x.double().flatten(1).amax(1).view(-1, 1, 1, 1)
    out = (x.double() + c[0] * d["plasma"].double()) * peak / (peak + c[0])
    return out.clamp(0, 1).to(x.dtype)


def _spatter_draw(x: Tensor, c: tuple, gen: torch.Generator) -> Draws:
    _check(x, "spatter")
    return {"liquid": torch.randn(x.shape, generator=gen, dtype=torch.float64) * c[1] + c[0]}


@mnist_corruption("spatter", [(0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
                              (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1)], draw=_spatter_draw)
def _spatter(x: Tensor, c: tuple, d: Draws) -> Tensor:
    """The reference's MNIST spatter, mud at every severity (c[5] is unused, as there): a Gaussian layer
    N(c[0], c[1]) blurred by sigma c[2], the mask of where it exceeds c[3] blurred by sigma c[4] and zeroed
    below 0.8, and the image blended with grey 63/255 by that mask. The blurs are scipy-exact (``nearest``
    boundary) in float64."""
    _check(x, "spatter")
    liquid = _gaussian(d["liquid"].double(), c[2])
    mask = _gaussian((liquid > c[3]).double(), c[4])
    mask = torch.where(mask < 0.8, torch.zeros_like(mask), mask)
    return (x.double() * (1 - mask) + 63 / 255 * mask).clamp(0, 1).to(x.dtype)


# --- stripe, lines -------------------------------------------------------------------------------------


@mnist_corruption("stripe", [(7, 21)] * 5)
def _stripe(x: Tensor, c: tuple, d: Draws) -> Tensor:
    """Inverts the columns left of c[0] and from c[1] on (0-6 and 21-27)."""
    _check(x, "stripe", mnist_size=True)
    cols = torch.arange(x.shape[-1], device=x.device)
    return torch.where((cols < c[0]) | (cols >= c[1]), 1 - x, x)


LINE_WIDTH = 2.3  # the reference's line_from_points: intensity log(1 - d / 2.3) + 1 at row distance d


def _segment(c0: float, r0: float, c1: float, r1: float) -> tuple[list[float], list[bool]]:
    """The reference's ``line_from_points(c0, r0, c1, r1)`` on a 28x28 grid, as ([c0, r0, slope, drawn], the
    columns kept): no line where c1 == c0; columns cut with numpy's slicing of ``[:, :floor(c0)]`` and
    ``[:, ceil(c1):]``, negative bounds counting from the right as in Python."""
    if c1 == c0:
        return [float(c0), float(r0), 0.0, 0.0], [False] * SIDE
    slope = (r1 - r0) / (c1 - c0)
    cut = set(range(*slice(None, int(math.floor(c0))).indices(SIDE)))
    cut |= set(range(*slice(int(math.ceil(c1)), None).indices(SIDE)))
    return [float(c0), float(r0), float(slope), 1.0], [col not in cut for col in range(SIDE)]


def _segments_draws(segments: list[list[tuple[list[float], list[bool]]]]) -> Draws:
    """Per-image lists of segments as (N, S, 4) float64 line parameters and (N, S, 28) kept columns."""
    count = max((len(s) for s in segments), default=0)
    blank = ([0.0, 0.0, 0.0, 0.0], [False] * SIDE)
    padded = [s + [blank] * (count - len(s)) for s in segments]
    lines = torch.tensor([[p for p, _ in s] for s in padded], dtype=torch.float64)
    keeps = torch.tensor([[k for _, k in s] for s in padded], dtype=torch.bool)
    return {"line": lines.view(len(segments), count, 4), "keep": keeps.view(len(segments), count, SIDE)}


def _lines(line: Tensor, keep: Tensor) -> Tensor:
    """The sum over segments of ``line_from_points`` (float64, (N, 1, 28, 28)), from ``_segments_draws``."""
    n = line.shape[0]
    rows = torch.arange(SIDE, device=line.device, dtype=torch.float64).view(1, SIDE, 1)
    cols = torch.arange(SIDE, device=line.device, dtype=torch.float64).view(1, 1, SIDE)
    total = torch.zeros(n, SIDE, SIDE, device=line.device, dtype=torch.float64)
    for s in range(line.shape[1]):
        c0, r0, slope, drawn = (line[:, s, k].view(n, 1, 1) for k in range(4))
        dist = (rows - (slope * (cols - c0) + r0)).abs().clamp(0, LINE_WIDTH - 1e-10)
        value = (torch.log(1 - dist / LINE_WIDTH) + 1).clamp(0, 1)
        total = total + value * keep[:, s].view(n, 1, SIDE) * drawn
    return total.unsqueeze(1)


def _dotted_line_draw(x: Tensor, c: int, gen: torch.Generator) -> Draws:
    _check(x, "dotted_line", mnist_size=True)
    ends = torch.randint(0, 27, (len(x), 2), generator=gen)
    draws = _segments_draws([[_segment(0, int(r0), 27, int(r1))] for r0, r1 in ends.tolist()])
    return {"rows": ends, **draws}


@mnist_corruption("dotted_line", [2] * 5, draw=_dotted_line_draw)
def _dotted_line(x: Tensor, c: int, d: Draws) -> Tensor:
    """A line from (column 0, a random row in [0, 27)) to (column 27, another), as the reference's
    ``line_from_points`` (its last column cut by its ``[:, ceil(27):]``), with every other run of c columns
    blanked: the reference's loop over ``arange(0, 30, 2)``, starting with a blank run."""
    _check(x, "dotted_line", mnist_size=True)
    bounds = list(range(0, 30, c))
    shown = torch.ones(SIDE, dtype=torch.bool)
    for i in range(1, len(bounds), 2):
        shown[bounds[i - 1]:bounds[i]] = False
    line = _lines(d["line"].to(x.device), d["keep"].to(x.device)) * shown.to(x.device)
    return (x.double() + line).clamp(0, 1).to(x.dtype)


def zigzag_points(r0: int, r1: int, a: float = 2.0, b: float = 2.0) -> list[tuple[float, float]]:
    """The reference zigzag's corners (column, row): teeth of length a and height b along the line from
    (2, r0) to (25, r1), ending with the reference's odd last point (d, r_i / (2 (d - max_c)))."""
    c0, c1 = 2, 25
    theta = math.atan((r1 - r0) / (c1 - c0))
    length = (c1 - c0) / math.cos(theta)
    points = [(0.0, 0.0)]
    r_i = 0.0
    for i in range(int((length - a) // (2 * a)) + 1):
        r_i = (-1) ** i * b
        points.append(((2 * i + 1) * a, r_i))
    max_c = (2 * a) * (length // (2 * a))
    if length != max_c:
        points.append((length, r_i / (2 * (length - max_c))))
    cos, sin = math.cos(theta), math.sin(theta)
    return [(cos * c - sin * r + c0, sin * c + cos * r + r0) for c, r in points]


def _zigzag_draw(x: Tensor, c: tuple, gen: torch.Generator) -> Draws:
    _check(x, "zigzag", mnist_size=True)
    r0 = torch.randint(0, 27, (len(x),), generator=gen)
    step = torch.randint(-5, 5, (len(x),), generator=gen)
    segments = []
    for start, rise in zip(r0.tolist(), step.tolist()):
        points = zigzag_points(start, start + rise, *c)
        segments.append([_segment(*p, *q) for p, q in zip(points, points[1:])])
    return {"r0": r0, "r1": r0 + step, **_segments_draws(segments)}


@mnist_corruption("zigzag", [(2.0, 2.0)] * 5, draw=_zigzag_draw)
def _zigzag(x: Tensor, c: tuple, d: Draws) -> Tensor:
    """A zigzag (teeth of length and height c) from (column 2, row r0) towards (column 25, r0 + [-5, 5)),
    drawn as the sum of its segments' ``line_from_points`` (the reference clips after each, the same for
    non-negative lines); the geometry is computed per image on the CPU in the draw step."""
    _check(x, "zigzag", mnist_size=True)
    line = _lines(d["line"].to(x.device), d["keep"].to(x.device))
    return (x.double() + line).clamp(0, 1).to(x.dtype)


# --- Canny edges ---------------------------------------------------------------------------------------


def canny(x: Tensor, sigma: float = 1.0, low: float = 0.1, high: float = 0.2) -> Tensor:
    """scikit-image's ``feature.canny(x, sigma, low, high)`` (mode 'constant') for (N, H, W) maps, batched,
    in float64: Gaussian smoothing divided by the smoothed mask (the bleed-over correction, + eps), Sobel
    gradients (``reflect`` boundary), non-maximum suppression with bilinear interpolation of the magnitude
    along the gradient (the border pixels excluded), then hysteresis: the 8-connected runs of local maxima
    >= low that hold one >= high. The low threshold is compared as a C float (float32), as scikit-image's
    Cython does. Returns a bool map."""
    image = x.double()
    bleed = _gaussian(torch.ones_like(image), sigma, "constant") + torch.finfo(torch.float64).eps
    smoothed = _gaussian(image, sigma, "constant") / bleed
    isobel, jsobel = _sobel(smoothed, -2), _sobel(smoothed, -1)
    magnitude = torch.sqrt(isobel * isobel + jsobel * jsobel)

    def at(dr: int, dc: int) -> Tensor:  # magnitude[row + dr, col + dc] (interior pixels only are used)
        return torch.roll(magnitude, (-dr, -dc), (-2, -1))

    abs_i, abs_j = isobel.abs(), jsobel.abs()
    same_sign = (isobel > 0) == (jsobel > 0)  # scikit-image's cond1; otherwise cond2
    rows_major = torch.where(same_sign, abs_i > abs_j, ~(abs_i < abs_j))  # interpolate along the row axis
    w = torch.where(rows_major, abs_j / torch.where(abs_i > 0, abs_i, 1.0),
                    abs_i / torch.where(abs_j > 0, abs_j, 1.0))
    # neighbours (n1_1, n1_2) ahead and (n2_1, n2_2) behind, by case: cond1 rows, cond1 cols, cond2 cols, cond2 rows
    ahead_1 = torch.where(same_sign, torch.where(rows_major, at(1, 0), at(0, 1)),
                          torch.where(rows_major, at(-1, 0), at(0, 1)))
    ahead_2 = torch.where(same_sign, at(1, 1), at(-1, 1))
    behind_1 = torch.where(same_sign, torch.where(rows_major, at(-1, 0), at(0, -1)),
                           torch.where(rows_major, at(1, 0), at(0, -1)))
    behind_2 = torch.where(same_sign, at(-1, -1), at(1, -1))
    maximum = ((ahead_2 * w + ahead_1 * (1.0 - w)) <= magnitude) & ((behind_2 * w + behind_1 * (1.0 - w)) <= magnitude)
    h, wd = image.shape[-2:]
    interior = torch.zeros(h, wd, dtype=torch.bool, device=x.device)
    interior[1:-1, 1:-1] = True
    low32 = float(torch.tensor(low if low > 0 else 1e-14, dtype=torch.float32))
    weak = interior & maximum & (magnitude >= low32)
    edges = weak & (magnitude >= high)
    while True:
        grown = F.max_pool2d(edges.unsqueeze(1).to(image.dtype), 3, 1, 1).squeeze(1).bool() & weak
        if torch.equal(grown, edges):
            return edges
        edges = grown


@mnist_corruption("canny_edges", [(1.0, 0.1, 0.2)] * 5)
def _canny_edges(x: Tensor, c: tuple, d: Draws) -> Tensor:
    """The binary Canny edge map of the digit (1 on edges, 0 elsewhere), scikit-image's defaults
    (sigma 1, thresholds 0.1 and 0.2); see ``canny``."""
    _check(x, "canny_edges")
    return canny(x[:, 0], *c).unsqueeze(1).to(x.dtype)
