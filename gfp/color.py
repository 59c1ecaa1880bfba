"""Colour fixes: give a restored face the colours of the face it was made from.

Face generators tend to re-tint skin, shift brightness and change the colour of the background around the
face. Both fixes here keep what the generator added (detail, sharpness) and take the overall colour from
its input, the aligned crop it restored:

- ``wavelet``: split each image into coarse and fine parts with a few rounds of a widening blur; the
  result is the restored image's fine part plus the input's coarse part. The coarse part holds the colour
  and light of regions the size of an eye or larger, so casts go while restored edges and texture stay.
- ``adain``: shift and scale each colour channel of the restored image so that its mean and standard
  deviation (over the whole crop) equal the input's. Cheaper, global: a uniform cast or darkening goes,
  a local one stays.

A gray input (its three channels equal: a gray photo saved in colour) has no colour to give: both fixes
would still leave the colour of the generator's fine detail, so its fixed face is made gray too, each
channel their mean.

Pure tensor functions: (B, 3, H, W) float tensors, any value range (the pipeline uses [-1, 1]), any
channel order, any device; the input is the restored image's size. They return a new tensor and do not
clamp.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

COLOR_FIXES = ("none", "wavelet", "adain")
"""What ``RestoreOptions.color_fix`` and the ``--color-fix`` flag take; "none" leaves faces as restored."""
WAVELET_LEVELS = 5
"""Blur rounds of the wavelet fix: the coarse part keeps structures of about 2**5 = 32 px and more."""
_EPS = 1e-5


def _blur(x: Tensor, spacing: int) -> Tensor:
    """The 3x3 binomial blur (1 2 1 / 2 4 2 / 1 2 1, over 16) with taps ``spacing`` pixels apart, per
    channel, edges repeated. Written as two 1-D passes of shifted sums, accumulated in place: a dilated
    depthwise convolution computes the same numbers but was many times slower on a CPU (README, "Speed")."""
    d = spacing
    x = F.pad(x, (d, d, d, d), mode="replicate")
    rows = x[..., :, : -2 * d] + x[..., :, 2 * d :]
    rows.add_(x[..., :, d:-d], alpha=2)
    out = rows[..., : -2 * d, :] + rows[..., 2 * d :, :]
    return out.add_(rows[..., d:-d, :], alpha=2).div_(16)


def low_frequencies(x: Tensor, levels: int = WAVELET_LEVELS) -> Tensor:
    """The coarse part of ``x``: ``levels`` blurs in a row, the spacing of the taps doubling each time
    (1, 2, 4, ... px). ``x`` minus it is the sum of the fine parts every round removed."""
    for level in range(levels):
        x = _blur(x, 2**level)
    return x


def wavelet_fix(restored: Tensor, source: Tensor, levels: int = WAVELET_LEVELS) -> Tensor:
    """``restored``'s fine part on ``source``'s coarse part (colour and light of ``source``): ``restored -
    low(restored) + low(source)``, computed as ``restored + low(source - restored)`` (the blur is linear),
    one decomposition instead of two."""
    return restored + low_frequencies(source - restored, levels)


def adain_fix(restored: Tensor, source: Tensor) -> Tensor:
    """``restored`` with each channel's mean and standard deviation made ``source``'s (per image)."""
    mean_r, std_r = _moments(restored)
    mean_s, std_s = _moments(source)
    return (restored - mean_r) / std_r * std_s + mean_s


def _moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per image and channel: mean and standard deviation over the pixels, (B, C, 1, 1) each."""
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
    return mean, (var + _EPS).sqrt()


def check_method(method: str) -> None:
    """``ValueError`` naming the choices unless ``method`` is one of :data:`COLOR_FIXES`."""
    if method not in COLOR_FIXES:
        raise ValueError(f"unknown colour fix {method!r}; choose one of: {', '.join(COLOR_FIXES)}")


def color_fix(restored: Tensor, source: Tensor, method: str) -> Tensor:
    """Apply the colour fix ``method`` (one of :data:`COLOR_FIXES`) in float32, a face whose ``source`` is
    gray made gray; "none" returns ``restored`` itself. ``source`` must have ``restored``'s shape."""
    check_method(method)
    if method == "none":
        return restored
    if source.shape != restored.shape:
        raise ValueError(
            f"colour fix needs the input at the restored size, got {tuple(source.shape)} for "
            f"{tuple(restored.shape)}"
        )
    fix = wavelet_fix if method == "wavelet" else adain_fix
    fixed = fix(restored.float(), source.float())
    # per image: every pixel's channels equal (torch.equal stops at the first difference: a colour face
    # costs next to nothing)
    gray = [torch.equal(image[0], image[1]) and torch.equal(image[1], image[2]) for image in source]
    if not any(gray):
        return fixed
    where = torch.tensor(gray, device=fixed.device).view(-1, 1, 1, 1)
    return torch.where(where, fixed.mean(1, keepdim=True).expand_as(fixed), fixed)
