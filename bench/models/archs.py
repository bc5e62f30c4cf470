"""Architecture registry: a model card's ``architecture.name`` picks a builder from ARCHS."""
from __future__ import annotations

from typing import Callable

from torch import nn

from bench.errors import CardError, did_you_mean

Builder = Callable[..., nn.Module]
ARCHS: dict[str, Builder] = {}
REVISIONS: dict[str, int] = {}


def register(name: str, revision: int = 0) -> Callable[[Builder], Builder]:
    """``revision`` counts changes to what the builder makes; it is part of every training hash that
    uses the architecture, so weights trained by an older revision are never loaded into a newer one."""
    def wrap(fn: Builder) -> Builder:
        if name in ARCHS:
            raise ValueError(f"architecture {name!r} registered twice")
        ARCHS[name], REVISIONS[name] = fn, revision
        return fn

    return wrap


def build(name: str, kwargs: dict, where: str) -> nn.Module:
    if name not in ARCHS:
        raise CardError(f"{where}: unknown architecture {name!r}", f"{did_you_mean(name, ARCHS)}known: {', '.join(sorted(ARCHS))}")
    try:
        return ARCHS[name](**kwargs)
    except TypeError as err:
        raise CardError(f"{where}: bad kwargs for architecture {name!r}: {err}",
                        "fix architecture.kwargs in the card") from err


@register("small-cnn")
def small_cnn(in_channels: int = 1, input_size: int = 28, num_classes: int = 10,
              width: int = 16, hidden: int = 100) -> nn.Module:
    """Two strided convolutions and two linear layers (the MNIST net of Wong et al., 2020)."""
    side = input_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(2 * width * side * side, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


@register("lenet")
def lenet(in_channels: int = 1, input_size: int = 28, num_classes: int = 10) -> nn.Module:
    """LeNet-5 with ReLU and max-pooling."""
    side = ((input_size + 4 - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * side * side, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
    )


# CIFAR-sized residual families and the perturbation-set CVAEs live in their own modules;
# importing them registers them.
from bench.models import cvae, resnets  # noqa: E402,F401
