"""The UGE perturbation generator G: an image-to-image ResNet that outputs a bounded additive perturbation."""

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int) -> nn.InstanceNorm2d:
    # Per-image statistics in both train and eval mode: an image gets the same perturbation whatever batch
    # it is in, which BatchNorm would not guarantee.
    return nn.InstanceNorm2d(channels, affine=True)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _UpBlock(nn.Module):
    """Nearest-neighbour resize then conv; unlike a transposed conv this does not leave checkerboard artefacts."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), _norm(cout), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class PerturbationGenerator(nn.Module):
    """Maps images in [0, 1] to perturbations ``delta`` with ``|delta| <= rho``, of the same shape.

    Layout (the paper's supplementary: "conv, residual and upsampling blocks"): a 7x7 reflect-padded stem,
    two stride-2 downsampling convs, ``num_res_blocks`` residual blocks at 1/4 resolution, two upsampling
    blocks and a 7x7 output conv to 3 channels, squashed by ``rho * tanh``. Each upsampling block resizes to
    the exact size its matching encoder level had, so any input size, odd ones included, comes back
    unchanged. Inputs need at least 8 pixels per side (reflection padding at 1/4 resolution).
    """

    def __init__(self, rho: float, base_channels: int = 32, num_res_blocks: int = 4):
        super().__init__()
        c = base_channels
        self.rho = rho
        self.stem = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, c, 7), _norm(c), nn.ReLU(inplace=True))
        self.down1 = nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), _norm(2 * c), nn.ReLU(inplace=True))
        self.down2 = nn.Sequential(nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), _norm(4 * c), nn.ReLU(inplace=True))
        self.res = nn.Sequential(*(_ResidualBlock(4 * c) for _ in range(num_res_blocks)))
        self.up2 = _UpBlock(4 * c, 2 * c)
        self.up1 = _UpBlock(2 * c, c)
        self.out = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(c, 3, 7))
        # Start near zero perturbation: with the default init the tanh saturates at +-rho from the first
        # step and barely trains (seen in a prototype). Not exactly zero, or no gradient would reach the
        # earlier layers on the first step. Drawn from torch's global RNG, so seeding controls it.
        nn.init.normal_(self.out[1].weight, std=1e-3)
        nn.init.zeros_(self.out[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = self.stem(x * 2 - 1)  # centre the [0, 1] input
        h1 = self.down1(h0)
        h2 = self.res(self.down2(h1))
        h = self.up1(self.up2(h2, h1.shape[-2:]), h0.shape[-2:])
        return self.rho * torch.tanh(self.out(h))
