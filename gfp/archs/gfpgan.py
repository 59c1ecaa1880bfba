"""GFPGAN generators: degradation removal → latent mapping → CS-SFT into a StyleGAN2 prior.

``GFPGANClean`` is the architecture of the released v1.2, v1.3 and v1.4 models; ``GFPGANv1`` is the paper
model (``GFPGANv1.pth``). Both share one forward pass and differ only in their layer types. Attribute
names follow the official checkpoints, so ``params_ema`` loads with ``strict=True``.
"""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gfp.archs.degradation_removal import ResBlock as CleanResBlock
from gfp.archs.degradation_removal import ResUpBlock
from gfp.archs.stylegan2_clean import StyleGAN2Generator, set_modulation_mode, stylegan_channels
from gfp.archs.stylegan2_v1 import ConvLayer, EqualConv2d, EqualLinear, ScaledLeakyReLU, StyleGAN2GeneratorV1
from gfp.archs.stylegan2_v1 import ResBlock as V1ResBlock


@functools.lru_cache(maxsize=8)
def _bilinear_taps(factor: int, channels: int) -> np.ndarray:
    """(channels·factor², 1, 3, 3) float32 weights, one group per channel: sub-pixel (i, j) of a ×factor
    bilinear enlargement (align_corners=False) from the 3×3 neighbourhood of its low-resolution pixel.
    Cached as a read-only NumPy array, not a tensor: a tensor made while ``torch.export`` traces would be a
    fake one, and the cache would hand it to every later eager call."""
    offset = (np.arange(factor, dtype=np.float64) + 0.5) / factor - 0.5  # from the pixel's centre
    taps = np.zeros((factor, 3))  # the previous pixel's weight, its own, the next's
    taps[:, 0] = np.maximum(-offset, 0)
    taps[:, 2] = np.maximum(offset, 0)
    taps[:, 1] = 1 - np.abs(offset)
    weight = np.einsum("ia,jb->ijab", taps, taps).reshape(factor * factor, 1, 3, 3).astype(np.float32)
    weight = np.tile(weight, (channels, 1, 1, 1))
    weight.flags.writeable = False
    return weight


def enlarge_folded(x: Tensor, factor: int) -> Tensor:
    """``F.interpolate(x, scale_factor=factor, mode="bilinear")`` pixel-unshuffled by ``factor``: (B, C, H, W)
    → (B, C·factor², H, W), the enlarged image's sub-pixels as channels. A fixed 3×3 convolution on the
    edge-padded image (the edge copies are what interpolate's clamped indices read): far cheaper, forward and
    backward, than enlarging to full size and folding back."""
    weight = torch.tensor(_bilinear_taps(factor, x.shape[1]), dtype=x.dtype, device=x.device)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), weight, groups=x.shape[1])


def fold_pixels(x: Tensor, factor: int) -> Tensor:
    """``F.pixel_unshuffle(x, factor)``: (B, C, H, W) → (B, C·factor², H/factor, W/factor). One strided copy,
    several times faster on the CPU than PyTorch's own kernel (the same values, bit for bit)."""
    b, c, h, w = x.shape
    out = x.new_empty(b, c, factor, factor, h // factor, w // factor)
    out.copy_(x.reshape(b, c, h // factor, factor, w // factor, factor).permute(0, 1, 3, 5, 2, 4))
    return out.view(b, c * factor * factor, h // factor, w // factor)


def unfold_pixels(x: Tensor, factor: int) -> Tensor:
    """``F.pixel_shuffle(x, factor)``, the inverse of :func:`fold_pixels`, the same way."""
    b, c, h, w = x.shape
    c //= factor * factor
    out = x.new_empty(b, c, h, factor, w, factor)
    out.copy_(x.reshape(b, c, factor, factor, h, w).permute(0, 1, 4, 2, 5, 3))
    return out.view(b, c, h * factor, w * factor)


class _GFPGAN(nn.Module):
    """Shared forward of both GFPGAN variants; subclasses create the layers."""

    conv_body_first: nn.Module
    conv_body_down: nn.ModuleList
    final_conv: nn.Module
    conv_body_up: nn.ModuleList
    toRGB: nn.ModuleList  # noqa: N815  (official checkpoint key)
    final_linear: nn.Module
    condition_scale: nn.ModuleList
    condition_shift: nn.ModuleList
    stylegan_decoder: StyleGAN2Generator

    def __init__(
        self,
        out_size: int,
        num_style_feat: int,
        channel_multiplier: float,
        narrow: float,
        different_w: bool,
        input_is_latent: bool,
        input_residual: bool = False,
        full_size: int | None = None,
        detail: bool = False,
    ) -> None:
        super().__init__()
        self.residual = input_residual
        if input_residual:  # a state-dict entry, so that such a checkpoint is recognised (and strict-loads)
            self.register_buffer("input_residual", torch.ones(()))
        # Faces come and go at full_size while the layers run at out_size (see GeneratorConfig.work_size).
        # A state-dict entry for the same reason as input_residual's; its length is the shrink factor, so
        # the layout is recognised from shapes alone, and it holds full_size for a reader.
        self.shrink = 1
        if full_size is not None and full_size != out_size:
            if not input_residual or full_size % out_size:
                raise ValueError("full_size needs input_residual and a multiple of out_size")
            self.shrink = full_size // out_size
            self.register_buffer("full_size", torch.full((self.shrink,), float(full_size)))
        self.out_size = out_size
        self.log_size = int(math.log2(out_size))
        self.num_style_feat = num_style_feat
        self.different_w = different_w
        self.input_is_latent = input_is_latent
        # The U-Net is half as wide as the GAN prior.
        self.unet_channels = stylegan_channels(channel_multiplier, narrow * 0.5)
        num_latent = self.log_size * 2 - 2
        self.latent_size = num_latent * num_style_feat if different_w else num_style_feat
        # Full-size detail (see GeneratorConfig.detail): the full-size face folded into channels
        # (pixel-unshuffled by the shrink factor) joins the stem's features, and a correction unfolded from
        # the last U-Net features joins the output. detail_out starts at zero: the path adds nothing until
        # it has learned to.
        self.detail = detail
        if detail:
            if self.shrink == 1:
                raise ValueError("detail needs full_size above out_size")
            folded, ch = 3 * self.shrink**2, self.unet_channels[out_size]
            self.detail_in = nn.Conv2d(folded, ch, 1)
            self.detail_out = nn.Conv2d(ch, folded, 3, 1, 1)
            nn.init.zeros_(self.detail_out.weight)
            nn.init.zeros_(self.detail_out.bias)

    def _stem(self, x: Tensor) -> Tensor:
        return self.conv_body_first(x)

    def _bottleneck(self, feat: Tensor) -> Tensor:
        return self.final_conv(feat)

    def forward(
        self,
        x: Tensor,
        return_rgb: bool = True,
        randomize_noise: bool = False,
        fold: bool = False,
    ) -> tuple[Tensor, list[Tensor]]:
        """Restore ``x`` (RGB in [-1, 1], B×3×S×S, S = full_size when given, else out_size).

        Returns the restored image and, when ``return_rgb``, the U-Net's RGB outputs at each decoder
        resolution (the pyramid restoration loss's targets). Noise is the checkpoint's fixed noise unless
        ``randomize_noise`` (the official default) is set. ``fold`` returns the image pixel-unshuffled by the
        shrink factor (unchanged when there is none): the same values, for a training loss that compares
        every pixel without unfolding full-size tensors.
        """
        full = x
        folded_full = None
        if self.shrink > 1:  # area averaging, as an aligned face is shrunk for a smaller model
            x = F.avg_pool2d(x, self.shrink)
        # Degradation removal: encoder down to 4x4.
        feat = self._stem(x)
        if self.detail:
            folded_full = fold_pixels(full, self.shrink)
            feat = feat + self.detail_in(folded_full)
        skips = []
        for down in self.conv_body_down:
            feat = down(feat)
            skips.insert(0, feat)
        feat = self._bottleneck(feat)

        # Latent mapping: bottleneck → W (one code per decoder layer when different_w).
        style_code = self.final_linear(feat.flatten(1))
        if self.different_w:
            style_code = style_code.view(style_code.size(0), -1, self.num_style_feat)

        # Decoder: clean features at each resolution → CS-SFT conditions (+ RGB for the pyramid loss).
        conditions = []
        out_rgbs = []
        for level, up in enumerate(self.conv_body_up):
            feat = up(feat + skips[level])
            conditions.append((self.condition_scale[level](feat), self.condition_shift[level](feat)))
            if return_rgb:
                out_rgbs.append(self.toRGB[level](feat))

        image, _ = self.stylegan_decoder(
            style_code, conditions, input_is_latent=self.input_is_latent, randomize_noise=randomize_noise
        )
        if self.shrink > 1:  # the correction, enlarged, on the full-size input: its own detail passes through
            correction = enlarge_folded(image, self.shrink)
            if self.detail:  # feat: the last U-Net level's features, at out_size
                correction = correction + self.detail_out(feat)
            if fold:  # the detail path has folded the input already
                folded_full = fold_pixels(full, self.shrink) if folded_full is None else folded_full
                return folded_full + correction, out_rgbs
            return full + unfold_pixels(correction, self.shrink), out_rgbs
        if self.residual:
            image = image + x
        return image, out_rgbs


class GFPGANClean(_GFPGAN):
    """GFPGAN with the clean StyleGAN2 prior (v1.2, v1.3, v1.4: ``channel_multiplier=2``)."""

    def __init__(
        self,
        out_size: int = 512,
        num_style_feat: int = 512,
        channel_multiplier: float = 2,
        num_mlp: int = 8,
        input_is_latent: bool = True,
        different_w: bool = True,
        narrow: float = 1.0,
        sft_half: bool = True,
        input_residual: bool = False,
        full_size: int | None = None,
        detail: bool = False,
    ) -> None:
        super().__init__(
            out_size,
            num_style_feat,
            channel_multiplier,
            narrow,
            different_w,
            input_is_latent,
            input_residual,
            full_size,
            detail,
        )
        ch = self.unet_channels
        self.conv_body_first = nn.Conv2d(3, ch[out_size], 1)
        self.conv_body_down = nn.ModuleList(
            CleanResBlock(ch[2**i], ch[2 ** (i - 1)], mode="down") for i in range(self.log_size, 2, -1)
        )
        self.final_conv = nn.Conv2d(ch[4], ch[4], 3, 1, 1)
        self.conv_body_up = nn.ModuleList(
            CleanResBlock(ch[2 ** (i - 1)], ch[2**i], mode="up") for i in range(3, self.log_size + 1)
        )
        self.toRGB = nn.ModuleList(nn.Conv2d(ch[2**i], 3, 1) for i in range(3, self.log_size + 1))
        self.final_linear = nn.Linear(ch[4] * 4 * 4, self.latent_size)
        self.stylegan_decoder = StyleGAN2Generator(
            out_size, num_style_feat, num_mlp, channel_multiplier, narrow, sft_half=sft_half
        )
        self.condition_scale = nn.ModuleList()
        self.condition_shift = nn.ModuleList()
        for i in range(3, self.log_size + 1):
            c = ch[2**i]
            sft_c = c if sft_half else c * 2
            for heads in (self.condition_scale, self.condition_shift):
                heads.append(
                    nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(c, sft_c, 3, 1, 1))
                )

    def _stem(self, x: Tensor) -> Tensor:
        return F.leaky_relu(self.conv_body_first(x), 0.2)

    def _bottleneck(self, feat: Tensor) -> Tensor:
        return F.leaky_relu(self.final_conv(feat), 0.2)


class GFPGANv1(_GFPGAN):
    """The paper model: original StyleGAN2 layers throughout (``GFPGANv1.pth``: ``channel_multiplier=1``)."""

    def __init__(
        self,
        out_size: int = 512,
        num_style_feat: int = 512,
        channel_multiplier: float = 1,
        num_mlp: int = 8,
        input_is_latent: bool = True,
        different_w: bool = True,
        narrow: float = 1.0,
        sft_half: bool = True,
        resample_kernel: tuple[int, ...] = (1, 3, 3, 1),
        lr_mlp: float = 0.01,
        input_residual: bool = False,
        full_size: int | None = None,
        detail: bool = False,
    ) -> None:
        super().__init__(
            out_size,
            num_style_feat,
            channel_multiplier,
            narrow,
            different_w,
            input_is_latent,
            input_residual,
            full_size,
            detail,
        )
        ch = self.unet_channels
        self.conv_body_first = ConvLayer(3, ch[out_size], 1)
        self.conv_body_down = nn.ModuleList(
            V1ResBlock(ch[2**i], ch[2 ** (i - 1)], resample_kernel) for i in range(self.log_size, 2, -1)
        )
        self.final_conv = ConvLayer(ch[4], ch[4], 3)
        self.conv_body_up = nn.ModuleList(
            ResUpBlock(ch[2 ** (i - 1)], ch[2**i]) for i in range(3, self.log_size + 1)
        )
        self.toRGB = nn.ModuleList(EqualConv2d(ch[2**i], 3, 1) for i in range(3, self.log_size + 1))
        self.final_linear = EqualLinear(ch[4] * 4 * 4, self.latent_size)
        self.stylegan_decoder = StyleGAN2GeneratorV1(
            out_size,
            num_style_feat,
            num_mlp,
            channel_multiplier,
            narrow,
            sft_half=sft_half,
            resample_kernel=resample_kernel,
            lr_mlp=lr_mlp,
        )
        self.condition_scale = nn.ModuleList()
        self.condition_shift = nn.ModuleList()
        for i in range(3, self.log_size + 1):
            c = ch[2**i]
            sft_c = c if sft_half else c * 2
            # The scale head starts at 1 (identity modulation), the shift head at 0.
            for heads, last_bias in ((self.condition_scale, 1.0), (self.condition_shift, 0.0)):
                heads.append(
                    nn.Sequential(
                        EqualConv2d(c, c, 3, padding=1),
                        ScaledLeakyReLU(0.2),
                        EqualConv2d(c, sft_c, 3, padding=1, bias_init_val=last_bias),
                    )
                )


class FacesOnly(nn.Module):
    """A float32 copy of a GFPGAN generator that maps faces to restored faces only (no pyramid RGB
    outputs), with shared-weight modulation: the form exporters and inference engines take (a dynamic
    batch, weights that do not depend on the input). The generator it was made from is not changed.

    The copy shares the generator's float32 tensors (new parameter objects over the same storage), so it
    costs no second copy of the weights; converting it (``.float()``, ``.cpu()``) replaces only its own.
    """

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        memo: dict[int, object] = {
            id(p): nn.Parameter(p.detach(), p.requires_grad) for p in generator.parameters()
        }
        memo |= {id(b): b.detach() for b in generator.buffers()}
        self.generator = copy.deepcopy(generator, memo).float().eval()
        set_modulation_mode(self.generator, "shared")

    def forward(self, x: Tensor) -> Tensor:
        return self.generator(x, return_rgb=False)[0]
