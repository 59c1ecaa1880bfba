"""Our generators compute the official gfpgan function on identical weights.

The official module is built with a fixed seed, its state dict saved and loaded into ours with
``strict=True``, and both run on the same inputs with the checkpoint's fixed noise. With the official
formulation of the modulated convolutions (every batch of one, and any batch in "per_sample" mode) the
outputs are bit-equal; our shared-weight batches (the default above one sample) agree to float rounding.
The paper model's
official layers need a compiled CUDA op for their fused activation; inside this test only, that op is
replaced by its defining formula so the oracle runs on CPU (the ``official_fused_act_on_cpu`` fixture
of conftest.py).
"""

from __future__ import annotations

import math

import pytest
import torch

import gfp  # noqa: F401  (torchvision shim before basicsr)
from gfp.archs import GeneratorConfig, build_generator, detect_config, set_modulation_mode

TOLERANCE = 1e-5  # relative, for the shared-weight batches


def _official(config: GeneratorConfig) -> torch.nn.Module:
    from gfpgan.archs.gfpganv1_arch import GFPGANv1
    from gfpgan.archs.gfpganv1_clean_arch import GFPGANv1Clean

    cls = GFPGANv1Clean if config.arch == "clean" else GFPGANv1
    torch.manual_seed(0)
    net = cls(
        out_size=config.out_size,
        num_style_feat=config.num_style_feat,
        channel_multiplier=config.channel_multiplier,
        decoder_load_path=None,
        fix_decoder=False,
        num_mlp=config.num_mlp,
        input_is_latent=True,
        different_w=config.different_w,
        narrow=config.narrow,
        sft_half=config.sft_half,
    )
    # Official init leaves noise strengths and many biases at zero; perturb every tensor so all paths matter.
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.05)
    return net.eval()


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def _check_parity(config: GeneratorConfig, tmp_path, batch: int = 1, mode: str = "auto") -> float:
    official = _official(config)
    path = tmp_path / "official.pth"
    torch.save({"params_ema": official.state_dict()}, path)
    state = torch.load(path, map_location="cpu", weights_only=True)["params_ema"]
    assert detect_config(state) == config
    ours = build_generator(config)
    ours.load_state_dict(state, strict=True)
    ours.eval()
    set_modulation_mode(ours, mode)

    torch.manual_seed(1)
    x = torch.rand(batch, 3, config.out_size, config.out_size) * 2 - 1
    with torch.no_grad():
        ref, ref_rgbs = official(x, return_rgb=True, randomize_noise=False)
        out, out_rgbs = ours(x, return_rgb=True)
        # The official default draws fresh noise: same seed, same draws, same image.
        torch.manual_seed(2)
        ref_rand, _ = official(x, return_rgb=False, randomize_noise=True)
        torch.manual_seed(2)
        out_rand, _ = ours(x, return_rgb=False, randomize_noise=True)
    assert out.shape == ref.shape == x.shape
    assert len(out_rgbs) == len(ref_rgbs) == int(math.log2(config.out_size)) - 2
    errors = [_rel_err(out, ref), _rel_err(out_rand, ref_rand)]
    errors += [_rel_err(o, r) for o, r in zip(out_rgbs, ref_rgbs, strict=True)]
    assert not torch.allclose(out_rand, out), "random noise should change the output"
    worst = max(errors)
    label = f"{config.arch} {config.out_size}px cm{config.channel_multiplier} batch {batch} {mode}"
    print(f"parity {label}: max rel err {worst:.2e}")
    if batch == 1 or mode == "per_sample":
        assert worst == 0.0, errors  # the official arithmetic, op for op
    else:
        assert worst <= TOLERANCE, errors
    return worst


@pytest.mark.parametrize(("batch", "mode"), [(1, "auto"), (2, "per_sample"), (2, "auto")])
@pytest.mark.parametrize(
    ("arch", "out_size", "channel_multiplier", "narrow"),
    [("clean", 64, 2, 0.25), ("clean", 128, 1, 0.25), ("v1", 64, 1, 0.25), ("v1", 128, 2, 0.25)],
)
def test_small_generators_match_official(
    official_fused_act_on_cpu, tmp_path, arch, out_size, channel_multiplier, narrow, batch, mode
):
    config = GeneratorConfig(
        arch=arch, out_size=out_size, channel_multiplier=channel_multiplier, narrow=narrow
    )
    _check_parity(config, tmp_path, batch=batch, mode=mode)


@pytest.mark.slow
def test_v1_4_layout_matches_official_at_512(tmp_path):
    """v1.2 / v1.3 / v1.4 share this exact layout (clean, channel multiplier 2, 512 px)."""
    _check_parity(GeneratorConfig(arch="clean", out_size=512, channel_multiplier=2), tmp_path)


@pytest.mark.slow
def test_paper_v1_layout_matches_official_at_512(official_fused_act_on_cpu, tmp_path):
    """GFPGANv1.pth layout: original StyleGAN2 layers, channel multiplier 1, 512 px."""
    _check_parity(GeneratorConfig(arch="v1", out_size=512, channel_multiplier=1), tmp_path)


def test_official_v1_needs_the_compiled_op_without_our_patch():
    """Why the patch above exists: the official paper model cannot run on CPU as shipped."""
    from gfpgan.archs.gfpganv1_arch import GFPGANv1

    net = GFPGANv1(out_size=32, num_style_feat=32, channel_multiplier=1, narrow=0.125, different_w=True)
    with pytest.raises(NameError, match="fused_act_ext"):
        net(torch.zeros(1, 3, 32, 32))
