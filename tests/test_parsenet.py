"""Our ParseNet computes facexlib's function (the official parser) and loads its weights strictly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from facexlib.parsing.parsenet import ParseNet as OfficialParseNet

from gfp.archs.parsenet import ParseNet, upsample_conv3x3


def _official(seed: int, **kw) -> OfficialParseNet:
    """A facexlib ParseNet with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    net = OfficialParseNet(in_size=512, out_size=512, parsing_ch=19, **kw).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net


@pytest.mark.parametrize("size", [(4, 4), (5, 7), (1, 3)])
def test_upsample_conv_equals_nearest_upsample_then_reflect_padded_conv(size) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    weight, bias = torch.randn(5, 3, 3, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    big = F.interpolate(x, scale_factor=2, mode="nearest")
    expected = F.conv2d(F.pad(big, (1, 1, 1, 1), mode="reflect"), weight, bias)
    torch.testing.assert_close(upsample_conv3x3(x, weight, bias), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(upsample_conv3x3(x, weight, None), expected - bias.view(1, -1, 1, 1))


def test_parsenet_matches_facexlib_at_full_size() -> None:
    official = _official(0)
    ours = ParseNet().eval()
    ours.load_state_dict(official.state_dict(), strict=True)  # parsing_parsenet.pth's keys and shapes
    x = torch.randn(1, 3, 512, 512)
    with torch.inference_mode():
        expected, got = official(x)[0], ours(x)
    assert got.shape == (1, 19, 512, 512)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * expected.abs().max().item())
    agree = (got.argmax(1) == expected.argmax(1)).float().mean().item()
    assert agree > 0.9999, agree  # labels (what the blend mask uses) flip only at float-noise ties
