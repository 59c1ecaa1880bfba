"""Whole-pipeline parity with the official GFPGAN stack on real photos (identical weights on both sides).

Official side: ``GFPGANer.enhance`` (facexlib FaceRestoreHelper with ParseNet + the official
GFPGANv1Clean at full size, fixed noise), optionally with realesrgan's RealESRGANer for the background.
Ours: ``gfp.pipeline.Restorer``, in PyTorch and with the OpenVINO backend. Weights: a seeded random
full-size generator and ParseNet, the real RetinaFace MobileNet-0.25 and realesr-animevideov3 (see
tests/_official_pipeline.py).

Full-size networks on CPU are slow (~10 s per face per side), so CI runs two small photos (one face with a
Lanczos background, two faces with the real Real-ESRGAN background); ``GFP_PARITY_ALL=1`` adds every
photo of the shared data with a Lanczos background.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from _official_pipeline import make_weights, official_restorer, our_options, psnr
from _zoo_helpers import shared_data_dir

from gfp.devices import openvino_installed
from gfp.pipeline import Restorer

MIN_PSNR_DB = 45.0
CI_CASES = [("codeformer_04.jpg", False), ("deepface_img62.jpg", True)]
LOGIC_MIN_PSNR_DB = 70.0
LOGIC_CASES = ["gfpgan_Blake_Lively.jpg"]  # 2 faces; among the lowest of the sweep below


def _cases() -> list[tuple[str, bool]]:
    if not os.environ.get("GFP_PARITY_ALL"):
        return CI_CASES
    root = shared_data_dir()
    photos = sorted(p.name for p in (root / "photos").iterdir()) if (root / "photos").is_dir() else []
    return CI_CASES + [(name, False) for name in photos if (name, False) not in CI_CASES]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    return make_weights(tmp_path_factory.mktemp("parity_weights"), shared_data)


@pytest.fixture(scope="module", params=["torch", "openvino"])
def ours(weights: Path, request: pytest.FixtureRequest) -> Restorer:
    """Our pipeline in each backend (the fast paths are what users run: they must keep parity too)."""
    if request.param == "openvino" and not openvino_installed():
        pytest.skip("openvino not installed")
    return Restorer(weights_dir=weights, device="cpu", backend=request.param)


@pytest.fixture(scope="module")
def official(weights: Path):
    made: dict[bool, object] = {}

    def get(background: bool):
        if background not in made:
            made[background] = official_restorer(weights, upscale=2, background=background)
        return made[background]

    return get


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.usefixtures("offline")  # nothing to download; converted OpenVINO models go to a temporary cache
@pytest.mark.parametrize(("photo", "background"), _cases())
def test_restored_image_matches_official(
    shared_data: Path, weights: Path, ours: Restorer, official, photo: str, background: bool
) -> None:
    img = cv2.imread(str(shared_data / "photos" / photo), cv2.IMREAD_COLOR)
    _, official_faces, official_img = official(background).enhance(img, paste_back=True)
    result = ours.restore(img, our_options(weights, upscale=2, background=background))
    assert result.face_mask == "parsenet"
    assert len(result.restored_faces) == len(official_faces)
    assert result.image.shape == official_img.shape
    for mine, theirs in zip(result.restored_faces, official_faces, strict=True):
        assert psnr(mine, theirs) >= MIN_PSNR_DB
    assert psnr(result.image, official_img) >= MIN_PSNR_DB


@pytest.fixture(scope="module")
def narrow_weights(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    return make_weights(tmp_path_factory.mktemp("narrow_weights"), shared_data, narrow=True)


@pytest.mark.shared
@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize("photo", LOGIC_CASES)
def test_the_pipeline_around_the_generator_matches_official_to_the_rounding(
    shared_data: Path, narrow_weights: Path, photo: str
) -> None:
    """Detection, alignment, parsing and paste-back to the last grey level: with a narrow generator (the
    official code at 1/16 of its cost) in float32 PyTorch on both sides, the images differ by at most one
    level almost everywhere (we round the final pixels where the official code truncates them). The 45 dB
    guard above leaves room for the fast precisions; this one catches any change in the logic around the
    generator (a sweep of all 74 shared photos this way gave 73.7-84.2 dB)."""
    img = cv2.imread(str(shared_data / "photos" / photo), cv2.IMREAD_COLOR)
    official = official_restorer(narrow_weights, upscale=2, narrow=True)
    _, official_faces, official_img = official.enhance(img, paste_back=True)
    ours = Restorer(weights_dir=narrow_weights, device="cpu", backend="torch", bf16=False)
    result = ours.restore(img, our_options(narrow_weights, upscale=2))
    assert result.face_mask == "parsenet"
    assert len(result.restored_faces) == len(official_faces) > 0
    assert result.image.shape == official_img.shape
    beyond_rounding = np.abs(result.image.astype(int) - official_img.astype(int)) > 1
    assert beyond_rounding.mean() < 1e-4
    assert psnr(result.image, official_img) >= LOGIC_MIN_PSNR_DB
