"""Config detection on each official layout, config validation, and the deterministic default."""

from __future__ import annotations

import pytest
import torch

import gfp  # noqa: F401  (torchvision shim before basicsr)
from gfp.archs import GeneratorConfig, UnknownArchitectureError, build_generator, detect_config


def _official_state(arch: str, channel_multiplier: int, out_size: int = 512, narrow: float = 1.0) -> dict:
    """State dict of the official module with the official inference config (shapes are what matter)."""
    from gfpgan.archs.gfpganv1_arch import GFPGANv1
    from gfpgan.archs.gfpganv1_clean_arch import GFPGANv1Clean

    cls = GFPGANv1Clean if arch == "clean" else GFPGANv1
    with torch.device("meta"):
        net = cls(
            out_size=out_size,
            num_style_feat=512,
            channel_multiplier=channel_multiplier,
            decoder_load_path=None,
            fix_decoder=False,
            num_mlp=8,
            input_is_latent=True,
            different_w=True,
            narrow=narrow,
            sft_half=True,
        )
    return net.state_dict()


@pytest.mark.parametrize(
    ("name", "arch", "channel_multiplier"),
    [
        ("GFPGANv1.pth", "v1", 1),
        ("GFPGANCleanv1-NoCE-C2.pth", "clean", 2),
        ("GFPGANv1.3.pth / GFPGANv1.4.pth", "clean", 2),
    ],
)
def test_detects_each_official_layout(name, arch, channel_multiplier):
    config = detect_config(_official_state(arch, channel_multiplier))
    assert config == GeneratorConfig(arch=arch, out_size=512, channel_multiplier=channel_multiplier), name


@pytest.mark.parametrize(
    "config",
    [
        GeneratorConfig(arch="clean", out_size=64, channel_multiplier=1, narrow=0.25, num_style_feat=64),
        GeneratorConfig(arch="v1", out_size=128, channel_multiplier=2, narrow=0.5, num_mlp=2),
        GeneratorConfig(arch="clean", out_size=256, channel_multiplier=2, narrow=0.125, sft_half=False),
        GeneratorConfig(arch="v1", out_size=32, channel_multiplier=1, narrow=0.125, different_w=False),
        GeneratorConfig(
            arch="clean", out_size=512, work_size=64, channel_multiplier=1, narrow=0.125, input_residual=True
        ),
        GeneratorConfig(
            arch="clean",
            out_size=512,
            work_size=64,
            channel_multiplier=1,
            narrow=0.125,
            input_residual=True,
            detail=True,
        ),
    ],
)
def test_detection_round_trips_custom_configs(config):
    with torch.device("meta"):
        state = build_generator(config).state_dict()
    assert detect_config(state) == config


def test_rejects_other_networks_clearly():
    resnet = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 2)).state_dict()
    with pytest.raises(UnknownArchitectureError, match="not a GFPGAN"):
        detect_config(resnet)


def test_rejects_a_truncated_gfpgan_state_dict():
    state = _official_state("clean", 2, out_size=64, narrow=0.25)
    del state["stylegan_decoder.to_rgbs.1.bias"]
    with pytest.raises(UnknownArchitectureError, match="missing"):
        detect_config(state)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"arch": "bilinear"},
        {"out_size": 500},
        {"out_size": 2048},
        {"narrow": 0},
        {"work_size": 128},  # without input_residual
        {"work_size": 512, "input_residual": True},  # not below out_size
        {"work_size": 100, "input_residual": True},
        {"detail": True},  # without work_size
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        GeneratorConfig(**kwargs)


def test_a_layout_too_narrow_for_a_channel_is_refused_when_made_not_at_its_first_face() -> None:
    """It built layers of 0 channels, and failed with torch's 'expected weight to be at least 1' at the
    first forward; a layout just wide enough builds."""
    narrow = {"arch": "clean", "out_size": 1024, "channel_multiplier": 1, "num_style_feat": 32, "num_mlp": 1}
    with pytest.raises(ValueError, match="narrow 0.0625 with channel_multiplier 1 leaves a layer of the 10"):
        GeneratorConfig(**narrow, narrow=0.0625)
    net = build_generator(GeneratorConfig(**{**narrow, "out_size": 512}, narrow=0.0625))
    assert net(torch.zeros(1, 3, 512, 512), return_rgb=False)[0].shape == (1, 3, 512, 512)


def test_config_dict_round_trip() -> None:
    config = GeneratorConfig(arch="v1", out_size=128, channel_multiplier=1, narrow=0.5)
    assert GeneratorConfig.from_dict(config.to_dict()) == config
    assert GeneratorConfig.from_dict({"arch": "v1"}) == GeneratorConfig(arch="v1")  # the rest: defaults


def test_config_from_dict_rejects_unknown_keys_naming_them_and_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="unknown generator config key 'chanel_multiplier'; allowed: arch, "):
        GeneratorConfig.from_dict({"arch": "clean", "chanel_multiplier": 2})
    with pytest.raises(ValueError, match="keys 'format', 'format_version'.*channel_multiplier"):
        GeneratorConfig.from_dict({"format": "gfp-generator", "format_version": 1})


def test_default_forward_is_deterministic_and_random_noise_is_opt_in():
    torch.manual_seed(0)
    net = build_generator(GeneratorConfig(out_size=32, narrow=0.125, num_style_feat=32)).eval()
    with torch.no_grad():
        for conv in net.stylegan_decoder.style_convs:
            conv.weight.fill_(0.5)  # noise strength: make noise visible
        x = torch.rand(1, 3, 32, 32) * 2 - 1
        first, _ = net(x, return_rgb=False)
        second, _ = net(x, return_rgb=False)
        noisy, _ = net(x, return_rgb=False, randomize_noise=True)
    assert torch.equal(first, second)
    assert not torch.allclose(first, noisy)


def test_cs_sft_leaves_half_the_channels_untouched():
    from gfp.archs.cs_sft import channel_split_sft

    feat = torch.randn(2, 8, 4, 4)
    scale, shift = torch.full((2, 4, 4, 4), 2.0), torch.ones(2, 4, 4, 4)
    out = channel_split_sft(feat, scale, shift, half=True)
    assert torch.equal(out[:, :4], feat[:, :4])
    assert torch.allclose(out[:, 4:], feat[:, 4:] * 2 + 1)
    full = channel_split_sft(feat, torch.full_like(feat, 2.0), torch.ones_like(feat), half=False)
    assert torch.allclose(full, feat * 2 + 1)


def test_input_residual_adds_the_input_and_is_recognised_from_its_state_dict():
    config = GeneratorConfig(out_size=64, channel_multiplier=1, narrow=0.125, num_style_feat=32, num_mlp=1)
    with_residual = GeneratorConfig(**{**config.to_dict(), "input_residual": True})
    torch.manual_seed(0)
    plain = build_generator(config).eval()
    residual = build_generator(with_residual).eval()
    residual.load_state_dict({**plain.state_dict(), "input_residual": torch.ones(())})  # same weights
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(residual(x)[0], plain(x)[0] + x)
    assert detect_config(residual.state_dict()) == with_residual
    assert detect_config(plain.state_dict()) == config
    assert "input_residual" not in _official_state("clean", 2)  # official layouts are untouched


def test_faces_only_shares_float32_weights_and_leaves_the_generator_alone() -> None:
    from _zoo_helpers import tiny_config, tiny_generator

    from gfp.archs import FacesOnly
    from gfp.archs.stylegan2_clean import ModulatedConvBase

    generator = tiny_generator(tiny_config(), seed=0)
    faces = FacesOnly(generator)
    mine, theirs = dict(faces.generator.named_parameters()), dict(generator.named_parameters())
    assert all(mine[k].data_ptr() == theirs[k].data_ptr() and mine[k] is not theirs[k] for k in theirs)
    modes = {m.modulation_mode for m in generator.modules() if isinstance(m, ModulatedConvBase)}
    assert modes == {"auto"}  # the copy is "shared"; the original keeps its mode
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(faces(x), generator(x, return_rgb=False)[0], atol=1e-5)

    half = tiny_generator(tiny_config(), seed=0).half()
    assert next(FacesOnly(half).parameters()).dtype == torch.float32
    assert {p.dtype for p in half.parameters()} | {b.dtype for b in half.buffers()} == {torch.float16}


def test_work_size_runs_the_layers_small_and_passes_the_full_size_detail_through():
    """work_size: the face is area-shrunk for the layers, and their correction (output − shrunk input),
    enlarged bilinearly, is added to the full-size face."""
    import torch.nn.functional as F

    small = GeneratorConfig(
        out_size=64, channel_multiplier=1, narrow=0.125, num_style_feat=32, num_mlp=1, input_residual=True
    )
    full = GeneratorConfig(**{**small.to_dict(), "out_size": 256, "work_size": 64})
    torch.manual_seed(0)
    layers = build_generator(small).eval()
    net = build_generator(full).eval()
    net.load_state_dict({**layers.state_dict(), "full_size": torch.full((4,), 256.0)})  # the same layers
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        out, rgbs = net(x)
        shrunk = x.reshape(2, 3, 64, 4, 64, 4).mean((3, 5))  # 4x4 block means
        small_out, small_rgbs = layers(shrunk)
    assert out.shape == x.shape and rgbs[-1].shape[-1] == 64
    correction = F.interpolate(small_out - shrunk, size=256, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, x + correction)
    torch.testing.assert_close(rgbs[-1], small_rgbs[-1])
    assert detect_config(net.state_dict()) == full


# A small 256 px face model whose layers run at 64 px (the detail path's tests add ``detail``).
WORK_SIZE_64 = GeneratorConfig(
    out_size=256,
    work_size=64,
    channel_multiplier=1,
    narrow=0.125,
    num_style_feat=32,
    num_mlp=1,
    input_residual=True,
)


def test_detail_lets_the_layers_see_and_change_the_full_size_face():
    """detail: the full-size face, pixel-unshuffled, joins the stem, and a pixel-shuffled correction from
    the last U-Net features joins the output. With both at zero it is the plain work_size model; once
    trained, fine detail that leaves the block means alone changes what the layers do."""
    plain = WORK_SIZE_64
    torch.manual_seed(0)
    base = build_generator(plain).eval()
    net = build_generator(GeneratorConfig(**{**plain.to_dict(), "detail": True})).eval()
    net.load_state_dict(base.state_dict(), strict=False)  # the same layers; detail_in/out as built
    assert sorted(set(net.state_dict()) - set(base.state_dict())) == [
        "detail_in.bias",
        "detail_in.weight",
        "detail_out.bias",
        "detail_out.weight",
    ]
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    torch.nn.init.zeros_(net.detail_in.weight)
    torch.nn.init.zeros_(net.detail_in.bias)
    # Fine detail with zero mean in every 4x4 block: the plain model passes it through unchanged.
    fine = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(128, 128) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(net(x)[0], base(x)[0])  # nothing reaches the output through detail_out
        torch.testing.assert_close(base(x + fine)[0] - base(x)[0], fine.expand(2, 3, -1, -1))

        net.detail_out.bias.copy_(torch.linspace(-0.5, 0.5, 48))  # a constant correction per channel
        pattern = torch.nn.functional.pixel_shuffle(net.detail_out.bias.view(1, 48, 1, 1), 4)
        torch.testing.assert_close(net(x)[0], base(x)[0] + pattern.repeat(1, 1, 64, 64))

        torch.nn.init.normal_(net.detail_in.weight, std=0.1)
        torch.nn.init.normal_(net.detail_out.weight, std=0.1)
        changed = net(x + fine)[0] - net(x)[0] - fine
    assert changed.abs().mean() > 1e-3  # the fine detail reached the layers and changed their output


def test_folded_faces_are_the_pixel_unshuffled_faces():
    """``fold=True`` (the trainer's pixel loss) returns the same face as the plain forward, pixel-unshuffled
    by the shrink factor; the fold helpers are PyTorch's pixel (un)shuffle, values and gradients."""
    import torch.nn.functional as F

    from gfp.archs.gfpgan import fold_pixels, unfold_pixels

    config = GeneratorConfig(**{**WORK_SIZE_64.to_dict(), "detail": True})
    torch.manual_seed(0)
    net = build_generator(config).eval()
    torch.nn.init.normal_(net.detail_out.weight, std=0.1)  # built at zero: make the detail path count
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        folded, _ = net(x, fold=True)
        torch.testing.assert_close(folded, F.pixel_unshuffle(net(x)[0], 4))

    y = torch.randn(2, 48, 5, 7, requires_grad=True)
    weight = torch.randn(2, 3, 20, 28)
    assert torch.equal(unfold_pixels(y, 4), F.pixel_shuffle(y, 4))
    assert torch.equal(fold_pixels(weight, 4), F.pixel_unshuffle(weight, 4))
    ours = torch.autograd.grad((unfold_pixels(y, 4) * weight).sum(), y)[0]
    assert torch.equal(ours, torch.autograd.grad((F.pixel_shuffle(y, 4) * weight).sum(), y)[0])


def test_the_enlargement_traced_first_still_runs_eagerly() -> None:
    """Tracing (torch.export, as the OpenVINO conversion does) before any eager call must not leave a fake
    tensor in the enlargement's cached weights (a (factor, channels) no other test uses)."""
    import torch.nn.functional as F

    from gfp.archs.gfpgan import enlarge_folded

    class Enlarge(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return enlarge_folded(x, 3)

    x = torch.rand(1, 5, 6, 7)
    torch.export.export(Enlarge(), (x,))
    expected = F.pixel_unshuffle(F.interpolate(x, scale_factor=3, mode="bilinear", align_corners=False), 3)
    assert torch.allclose(enlarge_folded(x, 3), expected, atol=1e-6)
