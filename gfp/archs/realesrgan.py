"""Real-ESRGAN's background networks in plain PyTorch: ``RRDBNet`` (x2plus) and ``SRVGGNetCompact``
(general-x4v3, animevideov3).

They are basicsr's networks rewritten so that running a background does not import basicsr (and with it
torchvision and scipy, over a second of every process start). Parameter names and shapes are basicsr's, so
the official checkpoints load strictly, and the forward passes perform the same operations in the same order
(basicsr's outputs are reproduced bit for bit on the CPU). The initial weights are PyTorch's defaults, not
ESRGAN's (which scales the dense blocks' Kaiming init by 0.1 for training): the networks are always given
trained weights here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

RESIDUAL_SCALE = 0.2
"""ESRGAN's scale for the residual of every dense block and of every RRDB (it stabilises deep training)."""

_UNSHUFFLE = {4: 1, 2: 2, 1: 4}
"""RRDBNet's native scale → the pixel-unshuffle factor of its input (the trunk always upsamples x4)."""


def _conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, 1, 1)


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convolutions, each seeing the block input and every earlier output (dense connections);
    the last one's output, scaled by 0.2, is added to the input."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = _conv3x3(num_feat, num_grow_ch)
        self.conv2 = _conv3x3(num_feat + num_grow_ch, num_grow_ch)
        self.conv3 = _conv3x3(num_feat + 2 * num_grow_ch, num_grow_ch)
        self.conv4 = _conv3x3(num_feat + 3 * num_grow_ch, num_grow_ch)
        self.conv5 = _conv3x3(num_feat + 4 * num_grow_ch, num_feat)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Residual in Residual Dense Block: three dense blocks in a row, their result scaled by 0.2 and added
    to the input."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: Tensor) -> Tensor:
        out = self.rdb3(self.rdb2(self.rdb1(x)))
        return out * RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
    """ESRGAN's generator: a trunk of ``num_block`` RRDBs, then two nearest x2 upsamplings with convolutions.

    The trunk always upsamples x4; for ``scale`` 2 and 1 the input is first pixel-unshuffled by 2 and 4
    (Real-ESRGAN's way of making x2 and x1 models), so its sides must be divisible by 2 and 4.
    ``scale`` is kept as an attribute (callers read it).
    """

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
    ) -> None:
        super().__init__()
        if scale not in _UNSHUFFLE:
            raise ValueError(f"RRDBNet scale must be 1, 2 or 4, got {scale!r}")
        self.scale = scale
        unshuffle = _UNSHUFFLE[scale]
        self.conv_first = _conv3x3(num_in_ch * unshuffle * unshuffle, num_feat)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = _conv3x3(num_feat, num_feat)
        self.conv_up1 = _conv3x3(num_feat, num_feat)
        self.conv_up2 = _conv3x3(num_feat, num_feat)
        self.conv_hr = _conv3x3(num_feat, num_feat)
        self.conv_last = _conv3x3(num_feat, num_out_ch)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        unshuffle = _UNSHUFFLE[self.scale]
        # basicsr unshuffles by view, permute and reshape, which leaves a channels-last input contiguous
        # (NCHW); torch's op keeps channels-last, and the next convolution would then take another kernel.
        feat = F.pixel_unshuffle(x, unshuffle).contiguous() if unshuffle > 1 else x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


def _activation(act_type: str, num_feat: int) -> nn.Module:
    """SRVGGNetCompact's activation: a per-channel PReLU, ReLU, or LeakyReLU with slope 0.1."""
    if act_type == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if act_type == "relu":
        return nn.ReLU(inplace=True)
    if act_type == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.1, inplace=True)
    raise ValueError(f"act_type must be 'relu', 'prelu' or 'leakyrelu', got {act_type!r}")


class SRVGGNetCompact(nn.Module):
    """A compact VGG-style super-resolution network: all convolutions run at the input resolution.

    ``body`` alternates convolution and activation (``num_conv`` + 1 pairs), then a last convolution makes
    ``num_out_ch * upscale**2`` channels that a pixel shuffle turns into the upscaled residual; the input,
    upscaled by nearest neighbour, is added to it.
    """

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_conv: int = 16,
        upscale: int = 4,
        act_type: str = "prelu",
    ) -> None:
        super().__init__()
        self.upscale = upscale

        layers: list[nn.Module] = [_conv3x3(num_in_ch, num_feat), _activation(act_type, num_feat)]
        for _ in range(num_conv):
            layers += [_conv3x3(num_feat, num_feat), _activation(act_type, num_feat)]
        layers.append(_conv3x3(num_feat, num_out_ch * upscale * upscale))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(upscale)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = self.upsampler(out)
        out += F.interpolate(x, scale_factor=self.upscale, mode="nearest")
        return out
