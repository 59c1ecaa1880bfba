"""Paste restored faces back into the (upscaled) image: inverse warp, blend masks, deterministic order.

Behaviour follows facexlib ``FaceRestoreHelper.paste_faces_to_input_image`` as the official GFPGAN uses it:

* the inverse of the alignment transform is scaled by ``upscale`` and, for ``upscale > 1``, shifted by
  half an output pixel per input pixel (``0.5 * upscale``) for a more precise fit;
* with a face parser (ParseNet) the blend mask is the parsed face region (skin, brows, eyes, nose, mouth,
  ears, eyeglasses; not neck, hair, hat or cloth), blurred twice with a 101 px Gaussian (sigma 11), its
  10 px border zeroed, then warped back with the same transform;
* without a parser the mask is the warped crop square, eroded by ``2 * upscale`` to drop black borders,
  eroded again and Gaussian-blurred by a width proportional to the face size (1/20 of its side);
* faces are blended one after another in detection order, so overlapping faces always resolve the same way.

Unlike the official code, each face is warped only into its own bounding region of the output instead of
a full-image canvas, which makes pasting cost proportional to the face, not the photo, with equal results
up to OpenCV's 1/32-pixel sampling grid.

:func:`paste_back` is the paste stage that photos and video frames run (in the input's layout: gray,
alpha, 16-bit); :func:`paste_faces` is the same blend over a whole float32 canvas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import nn

PARSE_SIZE = 512
"""ParseNet works on 512x512 faces."""
PARSE_FACE_LABELS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15)
"""ParseNet's 19 CelebAMask-HQ labels kept in the blend mask (0 background, 14 neck, 16 cloth, 17 hair,
18 hat are left out), as in the official MASK_COLORMAP."""
_PARSE_BLUR = (101, 11)
_PARSE_BORDER = 10


def build_parser() -> nn.Module:
    """Build ParseNet as the official helper configures it (512 px, 19 labels; random weights, eval mode)."""
    from gfp.archs.parsenet import ParseNet

    return ParseNet(in_size=PARSE_SIZE, parsing_ch=19).eval()


@torch.inference_mode()
def parse_masks(parser: nn.Module, faces: Sequence[np.ndarray], batch_size: int = 4) -> list[np.ndarray]:
    """Soft face-region masks in [0, 1] (float64, same size as each face) for uint8 BGR restored faces.

    ``parser`` maps a normalised RGB batch to label logits; it gets its parameters' device and dtype (a
    network without parameters, as OpenVINO's, gets float32 on the CPU)."""
    param = next(parser.parameters(), torch.empty(0))
    keep = np.zeros(19, dtype=np.float64)  # float64 like the official mask: its warp rounds differently
    keep[list(PARSE_FACE_LABELS)] = 255.0
    masks: list[np.ndarray] = []
    for start in range(0, len(faces), batch_size):
        chunk = faces[start : start + batch_size]
        batch = np.stack(
            [cv2.resize(face, (PARSE_SIZE, PARSE_SIZE), interpolation=cv2.INTER_LINEAR) for face in chunk]
        )
        x = torch.from_numpy(batch[..., ::-1].copy()).to(param.device).permute(0, 3, 1, 2).float() / 255.0
        labels = parser(((x - 0.5) / 0.5).to(param.dtype)).argmax(dim=1).cpu().numpy()
        for face, label in zip(chunk, labels, strict=True):
            mask = keep[label]
            for _ in range(2):
                mask = cv2.GaussianBlur(mask, (_PARSE_BLUR[0], _PARSE_BLUR[0]), _PARSE_BLUR[1])
            b = _PARSE_BORDER
            mask[:b, :] = 0
            mask[-b:, :] = 0
            mask[:, :b] = 0
            mask[:, -b:] = 0
            masks.append(cv2.resize(mask / 255.0, (face.shape[1], face.shape[0])))
    return masks


def inverse_affine(matrix: np.ndarray, upscale: float) -> np.ndarray:
    """Crop → upscaled output transform for an alignment ``matrix`` (official half-pixel offset included)."""
    inverse = cv2.invertAffineTransform(matrix) * upscale
    if upscale > 1:
        inverse[:, 2] += 0.5 * upscale
    return inverse


def _face_region(
    inverse: np.ndarray, face_size: int, width: int, height: int, margin: int
) -> tuple[int, ...]:
    """Bounding box (x0, y0, x1, y1) in the output of the warped face square, grown by ``margin``, clipped."""
    corners = np.array([[0, 0, 1], [face_size, 0, 1], [0, face_size, 1], [face_size, face_size, 1]], float)
    points = corners @ inverse.T
    x0 = max(int(math.floor(points[:, 0].min())) - margin, 0)
    y0 = max(int(math.floor(points[:, 1].min())) - margin, 0)
    x1 = min(int(math.ceil(points[:, 0].max())) + margin, width)
    y1 = min(int(math.ceil(points[:, 1].max())) + margin, height)
    return x0, y0, x1, y1


def _square_soft_mask(inverse: np.ndarray, face_size: int, size: tuple[int, int], upscale: float):
    """The official no-parser masks: (eroded warped square for the face, blurred inner mask for blending)."""
    warped = cv2.warpAffine(np.ones((face_size, face_size), dtype=np.float32), inverse, size)
    k = int(2 * upscale)
    eroded = cv2.erode(warped, np.ones((k, k), np.uint8))
    w_edge = int(float(np.sum(eroded)) ** 0.5) // 20
    inner = cv2.erode(eroded, np.ones((w_edge * 2, w_edge * 2), np.uint8))
    soft = cv2.GaussianBlur(inner, (w_edge * 2 + 1, w_edge * 2 + 1), 0)
    return eroded, soft


def face_placements(
    faces: Sequence[np.ndarray], matrices: Sequence[np.ndarray], upscale: float, width: int, height: int
) -> list[tuple[int, tuple[int, int, int, int], np.ndarray]]:
    """(index, box (x0, y0, x1, y1), crop → box transform) of each face that lands in a ``width`` x
    ``height`` output, in detection order: the box is all of the output that pasting the face changes."""
    placements = []
    for i, (face, matrix) in enumerate(zip(faces, matrices, strict=True)):
        face_size = face.shape[0]
        inverse = inverse_affine(matrix, upscale)
        side = face_size * math.sqrt(abs(np.linalg.det(inverse[:, :2])))
        margin = int(side / 4) + int(2 * upscale) + 8  # covers the erosions and blur of the square mask
        x0, y0, x1, y1 = _face_region(inverse, face_size, width, height, margin)
        if x1 <= x0 or y1 <= y0:
            continue  # the face maps entirely outside the output
        local = inverse.copy()
        local[:, 2] -= (x0, y0)
        placements.append((i, (x0, y0, x1, y1), local))
    return placements


def blend_face(
    region: np.ndarray,
    face: np.ndarray,
    local: np.ndarray,
    upscale: float,
    mask: np.ndarray | None,
    face_scale: float,
) -> None:
    """Blend one face into ``region`` (its box of a float32 output, see :func:`face_placements`) in place."""
    face_size = face.shape[0]
    size = (region.shape[1], region.shape[0])
    warped_face = cv2.warpAffine(face, local, size).astype(np.float32)
    if mask is not None:
        soft = cv2.warpAffine(mask, local, size, flags=cv2.INTER_LINEAR).astype(np.float32)
    else:
        eroded, soft = _square_soft_mask(local, face_size, size, upscale)
        warped_face *= eroded[:, :, None]
        del eroded
    if face_scale != 1.0:
        warped_face *= face_scale
    soft = soft[:, :, None]
    region *= 1.0 - soft
    warped_face *= soft  # in place: the same products as soft * warped_face, without a copy of the box
    region += warped_face


def paste_faces(
    background: np.ndarray,
    faces: Sequence[np.ndarray],
    matrices: Sequence[np.ndarray],
    upscale: float,
    masks: Sequence[np.ndarray] | None = None,
    face_scale: float = 1.0,
) -> np.ndarray:
    """Blend restored faces into ``background`` (HxWx3 float32, already upscaled) in place and return it.

    ``faces`` are uint8 BGR crops, ``matrices`` the image → crop alignment transforms they were cut with,
    ``masks`` the parser masks (None: the official soft square mask). ``face_scale`` maps face values to the
    background's scale (65535 / 255 for a 16-bit background).
    """
    if background.dtype != np.float32 or background.ndim != 3 or background.shape[2] != 3:
        raise ValueError("paste_faces expects an HxWx3 float32 background")
    check_faces(faces, matrices, masks)
    height, width = background.shape[:2]
    placements = face_placements(faces, matrices, upscale, width, height)
    return blend_faces(background, faces, placements, upscale, masks, face_scale)


def blend_faces(
    background: np.ndarray,
    faces: Sequence[np.ndarray],
    placements: Sequence[tuple[int, tuple[int, int, int, int], np.ndarray]],
    upscale: float,
    masks: Sequence[np.ndarray] | None,
    face_scale: float,
) -> np.ndarray:
    """Blend each face of :func:`face_placements` into its box of ``background`` (float32), in place."""
    for i, (x0, y0, x1, y1), local in placements:
        mask = None if masks is None else masks[i]
        blend_face(background[y0:y1, x0:x1], faces[i], local, upscale, mask, face_scale)
    return background


def check_faces(
    faces: Sequence[np.ndarray], matrices: Sequence[np.ndarray], masks: Sequence[np.ndarray] | None
) -> None:
    """A ``ValueError`` unless there is one matrix (and one mask, if any) per face."""
    if len(faces) != len(matrices) or (masks is not None and len(masks) != len(faces)):
        raise ValueError("paste_faces needs one matrix (and one mask) per face")


def paste_back(
    img: np.ndarray,
    upscaled: np.ndarray,
    faces: Sequence[np.ndarray],
    matrices: Sequence[np.ndarray],
    masks: Sequence[np.ndarray] | None,
    upscale: float,
) -> np.ndarray:
    """The restored ``faces`` blended into ``upscaled`` (the background of ``img``), in ``img``'s layout:
    gray stays gray, alpha is kept, 16-bit stays 16-bit (8-bit faces rescaled to its values).

    Only the boxes the faces cover are blended in float32, each face on the newest values its box holds
    (where an earlier face's box overlaps it, that face's unrounded result), and rounded at the end in the
    same order: value for value what a float32 copy of the whole output gave, without that copy (12 bytes a
    pixel, four times an 8-bit output) unless the boxes together are as large. A box is rounded as soon as no
    later face's box overlaps it, so only the boxes a later face still reads are held in float32."""
    check_faces(faces, matrices, masks)
    max_value = max_value_of(img)
    gray = is_gray(img)
    height, width = upscaled.shape[:2]
    placements = face_placements(faces, matrices, upscale, width, height)
    area = sum((x1 - x0) * (y1 - y0) for _, (x0, y0, x1, y1), _ in placements)
    if area >= height * width or (gray and upscaled.ndim == 3):
        # a whole-image canvas is no larger; gray with alpha: a network may have made its colours unequal
        alpha = upscaled[:, :, 3] if upscaled.ndim == 3 and upscaled.shape[2] == 4 else None
        canvas = color_part(upscaled).astype(np.float32)
        blend_faces(canvas, faces, placements, upscale, masks, max_value / 255.0)  # placed once, above
        return compose(canvas, alpha, gray, img.dtype, max_value)
    out = upscaled.copy()
    colour = out if out.ndim == 2 else out[:, :, :3]  # a view: alpha stays as it is
    boxes = [box for _, box, _ in placements]
    blended: list[tuple[int, tuple[int, int, int, int], np.ndarray]] = []
    for n, (i, box, local) in enumerate(placements):
        x0, y0, x1, y1 = box
        canvas = color_part(colour[y0:y1, x0:x1]).astype(np.float32)
        for _, (bx0, by0, bx1, by1), earlier in blended:  # later ones hold the newer values
            common = _intersection(box, (bx0, by0, bx1, by1))
            if common is not None:
                ox0, oy0, ox1, oy1 = common
                canvas[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0] = earlier[
                    oy0 - by0 : oy1 - by0, ox0 - bx0 : ox1 - bx0
                ]
        mask = None if masks is None else masks[i]
        blend_face(canvas, faces[i], local, upscale, mask, max_value / 255.0)
        blended.append((_last_overlap(boxes, n), box, canvas))
        # rounded in order (a later box holds the newer values where boxes overlap): each box once the last
        # face overlapping it is blended and every box before it is rounded
        while blended and blended[0][0] <= n:
            _, (bx0, by0, bx1, by1), done = blended.pop(0)
            colour[by0:by1, bx0:bx1] = compose(done, None, gray, img.dtype, max_value)
    return out


def _last_overlap(boxes: Sequence[tuple[int, int, int, int]], n: int) -> int:
    """The last of ``boxes`` (``n`` itself when none) from ``n`` on that overlaps box ``n``."""
    return max((m for m in range(n + 1, len(boxes)) if _intersection(boxes[m], boxes[n])), default=n)


def _intersection(a: Sequence[int], b: Sequence[int]) -> tuple[int, int, int, int] | None:
    """The box (x0, y0, x1, y1) two boxes share, or None when they do not overlap."""
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def is_gray(img: np.ndarray) -> bool:
    """HxW gray, or gray with alpha: BGRA whose colour channels are all equal, which is how cv2 (and
    :mod:`gfp.imageio`) reads a gray+alpha file, since no layout of its holds gray with alpha."""
    if img.ndim == 2:
        return True
    if img.shape[2] != 4:  # three equal channels stay BGR, as the official pipeline keeps them
        return False
    return bool(np.array_equal(img[:, :, 0], img[:, :, 1]) and np.array_equal(img[:, :, 1], img[:, :, 2]))


def max_value_of(img: np.ndarray) -> float:
    """The largest value of ``img``'s pixel type (16-bit or 8-bit)."""
    return 65535.0 if img.dtype == np.uint16 else 255.0


def color_part(img: np.ndarray) -> np.ndarray:
    """The BGR part of an image (gray expanded to 3 channels, alpha dropped)."""
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return img if img.shape[2] == 3 else np.ascontiguousarray(img[:, :, :3])


def compose(
    canvas: np.ndarray, alpha: np.ndarray | None, gray: bool, dtype: np.dtype, max_value: float
) -> np.ndarray:
    """Back to the input's layout: round and clip to ``dtype``, to gray if it was (three equal colour
    channels when there is alpha), alpha re-attached. Rounds and clips ``canvas`` in place: two more float32
    copies of a whole upscaled photo would more than double the memory a big output needs."""
    if gray:
        canvas = cv2.cvtColor(canvas, cv2.COLOR_BGR2GRAY)
    np.rint(canvas, out=canvas)
    out = np.clip(canvas, 0, max_value, out=canvas).astype(dtype)
    if alpha is not None:
        out = np.dstack([*([out] * 3 if gray else [out]), alpha])
    return out
