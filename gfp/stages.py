"""The stages of a restore, as functions over a :class:`gfp.store.ModelStore`: detect, restore faces, face
masks, background, paste. Photos, aligned faces and video frames all go through these same functions
(:mod:`gfp.pipeline` and :mod:`gfp.video` only orchestrate them), so a frame is restored exactly as a photo.

Each stage takes the request's :class:`~gfp.pipeline.RestoreOptions` and its :class:`RunLog` (timings,
notes, progress) and keeps no state between calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from gfp.background import lanczos_upsample
from gfp.color import color_fix
from gfp.faces import Detections, detect_faces
from gfp.paste import blend_face, blend_faces, check_faces, face_placements, parse_masks
from gfp.store import ModelStore, Unavailable, converting, runs_in
from gfp.weights.errors import WeightsError

if TYPE_CHECKING:
    from gfp.pipeline import RestoreOptions

Progress = Callable[[int, int, str], None]
"""``progress(done, total, stage)``: called as work advances, for progress bars in UIs."""


class RunLog:
    """Per-call bookkeeping of a restore (or of one clip in :mod:`gfp.video`): timings per stage, notes for
    the caller, progress reports."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []
        self.backends: dict[str, str] = {}  # what ran each network first (see RestoreResult.backends)
        self.start = self.clock = time.perf_counter()

    def report(self, done: int, total: int, stage: str) -> None:
        if self.progress is not None:
            self.progress(done, total, stage)

    def lap(self, stage: str) -> None:
        """Add the time since the previous lap to ``stage``."""
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self.clock
        self.clock = now


def batch_size(store: ModelStore, options: RestoreOptions) -> int:
    """Faces per generator and parser call: ``options.batch_size``, else 1 on a CPU and 4 on a GPU (on a
    CPU one face at a time measured faster)."""
    if options.batch_size is not None:
        return options.batch_size
    return 1 if store.placement.device.type == "cpu" else 4


def detect(store: ModelStore, image: np.ndarray, options: RestoreOptions) -> Detections:
    """Faces and landmarks of a BGR image (8-bit values), with the options' detector and ``max_side``."""
    detector = store.detector(options.detector).run
    return detect_faces(detector, image, max_side=options.detect_max_side)


@torch.inference_mode()
def restore_faces(
    store: ModelStore, crops: Sequence[np.ndarray], options: RestoreOptions, run: RunLog
) -> list[np.ndarray]:
    """Run the generator of ``options.version`` over aligned uint8 BGR crops in batches, fix colours against
    each crop, blend by strength; return uint8 BGR faces."""
    batch = batch_size(store, options)
    network = store.face_network(options.version)
    run.backends.setdefault("generator", runs_in(network))
    if converting(network):  # its first batch at least runs in PyTorch
        run.notes.append(conversion_note("generator"))
    device = store.placement.device
    restored: list[np.ndarray] = []
    strength = float(options.strength)
    run.report(0, len(crops), "restore")
    for start in range(0, len(crops), batch):
        chunk = np.stack(crops[start : start + batch])
        x = torch.from_numpy(chunk).to(device).permute(0, 3, 1, 2).flip(1).float() / 255.0
        x = (x - 0.5) / 0.5
        out = network.run(x)
        if not torch.isfinite(out).all():  # else clamped to black faces, and pasted as if restored
            raise store.broken_generator(options.version, network)
        out = out.clamp_(-1, 1)
        if options.color_fix != "none":  # in float32 on the device, against the face's own crop
            out = color_fix(out, x, options.color_fix).clamp_(-1, 1)
        if strength < 1.0:
            out = strength * out + (1.0 - strength) * x
        out = ((out + 1) / 2 * 255.0).round().flip(1).permute(0, 2, 3, 1)
        restored.extend(np.ascontiguousarray(face) for face in out.to(torch.uint8).cpu().numpy())
        run.report(len(restored), len(crops), "restore")
    return restored


def conversion_note(what: str) -> str:
    """The note of a network that ran in PyTorch while OpenVINO converts it (:func:`gfp.store.converting`)."""
    return (
        f"the {what} ran in PyTorch while OpenVINO converts it in the background, once: later runs are faster"
    )


def backends_text(*seen: dict[str, str]) -> str:
    """What ran the networks in the :attr:`RestoreResult.backends` ``seen``, in a few words: "generator and
    face parser in OpenVINO", or "generator in PyTorch then OpenVINO, face parser in OpenVINO" over runs
    that switched ("" when none ran). So that a slow run, or outputs that differ slightly between machines,
    can be told apart from the backend."""
    ran: dict[str, list[str]] = {}
    for backends in seen:
        for what, backend in backends.items():
            names = ran.setdefault(what, [])
            if backend not in names:
                names.append(backend)
    groups: dict[str, list[str]] = {}
    for what, names in ran.items():
        groups.setdefault(" then ".join(names), []).append(what)
    return ", ".join(f"{' and '.join(whats)} in {names}" for names, whats in groups.items())


def face_masks(
    store: ModelStore, restored: list[np.ndarray], options: RestoreOptions, run: RunLog
) -> tuple[list[np.ndarray] | None, str]:
    """(ParseNet masks, "parsenet"), or (None, "square") without a parser (noted when it was wanted)."""
    if options.use_parse is False or not restored:
        return None, "square"
    parser = store.parser(required=options.use_parse is True)
    run.lap("load")
    if isinstance(parser, Unavailable):
        run.notes.append(parser.note("face parser", "faces blended with the soft square mask instead"))
        return None, "square"
    run.backends.setdefault("face parser", runs_in(parser))
    if converting(parser):
        run.notes.append(conversion_note("face parser"))
    run.report(0, len(restored), "parse")
    with parser.placement.autocast():
        masks = parse_masks(parser.run, restored, batch_size(store, options))
    run.report(len(restored), len(restored), "parse")
    run.lap("parse")
    return masks, "parsenet"


def background(store: ModelStore, img: np.ndarray, options: RestoreOptions, run: RunLog) -> np.ndarray:
    """The whole image upscaled; the default upsampler falls back to Lanczos (noted) without weights."""
    choice = options.background_on(store.placement.device)
    upsampler = store.background(choice, named=options.bg_upsampler is not None)
    run.lap("load")
    if upsampler is None:
        return lanczos_upsample(img, options.upscale)
    try:
        with upsampler.placement.autocast():
            return upsampler.upsample(img, options.upscale, progress=run.progress, tile=options.bg_tile)
    except WeightsError as err:
        if options.bg_upsampler is not None:  # asked for by name: say what is missing and where we looked
            raise
        instead = "the background was resized with Lanczos instead"
        run.notes.append(Unavailable(choice, err).note(f"background upsampler {choice}", instead))
        return lanczos_upsample(img, options.upscale)


def paste(
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
