"""gfp.color: the wavelet and AdaIN colour fixes, on a real face with a colour cast.

The "restored" face is a sharp face with a colour cast and darkening (what a generator that re-tints does);
its "input" is the same face blurred and noisy with the true colours. A fix must bring the restored face
back to the uncast face's colours without falling back to the blurred input.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gfp.color import COLOR_FIXES, adain_fix, color_fix, low_frequencies, wavelet_fix

FACE = Path(__file__).resolve().parents[1] / "examples" / "astronaut_lowres.png"
CAST = torch.tensor([0.82, 0.97, 1.12]).view(1, 3, 1, 1)  # per channel gain (BGR): bluer, less red
DARKEN = -0.12  # in [-1, 1] units: about 15 grey levels darker


def _tensor(bgr: np.ndarray) -> torch.Tensor:
    """uint8 BGR → (1, 3, H, W) float32 in [-1, 1], as the pipeline feeds faces."""
    return torch.from_numpy(bgr).permute(2, 0, 1)[None].float() / 127.5 - 1


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.clamp(-1, 1) - b) / 2).pow(2).mean())  # on [0, 1]
    return 10 * np.log10(1 / mse)


@pytest.fixture(scope="module")
def faces() -> dict[str, torch.Tensor]:
    clean = cv2.imread(str(FACE), cv2.IMREAD_COLOR)
    rng = np.random.default_rng(0)
    blurred = cv2.GaussianBlur(clean, (0, 0), 2.0).astype(np.float32) + rng.normal(0, 6, clean.shape)
    source = np.clip(blurred, 0, 255).round().astype(np.uint8)
    uncast = _tensor(clean)
    return {
        "uncast": uncast,
        "source": _tensor(source),
        "restored": ((uncast + 1) * CAST - 1 + DARKEN).clamp(-1, 1),
    }


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_a_colour_cast_face_is_corrected(faces: dict[str, torch.Tensor], method: str) -> None:
    fixed = color_fix(faces["restored"], faces["source"], method)
    cast_db = _psnr(faces["restored"], faces["uncast"])
    fixed_db = _psnr(fixed, faces["uncast"])
    input_db = _psnr(faces["source"], faces["uncast"])
    assert fixed_db > cast_db + 5  # measured: cast 20.9 dB; wavelet 29.3, adain 28.1
    assert fixed_db > input_db + 5  # and sharper than the blurred input it took its colours from (20.3)
    mean_error = (fixed.clamp(-1, 1) - faces["uncast"]).mean(dim=(2, 3)).abs().max()
    assert float(mean_error) * 127.5 < 1.5  # every channel's mean within 1.5 grey levels (cast: 15+)


def test_wavelet_keeps_the_restored_detail_and_takes_the_input_colours(
    faces: dict[str, torch.Tensor],
) -> None:
    restored, source = faces["restored"], faces["source"]
    fixed = wavelet_fix(restored, source)
    detail = restored - low_frequencies(restored)
    torch.testing.assert_close(fixed - low_frequencies(source), detail, rtol=0, atol=1e-5)
    # the coarse part is a blur: a flat image stays flat, so the fix of a flat input is flat there too
    flat = torch.full_like(source, 0.25)
    torch.testing.assert_close(low_frequencies(flat), flat, rtol=0, atol=1e-6)


def test_adain_matches_each_channels_mean_and_spread(faces: dict[str, torch.Tensor]) -> None:
    fixed = adain_fix(faces["restored"], faces["source"])
    want = faces["source"]
    torch.testing.assert_close(fixed.mean(dim=(2, 3)), want.mean(dim=(2, 3)), rtol=0, atol=1e-5)
    torch.testing.assert_close(fixed.std(dim=(2, 3)), want.std(dim=(2, 3)), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_each_face_of_a_batch_is_fixed_against_its_own_input(
    faces: dict[str, torch.Tensor], method: str
) -> None:
    restored = torch.cat([faces["restored"], faces["restored"].flip(3)])
    source = torch.cat([faces["source"], -faces["source"]])
    together = color_fix(restored, source, method)
    for i in range(2):
        alone = color_fix(restored[i : i + 1], source[i : i + 1], method)
        torch.testing.assert_close(together[i : i + 1], alone, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_a_gray_input_gives_a_gray_face(faces: dict[str, torch.Tensor], method: str) -> None:
    """A gray photo saved in colour has no colour to give: the generator's tint of the fine detail stayed
    (the wavelet fix takes only the coarse colour, AdaIN works per channel). Its face comes out gray, the
    colour face beside it in the batch as before."""
    gray = faces["source"].mean(1, keepdim=True).expand(-1, 3, -1, -1)
    restored = torch.cat([faces["restored"]] * 2)
    fixed = color_fix(restored, torch.cat([gray, faces["source"]]), method)
    ungrayed = (wavelet_fix if method == "wavelet" else adain_fix)(restored[:1], gray)
    torch.testing.assert_close(fixed[:1], ungrayed.mean(1, keepdim=True).expand(-1, 3, -1, -1))
    assert float((ungrayed - ungrayed.mean(1, keepdim=True)).abs().max()) > 0.01  # it had colour
    torch.testing.assert_close(fixed[1:], color_fix(restored[1:], faces["source"], method), rtol=0, atol=0)


def test_a_face_that_already_has_its_input_colours_is_left_alone(faces: dict[str, torch.Tensor]) -> None:
    face = faces["uncast"]
    torch.testing.assert_close(wavelet_fix(face, face), face, rtol=0, atol=1e-5)
    torch.testing.assert_close(adain_fix(face, face), face, rtol=0, atol=1e-4)
    assert color_fix(face, faces["source"], "none") is face


def test_bad_method_and_sizes_are_clear_errors(faces: dict[str, torch.Tensor]) -> None:
    assert COLOR_FIXES == ("none", "wavelet", "adain")
    with pytest.raises(
        ValueError, match="unknown colour fix 'histogram'; choose one of: none, wavelet, adain"
    ):
        color_fix(faces["restored"], faces["source"], "histogram")
    with pytest.raises(ValueError, match="the input at the restored size"):
        color_fix(faces["restored"], faces["source"][:, :, :64, :64], "wavelet")
