"""Channel-Split Spatial Feature Transform (CS-SFT), the paper's bridge between U-Net and GAN prior.

At every resolution the degradation-removal U-Net predicts a spatial scale and shift from its clean
features. CS-SFT applies them to only *half* of the StyleGAN2 decoder's channels and lets the other half
pass through untouched: the modulated half pulls the output towards the input (fidelity), the identity
half keeps the prior's realistic detail (realness).
"""

from __future__ import annotations

import torch
from torch import Tensor

# One (scale, shift) pair per decoder resolution, coarse to fine.
Conditions = list[tuple[Tensor, Tensor]]


def channel_split_sft(feat: Tensor, scale: Tensor, shift: Tensor, half: bool = True) -> Tensor:
    """Modulate ``feat`` by ``scale``/``shift``: the second half of its channels only when ``half``."""
    if not half:
        return feat * scale + shift
    keep, modulated = torch.split(feat, feat.size(1) // 2, dim=1)
    return torch.cat([keep, modulated * scale + shift], dim=1)
