"""Small MNIST-sized networks."""
from __future__ import annotations

from torch import nn

from bench.models.archs import architecture


@architecture("small-cnn", task="classifier")
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


@architecture("lenet", task="classifier")
def lenet(in_channels: int = 1, input_size: int = 28, num_classes: int = 10) -> nn.Module:
    """LeNet-5 with ReLU and max-pooling."""
    side = ((input_size + 4 - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * side * side, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
    )
