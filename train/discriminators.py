"""Discriminators for GFPGAN training, built from the original StyleGAN2 layers in gfp.archs.

Module and parameter names match basicsr's ``StyleGAN2Discriminator`` and gfpgan's
``FacialComponentDiscriminator``, so official ``net_d*.pth`` checkpoints load with ``strict=True``.
Everything is plain PyTorch (no compiled ops).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gfp.archs.stylegan2_clean import stylegan_channels
from gfp.archs.stylegan2_v1 import DEFAULT_KERNEL, ConvLayer, EqualLinear, ResBlock


class StyleGAN2Discriminator(nn.Module):
    """ResNet StyleGAN2 discriminator with minibatch-stddev; (B, 3, S, S) in [-1, 1] → (B, 1) logits."""

    def __init__(
        self,
        out_size: int,
        channel_multiplier: float = 2,
        resample_kernel: Sequence[int] = DEFAULT_KERNEL,
        stddev_group: int = 4,
        narrow: float = 1.0,
    ) -> None:
        super().__init__()
        ch = stylegan_channels(channel_multiplier, narrow)
        log_size = int(math.log2(out_size))
        if 2**log_size != out_size or out_size not in ch:
            raise ValueError(f"out_size must be a power of two in 4..1024, got {out_size}")
        body: list[nn.Module] = [ConvLayer(3, ch[out_size], 1)]
        cin = ch[out_size]
        for i in range(log_size, 2, -1):
            body.append(ResBlock(cin, ch[2 ** (i - 1)], resample_kernel))
            cin = ch[2 ** (i - 1)]
        self.conv_body = nn.Sequential(*body)
        self.final_conv = ConvLayer(cin + 1, ch[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(ch[4] * 4 * 4, ch[4], activation="fused_lrelu"),
            EqualLinear(ch[4], 1),
        )
        self.stddev_group = stddev_group

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_body(x)
        b, c, h, w = out.shape
        group = min(b, self.stddev_group)
        if b % group:
            raise ValueError(f"batch size {b} must be divisible by the stddev group {group}")
        # Std over each group of samples, averaged over channels and pixels: one extra feature map.
        std = torch.sqrt(out.view(group, -1, 1, c, h, w).var(0, unbiased=False) + 1e-8)
        std = std.mean([2, 3, 4], keepdim=True).squeeze(2).repeat(group, 1, h, w)
        out = self.final_conv(torch.cat([out, std], 1))
        return self.final_linear(out.view(b, -1))


class FacialComponentDiscriminator(nn.Module):
    """VGG-style patch discriminator for an eye or mouth crop; also returns two mid-level features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvLayer(3, 64, 3)
        self.conv2 = ConvLayer(64, 128, 3, downsample=True)
        self.conv3 = ConvLayer(128, 128, 3)
        self.conv4 = ConvLayer(128, 256, 3, downsample=True)
        self.conv5 = ConvLayer(256, 256, 3)
        self.final_conv = ConvLayer(256, 1, 3, activate=False)

    def forward(self, x: Tensor, return_feats: bool = False) -> tuple[Tensor, list[Tensor] | None]:
        """Patch logits, and (with ``return_feats``) the features after conv3 and conv5 for the style loss."""
        f1 = self.conv3(self.conv2(self.conv1(x)))
        f2 = self.conv5(self.conv4(f1))
        return self.final_conv(f2), ([f1, f2] if return_feats else None)
