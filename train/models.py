"""The training networks in gfp's model registry (registered here, not hard-coded in gfp).

- "arcface" (kind "identity"): ``arcface_resnet18``, the official GFPGAN identity network;
- "mobilefacenet" (kind "identity"): a MobileFaceNet ArcFace checkpoint, no public download (give the file);
- "vgg19" (kind "perceptual"): torchvision's ImageNet VGG19, whose features the perceptual loss uses.

Importing ``train`` registers them, so ``model.identity.weights: arcface_resnet18`` and
``model.vgg_weights: vgg19`` resolve (weights folder, cache, download) like any gfp model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from gfp.registry import FAMILIES, ModelEntry, ModelFamily, register
from train.identity import MobileFaceNet, ResNetArcFace


def _arcface(state_dict: Mapping[str, Tensor]) -> str | None:
    conv1 = state_dict.get("conv1.weight")
    gray_input = conv1 is not None and conv1.shape[1] == 1
    return "arcface_resnet18" if "fc5.weight" in state_dict and gray_input else None


def _mobilefacenet(state_dict: Mapping[str, Tensor]) -> str | None:
    return "mobilefacenet" if "linear7.conv.weight" in state_dict else None


def _vgg19(state_dict: Mapping[str, Tensor]) -> str | None:
    convs = [k for k in state_dict if k.startswith("features.") and k.endswith(".weight")]
    return "vgg19" if len(convs) == 16 and "classifier.6.weight" in state_dict else None


def _build_vgg19(_: Any) -> nn.Module:
    from torchvision.models import vgg19

    return vgg19(weights=None)


_NOT_VERIFIED = "no published sha256 known: not verified"

TRAINING_FAMILIES = (
    ModelFamily(
        name="arcface",
        kind="identity",
        label="ArcFace",
        build=lambda _: ResNetArcFace(),
        recognise=_arcface,
        entries=(
            ModelEntry(
                "arcface_resnet18",
                "arcface_resnet18.pth",
                "https://github.com/TencentARC/GFPGAN/releases/download/v0.1.0/arcface_resnet18.pth",
                "identity",
                note=_NOT_VERIFIED,
                license="Apache-2.0 (TencentARC/GFPGAN release)",
                label="ArcFace IR-ResNet18 (official GFPGAN identity loss)",
            ),
        ),
    ),
    ModelFamily(
        name="mobilefacenet",
        kind="identity",
        label="MobileFaceNet",
        build=lambda _: MobileFaceNet(),
        recognise=_mobilefacenet,
        entries=(
            ModelEntry(
                "mobilefacenet",
                "mobilefacenet_casia_arcface.ckpt",
                None,
                "identity",
                note="no public download known: give the file (path or weights folder); not verified",
                license="unknown (research use)",
                label="MobileFaceNet (ArcFace, CASIA-WebFace)",
            ),
        ),
    ),
    ModelFamily(
        name="vgg19",
        kind="perceptual",
        label="VGG19",
        build=_build_vgg19,
        recognise=_vgg19,
        entries=(
            ModelEntry(
                "vgg19",
                "vgg19-dcbb9e9d.pth",
                "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
                "perceptual",
                note="torchvision ImageNet VGG19; full sha256 not known offline: not verified",
                license="BSD-3-Clause (torchvision); trained on ImageNet",
                label="VGG19 (ImageNet, torchvision)",
            ),
        ),
    ),
)


def register_training_models() -> None:
    """Register the training families (once; importing ``train`` does it)."""
    for family in TRAINING_FAMILIES:
        if family.name not in FAMILIES:
            register(family)


register_training_models()
