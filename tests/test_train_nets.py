"""Discriminators and identity nets: official checkpoints load strictly and give the official outputs."""

from __future__ import annotations

import cv2
import pytest
import torch
from torch.nn import functional as F

import gfp  # noqa: F401  (torchvision shim before basicsr)
from train.discriminators import FacialComponentDiscriminator, StyleGAN2Discriminator
from train.identity import IdentityEmbedder, MobileFaceNet, ResNetArcFace


@pytest.mark.parametrize(("size", "multiplier", "narrow"), [(64, 1, 0.25), (128, 2, 0.125)])
def test_stylegan2_discriminator_matches_official(official_fused_act_on_cpu, size, multiplier, narrow):
    torch.manual_seed(0)
    official = official_fused_act_on_cpu.StyleGAN2Discriminator(
        size, channel_multiplier=multiplier, narrow=narrow
    )
    ours = StyleGAN2Discriminator(size, channel_multiplier=multiplier, narrow=narrow)
    ours.load_state_dict(official.state_dict(), strict=True)
    x = torch.randn(4, 3, size, size)
    torch.testing.assert_close(ours(x), official(x), rtol=1e-5, atol=1e-5)


def test_stylegan2_discriminator_full_size_keys_match_official(official_fused_act_on_cpu):
    with torch.device("meta"):
        official = official_fused_act_on_cpu.StyleGAN2Discriminator(512, channel_multiplier=1)
        ours = StyleGAN2Discriminator(512, channel_multiplier=1)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in official.state_dict().items()
    }


def test_component_discriminator_matches_official(official_fused_act_on_cpu):
    from gfpgan.archs.gfpganv1_arch import FacialComponentDiscriminator as Official

    torch.manual_seed(1)
    official, ours = Official(), FacialComponentDiscriminator()
    ours.load_state_dict(official.state_dict(), strict=True)
    x = torch.randn(2, 3, 20, 20)
    out_o, feats_o = official(x, return_feats=True)
    out, feats = ours(x, return_feats=True)
    torch.testing.assert_close(out, out_o)
    for a, b in zip(feats, feats_o, strict=True):
        torch.testing.assert_close(a, b)
    assert ours(x)[1] is None


def test_arcface_matches_official():
    from gfpgan.archs.arcface_arch import ResNetArcFace as Official

    torch.manual_seed(2)
    official = Official("IRBlock", [2, 2, 2, 2], use_se=False)
    for m in official.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours = ResNetArcFace()
    ours.load_state_dict(official.state_dict(), strict=True)
    x = torch.randn(2, 1, 128, 128)
    torch.testing.assert_close(ours.eval()(x), official.eval()(x), rtol=1e-4, atol=1e-4)


@pytest.mark.shared
def test_mobilefacenet_identity_separates_people(shared_data):
    ckpt = torch.load(
        shared_data / "weights" / "mobilefacenet_casia_arcface.ckpt", map_location="cpu", weights_only=True
    )
    net = MobileFaceNet()
    net.load_state_dict(ckpt["net_state_dict"], strict=True)
    embed = IdentityEmbedder("mobilefacenet", net)
    files = sorted((shared_data / "faces" / "hq").glob("*.jpg"))[:4]

    def load(path, blur=0.0):
        img = cv2.resize(cv2.imread(str(path)), (256, 256), interpolation=cv2.INTER_AREA)
        if blur:
            img = cv2.GaussianBlur(img, (0, 0), blur)
        return torch.from_numpy(img[:, :, ::-1].copy()).permute(2, 0, 1).float() / 127.5 - 1

    with torch.no_grad():
        sharp = F.normalize(embed(torch.stack([load(p) for p in files])), dim=1)
        blurred = F.normalize(embed(torch.stack([load(p, 2.0) for p in files])), dim=1)
    same = (sharp * blurred).sum(1)
    cross = sharp @ sharp.T - torch.eye(len(files)) * 2
    assert same.min() > 0.8  # the same person, blurred
    assert cross.max() < 0.5  # different people


def test_training_networks_are_registered_by_train() -> None:
    from gfp import registry

    assert registry.choice_names("identity") == ["arcface_resnet18", "mobilefacenet"]
    assert registry.choice_names("perceptual") == ["vgg19"]
    assert registry.MODEL_ZOO["arcface_resnet18"].url.endswith("/v0.1.0/arcface_resnet18.pth")
    assert registry.MODEL_ZOO["mobilefacenet"].url is None  # no public download: the file must be given
    assert registry.MODEL_ZOO["vgg19"].file_name == "vgg19-dcbb9e9d.pth"
    assert isinstance(IdentityEmbedder("mobilefacenet").net, MobileFaceNet)
    with pytest.raises(
        ValueError, match="unknown identity network 'vgg19' \\(arcface_resnet18 or mobilefacenet\\)"
    ):
        IdentityEmbedder("vgg19")
    from torchvision.models import vgg19

    with torch.device("meta"):
        nets = {"arcface": ResNetArcFace(), "mobilefacenet": MobileFaceNet(), "vgg19": vgg19()}
    for family, net in nets.items():
        assert registry.recognise(net.state_dict())[0].name == family
