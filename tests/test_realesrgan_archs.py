"""gfp.archs.realesrgan: basicsr's RRDBNet and SRVGGNetCompact without basicsr.

basicsr is the oracle here: the same parameter names and shapes (official checkpoints load strictly), and,
with basicsr's seeded random weights loaded into ours, bit-identical outputs on the CPU (the forward passes
run the same operations in the same order). The registry builds our classes and never imports basicsr.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

# isort: off
import gfp  # noqa: F401  (installs the torchvision shim that basicsr needs, before basicsr)
from basicsr.archs import rrdbnet_arch, srvgg_arch

# isort: on
from gfp import registry
from gfp.archs.realesrgan import RRDBNet, SRVGGNetCompact


def _shapes(net: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _check_parity(ours: nn.Module, theirs: nn.Module, x: torch.Tensor) -> None:
    """Same keys and shapes; their (seeded, random) weights load strictly into ours; same output, exactly."""
    assert list(_shapes(ours).items()) == list(_shapes(theirs).items())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        expected = theirs(x.clone())
        got = ours(x.clone())
    assert got.shape == expected.shape
    assert torch.equal(got, expected)


def _input(h: int = 20, w: int = 28, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scale", [4, 2, 1])
def test_rrdbnet_matches_basicsr(scale: int) -> None:
    kw = dict(num_in_ch=3, num_out_ch=3, scale=scale, num_feat=8, num_block=2, num_grow_ch=4)
    torch.manual_seed(scale)
    theirs = rrdbnet_arch.RRDBNet(**kw)
    ours = RRDBNet(**kw)
    assert ours.scale == scale
    x = _input(20, 28)  # divisible by 4, as the x1 network's pixel-unshuffle needs
    _check_parity(ours, theirs, x)
    assert ours(x).shape == (1, 3, 20 * scale, 28 * scale)


def test_rrdbnet_default_config_has_basicsr_keys_and_shapes() -> None:
    for scale in (4, 2):
        assert _shapes(RRDBNet(3, 3, scale=scale)) == _shapes(rrdbnet_arch.RRDBNet(3, 3, scale=scale))


@pytest.mark.parametrize("act_type", ["prelu", "relu", "leakyrelu"])
@pytest.mark.parametrize("upscale", [4, 2])
def test_srvgg_matches_basicsr(upscale: int, act_type: str) -> None:
    kw = dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=3, upscale=upscale, act_type=act_type)
    torch.manual_seed(upscale)
    theirs = srvgg_arch.SRVGGNetCompact(**kw)
    if act_type == "prelu":  # PReLU starts at 0.25 everywhere: make the per-channel slopes matter
        with torch.no_grad():
            for m in theirs.modules():
                if isinstance(m, nn.PReLU):
                    m.weight.uniform_(-0.5, 0.5)
    ours = SRVGGNetCompact(**kw)
    assert ours.upscale == upscale
    _check_parity(ours, theirs, _input() * 2 - 0.5)  # negative inputs too, so every activation's slope counts


def test_channels_last_bf16_autocast_and_float16_match_basicsr() -> None:
    """How gfp.background runs them: channels-last input and weights, bfloat16 autocast on the CPU, and
    float16 weights and input (``--half`` on a GPU, as RealESRGANer's ``half``; run here on the CPU)."""
    torch.manual_seed(0)
    pairs = [
        (srvgg_arch.SRVGGNetCompact(num_feat=8, num_conv=2), SRVGGNetCompact(num_feat=8, num_conv=2)),
        (
            rrdbnet_arch.RRDBNet(3, 3, scale=2, num_feat=8, num_block=1, num_grow_ch=4),
            RRDBNet(3, 3, scale=2, num_feat=8, num_block=1, num_grow_ch=4),
        ),
    ]
    x = _input(16, 24).contiguous(memory_format=torch.channels_last)
    for theirs, ours in pairs:
        ours.load_state_dict(theirs.state_dict(), strict=True)
        theirs, ours = (n.eval().to(memory_format=torch.channels_last) for n in (theirs, ours))
        with torch.inference_mode():
            assert torch.equal(ours(x), theirs(x))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert torch.equal(ours(x), theirs(x))
            got, expected = ours.half()(x.half()), theirs.half()(x.half())
            assert got.dtype == torch.float16 and torch.equal(got, expected)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="act_type"):
        SRVGGNetCompact(act_type="gelu")
    with pytest.raises(ValueError, match="scale"):
        RRDBNet(3, 3, scale=8)


@pytest.mark.parametrize("name", ["realesr-general-x4v3", "realesr-animevideov3", "RealESRGAN_x2plus"])
def test_registry_builds_ours_with_basicsr_layout(name: str) -> None:
    entry = registry.MODEL_ZOO[name]
    config = entry.config
    net = registry.build(entry)
    if config.arch == "rrdb":
        assert type(net) is RRDBNet and net.scale == config.scale == entry.supports.scale
        theirs = rrdbnet_arch.RRDBNet(
            num_in_ch=3, num_out_ch=3, num_feat=config.num_feat, num_block=config.depth,
            num_grow_ch=config.num_grow_ch, scale=config.scale,
        )  # fmt: skip
    else:
        assert type(net) is SRVGGNetCompact and net.upscale == config.scale == entry.supports.scale
        theirs = srvgg_arch.SRVGGNetCompact(
            num_in_ch=3, num_out_ch=3, num_feat=config.num_feat, num_conv=config.depth, upscale=config.scale,
            act_type="prelu",
        )  # fmt: skip
    assert _shapes(net) == _shapes(theirs)
    # and the registry recognises our state dict as the same config
    family, recognised = registry.recognise(net.state_dict(), "upsampler")
    assert (family.name, recognised) == ("realesrgan", config)


@pytest.mark.parametrize("name", ["realesr-animevideov3", "realesr-general-x4v3", "RealESRGAN_x2plus"])
def test_official_checkpoint_loads_strictly_and_matches_basicsr(name: str, shared_data: Path) -> None:
    """Where the offline data has the official file (it has animevideov3), the trained network agrees too."""
    entry = registry.MODEL_ZOO[name]
    path = shared_data / "weights" / entry.file_name
    if not path.is_file():
        pytest.skip(f"{entry.file_name} is not in the offline test data")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("params_ema", checkpoint.get("params", checkpoint))
    config = entry.config
    if config.arch == "rrdb":
        theirs = rrdbnet_arch.RRDBNet(3, 3, scale=config.scale, num_block=config.depth)
    else:
        theirs = srvgg_arch.SRVGGNetCompact(num_conv=config.depth, upscale=config.scale)
    theirs.load_state_dict(state, strict=True)
    _check_parity(registry.build(entry), theirs, _input(16, 20))


def test_running_a_background_network_does_not_import_basicsr() -> None:
    code = (
        "import sys, torch; from gfp import registry; "
        "net = registry.build(registry.MODEL_ZOO['realesr-general-x4v3']); net(torch.zeros(1,3,8,8)); "
        "print('basicsr' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
