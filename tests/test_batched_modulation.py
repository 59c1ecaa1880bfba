"""Batches above one sample share the modulated convs' weights and still compute each face alone.

The reference is the official formulation (per-sample weight tensors, one grouped conv) run one face at
a time; the batch runs the shared-weight formulation. A spy on the convolutions proves which one ran.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from gfp.archs import GeneratorConfig, build_generator, set_modulation_mode

BATCH = 3  # not a channel count of these configs, so a grouped conv with groups=BATCH is the per-sample path


def _generator(config: GeneratorConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_generator(config).eval()
    with torch.no_grad():  # init leaves noise strengths and biases at zero: perturb so every path matters
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.05)
    return net


def _psnr(out: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB for images in [-1, 1] (peak-to-peak 2)."""
    mse = torch.mean((out.double() - ref.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def _grouped_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record every conv on a batch of 1 with ``groups=BATCH``: the per-sample formulation's signature.

    (Our archs pass ``groups`` by keyword wherever they group.)"""
    calls: list[int] = []
    for name in ("conv2d", "conv_transpose2d"):
        original = getattr(F, name)

        def spy(x, weight, *args, _original=original, **kwargs):
            if x.shape[0] == 1 and kwargs.get("groups", 1) == BATCH:
                calls.append(BATCH)
            return _original(x, weight, *args, **kwargs)

        monkeypatch.setattr(F, name, spy)
    return calls


@pytest.mark.parametrize(
    "config",
    [
        GeneratorConfig(arch="clean", out_size=64, channel_multiplier=2, narrow=0.25),
        GeneratorConfig(arch="v1", out_size=64, channel_multiplier=1, narrow=0.25),
    ],
    ids=["clean", "v1"],
)
def test_batch_equals_faces_one_at_a_time(config, monkeypatch):
    net = _generator(config)
    torch.manual_seed(1)
    x = torch.rand(BATCH, 3, config.out_size, config.out_size) * 2 - 1
    with torch.no_grad():
        singles = torch.cat([net(x[i : i + 1], return_rgb=False)[0] for i in range(BATCH)])
        calls = _grouped_calls(monkeypatch)
        batched, _ = net(x, return_rgb=False)
        assert not calls, "a batch above one must not run per-sample grouped convolutions"
        set_modulation_mode(net, "per_sample")
        net(x, return_rgb=False)
        assert calls, "the spy must see the per-sample path when it is asked for"
    rel = ((batched - singles).abs().max() / singles.abs().max()).item()
    psnr = _psnr(batched, singles)
    print(f"{config.arch}: batch {BATCH} vs one at a time: {psnr:.1f} dB, max rel err {rel:.1e}")
    assert psnr >= 50 and rel <= 1e-5


def test_modes_are_checked():
    net = build_generator(GeneratorConfig(out_size=16, narrow=0.125, num_style_feat=16, num_mlp=1))
    with pytest.raises(ValueError, match="modulation mode"):
        set_modulation_mode(net, "grouped")
