"""Known-answer tests for train.losses and train.metrics: values worked out by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from train import losses as L
from train.metrics import cosine_similarity, psnr


def test_pixel_loss_is_weighted_mean_absolute_error():
    out = torch.zeros(1, 1, 2, 2)
    gt = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    # |0-1|+|0-2|+|0-3|+|0-4| = 10 over 4 pixels = 2.5, times 0.1
    assert L.pixel_loss(out, gt, 0.1).item() == pytest.approx(0.25)
    # squared: (1+4+9+16)/4 = 7.5, times 0.1
    assert L.pixel_loss(out, gt, 0.1, "l2").item() == pytest.approx(0.75)


def test_pyramid_losses_compare_levels_with_bilinear_halvings():
    gt = torch.tensor([[[[0.0, 4.0], [8.0, 12.0]]]])
    # half size (bilinear, align_corners=False) of a 2x2 image is its mean, 6
    rgbs = [torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 2, 2)]
    # level 1: |0-6| = 6; level 2: mean(0,4,8,12) = 6; each times weight 0.5
    assert [v.item() for v in L.pyramid_losses(rgbs, gt, 0.5)] == pytest.approx([3.0, 3.0])
    assert [t.shape[-1] for t in L.image_pyramid(torch.zeros(1, 3, 16, 16), 3)] == [4, 8, 16]


def test_gram_matrix_normalised_by_chw():
    x = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # c=2, h=1, w=2
    # [[1·1+2·2, 1·3+2·4], [., 3·3+4·4]] / (2·1·2)
    expected = torch.tensor([[[5.0, 11.0], [11.0, 25.0]]]) / 4
    torch.testing.assert_close(L.gram_matrix(x), expected)


def test_perceptual_loss_content_and_style():
    feats = {"a": torch.ones(1, 1, 1, 2), "b": torch.full((1, 1, 1, 1), 2.0)}
    gt = {"a": torch.zeros(1, 1, 1, 2), "b": torch.zeros(1, 1, 1, 1)}
    content, style = L.perceptual_loss(
        feats, gt, {"a": 0.5, "b": 1.0}, perceptual_weight=2.0, style_weight=50.0
    )
    # content: 0.5·|1-0| + 1·|2-0| = 2.5, times 2
    assert content.item() == pytest.approx(5.0)
    # grams: a → (1+1)/2 = 1, b → 4/1 = 4; 0.5·1 + 1·4 = 4.5, times 50
    assert style.item() == pytest.approx(225.0)


def test_gan_losses_are_softplus_logistic():
    assert L.gan_loss_g(torch.zeros(3, 1), 0.1).item() == pytest.approx(0.1 * math.log(2))
    real, fake = torch.tensor([[math.log(3)]]), torch.tensor([[math.log(3)]])
    # softplus(-log 3) = log(4/3), softplus(log 3) = log 4
    assert L.gan_loss_d(real, fake).item() == pytest.approx(math.log(16 / 3), rel=1e-6)


def test_component_style_loss_weights_first_feature_half():
    fake = [[torch.ones(1, 1, 1, 2), torch.full((1, 1, 1, 1), 2.0)]]
    real = [[torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 1)]]
    # 0.5·|gram 1 - 0| + |gram 4 - 0| = 4.5, times 200
    assert L.component_style_loss(fake, real, 200.0).item() == pytest.approx(900.0)


def test_r1_penalty_is_mean_squared_input_gradient_norm():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    pred = (x**2).sum(1)  # gradient 2x: squared norms 4 and 16
    assert L.r1_penalty(pred, x).item() == pytest.approx(10.0)
    pred.detach_()
    # it keeps the graph so the penalty itself can be back-propagated (lazy R1 step)
    x2 = torch.tensor([[3.0]], requires_grad=True)
    w = torch.tensor(2.0, requires_grad=True)
    L.r1_penalty((w * x2).sum(1), x2).backward()  # penalty w², d/dw = 2w = 4
    assert w.grad.item() == pytest.approx(4.0)


def test_identity_loss_and_cosine():
    assert L.identity_loss(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), 10.0).item() == pytest.approx(15.0)
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    assert cosine_similarity(a, b).item() == pytest.approx(1 / math.sqrt(2))


def test_psnr_of_known_error():
    gt = torch.zeros(1, 3, 4, 4)
    out = gt.clone()
    out[..., 0, 0] = 10 / 127.5  # one pixel per channel off by 10 (0-255 scale): mse = 100/16
    assert psnr(out, gt).item() == pytest.approx(10 * math.log10(255**2 / (100 / 16)), rel=1e-5)


def test_vgg_features_are_pre_relu_conv_outputs_of_normalised_input():
    torch.manual_seed(0)
    vgg = L.VGGFeatures(["conv1_1", "conv1_2"])
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    feats = vgg(x)
    norm = ((x + 1) / 2 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    conv1 = vgg.features[0]
    expected1 = F.conv2d(norm, conv1.weight, conv1.bias, padding=1)
    torch.testing.assert_close(feats["conv1_1"], expected1)
    conv2 = vgg.features[2]
    torch.testing.assert_close(
        feats["conv1_2"], F.conv2d(F.relu(expected1), conv2.weight, conv2.bias, padding=1)
    )
    assert (feats["conv1_2"] < 0).any()  # before the ReLU
    assert len(vgg.features) == 3 and not any(p.requires_grad for p in vgg.parameters())


def test_vgg_features_load_torchvision_vgg19_weights():
    from torchvision.models import vgg19

    torch.manual_seed(3)
    state = vgg19(weights=None).state_dict()  # the layout of vgg19-dcbb9e9d.pth
    vgg = L.VGGFeatures(["conv5_4"], state)
    assert len(vgg.features) == 35
    assert torch.equal(vgg.features[34].weight, state["features.34.weight"])


def test_ssim_equals_basicsr():
    """Validation's SSIM (a separable Gaussian window in torch) equals basicsr's calculate_ssim on RGB."""
    from basicsr.metrics import calculate_ssim

    from train.metrics import ssim

    gen = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 64, 48, generator=gen) * 2 - 1
    output = (target + 0.2 * torch.randn(target.shape, generator=gen)).clamp(-1, 1)
    ours = ssim(output, target)
    as_image = ((torch.stack([output, target]).permute(0, 1, 3, 4, 2) + 1) * 127.5).round().numpy()
    for i in range(2):
        expected = calculate_ssim(as_image[0, i], as_image[1, i], crop_border=0)
        assert abs(float(ours[i]) - expected) < 1e-6, (float(ours[i]), expected)
