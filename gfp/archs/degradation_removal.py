"""Building blocks of the degradation-removal U-Net.

The U-Net turns the degraded face into clean multi-resolution features: its encoder halves the
resolution down to 4x4 (the bottleneck that latent mapping reads), its decoder doubles it back up, and
at every decoder level the features feed the CS-SFT heads and an RGB output trained with the pyramid
restoration loss. The clean variant (v1.2+) uses bilinear resampling and plain convs; the paper model
(v1) uses the original StyleGAN2 layers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gfp.archs.stylegan2_v1 import ConvLayer, FusedLeakyReLU, ScaledLeakyReLU


class ResBlock(nn.Module):
    """Clean residual block that halves (``mode='down'``) or doubles (``'up'``) the resolution."""

    def __init__(self, in_channels: int, out_channels: int, mode: str = "down") -> None:
        super().__init__()
        if mode not in ("down", "up"):
            raise ValueError(f"mode must be 'down' or 'up', got {mode!r}")
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.scale_factor = 0.5 if mode == "down" else 2.0

    def forward(self, x: Tensor) -> Tensor:
        out = F.leaky_relu(self.conv1(x), 0.2)
        out = F.interpolate(out, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)
        out = F.leaky_relu(self.conv2(out), 0.2)
        x = F.interpolate(x, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)
        return out + self.skip(x)


class ConvUpLayer(nn.Module):
    """Paper-model decoder conv: bilinear x2, equalized-lr conv, optional fused activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int = 0,
        bias: bool = True,
        activate: bool = True,
    ) -> None:
        super().__init__()
        self.padding = padding
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias and not activate else None
        if activate:
            self.activation: nn.Module | None = FusedLeakyReLU(out_channels) if bias else ScaledLeakyReLU(0.2)
        else:
            self.activation = None

    def forward(self, x: Tensor) -> Tensor:
        out = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        out = F.conv2d(out, self.weight * self.scale, bias=self.bias, padding=self.padding)
        return out if self.activation is None else self.activation(out)


class ResUpBlock(nn.Module):
    """Paper-model residual block that doubles the resolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_channels, in_channels, 3)
        self.conv2 = ConvUpLayer(in_channels, out_channels, 3, padding=1)
        self.skip = ConvUpLayer(in_channels, out_channels, 1, bias=False, activate=False)

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)
