"""CIFAR-10 residual networks: ResNet-18 and -50, PreAct ResNet-18 and WideResNets (28-10 and others).

Layer names follow the common CIFAR implementations (e.g. RobustBench's), so their
state dicts load without renaming. Options that only RobustBench's zoo needs (``final_bn``,
``activated_shortcut``) default to what these builders always made, so no revision changed.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bench.models.archs import architecture


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class PreActBlock(nn.Module):
    """``activated_shortcut``: a projection shortcut reads the block's activated input (the usual CIFAR
    PreAct ResNet), else its raw input (RobustBench's ``PreActBlock``, e.g. Wong2020Fast)."""
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, activated_shortcut: bool = True):
        super().__init__()
        self.activated_shortcut = activated_shortcut
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out if self.activated_shortcut else x) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        return self.conv2(F.relu(self.bn2(out))) + shortcut


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != 4 * planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, 4 * planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(4 * planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """``final_bn`` (pre-activation nets only): a batch norm and ReLU before pooling; RobustBench's
    ``PreActResNet`` has none by default. ``block_kwargs`` go to every block."""

    def __init__(self, block: type[nn.Module], num_blocks: list[int], num_classes: int, in_channels: int,
                 preact: bool, final_bn: bool = True, **block_kwargs):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.preact = preact
        self.final_bn = preact and final_bn
        if not preact:
            self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], 1, block_kwargs)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], 2, block_kwargs)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], 2, block_kwargs)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], 2, block_kwargs)
        if self.final_bn:
            self.bn = nn.BatchNorm2d(512 * block.expansion)
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block: type[nn.Module], planes: int, n: int, stride: int, kwargs: dict) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s, **kwargs))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.final_bn:
            out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@architecture("resnet18", task="classifier")
def resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, preact=False)


@architecture("resnet50", task="classifier")
def resnet50(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, preact=False)


@architecture("preact-resnet18", task="classifier")
def preact_resnet18(num_classes: int = 10, in_channels: int = 3, final_bn: bool = True,
                    activated_shortcut: bool = True) -> nn.Module:
    """The defaults are the usual CIFAR PreAct ResNet-18; ``final_bn: false, activated_shortcut: false`` is
    RobustBench's ``PreActResNet(PreActBlock, [2, 2, 2, 2])`` (Wong2020Fast, Andriushchenko2020Understanding)."""
    return ResNet(PreActBlock, [2, 2, 2, 2], num_classes, in_channels, preact=True, final_bn=final_bn,
                  activated_shortcut=activated_shortcut)


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal_in_out = in_planes == out_planes
        # camelCase keeps state dicts of the reference implementation loadable
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.equal_in_out else self.convShortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class WideGroup(nn.Module):
    """A stage of blocks, keyed block{i}.layer.{j} as in the reference implementation."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen_factor: int, num_classes: int, in_channels: int):
        super().__init__()
        if (depth - 4) % 6:
            raise TypeError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = self._group(widths[0], widths[1], n, 1)
        self.block2 = self._group(widths[1], widths[2], n, 2)
        self.block3 = self._group(widths[2], widths[3], n, 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    @staticmethod
    def _group(in_planes: int, out_planes: int, n: int, stride: int) -> nn.Module:
        return WideGroup([WideBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                          for i in range(n)])

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn1(out)), 1).flatten(1)
        return self.fc(out)


@architecture("wrn", task="classifier")
def wide_resnet(depth: int = 28, widen_factor: int = 10, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return WideResNet(depth, widen_factor, num_classes, in_channels)
