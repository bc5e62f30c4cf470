"""Corruption suites: a set of corruptions with one constant table and its standard list (CIFAR-10-C,
ImageNet-C, MNIST-C), as the ``corruptions`` family and `bench data make` use them."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from bench.families.corruptions.library import CORRUPTIONS, Corruption
from bench.families.corruptions.mnist_c import MNIST_C, MNIST_C_NAMES, MNIST_C_SEVERITY
from bench.registry import Registry

CIFAR_15 = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
            "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")
CIFAR_EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")


# A value this close below a level counts as that level when truncating: float32 lands an exact level k (an
# untouched pixel, k / 255 * 255) up to ~2e-5 below k, where the generators' float64 stays at k. Kept small: a
# blur at sigma 0.25 moves a pixel by 3.4e-4 levels per level of difference to its neighbour, and the generators
# truncate that.
FLOOR_SLACK = 1e-4


@dataclass(frozen=True)
class Suite:
    """A set of corruptions with one constant table (``scale``) and its standard list."""

    name: str
    scale: str
    registry: Registry[Corruption]
    names: tuple[str, ...]
    extra: tuple[str, ...] = ()
    published: dict[str, int] = field(default_factory=dict)  # corruption -> the severity its published set used
    truncate: bool = False  # stored through np.uint8 (truncation), not rounded

    def get(self, name: str) -> Corruption:
        return self.registry.get(name, f"suite {self.name}")

    def corrupt(self, name: str, x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
        """The corrupted images in 8 bits as the published sets store them: CIFAR-10-C and ImageNet-C through
        ``np.uint8`` (truncation: up to one level below rounding), MNIST-C rounded."""
        levels = self.get(name)(x, severity, gen, self.scale) * 255
        return (torch.floor(levels + FLOOR_SLACK) if self.truncate else torch.round(levels)) / 255


SUITES = {"cifar10-c": Suite("cifar10-c", "cifar", CORRUPTIONS, CIFAR_15, CIFAR_EXTRA, truncate=True),
          "imagenet-c": Suite("imagenet-c", "imagenet", CORRUPTIONS, CIFAR_15, CIFAR_EXTRA, truncate=True),
          "mnist-c": Suite("mnist-c", "mnist", MNIST_C, tuple(MNIST_C_NAMES), published=dict(MNIST_C_SEVERITY))}
