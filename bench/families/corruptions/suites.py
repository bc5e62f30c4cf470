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


@dataclass(frozen=True)
class Suite:
    """A set of corruptions with one constant table (``scale``) and its standard list."""

    name: str
    scale: str
    registry: Registry[Corruption]
    names: tuple[str, ...]
    extra: tuple[str, ...] = ()
    published: dict[str, int] = field(default_factory=dict)  # corruption -> the severity its published set used

    def get(self, name: str) -> Corruption:
        return self.registry.get(name, f"suite {self.name}")

    def corrupt(self, name: str, x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
        """The corrupted images, rounded to 8 bits as the published sets store them."""
        return torch.round(self.get(name)(x, severity, gen, self.scale) * 255) / 255


SUITES = {"cifar10-c": Suite("cifar10-c", "cifar", CORRUPTIONS, CIFAR_15, CIFAR_EXTRA),
          "imagenet-c": Suite("imagenet-c", "imagenet", CORRUPTIONS, CIFAR_15, CIFAR_EXTRA),
          "mnist-c": Suite("mnist-c", "mnist", MNIST_C, tuple(MNIST_C_NAMES), published=dict(MNIST_C_SEVERITY))}
