"""Original StyleGAN2 layers (equalized learning rate, upfirdn blur, fused bias+leaky ReLU).

These make up the paper model ``GFPGANv1.pth`` (channel multiplier 1) and the discriminators used in
training. The official code runs the fused activation and upfirdn through compiled CUDA extensions and
fails on CPU; here both are written with plain PyTorch ops and compute the same function everywhere.
Parameter names follow the official checkpoints (``nn.Sequential`` indices included).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gfp.archs.stylegan2_clean import ModulatedConvBase, NormStyleCode, StyleGAN2Generator, demodulation

DEFAULT_KERNEL = (1, 3, 3, 1)


def fused_leaky_relu(x: Tensor, bias: Tensor, negative_slope: float = 0.2, scale: float = 2**0.5) -> Tensor:
    """Bias add + leaky ReLU + gain: the formula behind StyleGAN2's fused CUDA op."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), negative_slope) * scale


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion, pad (negative = crop), FIR-filter, then decimate; per channel."""
    b, c, h, w = x.shape
    if up > 1:
        upsampled = x.new_zeros(b, c, h * up, w * up)
        upsampled[:, :, ::up, ::up] = x
        x = upsampled
    p0, p1 = pad
    x = F.pad(x, [p0, p1, p0, p1])
    k = torch.flip(kernel, [0, 1]).to(x.dtype)
    weight = k.view(1, 1, *k.shape).repeat(c, 1, 1, 1)
    return F.conv2d(x, weight, stride=down, groups=c)


def make_resample_kernel(k: Sequence[int]) -> Tensor:
    """Separable 1-D taps → normalised 2-D FIR kernel."""
    kernel = torch.tensor(k, dtype=torch.float32)
    if kernel.ndim == 1:
        kernel = kernel[None, :] * kernel[:, None]
    return kernel / kernel.sum()


class Upsample(nn.Module):
    """x2 FIR upsampling (used on the RGB skip path)."""

    def __init__(self, resample_kernel: Sequence[int] = DEFAULT_KERNEL, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_resample_kernel(resample_kernel) * factor**2, persistent=False)
        pad = self.kernel.shape[0] - factor
        self.pad = ((pad + 1) // 2 + factor - 1, pad // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class Blur(nn.Module):
    """FIR low-pass that goes with a strided (down) or transposed (up) convolution of ``kernel_size``."""

    def __init__(
        self,
        resample_kernel: Sequence[int] = DEFAULT_KERNEL,
        upsample_factor: int = 1,
        downsample_factor: int = 1,
        kernel_size: int = 1,
    ) -> None:
        super().__init__()
        kernel = make_resample_kernel(resample_kernel)
        taps = kernel.shape[0]
        if upsample_factor > 1:
            kernel = kernel * upsample_factor**2
            pad = (taps - upsample_factor) - (kernel_size - 1)
            self.pad = ((pad + 1) // 2 + upsample_factor - 1, pad // 2 + 1)
        elif downsample_factor > 1:
            pad = (taps - downsample_factor) + (kernel_size - 1)
            self.pad = ((pad + 1) // 2, pad // 2)
        else:
            raise ValueError("Blur needs an upsample or a downsample factor above 1")
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class FusedLeakyReLU(nn.Module):
    """Learned bias + leaky ReLU + sqrt(2) gain."""

    def __init__(self, channels: int, negative_slope: float = 0.2, scale: float = 2**0.5) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)


class ScaledLeakyReLU(nn.Module):
    """Leaky ReLU with sqrt(2) gain (no bias)."""

    def __init__(self, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope) * math.sqrt(2)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate (weights scaled at run time, ``lr_mul`` for the MLP)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        bias_init_val: float = 0.0,
        lr_mul: float = 1.0,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        if activation not in ("fused_lrelu", None):
            raise ValueError(f"EqualLinear activation must be 'fused_lrelu' or None, got {activation!r}")
        self.activation = activation
        self.lr_mul = lr_mul
        self.scale = lr_mul / math.sqrt(in_channels)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_channels,), float(bias_init_val))) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias * self.lr_mul
        if self.activation == "fused_lrelu":
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias=bias)


class EqualConv2d(nn.Module):
    """Conv2d with equalized learning rate."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
        bias_init_val: float = 0.0,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.padding = padding
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.full((out_channels,), float(bias_init_val))) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, bias=self.bias, stride=self.stride, padding=self.padding)


class ConvLayer(nn.Sequential):
    """[Blur] → EqualConv2d → [activation]; a Sequential so checkpoint keys keep their indices."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        downsample: bool = False,
        resample_kernel: Sequence[int] = DEFAULT_KERNEL,
        bias: bool = True,
        activate: bool = True,
    ) -> None:
        layers: list[nn.Module] = []
        if downsample:
            layers.append(Blur(resample_kernel, downsample_factor=2, kernel_size=kernel_size))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(
            EqualConv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias and not activate)
        )
        if activate:
            layers.append(FusedLeakyReLU(out_channels) if bias else ScaledLeakyReLU(0.2))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Residual block that halves the resolution (discriminator and U-Net encoder)."""

    def __init__(self, in_channels: int, out_channels: int, resample_kernel: Sequence[int] = DEFAULT_KERNEL):
        super().__init__()
        self.conv1 = ConvLayer(in_channels, in_channels, 3)
        self.conv2 = ConvLayer(in_channels, out_channels, 3, downsample=True, resample_kernel=resample_kernel)
        self.skip = ConvLayer(
            in_channels,
            out_channels,
            1,
            downsample=True,
            resample_kernel=resample_kernel,
            bias=False,
            activate=False,
        )

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class ModulatedConv2d(ModulatedConvBase):
    """Original modulated conv: transposed-conv upsampling + blur, or blur + strided conv downsampling."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        num_style_feat: int,
        demodulate: bool = True,
        sample_mode: str | None = None,
        resample_kernel: Sequence[int] = DEFAULT_KERNEL,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.sample_mode = sample_mode
        self.eps = eps
        if sample_mode == "upsample":
            self.smooth = Blur(resample_kernel, upsample_factor=2, kernel_size=kernel_size)
        elif sample_mode == "downsample":
            self.smooth = Blur(resample_kernel, downsample_factor=2, kernel_size=kernel_size)
        elif sample_mode is not None:
            raise ValueError(f"sample_mode must be 'upsample', 'downsample' or None, got {sample_mode!r}")
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.modulation = EqualLinear(num_style_feat, in_channels, bias=True, bias_init_val=1)
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.padding = kernel_size // 2

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        b, c, h, w = x.shape
        k = self.kernel_size
        style_scale = self.modulation(style)
        if self.shares_weights(b):
            return self._forward_shared(x, style_scale)
        weight = self.scale * self.weight * style_scale.view(b, 1, c, 1, 1)
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + self.eps)
            weight = weight * demod.view(b, self.out_channels, 1, 1, 1)
        if self.sample_mode == "upsample":
            weight = weight.transpose(1, 2).reshape(b * c, self.out_channels, k, k)
            out = F.conv_transpose2d(x.reshape(1, b * c, h, w), weight, stride=2, groups=b)
            return self.smooth(out.view(b, self.out_channels, *out.shape[2:]))
        weight = weight.reshape(b * self.out_channels, c, k, k)
        if self.sample_mode == "downsample":
            x = self.smooth(x)
            out = F.conv2d(x.reshape(1, b * c, *x.shape[2:]), weight, stride=2, groups=b)
        else:
            out = F.conv2d(x.reshape(1, b * c, h, w), weight, padding=self.padding, groups=b)
        return out.view(b, self.out_channels, *out.shape[2:])

    def _forward_shared(self, x: Tensor, style_scale: Tensor) -> Tensor:
        """Shared weights for the batch: modulate the input channels, demodulate the output channels.

        The blur after the transposed conv (and before the strided one) filters each channel alone, so
        per-channel scales commute with it.
        """
        weight = self.scale * self.weight[0]
        x = x * style_scale[:, :, None, None]
        if self.sample_mode == "upsample":
            out = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
        elif self.sample_mode == "downsample":
            out = F.conv2d(self.smooth(x), weight, stride=2)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            out = out * demodulation(weight, style_scale, self.eps)[:, :, None, None]
        return self.smooth(out) if self.sample_mode == "upsample" else out


class StyleConv(nn.Module):
    """Original style conv: modulated conv + noise + fused bias/leaky ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_style_feat: int,
        sample_mode: str | None = None,
        resample_kernel: Sequence[int] = DEFAULT_KERNEL,
    ) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv2d(
            in_channels,
            out_channels,
            3,
            num_style_feat,
            sample_mode=sample_mode,
            resample_kernel=resample_kernel,
        )
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None = None) -> Tensor:
        out = self.modulated_conv(x, style)
        if noise is None:
            noise = out.new_empty(out.shape[0], 1, *out.shape[2:]).normal_()
        return self.activate(out + self.weight * noise)


class ToRGB(nn.Module):
    """Original to-RGB: 1x1 modulated conv, FIR-upsampled skip."""

    def __init__(
        self,
        in_channels: int,
        num_style_feat: int,
        upsample: bool = True,
        resample_kernel: Sequence[int] = DEFAULT_KERNEL,
    ) -> None:
        super().__init__()
        self.upsample = Upsample(resample_kernel) if upsample else None
        self.modulated_conv = ModulatedConv2d(in_channels, 3, 1, num_style_feat, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            if self.upsample is not None:
                skip = self.upsample(skip)
            out = out + skip
        return out


class StyleGAN2GeneratorV1(StyleGAN2Generator):
    """StyleGAN2 with the original layers; the decoder of the paper model GFPGANv1."""

    def __init__(
        self,
        out_size: int,
        num_style_feat: int = 512,
        num_mlp: int = 8,
        channel_multiplier: float = 2,
        narrow: float = 1.0,
        sft_half: bool = True,
        resample_kernel: Sequence[int] = DEFAULT_KERNEL,
        lr_mlp: float = 0.01,
    ) -> None:
        self.resample_kernel = tuple(resample_kernel)
        self.lr_mlp = lr_mlp
        super().__init__(out_size, num_style_feat, num_mlp, channel_multiplier, narrow, sft_half)

    def _style_mlp(self, num_style_feat: int, num_mlp: int) -> nn.Sequential:
        layers: list[nn.Module] = [NormStyleCode()]
        layers += [
            EqualLinear(num_style_feat, num_style_feat, lr_mul=self.lr_mlp, activation="fused_lrelu")
            for _ in range(num_mlp)
        ]
        return nn.Sequential(*layers)

    def _style_conv(self, in_channels: int, out_channels: int, upsample: bool) -> nn.Module:
        mode = "upsample" if upsample else None
        return StyleConv(in_channels, out_channels, self.num_style_feat, mode, self.resample_kernel)

    def _to_rgb(self, in_channels: int, upsample: bool) -> nn.Module:
        return ToRGB(
            in_channels, self.num_style_feat, upsample=upsample, resample_kernel=self.resample_kernel
        )
