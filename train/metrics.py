"""Validation metrics on batches of images in [-1, 1]: PSNR, SSIM (both on 0-255 RGB) and identity cosine."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def _to255(x: Tensor) -> Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round()


def psnr(output: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB of uint8-quantised RGB images (as basicsr's calculate_psnr, no crop)."""
    mse = (_to255(output) - _to255(target)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))


def _gaussian_blur(x: Tensor, size: int = 11, sigma: float = 1.5) -> Tensor:
    """``x`` filtered by a size×size Gaussian (valid region). The window is separable, so it runs as one
    pass per axis: the same sums as the 2-D window, with 2·size products per pixel instead of size²."""
    coords = torch.arange(size, dtype=x.dtype, device=x.device) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)


def ssim(output: Tensor, target: Tensor) -> Tensor:
    """Per-image SSIM (11x11 Gaussian window σ=1.5, valid region, channels averaged), as basicsr's."""
    x, y = _to255(output).double(), _to255(target).double()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = _gaussian_blur(x), _gaussian_blur(y)
    sxx = _gaussian_blur(x * x) - mu_x**2
    syy = _gaussian_blur(y * y) - mu_y**2
    sxy = _gaussian_blur(x * y) - mu_x * mu_y
    value = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return value.flatten(1).mean(1).float()


def cosine_similarity(emb_a: Tensor, emb_b: Tensor) -> Tensor:
    """Per-pair cosine similarity of identity embeddings."""
    return F.cosine_similarity(emb_a.float(), emb_b.float(), dim=1)
