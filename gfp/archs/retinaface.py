"""RetinaFace, the face detector (boxes and 5 landmarks) of the official pipeline, in plain PyTorch.

Deng et al. 2019, "RetinaFace: Single-stage Dense Face Localisation in the Wild", as facexlib implements
it (``facexlib.detection.retinaface.RetinaFace``). Parameter and buffer names are facexlib's, so its
``detection_Resnet50_Final.pth`` and ``detection_mobilenet0.25_Final.pth`` load with ``strict=True``, and
:meth:`RetinaFace.forward` computes what facexlib's computes in its test phase. Neither torchvision nor
facexlib is imported: building a detector does not pay torchvision's import (README, "Speed").

The network, top to bottom:

* a backbone gives feature maps at strides 8, 16 and 32;
* a feature pyramid (FPN) brings them to one channel count and merges them top-down;
* an SSH context module widens the receptive field of each level;
* per level, 1x1 convolution heads predict for each of 2 anchors per location a face/background score
  pair, a box offset (4 numbers) and five landmark offsets (10 numbers).

Two backbones, as in facexlib:

* "mobile0.25": MobileNet V1 at width 0.25 (facexlib's ``MobileNetV1``), 64-channel pyramid;
* "resnet50": torchvision's ResNet-50 (V1.5, the stride sits on the 3x3 convolution) up to ``layer4``, as
  facexlib takes it through ``IntermediateLayerGetter``, 256-channel pyramid.

Anchors, box decoding and NMS are not part of the network: see :mod:`gfp.faces`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

BACKBONES = ("mobile0.25", "resnet50")


def leaky_slope(channels: int) -> float:
    """Negative slope of the LeakyReLUs in facexlib's FPN and SSH: 0.1 for narrow (<= 64 channel, MobileNet)
    pyramids, 0 (a ReLU) for wider ones (ResNet-50)."""
    return 0.1 if channels <= 64 else 0.0


def conv_bn_layers(
    in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1, slope: float | None = None
) -> list[nn.Module]:
    """Convolution (no bias, "same" padding) and BatchNorm, then LeakyReLU(``slope``) unless it is None."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if slope is not None:
        layers.append(nn.LeakyReLU(slope, inplace=True))
    return layers


class ConvBN(nn.Sequential):
    """Conv + BatchNorm (+ LeakyReLU): keys ``0.*`` (conv) and ``1.*`` (norm), as facexlib's ``conv_bn*``."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, slope: float | None = None
    ) -> None:
        super().__init__(*conv_bn_layers(in_ch, out_ch, kernel, stride, slope=slope))


class DepthwiseSeparable(nn.Sequential):
    """MobileNet block: 3x3 depthwise conv (carries the stride), then 1x1 pointwise conv, each followed by
    BatchNorm and LeakyReLU(0.1). Keys ``0``/``1`` and ``3``/``4``, as facexlib's ``conv_dw``."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__(
            *conv_bn_layers(in_ch, in_ch, 3, stride, groups=in_ch, slope=0.1),
            *conv_bn_layers(in_ch, out_ch, 1, slope=0.1),
        )


class MobileNetBody(nn.Module):
    """MobileNet V1 (width 0.25) without its classifier: returns its stride 8, 16 and 32 feature maps
    (64, 128 and 256 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            ConvBN(3, 8, stride=2, slope=0.1),
            DepthwiseSeparable(8, 16),
            DepthwiseSeparable(16, 32, stride=2),
            DepthwiseSeparable(32, 32),
            DepthwiseSeparable(32, 64, stride=2),
            DepthwiseSeparable(64, 64),
        )
        self.stage2 = nn.Sequential(
            DepthwiseSeparable(64, 128, stride=2), *(DepthwiseSeparable(128, 128) for _ in range(5))
        )
        self.stage3 = nn.Sequential(DepthwiseSeparable(128, 256, stride=2), DepthwiseSeparable(256, 256))

    def forward(self, x: Tensor) -> list[Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        c5 = self.stage3(c4)
        return [c3, c4, c5]


class Bottleneck(nn.Module):
    """ResNet bottleneck (torchvision's V1.5): 1x1 reduce, 3x3 (strided), 1x1 expand by 4, each with
    BatchNorm, plus a shortcut that is a strided 1x1 conv + BatchNorm where the shape changes."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


def resnet_stage(in_ch: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` bottlenecks; the first changes the resolution (``stride``) and the channel count."""
    layers = [Bottleneck(in_ch, width, stride)]
    layers += [Bottleneck(width * Bottleneck.expansion, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet50Body(nn.Module):
    """ResNet-50 without pooling and classifier (torchvision's names): returns the outputs of ``layer2``,
    ``layer3`` and ``layer4``, at strides 8, 16 and 32 (512, 1024 and 2048 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = resnet_stage(64, 64, 3, stride=1)
        self.layer2 = resnet_stage(256, 128, 4, stride=2)
        self.layer3 = resnet_stage(512, 256, 6, stride=2)
        self.layer4 = resnet_stage(1024, 512, 3, stride=2)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c3 = self.layer2(self.layer1(x))
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


class FPN(nn.Module):
    """Feature pyramid: 1x1 lateral convs bring the three levels to ``out_ch``; top-down, each coarser
    level, upsampled (nearest) to the next finer one, is added to it and the sum smoothed by a 3x3 conv.
    The coarsest level is not smoothed (as in facexlib)."""

    def __init__(self, in_chs: tuple[int, int, int], out_ch: int) -> None:
        super().__init__()
        slope = leaky_slope(out_ch)
        self.output1 = ConvBN(in_chs[0], out_ch, 1, slope=slope)
        self.output2 = ConvBN(in_chs[1], out_ch, 1, slope=slope)
        self.output3 = ConvBN(in_chs[2], out_ch, 1, slope=slope)
        self.merge1 = ConvBN(out_ch, out_ch, 3, slope=slope)
        self.merge2 = ConvBN(out_ch, out_ch, 3, slope=slope)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        p5 = self.output3(feats[2])
        p4 = self.output2(feats[1])
        p4 = self.merge2(p4 + F.interpolate(p5, size=[p4.size(2), p4.size(3)], mode="nearest"))
        p3 = self.output1(feats[0])
        p3 = self.merge1(p3 + F.interpolate(p4, size=[p3.size(2), p3.size(3)], mode="nearest"))
        return [p3, p4, p5]


class SSH(nn.Module):
    """Context module of SSH (Najibi et al. 2017): 3x3, 5x5 and 7x7 receptive fields (the two larger ones
    as stacked 3x3 convs sharing their first) give half, a quarter and a quarter of ``out_ch``; the
    concatenation goes through a ReLU. Key names keep facexlib's spelling (``conv7x7_3``)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        if out_ch % 4:
            raise ValueError(f"SSH needs out_ch divisible by 4, got {out_ch}")
        slope = leaky_slope(out_ch)
        quarter = out_ch // 4
        self.conv3X3 = ConvBN(in_ch, out_ch // 2)
        self.conv5X5_1 = ConvBN(in_ch, quarter, slope=slope)
        self.conv5X5_2 = ConvBN(quarter, quarter)
        self.conv7X7_2 = ConvBN(quarter, quarter, slope=slope)
        self.conv7x7_3 = ConvBN(quarter, quarter)

    def forward(self, x: Tensor) -> Tensor:
        shared = self.conv5X5_1(x)
        branches = [self.conv3X3(x), self.conv5X5_2(shared), self.conv7x7_3(self.conv7X7_2(shared))]
        return F.relu(torch.cat(branches, dim=1))


class Head(nn.Module):
    """1x1 conv predicting ``values`` numbers per anchor at every location, flattened to
    (N, H*W*anchors, values) in (y, x, anchor) order: the order of the anchors (priors). The output
    channels are grouped by anchor (``values`` each)."""

    def __init__(self, in_ch: int, values: int, anchors: int = 2) -> None:
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(in_ch, anchors * values, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


def heads(in_ch: int, values: int, levels: int = 3) -> nn.ModuleList:
    """One :class:`Head` per pyramid level (facexlib's ``ClassHead``/``BboxHead``/``LandmarkHead`` lists)."""
    return nn.ModuleList(Head(in_ch, values) for _ in range(levels))


class RetinaFace(nn.Module):
    """RetinaFace with ``backbone`` "mobile0.25" or "resnet50" (facexlib's names and function)."""

    def __init__(self, backbone: str = "resnet50") -> None:
        super().__init__()
        if backbone == "mobile0.25":
            body, in_chs, out_ch = MobileNetBody(), (64, 128, 256), 64
        elif backbone == "resnet50":
            body, in_chs, out_ch = ResNet50Body(), (512, 1024, 2048), 256
        else:
            raise ValueError(
                f"unknown RetinaFace backbone {backbone!r}; choose one of: {', '.join(BACKBONES)}"
            )
        self.backbone = backbone
        self.body = body
        self.fpn = FPN(in_chs, out_ch)
        self.ssh1 = SSH(out_ch, out_ch)
        self.ssh2 = SSH(out_ch, out_ch)
        self.ssh3 = SSH(out_ch, out_ch)
        self.ClassHead = heads(out_ch, 2)
        self.BboxHead = heads(out_ch, 4)
        self.LandmarkHead = heads(out_ch, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x``: (N, 3, H, W) BGR image minus the mean (104, 117, 123), in [0, 255] units.

        Returns, per anchor in facexlib's PriorBox order: box offsets (N, A, 4), (background, face)
        probabilities (N, A, 2) and landmark offsets (N, A, 10), A = 2 * sum of the three levels' H * W.
        """
        levels = self.fpn(self.body(x))
        feats = [ssh(level) for ssh, level in zip((self.ssh1, self.ssh2, self.ssh3), levels, strict=True)]
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, feats, strict=True)], dim=1)
        logits = torch.cat([head(f) for head, f in zip(self.ClassHead, feats, strict=True)], dim=1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, feats, strict=True)], dim=1)
        return boxes, F.softmax(logits, dim=-1), landmarks


def build_retinaface(backbone: str) -> RetinaFace:
    """RetinaFace with ``backbone`` "mobile0.25" or "resnet50": random weights, default device (CPU), eval
    mode. An unknown backbone is a ValueError."""
    return RetinaFace(backbone).eval()
