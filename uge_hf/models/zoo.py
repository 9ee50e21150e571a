"""CIFAR-style classifiers used as authorized models and as unauthorized (victim) models.

Every model maps a normalised ``B x 3 x H x W`` batch to ``B x num_classes`` logits, exposes the pooled
penultimate features through ``forward_features`` and ends in a linear ``head``. Pooling before the head
is adaptive, so parameter shapes depend only on ``(num_classes, width)``, never on the image size, and any
image of at least 16x16 pixels works.

``width`` is the one capacity knob: the channel count of the first layer, with every later layer scaled in
proportion. The architectures follow the widely used kuangliu/pytorch-cifar variants (stride-1 stems, no
early max-pool) so that results are comparable with the literature.
"""

import torch
import torch.nn.functional as F
from torch import nn


def _scaled(channels: int, width: int, base: int, multiple: int = 1) -> int:
    """Scale a reference channel count by ``width / base``, rounded to a positive multiple of ``multiple``."""
    return multiple * max(1, round(channels * width / (base * multiple)))


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """Bias-free conv followed by BatchNorm (the bias would be cancelled by the BatchNorm shift)."""
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout)]


class _Classifier(nn.Module):
    """A ``features`` stack ending in pooled, flattened ``B x D`` features, then a linear ``head``."""

    features: nn.Sequential
    head: nn.Linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


# --- ResNet-18 -----------------------------------------------------------------------------------------


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, stride=stride), nn.ReLU(inplace=True), *_conv_bn(cout, cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(*_conv_bn(cin, cout, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ResNet18(_Classifier):
    """CIFAR ResNet-18: 3x3 stride-1 stem, no max-pool, BasicBlock stages [2, 2, 2, 2] of widths w, 2w, 4w, 8w."""

    def __init__(self, num_classes: int, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(3, width), nn.ReLU(inplace=True)]
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            layers += [_BasicBlock(cin, cout, stride=1 if stage == 0 else 2), _BasicBlock(cout, cout, stride=1)]
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(cin, num_classes)


# --- plain CNN -----------------------------------------------------------------------------------------


class CNN(_Classifier):
    """VGG-like plain CNN: three stages of two conv-BN-ReLU layers (w, 2w, 4w channels), each then 2x2 max-pooled."""

    def __init__(self, num_classes: int, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for cout in (width, 2 * width, 4 * width):
            layers += [*_conv_bn(cin, cout), nn.ReLU(inplace=True), *_conv_bn(cout, cout), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2))
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(cin, num_classes)


# --- LeNet-5 -------------------------------------------------------------------------------------------


class LeNet(_Classifier):
    """LeNet-5 with ReLU and max-pooling: conv5(w) -> pool -> conv5(16w/6) -> pool -> fc120 -> fc84 -> head.

    ``width`` is the first conv's channel count (6 in the original); the second conv keeps the original 6:16
    ratio. The fully connected sizes stay at 120 and 84. The feature map is adaptively pooled to 5x5, which
    is exactly the original geometry for 32x32 inputs.
    """

    def __init__(self, num_classes: int, width: int = 6):
        super().__init__()
        second = _scaled(16, width, 6)
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(width, second, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5), nn.Flatten(),
            nn.Linear(second * 25, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.head = nn.Linear(84, num_classes)


# --- MobileNetV2 ---------------------------------------------------------------------------------------


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, stride: int):
        super().__init__()
        hidden = expansion * cin
        self.body = nn.Sequential(
            *_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True),
            *_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True),
            *_conv_bn(hidden, cout, 1),
        )  # fmt: skip
        # As in the CIFAR reference: a residual on every stride-1 block, projected when the width changes.
        self.shortcut: nn.Module | None = None
        if stride == 1:
            self.shortcut = nn.Identity() if cin == cout else nn.Sequential(*_conv_bn(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out if self.shortcut is None else out + self.shortcut(x)


class MobileNetV2(_Classifier):
    """CIFAR MobileNetV2: stride-1 stem and second stage; every channel count scaled by ``width / 32``."""

    # (expansion, output channels at width 32, blocks, stride of the first block)
    CONFIG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(3, width), nn.ReLU6(inplace=True)]
        cin = width
        for expansion, channels, blocks, stride in self.CONFIG:
            cout = _scaled(channels, width, 32)
            for i in range(blocks):
                layers.append(_InvertedResidual(cin, cout, expansion, stride if i == 0 else 1))
                cin = cout
        last = _scaled(1280, width, 32)
        layers += [*_conv_bn(cin, last, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(last, num_classes)


# --- ShuffleNetV2 --------------------------------------------------------------------------------------


def _channel_shuffle(x: torch.Tensor) -> torch.Tensor:
    """Interleave the two branch halves so information crosses between them in the next block."""
    b, c, h, w = x.shape
    return x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


class _ShuffleBlock(nn.Module):
    """Stride-1 unit: half the channels pass through untouched, the other half go through the branch."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            *_conv_bn(half, half, 1), nn.ReLU(inplace=True),
            *_conv_bn(half, half, 3, groups=half),
            *_conv_bn(half, half, 1), nn.ReLU(inplace=True),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, processed = x.chunk(2, dim=1)
        return _channel_shuffle(torch.cat([kept, self.branch(processed)], dim=1))


class _ShuffleDownBlock(nn.Module):
    """Stride-2 unit: two strided branches, each producing half of the output channels."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        half = cout // 2
        self.left = nn.Sequential(
            *_conv_bn(cin, cin, 3, 2, groups=cin),
            *_conv_bn(cin, half, 1), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.right = nn.Sequential(
            *_conv_bn(cin, half, 1), nn.ReLU(inplace=True),
            *_conv_bn(half, half, 3, 2, groups=half),
            *_conv_bn(half, half, 1), nn.ReLU(inplace=True),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _channel_shuffle(torch.cat([self.left(x), self.right(x)], dim=1))


class ShuffleNetV2(_Classifier):
    """CIFAR ShuffleNetV2, net size 1.0: stride-1 stem of ``width`` channels, no max-pool, stages of 3/7/3 blocks.

    At the default width 24 the stages have 116, 232 and 464 channels and the last conv 1024; all of them
    are scaled by ``width / 24``, the stage widths rounded to even numbers because each block splits its
    channels in two halves.
    """

    STAGES = ((116, 3), (232, 7), (464, 3))  # (output channels at width 24, blocks after the down block)

    def __init__(self, num_classes: int, width: int = 24):
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(3, width), nn.ReLU(inplace=True)]
        cin = width
        for channels, blocks in self.STAGES:
            cout = _scaled(channels, width, 24, multiple=2)
            layers += [_ShuffleDownBlock(cin, cout), *(_ShuffleBlock(cout) for _ in range(blocks))]
            cin = cout
        last = _scaled(1024, width, 24)
        layers += [*_conv_bn(cin, last, 1), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(last, num_classes)


ARCHITECTURES: dict[str, tuple[type[_Classifier], int]] = {
    "resnet18": (ResNet18, 64),
    "cnn": (CNN, 64),
    "lenet": (LeNet, 6),
    "mobilenetv2": (MobileNetV2, 32),
    "shufflenetv2": (ShuffleNetV2, 24),
}
