"""The "clean" StyleGAN2 generator: the pretrained face prior of GFPGAN v1.2, v1.3 and v1.4.

"Clean" means plain PyTorch ops only: bilinear resampling instead of StyleGAN2's upfirdn blur kernels,
and ``nn.LeakyReLU`` instead of the fused CUDA activation. Parameter names follow the official
checkpoints, so their ``stylegan_decoder.*`` weights load with ``strict=True``.

The synthesis loop optionally takes CS-SFT conditions (one scale/shift pair per resolution) from the
GFPGAN U-Net; without them this is an ordinary StyleGAN2 generator.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gfp.archs.cs_sft import Conditions, channel_split_sft


def stylegan_channels(channel_multiplier: float = 2, narrow: float = 1.0) -> dict[int, int]:
    """Feature channels per resolution, as in StyleGAN2 (and every GFPGAN network)."""
    wide = {4: 512, 8: 512, 16: 512, 32: 512}
    scaled = {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    channels = {res: int(c * narrow) for res, c in wide.items()}
    channels.update({res: int(c * channel_multiplier * narrow) for res, c in scaled.items()})
    return channels


class NormStyleCode(nn.Module):
    """Pixel norm of the input style code (first layer of the mapping MLP)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


MODULATION_MODES = ("auto", "per_sample", "shared")


def set_modulation_mode(net: nn.Module, mode: str) -> None:
    """Choose how every modulated conv inside ``net`` handles a batch (see :class:`ModulatedConvBase`).

    "auto" (the default): per-sample weights for a batch of one, shared weights above; "per_sample": always
    the official formulation; "shared": always shared weights (what ONNX export with a dynamic batch needs).
    """
    if mode not in MODULATION_MODES:
        raise ValueError(f"modulation mode must be one of {MODULATION_MODES}, got {mode!r}")
    for module in net.modules():
        if isinstance(module, ModulatedConvBase):
            module.modulation_mode = mode


def demodulation(weight: Tensor, style_scale: Tensor, eps: float) -> Tensor:
    """Per sample and output channel, 1 / ||weight * style_scale||: shape (B, out_channels).

    ``weight`` is (out, in, k, k), ``style_scale`` (B, in). The norm of the modulated weight is
    sum_i s_i^2 * sum_k w_oik^2, so it needs the (out, in) energies of the shared weight only. Written
    with elementwise ops rather than a matmul so it stays in float32 under autocast.
    """
    energy = weight.pow(2).sum([2, 3])
    return torch.rsqrt((style_scale.pow(2).unsqueeze(1) * energy).sum(2) + eps)


class ModulatedConvBase(nn.Module):
    """What both modulated convolutions share: how a batch is computed.

    The official formulation builds each sample's own modulated (and demodulated) weight tensor and runs
    one grouped convolution, so a batch of B costs B weight tensors and a grouped conv, which backends run
    slower than a plain one. The same function can be had with the weights shared by the whole batch:
    scale the input channels by the style, convolve with the shared weight, and scale the output channels
    by the demodulation factor. Both are equal up to float rounding; batches of one keep the official
    formulation, so a single face gets exactly the official network's arithmetic.
    """

    modulation_mode: str = "auto"

    def shares_weights(self, batch: int) -> bool:
        """Whether this forward uses the shared-weight formulation for a batch of ``batch``."""
        if self.modulation_mode == "auto":
            return batch > 1
        return self.modulation_mode == "shared"


class ModulatedConv2d(ModulatedConvBase):
    """Style-modulated, optionally demodulated convolution; bilinear x2 resampling when asked."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        num_style_feat: int,
        demodulate: bool = True,
        sample_mode: str | None = None,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.sample_mode = sample_mode
        self.eps = eps
        self.padding = kernel_size // 2
        self.modulation = nn.Linear(num_style_feat, in_channels, bias=True)
        nn.init.kaiming_normal_(self.modulation.weight, a=0, mode="fan_in", nonlinearity="linear")
        nn.init.constant_(self.modulation.bias, 1.0)
        fan_in = in_channels * kernel_size**2
        self.weight = nn.Parameter(
            torch.randn(1, out_channels, in_channels, kernel_size, kernel_size) / math.sqrt(fan_in)
        )

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        b, c = x.shape[:2]
        style_scale = self.modulation(style)
        if self.shares_weights(b):
            return self._forward_shared(x, style_scale)
        weight = self.weight * style_scale.view(b, 1, c, 1, 1)
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + self.eps)
            weight = weight * demod.view(b, self.out_channels, 1, 1, 1)
        weight = weight.view(b * self.out_channels, c, self.kernel_size, self.kernel_size)
        if self.sample_mode == "upsample":
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        elif self.sample_mode == "downsample":
            x = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
        h, w = x.shape[2:]
        # One grouped conv applies each sample's own weights to that sample.
        out = F.conv2d(x.reshape(1, b * c, h, w), weight, padding=self.padding, groups=b)
        return out.view(b, self.out_channels, *out.shape[2:])

    def _forward_shared(self, x: Tensor, style_scale: Tensor) -> Tensor:
        """Modulate the input channels, convolve with the shared weight, demodulate the output channels."""
        weight = self.weight[0]
        # Bilinear resampling acts on each channel alone, so modulating before it is the same function.
        x = x * style_scale[:, :, None, None]
        if self.sample_mode == "upsample":
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        elif self.sample_mode == "downsample":
            x = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
        out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            out = out * demodulation(weight, style_scale, self.eps)[:, :, None, None]
        return out


class StyleConv(nn.Module):
    """Modulated 3x3 conv + per-pixel noise + bias + leaky ReLU (gain sqrt(2))."""

    def __init__(
        self, in_channels: int, out_channels: int, num_style_feat: int, sample_mode: str | None = None
    ) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv2d(
            in_channels, out_channels, 3, num_style_feat, demodulate=True, sample_mode=sample_mode
        )
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None = None) -> Tensor:
        out = self.modulated_conv(x, style) * 2**0.5
        if noise is None:
            noise = out.new_empty(out.shape[0], 1, *out.shape[2:]).normal_()
        out = out + self.weight * noise + self.bias
        return F.leaky_relu(out, 0.2)


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB, added to the (upsampled) running RGB skip."""

    def __init__(self, in_channels: int, num_style_feat: int, upsample: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = ModulatedConv2d(in_channels, 3, 1, num_style_feat, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            if self.upsample:
                skip = F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
            out = out + skip
        return out


class ConstantInput(nn.Module):
    """The learned 4x4 constant the synthesis network starts from."""

    def __init__(self, num_channel: int, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, num_channel, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.weight.repeat(batch, 1, 1, 1)


class StyleGAN2Generator(nn.Module):
    """Clean StyleGAN2 generator; with ``conditions`` it is GFPGAN's CS-SFT decoder.

    Subclasses swap the layer types through ``_style_mlp``, ``_style_conv`` and ``_to_rgb`` (the paper
    model's original layers live in :mod:`gfp.archs.stylegan2_v1`); the synthesis loop is shared.
    """

    def __init__(
        self,
        out_size: int,
        num_style_feat: int = 512,
        num_mlp: int = 8,
        channel_multiplier: float = 2,
        narrow: float = 1.0,
        sft_half: bool = True,
    ) -> None:
        super().__init__()
        self.num_style_feat = num_style_feat
        self.sft_half = sft_half
        self.channels = stylegan_channels(channel_multiplier, narrow)
        self.log_size = int(math.log2(out_size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.num_latent = self.log_size * 2 - 2

        self.style_mlp = self._style_mlp(num_style_feat, num_mlp)
        ch4 = self.channels[4]
        self.constant_input = ConstantInput(ch4, size=4)
        self.style_conv1 = self._style_conv(ch4, ch4, upsample=False)
        self.to_rgb1 = self._to_rgb(ch4, upsample=False)

        # Fixed noise maps, one per StyleConv: stored in checkpoints, used for deterministic output.
        self.noises = nn.Module()
        for idx in range(self.num_layers):
            res = 2 ** ((idx + 5) // 2)
            self.noises.register_buffer(f"noise{idx}", torch.randn(1, 1, res, res))

        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_channels = ch4
        for log_res in range(3, self.log_size + 1):
            out_channels = self.channels[2**log_res]
            self.style_convs.append(self._style_conv(in_channels, out_channels, upsample=True))
            self.style_convs.append(self._style_conv(out_channels, out_channels, upsample=False))
            self.to_rgbs.append(self._to_rgb(out_channels, upsample=True))
            in_channels = out_channels

    # -- layer factories (overridden by the original-StyleGAN2 variant) --------------------------------
    def _style_mlp(self, num_style_feat: int, num_mlp: int) -> nn.Sequential:
        layers: list[nn.Module] = [NormStyleCode()]
        for _ in range(num_mlp):
            linear = nn.Linear(num_style_feat, num_style_feat)
            nn.init.kaiming_normal_(linear.weight, a=0.2, mode="fan_in", nonlinearity="leaky_relu")
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.LeakyReLU(0.2)]
        return nn.Sequential(*layers)

    def _style_conv(self, in_channels: int, out_channels: int, upsample: bool) -> nn.Module:
        return StyleConv(in_channels, out_channels, self.num_style_feat, "upsample" if upsample else None)

    def _to_rgb(self, in_channels: int, upsample: bool) -> nn.Module:
        return ToRGB(in_channels, self.num_style_feat, upsample=upsample)

    # -- sampling helpers ---------------------------------------------------------------------------------
    def stored_noise(self) -> list[Tensor]:
        """The checkpoint's fixed noise maps, coarse to fine."""
        return [getattr(self.noises, f"noise{i}") for i in range(self.num_layers)]

    @torch.no_grad()
    def mean_latent(self, num_samples: int = 4096) -> Tensor:
        """Average W of random z: the centre used for truncation."""
        z = torch.randn(num_samples, self.num_style_feat, device=self.constant_input.weight.device)
        return self.style_mlp(z).mean(0, keepdim=True)

    def forward(
        self,
        styles: Tensor,
        conditions: Conditions | None = None,
        input_is_latent: bool = False,
        noise: list[Tensor | None] | None = None,
        randomize_noise: bool = False,
        truncation: float = 1.0,
        truncation_latent: Tensor | None = None,
        return_latents: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Synthesise images from z (or W when ``input_is_latent``), shape (B, 512) or (B, L, 512).

        ``randomize_noise=False`` (our default) uses the stored noise maps, so the same input gives the
        same image; the official code draws fresh noise on every call.
        """
        if not input_is_latent:
            styles = self.style_mlp(styles)
        if truncation < 1 and truncation_latent is not None:
            styles = truncation_latent + truncation * (styles - truncation_latent)
        latent = styles if styles.ndim == 3 else styles.unsqueeze(1).repeat(1, self.num_latent, 1)
        if noise is None:
            noise = [None] * self.num_layers if randomize_noise else self.stored_noise()
        conditions = conditions or []

        out = self.style_conv1(self.constant_input(latent.shape[0]), latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for level, to_rgb in enumerate(self.to_rgbs):
            conv_up, conv = self.style_convs[2 * level], self.style_convs[2 * level + 1]
            out = conv_up(out, latent[:, i], noise=noise[i])
            if level < len(conditions):
                scale, shift = conditions[level]
                out = channel_split_sft(out, scale, shift, half=self.sft_half)
            out = conv(out, latent[:, i + 1], noise=noise[i + 1])
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return skip, (latent if return_latents else None)
