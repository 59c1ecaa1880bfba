"""The restore pipeline: detect → align → restore (batched) → parse → upsample background → paste back.

:class:`Restorer` orchestrates the stages of :mod:`gfp.stages` over one :class:`gfp.store.ModelStore`
(which loads each network once, lazily, under a lock, so a Restorer can be shared by threads); everything
about a request lives in local variables of :meth:`Restorer.restore` and is returned in a
:class:`RestoreResult`.

With ``strength=1`` the result is the official GFPGAN output (``GFPGANer.enhance``) for the same weights,
apart from rounding instead of truncating the final pixel values and the checkpoint's fixed noise
instead of fresh random noise (and with the default ``color_fix="none"`` and all faces chosen). A face
choice restores some faces and leaves the others as they are (:mod:`gfp.selection`); a colour fix gives
each restored face its input crop's colours (:mod:`gfp.color`). Inputs keep their layout: gray stays
gray, alpha is upscaled on its own and put back, and 16-bit images stay 16-bit with the 8-bit restored
faces rescaled to 16-bit values.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import cv2
import numpy as np
import torch

from gfp import registry, stages
from gfp.archs import GeneratorConfig
from gfp.background import scaled_size
from gfp.checks import is_bool, is_real, is_whole
from gfp.color import check_method
from gfp.devices import Placement
from gfp.faces import align_faces, resize_aligned
from gfp.messages import OptionError
from gfp.paste import color_part, compose, is_gray, max_value_of, paste_back
from gfp.selection import FaceSelection, parse_faces, reading_order, select_faces
from gfp.stages import Progress, RunLog
from gfp.store import FaceNetwork, ModelStore, Unavailable

T = TypeVar("T")

__all__ = [
    "FaceNetwork",
    "Progress",
    "RestoreOptions",
    "RestoreResult",
    "Restorer",
    "RunLog",
    "Unavailable",
]

MIN_UPSCALE, MAX_UPSCALE = 1.0, 8.0


@dataclass(frozen=True)
class RestoreOptions:
    """What to do with one image; validated on construction (``ValueError`` with a readable message)."""

    version: str = "1.4"
    """GFPGAN version (1, 1.2, 1.3, 1.4), a weights file, a published folder, or a Hugging Face repo id."""
    upscale: float = 2
    """Output size / input size, in [1, 8]."""
    bg_upsampler: str | None = None
    """A background choice of :func:`gfp.background.background_choices` ("realesrgan", "none", ...): its
    weights must be had. None: the device's default (:func:`gfp.registry.default_for`: realesr-general-x4v3
    on a CPU, realesrgan on a GPU), which falls back to a Lanczos resize (with a note in the result) when
    its weights cannot be had."""
    bg_tile: int = 400
    """Tile size of the background upsampler (0: whole image at once)."""
    only_center_face: bool = False
    """The official flag: the same as ``faces="center"``."""
    aligned: bool = False
    """The input is already an FFHQ-aligned face: no detection, no paste-back."""
    strength: float = 1.0
    """1 = the restored face as GFPGAN makes it; 0 = the aligned input crop (pasted back like a restored
    face, so resampled twice); in between, a linear blend."""
    detector: str = "retinaface_resnet50"
    detect_max_side: int | None = None
    """Detect on a copy whose longer side is at most this (then scale back): much faster on big photos, and
    it finds faces too large for the detector at full size. None: the full photo, as the official stack."""
    batch_size: int | None = None
    """Faces run through the generator (and parser) together. None: 1 on a CPU (one at a time measured
    faster there: README, "Speed"), 4 on a GPU."""
    weight: float = 0.5
    """The official ``-w``: accepted for CLI parity, has no effect on GFPGAN v1-v1.4 (use ``strength``)."""
    use_parse: bool | None = None
    """Blend faces with the ParseNet face mask. None: when its weights can be had, else a soft square (with
    a note); True: the parser's weights must be had; False: always the soft square."""
    color_fix: str = "none"
    """Give each restored face its input crop's colours (:mod:`gfp.color`): "none" (the face as the model
    makes it, the official output), "wavelet" (the input's coarse colour and light under the restored
    detail) or "adain" (each channel's mean and spread made the input's). Applied before ``strength``."""
    faces: str | Sequence[int] = "all"
    """Which faces to restore (:mod:`gfp.selection`): "all", "largest", "center", or face numbers from 1
    in reading order, e.g. "1,3" or ``[1, 3]`` (stored as "1,3"). Skipped faces stay as they are."""
    min_face: int = 0
    """Skip faces whose detected box is shorter than this many pixels (of the input image) on its shorter
    side; 0 restores faces of any size."""

    def __post_init__(self) -> None:
        if not isinstance(self.version, str | os.PathLike) or not os.fspath(self.version).strip():
            raise OptionError(
                "{version} must be a GFPGAN version, file, folder or repo id, got {value!r}",
                value=self.version,
            )
        if not is_real(self.upscale):
            raise OptionError("{upscale} must be a number in [1, 8], got {value!r}", value=self.upscale)
        if not (MIN_UPSCALE <= self.upscale <= MAX_UPSCALE):
            raise OptionError(
                "{upscale} must be in [{low:g}, {high:g}], got {value}",
                low=MIN_UPSCALE,
                high=MAX_UPSCALE,
                value=self.upscale,
            )
        if self.bg_upsampler is not None and self.bg_upsampler not in registry.choice_names("upsampler"):
            choices = ", ".join(registry.choice_names("upsampler"))
            raise ValueError(f"unknown background upsampler {self.bg_upsampler!r}; choose one of: {choices}")
        if not is_whole(self.bg_tile) or self.bg_tile < 0:
            raise OptionError(
                "{bg_tile} must be an integer >= 0 (0 = no tiling), got {value!r}", value=self.bg_tile
            )
        if not is_real(self.strength) or not 0.0 <= self.strength <= 1.0:
            raise OptionError("{strength} must be a number in [0, 1], got {value!r}", value=self.strength)
        if not is_real(self.weight) or not math.isfinite(self.weight):
            raise OptionError("{weight} must be a number, got {value!r}", value=self.weight)
        for name in ("only_center_face", "aligned"):
            if not is_bool(getattr(self, name)):
                raise OptionError(
                    f"{{{name}}} must be True or False, got {{value!r}}", value=getattr(self, name)
                )
            object.__setattr__(self, name, bool(getattr(self, name)))  # NumPy's kept as Python's
        if not (self.use_parse is None or is_bool(self.use_parse)):
            raise OptionError("{use_parse} must be None, True or False, got {value!r}", value=self.use_parse)
        if self.use_parse is not None:
            object.__setattr__(self, "use_parse", bool(self.use_parse))
        if self.detector not in registry.choice_names("detector"):
            choices = ", ".join(registry.choice_names("detector"))
            raise ValueError(f"unknown face detector {self.detector!r}; choose one of: {choices}")
        side = self.detect_max_side
        if side is not None and (not is_whole(side) or side < 64):
            raise OptionError(  # "unset", not None: the CLI's users leave the flag out
                "{detect_max_side} must be an integer >= 64 or unset (the full image), got {value!r}",
                value=side,
            )
        if self.batch_size is not None and (not is_whole(self.batch_size) or self.batch_size < 1):
            raise OptionError("{batch_size} must be an integer >= 1, got {value!r}", value=self.batch_size)
        check_method(self.color_fix)
        object.__setattr__(self, "faces", parse_faces(self.faces))
        if not is_whole(self.min_face) or self.min_face < 0:
            raise OptionError(
                "{min_face} must be a whole number of pixels >= 0, got {value!r}", value=self.min_face
            )
        if self.only_center_face and self.faces not in ("all", "center"):
            raise OptionError(
                "{only_center_face} means {faces} 'center'; it cannot be combined with {faces} {value!r}",
                value=self.faces,
            )
        given = [name for name, on in (("faces", self.faces != "all"), ("min_face", self.min_face)) if on]
        if self.aligned and given:  # named as given: a user who chose faces alone is not told of min_face
            said = " and ".join(f"{{{name}}}" for name in given)
            raise OptionError(f"{said} cannot be combined with {{aligned}} (each image is one aligned face)")

    @property
    def face_choice(self) -> str:
        """The face choice in effect: ``faces``, or "center" for ``only_center_face``."""
        return "center" if self.only_center_face else self.faces

    def background_on(self, device: torch.device | str) -> str:
        """The background choice in effect on ``device``: ``bg_upsampler``, or that device's default."""
        if self.bg_upsampler is not None:
            return self.bg_upsampler
        return registry.default_for("upsampler", device)


@dataclass
class RestoreResult:
    """Everything one :meth:`Restorer.restore` call produced."""

    image: np.ndarray
    """The restored image, same layout and dtype as the input, size × upscale."""
    cropped_faces: list[np.ndarray]
    """Aligned input faces (uint8 BGR, face_size²) of the faces restored (see ``RestoreOptions.faces``), in
    detection order."""
    restored_faces: list[np.ndarray]
    """Restored faces (uint8 BGR), same order."""
    boxes: np.ndarray
    """(N, 5) float32 detection boxes x1, y1, x2, y2, score in input pixels of the faces restored (empty for
    aligned input)."""
    landmarks: np.ndarray
    """(N, 5, 2) float32 landmarks in input pixels (empty for aligned input)."""
    timings: dict[str, float]
    """Wall seconds per stage (load, detect, align, restore, parse, background, paste, total)."""
    device: str
    face_mask: str = "parsenet"
    """How faces were blended in: "parsenet", "square" (no parser weights or use_parse=False) or "none"."""
    notes: list[str] = field(default_factory=list)
    """Things the caller should know (e.g. that a default model was unavailable and what replaced it)."""
    face_numbers: list[int] = field(default_factory=list)
    """The number of each restored face (from 1, left to right among all faces found: see
    :mod:`gfp.selection`), in the order of the lists above."""
    selection: FaceSelection = field(default_factory=lambda: FaceSelection(0))
    """Faces found, restored and skipped (and why): ``selection.summary()`` says it in one line."""
    backends: dict[str, str] = field(default_factory=dict)
    """What ran the generator and the face parser ("generator", "face parser": "OpenVINO" or "PyTorch"; a
    network converting in the background ran in PyTorch); :func:`gfp.stages.backends_text` says it."""


class Restorer:
    """Restores images with the networks of one :class:`gfp.store.ModelStore`; thread-safe.

    ``weights_dir`` is where weights are looked up first (see :mod:`gfp.weights.resolve`); ``device`` is
    "auto" (cuda, mps, cpu) or a torch device name; ``half`` runs the networks that do well in float16
    (generator, background upsamplers) in float16 on a GPU. ``bf16`` on a CPU runs in bfloat16 autocast the
    networks whose registry ``supports.precisions`` lists bf16 (None: where the CPU computes bf16 natively,
    see :func:`gfp.precision.cpu_has_native_bf16`; False: float32). ``backend`` (None: env ``GFP_BACKEND``,
    else "auto") runs the generator and the face parser in PyTorch ("torch") or converted for OpenVINO
    ("openvino", CPU only; "auto" picks it on a CPU when it is installed, see
    :func:`gfp.devices.decide_backend`). All of that is one :class:`gfp.devices.Placement`, decided here
    once; the store builds every network on it. Everything about a request lives in the call.
    """

    def __init__(
        self,
        weights_dir: str | os.PathLike[str] | None = None,
        device: str = "auto",
        half: bool = False,
        bf16: bool | None = None,
        backend: str | None = None,
    ) -> None:
        self.store = ModelStore(weights_dir, Placement.decide(device, half, bf16, backend))

    @property
    def device(self) -> torch.device:
        """The device the networks run on."""
        return self.store.placement.device

    def generator_config(self, spec: str | os.PathLike[str]) -> GeneratorConfig:
        """The layout of the generator ``spec`` names (raises for missing or foreign weights)."""
        return self.store.generator_config(spec)

    def batch_size(self, options: RestoreOptions) -> int:
        """Faces per generator and parser call (:func:`gfp.stages.batch_size`)."""
        return stages.batch_size(self.store, expect(options, RestoreOptions, "options"))

    def prepare(self, options: RestoreOptions) -> list[threading.Thread]:
        """Start loading the generator and the face parser that ``options`` use (compiling their OpenVINO
        networks for a batch of faces) in background threads, beside whatever the caller does next (reading
        and detecting its first photo); returns the threads (join to wait). A call that needs a network
        meanwhile waits for it; an error is left for that call to report."""
        options = expect(options, RestoreOptions, "options")
        parser = not options.aligned and options.use_parse is not False
        return self.store.prepare(options.version, stages.batch_size(self.store, options), parser)

    def restore(
        self, img: np.ndarray, options: RestoreOptions | None = None, progress: Progress | None = None
    ) -> RestoreResult:
        """Restore every face of ``img`` (HxW gray, HxWx3 BGR or HxWx4 BGRA; uint8 or uint16)."""
        options = expect(options, RestoreOptions, "options", RestoreOptions)
        img = _checked_input(img)
        run = RunLog(progress)
        config = self.generator_config(options.version)  # missing weights fail here, before any work
        restore = self._restore_aligned if options.aligned else self._restore_photo
        result = restore(img, config, options, run)
        result.timings["total"] = time.perf_counter() - run.start
        return result

    def _restore_aligned(
        self, img: np.ndarray, config: GeneratorConfig, options: RestoreOptions, run: RunLog
    ) -> RestoreResult:
        """An FFHQ-aligned face: restore it whole; the output is the face at input size × upscale."""
        work = _work_image(img)
        run.lap("load")
        height, width = img.shape[:2]
        if height != width:  # an aligned face is square: this is likely a whole photo
            run.notes.append(
                f"the aligned input is {width}x{height}, not square: it was stretched to a square face "
                "(for a whole photo, leave out the aligned option)"
            )
        crops = [resize_aligned(work, config.out_size).copy()]  # never the caller's own array
        restored = stages.restore_faces(self.store, crops, options, run)
        run.lap("restore")
        out_h, out_w = scaled_size(img.shape[0], img.shape[1], options.upscale)
        image = _aligned_output(img, restored[0], out_h, out_w)
        return RestoreResult(
            image=image,
            cropped_faces=[_to_uint8(c) for c in crops],
            restored_faces=restored,
            boxes=np.zeros((0, 5), np.float32),
            landmarks=np.zeros((0, 5, 2), np.float32),
            timings=run.timings,
            device=str(self.device),
            face_mask="none",
            notes=run.notes,
            backends=run.backends,
            face_numbers=[1],
            selection=FaceSelection(1, (1,)),
        )

    def _restore_photo(
        self, img: np.ndarray, config: GeneratorConfig, options: RestoreOptions, run: RunLog
    ) -> RestoreResult:
        """A photo: detect and align faces, restore them, upsample the background, paste the faces back."""
        stages.load_required(self.store, options)
        upsampler = stages.check_output(self.store, img, options, run)
        work = _work_image(img)
        run.lap("load")
        run.report(0, 1, "detect")
        found = stages.detect(self.store, work, options)
        run.report(1, 1, "detect")
        order = reading_order(found.boxes)
        height, width = work.shape[:2]
        selection = select_faces(found.boxes[order], width, height, options.face_choice, options.min_face)
        # restored and pasted in detection order, as the official stack pastes (later faces go on top)
        keep = np.sort(order[[n - 1 for n in selection.restored]])
        numbers = np.empty(len(order), np.int64)
        numbers[order] = np.arange(1, len(order) + 1)
        boxes, landmarks = found.boxes[keep], found.landmarks[keep]
        run.lap("detect")
        crops, matrices = align_faces(work, landmarks, config.out_size)
        run.lap("align")
        restored = stages.restore_faces(self.store, crops, options, run)
        run.lap("restore")
        masks, face_mask = stages.face_masks(self.store, restored, options, run)
        upscaled = stages.background(upsampler, img, options, run)
        run.lap("background")
        run.report(0, len(restored), "paste")
        image = paste_back(img, upscaled, restored, matrices, masks, options.upscale)
        run.report(len(restored), len(restored), "paste")
        run.lap("paste")
        return RestoreResult(
            image=image,
            cropped_faces=[_to_uint8(c) for c in crops],
            restored_faces=restored,
            boxes=boxes,
            landmarks=landmarks,
            timings=run.timings,
            device=str(self.device),
            face_mask=face_mask,
            notes=run.notes,
            backends=run.backends,
            face_numbers=[int(n) for n in numbers[keep]],
            selection=selection,
        )

    def restore_faces(
        self,
        crops: Sequence[np.ndarray],
        options: RestoreOptions | None = None,
        progress: Progress | None = None,
    ) -> list[np.ndarray]:
        """Run the generator of ``options.version`` over aligned faces; returns restored uint8 BGR faces.

        ``crops`` are uint8 BGR squares of the generator's ``out_size`` (as :func:`gfp.faces.align_faces`
        cuts them), restored as :meth:`restore` restores them; for callers that align faces themselves.
        """
        options = expect(options, RestoreOptions, "options", RestoreOptions)
        size = self.generator_config(options.version).out_size
        crops = list(crops)  # any iterable, read once
        for crop in crops:
            if not isinstance(crop, np.ndarray) or crop.dtype != np.uint8 or crop.shape != (size, size, 3):
                got = f"{crop.dtype} {crop.shape}" if isinstance(crop, np.ndarray) else type(crop).__name__
                raise ValueError(f"restore_faces expects uint8 {size}x{size}x3 BGR crops, got {got}")
        return stages.restore_faces(self.store, crops, options, RunLog(progress))


def expect(value: Any, kind: type[T], name: str, default: Callable[[], T] | None = None) -> T:
    """``value`` (``default()`` when it is None and there is a default), or a ``TypeError`` saying what
    ``name`` should have been: arguments of the wrong kind or order would fail later with an
    ``AttributeError`` from deep inside, and an empty dict must not pass for the default options."""
    if value is None and default is not None:
        return default()
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _work_image(img: np.ndarray) -> np.ndarray:
    """The BGR image faces are found and cut on: 8-bit values (as the official helper scales 16-bit)."""
    color = color_part(img)
    if img.dtype == np.uint8:
        return color
    return color.astype(np.float32) * np.float32(255.0 / max_value_of(img))


def _checked_input(img: Any) -> np.ndarray:
    """``img`` if it is an image the pipeline takes (a big-endian uint16 one as a native copy: OpenCV takes
    no other byte order), else a ``TypeError``/``ValueError`` saying what is expected."""
    if not isinstance(img, np.ndarray):
        raise TypeError(f"expected a numpy image (as cv2 reads it), got {type(img).__name__}")
    if img.dtype.kind == "u" and not img.dtype.isnative:
        img = img.astype(img.dtype.newbyteorder("="))
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a uint8 or uint16 image, got dtype {img.dtype}")
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4))) or min(img.shape[:2]) < 1:
        raise ValueError(f"expected an HxW, HxWx3 (BGR) or HxWx4 (BGRA) image, got shape {img.shape}")
    return img


def _aligned_output(img: np.ndarray, face: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """For aligned input: the restored face at input size × upscale, in the input's layout."""
    max_value = max_value_of(img)
    canvas = cv2.resize(face, (out_w, out_h), interpolation=cv2.INTER_LANCZOS4).astype(np.float32)
    canvas *= np.float32(max_value / 255.0)
    alpha = None
    if img.ndim == 3 and img.shape[2] == 4:
        alpha = cv2.resize(img[:, :, 3], (out_w, out_h), interpolation=cv2.INTER_LANCZOS4)
    return compose(canvas, alpha, is_gray(img), img.dtype, max_value)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return img if img.dtype == np.uint8 else np.clip(np.rint(img), 0, 255).astype(np.uint8)
