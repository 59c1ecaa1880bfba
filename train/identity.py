"""Face-identity networks for the identity loss and the validation metric (pure PyTorch).

- ``ResNetArcFace``: the official GFPGAN identity net (ArcFace, IR-ResNet18, no SE), 128x128 gray input;
  parameter names match ``gfpgan/archs/arcface_arch.py`` so ``arcface_resnet18.pth`` loads strictly.
- ``MobileFaceNet``: 112x96 RGB MobileFaceNet (ArcFace loss on CASIA-WebFace), names matching
  ``mobilefacenet_casia_arcface.ckpt``; a usable substitute where ArcFace-ResNet18 cannot be had.

``IdentityEmbedder`` turns a batch of aligned faces (RGB, [-1, 1], any size) into embeddings with the
input each network was trained on.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from gfp import registry


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class IRBlock(nn.Module):
    """Pre-activation residual block with PReLU (ArcFace "improved residual")."""

    def __init__(self, cin: int, cout: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cin)
        self.bn1 = nn.BatchNorm2d(cin)
        self.prelu = nn.PReLU()
        self.conv2 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.prelu(self.bn1(self.conv1(self.bn0(x))))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return self.prelu(out + skip)


class ResNetArcFace(nn.Module):
    """IR-ResNet ArcFace embedder: (B, 1, 128, 128) gray → (B, 512)."""

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.prelu = nn.PReLU()
        self.maxpool = nn.MaxPool2d(2, 2)
        widths = (64, 128, 256, 512)
        cin = 64
        for i, (width, count) in enumerate(zip(widths, layers, strict=True)):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or cin != width:
                down = nn.Sequential(
                    nn.Conv2d(cin, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
                )
            blocks = [IRBlock(cin, width, stride, down)] + [IRBlock(width, width) for _ in range(count - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width
        self.bn4 = nn.BatchNorm2d(512)
        self.dropout = nn.Dropout()
        self.fc5 = nn.Linear(512 * 8 * 8, 512)
        self.bn5 = nn.BatchNorm1d(512)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.prelu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn4(x))
        return self.bn5(self.fc5(x.flatten(1)))


class _ConvBNAct(nn.Module):
    """conv → BN → optional channel-wise PReLU (MobileFaceNet's ConvBlock)."""

    def __init__(self, cin: int, cout: int, k, s: int, p: int, depthwise: bool = False, linear: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, p, groups=cin if depthwise else 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.prelu = None if linear else nn.PReLU(cout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class _Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand → 3x3 depthwise → 1x1 project; identity skip when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.PReLU(mid),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.PReLU(mid),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


# (expansion, channels, repeats, first stride)
_MOBILEFACENET_SETTING = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class MobileFaceNet(nn.Module):
    """MobileFaceNet embedder: (B, 3, 112, 96) RGB normalised as (x·255 − 127.5)/128 → (B, 128)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _ConvBNAct(3, 64, 3, 2, 1)
        self.dw_conv1 = _ConvBNAct(64, 64, 3, 1, 1, depthwise=True)
        blocks, cin = [], 64
        for t, c, n, s in _MOBILEFACENET_SETTING:
            for i in range(n):
                blocks.append(_Bottleneck(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.conv2 = _ConvBNAct(128, 512, 1, 1, 0)
        self.linear7 = _ConvBNAct(512, 512, (7, 6), 1, 0, depthwise=True, linear=True)
        self.linear1 = _ConvBNAct(512, 128, 1, 1, 0, linear=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.dw_conv1(self.conv1(x)))
        return self.linear1(self.linear7(self.conv2(x))).flatten(1)


# Where the 96x112 face sits in an FFHQ-aligned crop (fractions of the side), from the two 5-point templates.
_MOBILEFACENET_CROP = (0.1084, 0.8905, 0.1654, 0.8359)  # top, bottom, left, right


def to_gray(x: Tensor) -> Tensor:
    """RGB (B, 3, H, W) → luma (B, 1, H, W) with the official weights."""
    return (0.2989 * x[:, 0] + 0.5870 * x[:, 1] + 0.1140 * x[:, 2]).unsqueeze(1)


class IdentityEmbedder(nn.Module):
    """Frozen identity network with its input preparation; input: aligned faces, RGB in [-1, 1].

    ``arch`` is an identity model of gfp's registry (registered by :mod:`train.models`); ``net`` defaults to
    its network with random weights.
    """

    def __init__(self, arch: str, net: nn.Module | None = None) -> None:
        super().__init__()
        entry = registry.MODEL_ZOO.get(arch)
        if entry is None or entry.kind != "identity":
            names = " or ".join(registry.choice_names("identity"))
            raise ValueError(f"unknown identity network {arch!r} ({names})")
        self.arch = arch
        self.net = net if net is not None else registry.build(entry)
        self.net.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> IdentityEmbedder:  # BN statistics stay frozen
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        if self.arch == "arcface_resnet18":
            return self.net(F.interpolate(to_gray(x), (128, 128), mode="bilinear", align_corners=False))
        h, w = x.shape[-2:]
        top, bottom, left, right = _MOBILEFACENET_CROP
        crop = x[:, :, round(top * h) : round(bottom * h), round(left * w) : round(right * w)]
        crop = F.interpolate(crop, (112, 96), mode="bilinear", align_corners=False)
        return self.net(((crop + 1) * 127.5 - 127.5) / 128.0)
