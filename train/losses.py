"""GFPGAN training losses as plain functions (weights passed in; defaults live in the config).

Each returns a scalar tensor. Conventions follow the official recipe: images in [-1, 1], L1 with mean
reduction, non-saturating logistic GAN loss (``softplus``), Gram matrices normalised by c·h·w.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from train.config import VGG19_LAYERS


def pixel_loss(output: Tensor, target: Tensor, weight: float = 0.1, kind: str = "l1") -> Tensor:
    """Weighted mean absolute (``kind="l1"``, official) or squared (``"l2"``) error."""
    return weight * (F.mse_loss(output, target) if kind == "l2" else F.l1_loss(output, target))


def image_pyramid(gt: Tensor, levels: int) -> list[Tensor]:
    """``levels`` images, coarsest first, each half the next (bilinear); the last one is ``gt`` itself."""
    pyramid = [gt]
    for _ in range(levels - 1):
        pyramid.insert(0, F.interpolate(pyramid[0], scale_factor=0.5, mode="bilinear", align_corners=False))
    return pyramid


def pyramid_losses(out_rgbs: list[Tensor], gt: Tensor, weight: float = 1.0) -> list[Tensor]:
    """Weighted L1 between each intermediate U-Net RGB output and ``gt`` resized to its size, one per level
    (``gt`` first area-averaged to the last output's size when the layers run below the face size:
    ``work_size``)."""
    if gt.shape[-2:] != out_rgbs[-1].shape[-2:]:
        gt = F.adaptive_avg_pool2d(gt, out_rgbs[-1].shape[-2:])
    targets = image_pyramid(gt, len(out_rgbs))
    return [F.l1_loss(o, t) * weight for o, t in zip(out_rgbs, targets, strict=True)]


def gram_matrix(x: Tensor) -> Tensor:
    """(n, c, h, w) → (n, c, c) feature correlations divided by c·h·w."""
    n, c, h, w = x.shape
    f = x.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


class VGGFeatures(nn.Module):
    """Frozen torchvision VGG19 returning conv outputs (before ReLU) for the named layers.

    Input is RGB in [-1, 1]; it is mapped to [0, 1] and ImageNet-normalised as the official loss does.
    """

    def __init__(self, layers: list[str], state_dict: dict[str, Tensor] | None = None) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        self.layers = {VGG19_LAYERS[name]: name for name in layers}
        features = make_layers(cfgs["E"])  # vgg19().features, without the 120M-weight classifier
        if state_dict is not None:
            own = {k.removeprefix("features."): v for k, v in state_dict.items() if k.startswith("features.")}
            features.load_state_dict(own)
        self.features = features[: max(self.layers) + 1]
        for layer in self.features:  # in-place ReLUs would overwrite the pre-ReLU outputs we keep
            if isinstance(layer, nn.ReLU):
                layer.inplace = False
        self.features.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGGFeatures:  # always frozen and in eval mode
        return super().train(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = ((x + 1) / 2 - self.mean) / self.std
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.layers:
                out[self.layers[i]] = x
        return out


def perceptual_loss(
    feats: dict[str, Tensor],
    feats_gt: dict[str, Tensor],
    layer_weights: dict[str, float],
    perceptual_weight: float = 1.0,
    style_weight: float = 50.0,
) -> tuple[Tensor, Tensor]:
    """(content, style): weighted L1 between features and between their Gram matrices (targets detached)."""
    content = sum(w * F.l1_loss(feats[k], feats_gt[k].detach()) for k, w in layer_weights.items())
    style = sum(
        w * F.l1_loss(gram_matrix(feats[k]), gram_matrix(feats_gt[k].detach()))
        for k, w in layer_weights.items()
    )
    return perceptual_weight * content, style_weight * style


def gan_loss_g(fake_pred: Tensor, weight: float = 0.1) -> Tensor:
    """Non-saturating generator loss: softplus(-D(fake)), mean."""
    return weight * F.softplus(-fake_pred).mean()


def gan_loss_d(real_pred: Tensor, fake_pred: Tensor) -> Tensor:
    """Logistic discriminator loss: softplus(-D(real)) + softplus(D(fake)), means."""
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def component_style_loss(
    fake_feats: list[list[Tensor]], real_feats: list[list[Tensor]], weight: float = 200.0
) -> Tensor:
    """Per component: 0.5·L1(Gram of first feature) + L1(Gram of second); summed over components."""
    total = 0.0
    for fake, real in zip(fake_feats, real_feats, strict=True):
        total = total + 0.5 * F.l1_loss(gram_matrix(fake[0]), gram_matrix(real[0].detach()))
        total = total + F.l1_loss(gram_matrix(fake[1]), gram_matrix(real[1].detach()))
    return weight * total


def r1_penalty(real_pred: Tensor, real_img: Tensor) -> Tensor:
    """Mean over the batch of ||∇_x D(x)||² on real images (needs ``real_img.requires_grad``)."""
    (grad,) = torch.autograd.grad(real_pred.sum(), real_img, create_graph=True)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


def identity_loss(emb_out: Tensor, emb_gt: Tensor, weight: float = 10.0) -> Tensor:
    """L1 between identity embeddings of the restored and the ground-truth face (target detached)."""
    return weight * F.l1_loss(emb_out, emb_gt.detach())
