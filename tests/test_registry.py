"""gfp.registry: families own their files, builds, recognition and labels; a new family shows up everywhere.

The made-up family "toy" (one tiny SRVGG x4 upsampler) is registered in one place (the fixture) and is then
offered by the CLI, the app and the pipeline without touching them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from _zoo_helpers import save_blind_detector, save_tiny_generator

from gfp import registry
from gfp.archs import UnknownArchitectureError
from gfp.background import BackgroundUpsampler
from gfp.pipeline import RestoreOptions, Restorer
from gfp.registry import ModelEntry, ModelFamily, RealESRGANConfig, Supports

TOY = ModelEntry(
    "toy-x4",
    "toy-x4.pth",
    None,
    "upsampler",
    config=RealESRGANConfig("srvgg", scale=4, depth=2, num_feat=8),
    note="made up for a test: not verified",
    label="Toy upscaler x4",
    supports=Supports(scale=4),
)


@pytest.fixture
def toy() -> Iterator[ModelFamily]:
    """The made-up family, registered for one test."""
    family = registry.register(
        ModelFamily("toy", "upsampler", "Toy", (TOY,), build=registry.REALESRGAN.build)
    )
    yield family
    registry.unregister("toy")


def test_gfp_families_labels_and_defaults() -> None:
    assert {"gfpgan", "retinaface", "parsenet", "realesrgan"} <= set(registry.FAMILIES)
    assert registry.choices("generator") == [
        ("GFPGAN v1.4", "v1.4"),
        ("GFPGAN v1.3", "v1.3"),
        ("GFPGAN v1.2", "v1.2"),
        ("GFPGAN v1 (paper)", "v1"),
    ]
    assert registry.choice_names("detector") == ["retinaface_resnet50", "retinaface_mobile0.25"]
    assert registry.choice_names("upsampler")[0] == "realesrgan"
    assert registry.choice_names("upsampler")[-1] == "none"
    assert registry.label("realesr-animevideov3") == "Real-ESRGAN animevideov3 (fast)"
    assert registry.label("owner/repo") == "owner/repo"
    for kind, name in registry.DEFAULTS.items():
        assert name in registry.choice_names(kind), kind
    assert registry.members("upsampler", "realesrgan") == ("RealESRGAN_x2plus", "realesr-general-x4v3")
    assert registry.members("upsampler", "none") == ()
    with pytest.raises(ValueError, match="unknown detector 'yolo'; choose one of: retinaface_resnet50"):
        registry.members("detector", "yolo")
    assert all(e.license for e in registry.MODEL_ZOO.values())


def test_supports_say_what_runs_in_half_precision() -> None:
    half = torch.float16
    assert half in registry.MODEL_ZOO["v1.4"].supports.precisions
    assert half in registry.MODEL_ZOO["realesr-general-x4v3"].supports.precisions
    assert half not in registry.MODEL_ZOO["retinaface_resnet50"].supports.precisions
    assert half not in registry.MODEL_ZOO["parsenet"].supports.precisions
    assert [registry.MODEL_ZOO[n].supports.scale for n in registry.members("upsampler", "realesrgan")] == [
        2,
        4,
    ]
    assert (
        registry.MODEL_ZOO["v1"].supports.input_size
        == registry.MODEL_ZOO["parsenet"].supports.input_size
        == 512
    )


@pytest.mark.parametrize(
    "name",
    ["v1", "v1.4", "retinaface_resnet50", "retinaface_mobile0.25", "parsenet", "RealESRGAN_x2plus",
     "realesr-general-x4v3", "realesr-animevideov3"],
)  # fmt: skip
def test_each_family_recognises_the_networks_it_builds(name: str) -> None:
    entry = registry.MODEL_ZOO[name]
    family, config = registry.recognise(registry.build(entry).state_dict())
    assert family.name == entry.family
    assert config == (entry.config if entry.config is not None else "parsenet")


def test_unknown_state_dict_is_named_clearly() -> None:
    with pytest.raises(UnknownArchitectureError, match="not a network of a known family.*first keys: w"):
        registry.recognise({"w": torch.zeros(2)})


def test_names_cannot_be_taken_twice(toy: ModelFamily) -> None:
    with pytest.raises(ValueError, match="names already taken \\(toy-x4\\)"):
        registry.register(ModelFamily("toy2", "upsampler", "Toy 2", (TOY,), build=registry.REALESRGAN.build))
    with pytest.raises(ValueError, match="already taken \\(v1.4\\)"):
        registry.register(ModelFamily("v1.4", "upsampler", "Oops", (), build=registry.REALESRGAN.build))
    assert registry.MODEL_ZOO["toy-x4"].family == "toy" and registry.zoo_entry("toy-x4.pth").name == "toy-x4"


def test_a_new_family_is_offered_by_the_cli_and_the_app(toy: ModelFamily) -> None:
    from gfp.app.settings import parse_args
    from gfp.app.ui import build_app
    from gfp.cli import build_parser

    assert build_parser().parse_args(["--bg_upsampler", "toy-x4"]).bg_upsampler == "toy-x4"
    assert "toy-x4" in build_parser().format_help()
    settings = parse_args(["--bg-upsampler", "toy-x4", "--device", "cpu"])
    assert settings.background == "toy-x4"
    demo = build_app(settings)
    radios = [b for b in demo.blocks.values() if getattr(b, "label", None) == "Background upsampler"]
    assert ("Toy upscaler x4", "toy-x4") in radios[0].choices and radios[0].value == "toy-x4"
    assert RestoreOptions(bg_upsampler="toy-x4").background_on("cpu") == "toy-x4"
    registry.unregister("toy")
    try:
        with pytest.raises(ValueError, match="unknown background upsampler 'toy-x4'"):
            RestoreOptions(bg_upsampler="toy-x4")
    finally:
        registry.register(toy)


@pytest.mark.usefixtures("offline")
def test_a_new_family_restores_through_the_pipeline(toy: ModelFamily, tmp_path: Path) -> None:
    torch.manual_seed(3)
    net = registry.build(registry.MODEL_ZOO["toy-x4"])
    torch.save({"params": net.state_dict()}, tmp_path / TOY.file_name)
    save_tiny_generator(tmp_path / "tiny")
    save_blind_detector(tmp_path / registry.MODEL_ZOO["retinaface_mobile0.25"].file_name)
    options = RestoreOptions(
        version=str(tmp_path / "tiny"), bg_upsampler="toy-x4", detector="retinaface_mobile0.25", upscale=2
    )
    yy, xx = np.mgrid[0:24, 0:32]
    img = np.dstack([xx * 6, yy * 8, (xx + yy) * 3]).astype(np.uint8)
    result = Restorer(tmp_path, device="cpu").restore(img, options)
    expected = BackgroundUpsampler({4: net}, tile=options.bg_tile).upsample(img, 2)
    np.testing.assert_array_equal(result.image, expected)


def test_the_default_background_is_chosen_per_device() -> None:
    options = RestoreOptions()
    assert options.background_on("cpu") == "realesr-general-x4v3"  # measured cheaper on a 2-core CPU
    assert options.background_on(torch.device("cuda")) == "realesrgan"  # the official choice on a GPU
    assert RestoreOptions(bg_upsampler="none").background_on("cuda") == "none"
    with pytest.raises(ValueError, match="unknown background upsampler 'nope'"):
        RestoreOptions(bg_upsampler="nope")
