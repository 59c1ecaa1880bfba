"""gfp.faces: anchors, detection and alignment equal to facexlib's RetinaFace + FaceRestoreHelper."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import pytest
import torch
from conftest import MOBILE

from gfp.faces import (
    BORDER_VALUE,
    _priors,
    align_faces,
    alignment_matrix,
    detect_faces,
    face_template,
)
from gfp.loading import load_network
from gfp.registry import build_detector


@pytest.mark.parametrize(("height", "width"), [(37, 53), (64, 64), (225, 301)])
def test_priors_equal_facexlib_priorbox(height: int, width: int) -> None:
    from facexlib.detection.retinaface import generate_config
    from facexlib.detection.retinaface_utils import PriorBox

    expected = PriorBox(generate_config("mobile0.25"), image_size=(height, width)).forward()
    assert torch.equal(_priors(height, width), expected)


def test_unknown_detector_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown face detector 'yolo'"):
        build_detector("yolo")


def test_detect_faces_rejects_non_bgr() -> None:
    with pytest.raises(ValueError, match="HxWx3"):
        detect_faces(build_detector("retinaface_mobile0.25"), np.zeros((8, 8), np.uint8))


def test_alignment_maps_landmarks_onto_template() -> None:
    # Landmarks = template rotated by 10 degrees, scaled by 0.5 and shifted: the fit must undo exactly that.
    angle = np.deg2rad(10)
    rot = 0.5 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = (face_template(128) @ rot.T + [40.0, 25.0]).astype(np.float32)
    matrix = alignment_matrix(landmarks, 128)
    mapped = np.hstack([landmarks, np.ones((5, 1), np.float32)]) @ matrix.T
    np.testing.assert_allclose(mapped, face_template(128), atol=1e-3)


def test_align_fills_outside_with_official_gray() -> None:
    img = np.full((20, 20, 3), 7, np.uint8)
    landmarks = face_template(512)[None].astype(np.float32) * 0.05  # a face in the top-left corner
    crops, matrices = align_faces(img, landmarks, face_size=64)
    assert crops[0].shape == (64, 64, 3) and crops[0].dtype == np.uint8 and matrices[0].shape == (2, 3)
    assert tuple(crops[0][-1, -1]) == BORDER_VALUE  # maps to (25, 25): outside the 20x20 image
    assert tuple(crops[0][32, 32]) == (7, 7, 7)


@pytest.fixture(scope="module")
def mobile(shared_data: Path) -> torch.nn.Module:
    net = build_detector("retinaface_mobile0.25")
    return load_network(net, shared_data / "weights" / MOBILE)


def _official_helper(shared_data: Path):
    """facexlib's FaceRestoreHelper with the real MobileNet detector (its parser is never run here)."""
    import facexlib.detection
    from facexlib.utils.face_restoration_helper import FaceRestoreHelper

    weights = str(shared_data / "weights" / MOBILE)
    with (
        mock.patch.object(facexlib.detection, "load_file_from_url", lambda **kw: weights),
        mock.patch("facexlib.utils.face_restoration_helper.init_parsing_model", lambda **kw: None),
    ):
        return FaceRestoreHelper(2, det_model="retinaface_mobile0.25", device=torch.device("cpu"))


@pytest.mark.shared
@pytest.mark.parametrize("only_center_face", [False, True])
@pytest.mark.parametrize("photo", ["codeformer_01.jpg", "codeformer_03.jpg"])
def test_detection_and_crops_equal_official(
    shared_data: Path, mobile: torch.nn.Module, photo: str, only_center_face: bool
) -> None:
    img = cv2.imread(str(shared_data / "photos" / photo), cv2.IMREAD_COLOR)
    helper = _official_helper(shared_data)
    helper.read_image(img)
    helper.get_face_landmarks_5(only_center_face=only_center_face, eye_dist_threshold=5)
    helper.align_warp_face()

    found = detect_faces(mobile, img, only_center_face=only_center_face)
    crops, matrices = align_faces(img, found.landmarks)
    official_boxes = np.array(helper.det_faces).reshape(-1, 5)  # a bare box with only_center_face
    assert len(found) == len(official_boxes) == (1 if only_center_face else len(found)) > 0
    np.testing.assert_array_equal(found.boxes, official_boxes)
    np.testing.assert_array_equal(found.landmarks, np.array(helper.all_landmarks_5).reshape(-1, 5, 2))
    for ours, theirs in zip(crops, helper.cropped_faces, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    for ours, theirs in zip(matrices, helper.affine_matrices, strict=True):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.shared
def test_no_face_in_a_synthetic_image(mobile: torch.nn.Module) -> None:
    yy, xx = np.mgrid[0:120, 0:160]
    img = np.dstack([xx, yy, (xx + yy) // 2]).astype(np.uint8)
    found = detect_faces(mobile, img)
    assert len(found) == 0 and found.boxes.shape == (0, 5) and found.landmarks.shape == (0, 5, 2)


@pytest.mark.shared
def test_detection_on_a_shrunk_copy_scales_back_and_finds_faces_too_big_at_full_size(
    shared_data: Path, mobile: torch.nn.Module
) -> None:
    img = cv2.imread(str(shared_data / "photos" / "gfpgan_10045.png"), cv2.IMREAD_COLOR)  # 783x1146
    full = detect_faces(mobile, img)
    small = detect_faces(mobile, img, max_side=1024)
    assert len(full) == len(small) == 3
    by_x = lambda d: d.landmarks[np.argsort(d.boxes[:, 0])]  # noqa: E731 - order may differ by score
    np.testing.assert_allclose(by_x(small), by_x(full), atol=2.5)  # measured <= 1.5 px at full scale
    unchanged = detect_faces(mobile, img, max_side=1146)  # already within: the full-size pass itself
    np.testing.assert_array_equal(unchanged.landmarks, full.landmarks)

    big = cv2.imread(str(shared_data / "photos" / "deepface_img40.jpg"), cv2.IMREAD_COLOR)  # 3061x4600
    assert len(detect_faces(mobile, big)) == 0  # one face, larger than the biggest anchor at full size
    found = detect_faces(mobile, big, max_side=2048)
    assert len(found) == 1
    x1, y1, x2, y2 = found.boxes[0, :4]
    assert 0 <= x1 < x2 <= big.shape[1] and 0 <= y1 < y2 <= big.shape[0] and x2 - x1 > 512  # full-size pixels
