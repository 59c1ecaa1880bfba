"""ParseNet, the face parser whose labels become the paste-back blend mask (inference only).

The network of facexlib (from PSFRGAN) with the same parameter names, so ``parsing_parsenet.pth`` loads
strictly, computing the same function in 0.70 (float32) to 0.75 (bf16 autocast) of facexlib's time on a
2-core CPU:

* BatchNorm (eval statistics) is folded into the preceding convolution on every call, which removes one
  pass over each feature map; the weights themselves stay as loaded.
* A nearest x2 upsampling followed by a reflect-padded 3x3 convolution equals four 2x2 convolutions of the
  small map (one per output phase, replicate-padded), interleaved: 4/9 of the multiply-adds.
* The RGB reconstruction head (``out_img_conv``) is loaded but not computed: only the labels are used.

It always runs with eval-mode BatchNorm; it is not meant to be trained.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _two_taps(weight: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """The 3 taps along ``dim`` as seen by the two output phases after nearest x2 upsampling.

    Output row 2i sees input rows i-1 (tap -1) and i (taps 0, +1); row 2i+1 sees i (taps -1, 0) and i+1
    (tap +1).
    """
    before, centre, after = weight.unbind(dim)
    return torch.stack([before, centre + after], dim), torch.stack([before + centre, after], dim)


def _phase_kernels(weight: Tensor) -> Tensor:
    """3x3 kernels (O, I, 3, 3) of a conv after nearest x2 upsampling → 2x2 kernels (4*O, I, 2, 2), output
    channels ordered (o, row phase, column phase)."""
    rows = _two_taps(weight, 2)  # each (O, I, 2, 3)
    k = torch.stack([torch.stack(_two_taps(r, 3), 1) for r in rows], 1)  # (O, 2, 2, I, 2, 2)
    return k.reshape(-1, weight.shape[1], 2, 2)


def upsample_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``conv3x3(reflect_pad(nearest_upsample_x2(x)))`` computed on the small map."""
    n, _, h, w = x.shape
    out_ch = weight.shape[0]
    # Reflect-padding the upsampled map by one pixel repeats its edge rows: the small map's edge, replicated.
    y = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), _phase_kernels(weight))  # (n, 4*O, h+1, w+1)
    y = y.view(n, out_ch, 2, 2, h + 1, w + 1)
    # Phase (a, b) of output pixel (2i + a, 2j + b) sits at (i + a, j + b) of its map. Interleaving the four
    # windows by stack and reshape, not by strided writes into a new tensor, keeps the exported graph free of
    # scatters, which OpenVINO compiles much faster (README, "Speed"; PyTorch's time is unchanged).
    rows = [torch.stack([y[:, :, a, b, a : a + h, b : b + w] for b in (0, 1)], -1) for a in (0, 1)]
    out = torch.stack(rows, 3).reshape(n, out_ch, 2 * h, 2 * w)  # (n, O, h, a, w, b) → (n, O, 2h, 2w)
    return out if bias is None else out.add_(bias.view(1, -1, 1, 1))


class _Norm(nn.Module):
    """Holds the BatchNorm under facexlib's key names (``norm.norm.*``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)


class ConvLayer(nn.Module):
    """[nearest x2 up] → reflect pad 1 → 3x3 conv (stride 2 for "down") → [BatchNorm] → [leaky ReLU 0.2]."""

    def __init__(
        self, in_ch: int, out_ch: int, scale: str | None = None, norm: bool = False, act: bool = False
    ) -> None:
        super().__init__()
        self.scale, self.act = scale, act
        self.conv2d = nn.Conv2d(in_ch, out_ch, 3, 2 if scale == "down" else 1, bias=not norm)
        self.norm = _Norm(out_ch) if norm else None

    def folded(self) -> tuple[Tensor, Tensor | None]:
        """The convolution's weight and bias with the (eval) BatchNorm folded in."""
        weight, bias = self.conv2d.weight, self.conv2d.bias
        if self.norm is None:
            return weight, bias
        bn = self.norm.norm
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        return weight * scale.view(-1, 1, 1, 1), bn.bias - bn.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.folded()
        if self.scale == "up":
            out = upsample_conv3x3(x, weight, bias)
        else:
            out = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), weight, bias, self.conv2d.stride)
        return F.leaky_relu(out, 0.2, inplace=True) if self.act else out


class ResidualBlock(nn.Module):
    """Two ConvLayers (BatchNorm, leaky ReLU on the first) plus a shortcut conv when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, scale: str | None = None) -> None:
        super().__init__()
        self.shortcut_func = ConvLayer(in_ch, out_ch, scale) if scale or in_ch != out_ch else None
        self.conv1 = ConvLayer(in_ch, out_ch, "up" if scale == "up" else None, norm=True, act=True)
        self.conv2 = ConvLayer(out_ch, out_ch, "down" if scale == "down" else None, norm=True)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.shortcut_func is None else self.shortcut_func(x)
        return self.conv2(self.conv1(x)).add_(shortcut)


class ParseNet(nn.Module):
    """Encoder (to ``min_feat_size``) → residual body → decoder; returns the label logits (B, 19, H, W)."""

    def __init__(
        self,
        in_size: int = 512,
        min_feat_size: int = 32,
        base_ch: int = 64,
        parsing_ch: int = 19,
        res_depth: int = 10,
        ch_range: tuple[int, int] = (32, 256),
    ) -> None:
        super().__init__()
        low, high = ch_range

        def clip(c: int) -> int:
            return max(low, min(c, high))

        steps = int(math.log2(in_size // min(in_size, min_feat_size)))
        encoder: list[nn.Module] = [ConvLayer(3, base_ch)]
        ch = base_ch
        for _ in range(steps):
            encoder.append(ResidualBlock(clip(ch), clip(ch * 2), "down"))
            ch *= 2
        self.encoder = nn.Sequential(*encoder)
        self.body = nn.Sequential(*(ResidualBlock(clip(ch), clip(ch)) for _ in range(res_depth)))
        decoder = []
        for _ in range(steps):
            decoder.append(ResidualBlock(clip(ch), clip(ch // 2), "up"))
            ch //= 2
        self.decoder = nn.Sequential(*decoder)
        self.out_img_conv = ConvLayer(clip(ch), 3)  # loaded for strictness, never computed
        self.out_mask_conv = ConvLayer(clip(ch), parsing_ch)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.encoder(x)
        return self.out_mask_conv(self.decoder(self.body(feat) + feat))
