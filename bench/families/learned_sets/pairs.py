"""Perturbation pairs (x, x~) for learning and testing perturbation sets (Wong & Kolter, 2021).

Every source is batched and seeded: ``source(x, index, gen)`` returns one perturbed copy of each
image (``index`` is the images' position in their split, used by file-backed sources).

- ``rts``: random rotation, translation and scale (the paper's MNIST-RTS setting: +-45 degrees,
  scale 0.7-1.3, translation up to 7 px of a 42 px canvas);
- ``linf-noise``: x + U[-eps, eps] clipped to [0, 1] (the paper's sanity setting);
- ``shear`` and ``thicken``: held-out families for MNIST-RTS (outside what RTS can express);
- ``corruption-files``: CIFAR-10-C style ``<folder>/<corruption>_<severity>.npy`` arrays aligned
  with the split, one corruption drawn uniformly per image (the paper's CIFAR-10-C setting).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, PlainSerializer, PlainValidator
from torch import Tensor

from bench.errors import DataError, did_you_mean
from bench.params import Params
from bench.registry import Registry

PairSource = Callable[[Tensor, Tensor, torch.Generator], Tensor]

# The paper's CIFAR-10-C split (severity 5): 12 corruptions to learn from, 3 held out.
CIFAR_TRAIN_CORRUPTIONS = ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "snow", "frost", "fog",
                           "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")
CIFAR_HELDOUT_CORRUPTIONS = ("gaussian_blur", "spatter", "saturate")


def affine_warp(x: Tensor, theta: Tensor) -> Tensor:
    """Warp images with per-example 2x3 affine matrices (normalised coordinates), zero outside."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def rts_theta(angle: Tensor, scale: Tensor, shift_x: Tensor, shift_y: Tensor) -> Tensor:
    """2x3 sampling matrices (output -> input, normalised coordinates) of: rotate by ``angle`` (radians) and
    scale by ``scale`` about the centre, then translate by (shift_x, shift_y) in *output* coordinates (the
    image spans 2), as torchvision's RandomAffine does: a point moves by exactly the shift, whatever the
    rotation and zoom. Content moves as p_out = scale * R(-angle) p_in + shift, so p_in = A (p_out - shift)."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    tx, ty = -(cos * shift_x - sin * shift_y), -(sin * shift_x + cos * shift_y)
    return torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)


def rts_pairs(x: Tensor, gen: torch.Generator, *, rotation: float = 45.0, scale: tuple[float, float] = (0.7, 1.3),
              translate: float = 7 / 42) -> Tensor:
    """x~ = a random rotation (degrees) and scale of each x, then a translation of up to ``translate`` of the
    side along each axis, in output pixels."""
    n = len(x)
    angle = _uniform(n, -rotation, rotation, gen) * math.pi / 180
    s = _uniform(n, *scale, gen)
    dx, dy = _uniform(n, -translate, translate, gen) * 2, _uniform(n, -translate, translate, gen) * 2  # span is 2
    return affine_warp(x, rts_theta(angle, s, dx, dy).to(x.device, x.dtype))


def shear_pairs(x: Tensor, gen: torch.Generator, *, shear: float = 0.6) -> Tensor:
    """x~ = a random horizontal shear x' = x + k y with |k| <= shear (not a rotation-scale-translation)."""
    k = _uniform(len(x), -shear, shear, gen)
    one, zero = torch.ones_like(k), torch.zeros_like(k)
    theta = torch.stack([torch.stack([one, k, zero], 1), torch.stack([zero, one, zero], 1)], 1)
    return affine_warp(x, theta.to(x.device, x.dtype))


def thicken_pairs(x: Tensor, gen: torch.Generator, *, size: int = 3, shift: int = 2) -> Tensor:
    """x~ = strokes thickened by a size x size max filter, then shifted by up to ``shift`` px."""
    thick = F.max_pool2d(x, size, stride=1, padding=size // 2)
    dx, dy = (torch.randint(-shift, shift + 1, (len(x),), generator=gen) for _ in range(2))
    side = x.shape[-1]
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2], theta[:, 1, 2] = -2 * dx / side, -2 * dy / side  # whole-pixel shifts
    return affine_warp(thick, theta.to(x.device, x.dtype))


def linf_noise_pairs(x: Tensor, gen: torch.Generator, *, eps: float = 0.3) -> Tensor:
    noise = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    return (x + noise.to(x.device, x.dtype)).clamp(0, 1)


class PairSpec(Params):
    """A validated pair-source spec from a card (a mapping with ``kind``); ``build`` makes the source.

    ``revision`` counts changes to what a source draws; it is part of the spec's serialised form, so the
    hashes of everything trained or evaluated on the pairs change with it (like architecture revisions)."""

    kind: str
    revision: ClassVar[int] = 0

    def identity(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        return data if self.revision == 0 else {**data, "revision": self.revision}

    def build(self, split: str) -> PairSource:
        raise NotImplementedError


PAIR_SOURCES: Registry[type[PairSpec]] = Registry("pair source")


@PAIR_SOURCES.register("rts")
class RTS(PairSpec):
    kind: Literal["rts"]
    revision = 1  # 1: the translation is in output pixels (it was rotated and zoomed with the image)
    rotation: float = Field(45.0, ge=0, le=180)
    scale: tuple[float, float] = (0.7, 1.3)
    translate: float = Field(7 / 42, ge=0, lt=1)

    def build(self, split: str) -> PairSource:
        return lambda x, index, gen: rts_pairs(x, gen, rotation=self.rotation, scale=self.scale,
                                               translate=self.translate)


@PAIR_SOURCES.register("shear")
class Shear(PairSpec):
    kind: Literal["shear"]
    shear: float = Field(0.6, ge=0)

    def build(self, split: str) -> PairSource:
        return lambda x, index, gen: shear_pairs(x, gen, shear=self.shear)


@PAIR_SOURCES.register("thicken")
class Thicken(PairSpec):
    kind: Literal["thicken"]
    size: int = Field(3, ge=1)
    shift: int = Field(2, ge=0)

    def build(self, split: str) -> PairSource:
        return lambda x, index, gen: thicken_pairs(x, gen, size=self.size, shift=self.shift)


@PAIR_SOURCES.register("linf-noise")
class LinfNoise(PairSpec):
    kind: Literal["linf-noise"]
    eps: float = Field(0.3, gt=0, le=1)

    def build(self, split: str) -> PairSource:
        return lambda x, index, gen: linf_noise_pairs(x, gen, eps=self.eps)


@PAIR_SOURCES.register("corruption-files")
class CorruptionFiles(PairSpec):
    """``<root>/<split>/<corruption>_<severity>.npy``: uint8 NHWC arrays, row i = image i of the split."""

    kind: Literal["corruption-files"]
    root: str
    corruptions: list[str] = Field(default_factory=lambda: list(CIFAR_TRAIN_CORRUPTIONS), min_length=1)
    severity: int = Field(5, ge=1, le=5)

    def build(self, split: str) -> PairSource:
        stack = torch.stack([_load_corruption(Path(self.root).expanduser() / split, c, self.severity)
                             for c in self.corruptions])  # (corruptions, N, C, H, W) uint8

        def source(x: Tensor, index: Tensor, gen: torch.Generator) -> Tensor:
            if int(index.max()) >= stack.shape[1]:
                raise DataError(f"corruption files under {self.root}/{split} hold {stack.shape[1]} images, "
                                f"but image {int(index.max())} was asked for",
                                "generate the files for the whole split (row i = image i)")
            which = torch.randint(len(self.corruptions), (len(x),), generator=gen)
            return (stack[which, index.cpu()].float() / 255).to(x.device, x.dtype)

        return source


def _load_corruption(folder: Path, corruption: str, severity: int) -> Tensor:
    path = folder / f"{corruption}_{severity}.npy"
    if not path.is_file():
        raise DataError(f"corruption file {path} does not exist",
                        "generate CIFAR-10-C style files (uint8 N x H x W x C, one row per image of the split) "
                        "or point pairs.root at them")
    array = np.load(path, allow_pickle=False)
    if array.dtype != np.uint8 or array.ndim != 4:
        raise DataError(f"{path} holds {array.dtype} {array.shape}, expected uint8 N x H x W x C",
                        "write the corrupted images as uint8 arrays")
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def parse_pairs(spec: Any) -> PairSpec:
    """Validate a pair-source spec (a mapping with ``kind``); errors are ValueErrors for card schemas."""
    if isinstance(spec, PairSpec):
        return spec
    kind = spec.get("kind") if isinstance(spec, dict) else spec
    if kind not in PAIR_SOURCES:
        raise ValueError(f"unknown pair source {kind!r}{'; ' + did_you_mean(str(kind), PAIR_SOURCES.names())}"
                         f"known: {', '.join(PAIR_SOURCES.names())}")
    if not isinstance(spec, dict):
        spec = {"kind": kind}
    return PAIR_SOURCES.get(kind).model_validate(spec)


Pairs = Annotated[PairSpec, PlainValidator(parse_pairs), PlainSerializer(lambda spec: spec.identity())]
