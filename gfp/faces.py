"""Face detection (RetinaFace, 5 landmarks) and alignment to the FFHQ template.

This reproduces what the official pipeline does through facexlib's ``FaceRestoreHelper``
(``get_face_landmarks_5`` + ``align_warp_face``) as plain functions over facexlib's detector *network*
(reimplemented in :mod:`gfp.archs.retinaface`, so neither facexlib nor torchvision is imported):
no per-image state lives on any object, so one detector can serve many threads. Preprocessing, decoding,
thresholds and the warp settings are the official ones, so that given the same weights our crops equal
the official crops.

Networks are neither built nor loaded here: :func:`gfp.registry.build_detector` builds a registry detector
and :mod:`gfp.loading` loads its weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from gfp.memory import available_memory, size_text
from gfp.messages import OptionError
from gfp.selection import center_face

FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ]
)
"""Where the 5 landmarks (left eye, right eye, nose, left and right mouth corner) sit in a 512 FFHQ face."""

CONF_THRESHOLD = 0.97
"""Detection score threshold the official helper passes to RetinaFace."""
NMS_THRESHOLD = 0.4
EYE_DIST_THRESHOLD = 5.0
"""Faces whose eyes are closer than this many pixels (side or tiny faces) are skipped, as officially."""
DETECT_BYTES_PER_PIXEL = {"resnet50": 240, "mobile0.25": 64}
"""Memory a float32 detection on the CPU takes beyond the image, in bytes per pixel detected on, by RetinaFace
backbone (measured at 6 and 12 MP: 237-238 and 62-63; README, "Speed", peak memory)."""


class DetectionMemoryError(OptionError, MemoryError):
    """A detection that would not fit in the memory left, refused before it starts; said with a
    ``detect_max_side`` (a multiple of 256) whose detection takes at most 3/4 of that memory, leaving some
    for the rest of the restore, in each front end's words for that option (see
    :class:`~gfp.messages.OptionError`)."""


BORDER_VALUE = (135, 133, 132)
"""Gray fill for the parts of an aligned crop that fall outside the image (official value)."""

_BGR_MEAN = (104.0, 117.0, 123.0)
_VARIANCE = (0.1, 0.2)
_MIN_SIZES = ((16, 32), (64, 128), (256, 512))
_STEPS = (8, 16, 32)


@dataclass(frozen=True)
class Detections:
    """Faces found in one image, in the official order (descending score, after NMS)."""

    boxes: np.ndarray
    """(N, 5) float32: x1, y1, x2, y2, score."""
    landmarks: np.ndarray
    """(N, 5, 2) float32: left eye, right eye, nose, left mouth corner, right mouth corner (x, y)."""

    def __len__(self) -> int:
        return len(self.boxes)


def _priors(height: int, width: int) -> torch.Tensor:
    """RetinaFace anchors (cx, cy, w, h), normalised, in facexlib PriorBox order; vectorised but equal."""
    rows = []
    for step, min_sizes in zip(_STEPS, _MIN_SIZES, strict=True):
        fh, fw = -(-height // step), -(-width // step)
        cy = ((np.arange(fh, dtype=np.float64) + 0.5) * step) / height
        cx = ((np.arange(fw, dtype=np.float64) + 0.5) * step) / width
        grid_y, grid_x = np.meshgrid(cy, cx, indexing="ij")
        per_size = [
            np.stack(
                [grid_x, grid_y, np.full_like(grid_x, m / width), np.full_like(grid_x, m / height)], axis=-1
            )
            for m in min_sizes
        ]
        rows.append(np.stack(per_size, axis=2).reshape(-1, 4))
    return torch.from_numpy(np.concatenate(rows).astype(np.float32))


def _decode(loc: torch.Tensor, ldm: torch.Tensor, priors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Undo the SSD box/landmark encoding (same arithmetic order as facexlib's decode/decode_landm)."""
    centers, sizes = priors[:, :2], priors[:, 2:]
    shifted = centers + loc[:, :2] * _VARIANCE[0] * sizes
    boxes = torch.cat((shifted, sizes * torch.exp(loc[:, 2:] * _VARIANCE[1])), 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    points = torch.cat([centers + ldm[:, 2 * i : 2 * i + 2] * _VARIANCE[0] * sizes for i in range(5)], dim=1)
    return boxes, points


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; the indices of the kept boxes, by descending score (int64).

    Returns what ``torchvision.ops.nms`` returns for the same float32 boxes on the CPU, without importing
    torchvision: boxes are visited by a *stable* descending sort of the scores (tied boxes keep their
    input order), areas and intersections are float32 without "+1", and a box is dropped when its IoU with
    a kept one exceeds ``iou_threshold`` compared in float64 (C++ compares the float IoU with a double).
    A 0/0 IoU (two empty boxes) is NaN and suppresses nothing, as there.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-np.asarray(scores, dtype=np.float32), kind="stable")
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1 :]
        rest = rest[~suppressed[rest]]
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou.astype(np.float64) > float(iou_threshold)]] = True
    return np.array(keep, dtype=np.int64)


def check_detect_memory(per_pixel: int | None, width: int, height: int, full_w: int, full_h: int) -> None:
    """Refuse a detection on ``width`` x ``height`` pixels (of a ``full_w`` x ``full_h`` image) that would not
    fit in the memory this process can still take (:class:`DetectionMemoryError`). It is not shrunk instead:
    a smaller copy finds other boxes (one box of a face instead of two overlapping ones, a whole large face
    instead of part of it), and which faces are restored must not depend on the memory free at the time.
    Past a cgroup's limit the kernel would kill the whole run rather than fail an allocation."""
    available = available_memory()
    if per_pixel is None or available is None or width * height * per_pixel <= available:
        return
    what = f"detecting faces on {width}x{height} pixels needs about {size_text(width * height * per_pixel)}, "
    what += f"{size_text(available)}"
    longest, shortest = max(full_w, full_h), min(full_w, full_h)
    fits = int((0.75 * available / per_pixel * longest / shortest) ** 0.5) // 256 * 256
    if fits < 256:
        raise DetectionMemoryError("{what} is free: free some memory first", what=what)
    advice = "{what} is free: use {detect_max_side} {fits} or less (it detects on a copy that size)"
    raise DetectionMemoryError(advice, what=what, fits=fits)


@torch.inference_mode()
def detect_faces(
    detector: nn.Module,
    img: np.ndarray,
    conf_threshold: float = CONF_THRESHOLD,
    nms_threshold: float = NMS_THRESHOLD,
    eye_dist_threshold: float | None = EYE_DIST_THRESHOLD,
    only_center_face: bool = False,
    max_side: int | None = None,
) -> Detections:
    """Detect faces and 5 landmarks in a BGR image (uint8, or float in [0, 255]); coordinates in its pixels.

    Matches facexlib ``RetinaFace.detect_faces(img, 0.97)`` followed by the helper's eye-distance filter and
    its ``only_center_face`` choice (the face whose box centre is nearest the image centre). ``max_side``
    runs the network on a copy shrunk by area averaging so that its longer side is at most that, and scales
    the boxes and landmarks back: on big photos it is many times faster and finds faces larger than the
    detector's biggest anchors, which the full-size pass (the official behaviour, None) misses. On the CPU
    a detection too big for the memory left is refused before it starts (:func:`check_detect_memory`).
    """
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"detect_faces expects an HxWx3 BGR image, got shape {img.shape}")
    full_h, full_w = img.shape[:2]
    if max_side is not None and max(full_h, full_w) > max_side:
        shrink = max_side / max(full_h, full_w)
        size = (max(1, round(full_w * shrink)), max(1, round(full_h * shrink)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    height, width = img.shape[:2]
    device = next(detector.parameters()).device
    if device.type == "cpu":
        check_detect_memory(
            DETECT_BYTES_PER_PIXEL.get(getattr(detector, "backbone", None)), width, height, full_w, full_h
        )
    dtype = next(detector.parameters()).dtype
    x = torch.from_numpy(np.ascontiguousarray(img.astype(np.float32).transpose(2, 0, 1))).unsqueeze(0)
    x = x.to(device) - torch.tensor(_BGR_MEAN, device=device).view(1, 3, 1, 1)
    loc, conf, ldm = detector(x.to(dtype))
    boxes, points = _decode(loc[0].float(), ldm[0].float(), _priors(height, width).to(device))
    boxes = (boxes * torch.tensor([full_w, full_h] * 2, dtype=torch.float32, device=device)).cpu().numpy()
    points = (points * torch.tensor([full_w, full_h] * 5, dtype=torch.float32, device=device)).cpu().numpy()
    scores = conf[0, :, 1].float().cpu().numpy()

    keep = np.where(scores > conf_threshold)[0]
    order = keep[scores[keep].argsort()[::-1]]
    dets = np.hstack((boxes[order], scores[order, None])).astype(np.float32, copy=False)
    points = points[order]
    nms_keep = nms(dets[:, :4], dets[:, 4], nms_threshold)
    dets, points = dets[nms_keep], points[nms_keep].reshape(-1, 5, 2)

    if eye_dist_threshold is not None and len(dets):
        eye_dist = np.linalg.norm(points[:, 0] - points[:, 1], axis=1)
        wide = eye_dist >= eye_dist_threshold
        dets, points = dets[wide], points[wide]
    if only_center_face and len(dets) > 1:
        idx = center_face(dets, full_w, full_h)
        dets, points = dets[idx : idx + 1], points[idx : idx + 1]
    return Detections(boxes=np.ascontiguousarray(dets), landmarks=np.ascontiguousarray(points))


def face_template(face_size: int = 512) -> np.ndarray:
    """The FFHQ 5-point template scaled to a ``face_size`` square crop."""
    return FFHQ_TEMPLATE_512 * (face_size / 512.0)


def alignment_matrix(landmarks: np.ndarray, face_size: int = 512) -> np.ndarray:
    """2x3 similarity transform from image to crop (OpenCV LMEDS fit, as the official helper)."""
    matrix = cv2.estimateAffinePartial2D(landmarks, face_template(face_size), method=cv2.LMEDS)[0]
    if matrix is None:
        raise ValueError("could not fit an alignment transform to these landmarks (degenerate points)")
    return matrix


def resize_aligned(img: np.ndarray, face_size: int) -> np.ndarray:
    """An aligned face brought to the model's ``face_size``.

    Area averaging when shrinking (no aliasing; training makes its inputs the same way), bilinear when
    enlarging (as the official aligned path).
    """
    if img.shape[0] == face_size and img.shape[1] == face_size:
        return img
    shrink = img.shape[0] > face_size and img.shape[1] > face_size
    return cv2.resize(
        img, (face_size, face_size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )


def align_faces(
    img: np.ndarray, landmarks: np.ndarray, face_size: int = 512
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Warp each face of ``img`` to a ``face_size`` FFHQ-aligned crop; returns (crops, affine matrices).

    Outside the image the crop is filled with the official constant gray; interpolation is bilinear.
    """
    crops, matrices = [], []
    for points in landmarks:
        matrix = alignment_matrix(points, face_size)
        crop = cv2.warpAffine(
            img, matrix, (face_size, face_size), borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER_VALUE
        )
        crops.append(crop)
        matrices.append(matrix)
    return crops, matrices
