"""gfp.paste: inverse transform, masks and blending against facexlib's paste_faces_to_input_image."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest
import torch
from facexlib.parsing.parsenet import ParseNet
from facexlib.utils.face_restoration_helper import FaceRestoreHelper

from gfp.archs.parsenet import ParseNet as OurParseNet
from gfp.paste import (
    color_part,
    compose,
    face_placements,
    inverse_affine,
    is_gray,
    max_value_of,
    parse_masks,
    paste_back,
    paste_faces,
)


def _matrix(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    """An image → crop similarity transform like the alignment produces."""
    a = np.deg2rad(angle_deg)
    return np.array(
        [[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]], np.float64
    )


def _scene(seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:90, 0:120]
    img = np.dstack([xx * 2, yy * 2, (xx + yy)]).astype(np.uint8)
    faces = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(2)]
    faces = [cv2.GaussianBlur(f, (7, 7), 0) for f in faces]
    matrices = [_matrix(8, 2.5, -30, -20), _matrix(-15, 3.0, -150, -60)]
    return img, faces, matrices


def _official_paste(img, faces, matrices, upscale, parser=None):
    """facexlib's paste_faces_to_input_image on a helper built without its detector/parser downloads."""
    helper = FaceRestoreHelper.__new__(FaceRestoreHelper)
    helper.upscale_factor = upscale
    helper.face_size = (faces[0].shape[1], faces[0].shape[0])
    helper.input_img = img
    helper.restored_faces = list(faces)
    helper.affine_matrices = list(matrices)
    helper.inverse_affine_matrices = []
    helper.use_parse = parser is not None
    helper.face_parse = parser
    helper.device = torch.device("cpu")
    helper.get_inverse_affine()
    return helper.paste_faces_to_input_image()


def _upscaled(img: np.ndarray, upscale: float) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.resize(img, (int(w * upscale), int(h * upscale)), interpolation=cv2.INTER_LANCZOS4)


def test_inverse_affine_scales_and_offsets_like_official() -> None:
    m = _matrix(10, 2.0, -5, 7)
    np.testing.assert_allclose(inverse_affine(m, 1), cv2.invertAffineTransform(m))
    expected = cv2.invertAffineTransform(m) * 3
    expected[:, 2] += 1.5
    np.testing.assert_allclose(inverse_affine(m, 3), expected)


@pytest.mark.parametrize("upscale", [1, 2, 3])
def test_square_mask_paste_matches_official(upscale: int) -> None:
    img, faces, matrices = _scene()
    official = _official_paste(img, faces, matrices, upscale)
    ours = paste_faces(_upscaled(img, upscale).astype(np.float32), faces, matrices, upscale)
    ours = np.clip(ours, 0, 255).astype(np.uint8)  # the official result is truncated, not rounded
    diff = np.abs(ours.astype(int) - official.astype(int))
    assert ours.shape == official.shape
    assert (
        diff.mean() < 0.01 and diff.max() <= 3
    )  # per-face warps sample OpenCV's 1/32 px grid a bit differently


def test_parse_mask_paste_matches_official() -> None:
    img, faces, matrices = _scene(1)
    torch.manual_seed(0)
    official_parser = ParseNet(in_size=512, out_size=512, parsing_ch=19, base_ch=4, ch_range=[4, 8]).eval()
    official = _official_paste(
        img, [cv2.resize(f, (512, 512)) for f in faces], [m * 4 for m in matrices], 2, official_parser
    )
    parser = OurParseNet(base_ch=4, ch_range=(4, 8)).eval()
    parser.load_state_dict(official_parser.state_dict(), strict=True)
    faces512 = [cv2.resize(f, (512, 512)) for f in faces]
    masks = parse_masks(parser, faces512, batch_size=2)
    assert all(m.shape == (512, 512) and m.min() >= 0 and m.max() <= 1 for m in masks)
    assert any(m.max() > 0.5 for m in masks)  # the random parser marks some face labels
    ours = paste_faces(_upscaled(img, 2).astype(np.float32), faces512, [m * 4 for m in matrices], 2, masks)
    ours = np.clip(ours, 0, 255).astype(np.uint8)
    diff = np.abs(ours.astype(int) - official.astype(int))
    assert diff.mean() < 0.01 and diff.max() <= 3


def test_later_faces_win_where_faces_overlap() -> None:
    img = np.zeros((80, 80, 3), np.uint8)
    m = _matrix(0, 2.0, -20, -20)
    first, second = np.full((128, 128, 3), 50, np.uint8), np.full((128, 128, 3), 200, np.uint8)
    out = paste_faces(img.astype(np.float32), [first, second], [m, m], 1)
    assert out[42, 42, 0] == pytest.approx(200, abs=0.5)
    out = paste_faces(img.astype(np.float32), [second, first], [m, m], 1)
    assert out[42, 42, 0] == pytest.approx(50, abs=0.5)


def test_face_scale_puts_8bit_faces_on_a_16bit_background() -> None:
    background = np.full((80, 80, 3), 1000.0, np.float32)
    face = np.full((128, 128, 3), 255, np.uint8)
    out = paste_faces(background, [face], [_matrix(0, 2.0, -20, -20)], 1, face_scale=65535 / 255)
    assert out[42, 42, 0] == pytest.approx(65535, rel=1e-4)
    assert out[2, 2, 0] == 1000.0  # far from the face: untouched


def test_bad_arguments_are_clear_errors() -> None:
    face = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="float32"):
        paste_faces(np.zeros((8, 8, 3), np.uint8), [face], [_matrix(0, 1, 0, 0)], 1)
    with pytest.raises(ValueError, match="one matrix"):
        paste_faces(np.zeros((8, 8, 3), np.float32), [face], [], 1)


def _whole_canvas_paste(img, upscaled, faces, matrices, masks, upscale):
    """The photo paste as a float32 canvas of the whole output, then rounded: the reference formula."""
    max_value = max_value_of(img)
    alpha = upscaled[:, :, 3] if upscaled.ndim == 3 and upscaled.shape[2] == 4 else None
    canvas = color_part(upscaled).astype(np.float32)
    paste_faces(canvas, faces, matrices, upscale, masks, face_scale=max_value / 255.0)
    return compose(canvas, alpha, is_gray(img), img.dtype, max_value)


@pytest.mark.parametrize("layout", ["bgr", "gray", "bgra", "gray_alpha", "16bit"])
@pytest.mark.parametrize("upscale", [1, 2.5])
def test_photo_paste_equals_the_whole_canvas_formula(layout: str, upscale: float) -> None:
    """Blending only the faces' boxes gives the output of a whole-image float32 canvas, value for value:
    overlapping faces, a face over the edge, a face apart, with and without masks; and when the boxes
    together cover the whole output."""
    rng = np.random.default_rng(3)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), (5, 5), 0)
    gray = bgr[:, :, 1]
    img = {
        "bgr": bgr,
        "gray": gray.copy(),
        "bgra": np.dstack([bgr, bgr[:, :, 0]]),
        "gray_alpha": np.dstack([gray, gray, gray, bgr[:, :, 0]]),
        "16bit": bgr.astype(np.uint16) * 257 + 100,
    }[layout]
    upscaled = _upscaled(img, upscale)
    faces = [cv2.GaussianBlur(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), (5, 5), 0) for _ in range(4)]
    matrices = [
        _matrix(10, 2.0, -100, -60),
        _matrix(-5, 2.2, -162, -43),  # overlaps the first
        _matrix(20, 3.0, -592, -929),  # over the bottom-right edge
        _matrix(0, 4.0, -1150, 20),  # apart, at the top right
    ]
    boxes = [box for _, box, _ in face_placements(faces, matrices, upscale, *upscaled.shape[1::-1])]
    assert sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) < upscaled.shape[0] * upscaled.shape[1]
    masks = [cv2.GaussianBlur(rng.random((64, 64)), (9, 9), 0) for _ in faces]
    big = [_matrix(0, 0.25, 0, 0)] * 2  # two faces over the whole output: one canvas of it
    # the first overlaps the third only: the second, apart, is rounded after the first, in order
    later = [faces[0], faces[2], faces[1], faces[3]], [matrices[0], matrices[2], matrices[1], matrices[3]]
    cases = ((faces, matrices, None), (faces, matrices, masks), (faces[:2], big, None), (*later, None))
    for f, m, k in cases:
        expected = _whole_canvas_paste(img, upscaled, f, m, k, upscale)
        out = paste_back(img, upscaled, f, m, k, upscale)
        assert out.dtype == expected.dtype
        np.testing.assert_array_equal(out, expected)
    assert paste_back(img, upscaled, [], [], None, upscale) is not upscaled  # a copy, never the input


def test_photo_paste_makes_no_float_copy_of_the_whole_output() -> None:
    """A face pasted into a large output costs memory near the output's own size, not the 3 x 12 bytes a
    pixel that a float32 canvas of it and its rounding took (36 MB here, against a 3 MB image)."""
    upscaled = np.full((1000, 1000, 3), 90, np.uint8)
    face = np.full((64, 64, 3), 200, np.uint8)
    tracemalloc.start()
    try:
        out = paste_back(upscaled, upscaled, [face], [_matrix(0, 1.0, -100, -100)], None, 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out[130, 130, 0] == 200 and out[900, 900, 0] == 90
    assert peak < 2 * upscaled.nbytes


def test_photo_paste_keeps_no_float_box_of_a_face_no_later_face_overlaps() -> None:
    """Faces apart from each other are rounded into the output one by one: the float32 canvases of their
    boxes (12 bytes a pixel each) are not all held until the last face is blended."""
    upscaled = np.full((1000, 1000, 3), 90, np.uint8)
    faces = [np.full((64, 64, 3), 200, np.uint8)] * 4
    matrices = [_matrix(0, 1.0, -x, -y) for x, y in ((100, 100), (600, 100), (100, 600), (600, 600))]
    boxes = [box for _, box, _ in face_placements(faces, matrices, 1, 1000, 1000)]
    box_bytes = max((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) * 12
    tracemalloc.start()
    try:
        out = paste_back(upscaled, upscaled, faces, matrices, None, 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out[130, 130, 0] == 200 and out[630, 630, 0] == 200
    assert peak < upscaled.nbytes + 5 * box_bytes  # one box and its blending temporaries at a time
