"""The restore pipeline: detect → align → restore (batched) → parse → upsample background → paste back.

One :class:`Restorer` holds the loaded networks (generators, detectors, parser, background upsamplers),
each loaded lazily on first use under a lock, so it can be shared by threads; everything about a request
lives in local variables of :meth:`Restorer.restore` and is returned in a :class:`RestoreResult`.

With ``strength=1`` the result is the official GFPGAN output (``GFPGANer.enhance``) for the same weights,
apart from rounding instead of truncating the final pixel values and the checkpoint's fixed noise
instead of fresh random noise. Inputs keep their layout: gray stays gray, alpha is upscaled on its own and
put back, and 16-bit images stay 16-bit with the 8-bit restored faces rescaled to 16-bit values.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from gfp.background import (
    BACKGROUND_CHOICES,
    BackgroundUpsampler,
    build_background_upsampler,
    scaled_size,
    upsample_background,
)
from gfp.faces import DETECTORS, align_faces, build_detector, detect_faces
from gfp.loading import WeightsError, load_generator, load_network, select_device
from gfp.paste import build_parser, parse_masks, paste_faces

Progress = Callable[[int, int, str], None]
"""``progress(done, total, stage)``: called as work advances, for progress bars in UIs."""

MIN_UPSCALE, MAX_UPSCALE = 1.0, 8.0


@dataclass(frozen=True)
class RestoreOptions:
    """What to do with one image; validated on construction (``ValueError`` with a readable message)."""

    version: str = "1.4"
    """GFPGAN version (1, 1.2, 1.3, 1.4), a weights file, a published folder, or a Hugging Face repo id."""
    upscale: float = 2
    """Output size / input size, in [1, 8]."""
    bg_upsampler: str = "realesrgan"
    """A name of :data:`gfp.background.BACKGROUND_CHOICES` ("realesrgan", "realesr-general-x4v3", "none")."""
    bg_tile: int = 400
    """Tile size of the background upsampler (0: whole image at once)."""
    only_center_face: bool = False
    aligned: bool = False
    """The input is already an FFHQ-aligned face: no detection, no paste-back."""
    strength: float = 1.0
    """1 = the restored face as GFPGAN makes it; 0 = the input face; in between, a linear blend."""
    detector: str = "retinaface_resnet50"
    batch_size: int = 4
    """Faces run through the generator (and parser) together."""
    weight: float = 0.5
    """The official ``-w``: accepted for CLI parity, has no effect on GFPGAN v1-v1.4 (use ``strength``)."""
    use_parse: bool = True
    """Blend faces with the ParseNet face mask when its weights can be had, else a soft square."""

    def __post_init__(self) -> None:
        if not isinstance(self.version, str | os.PathLike) or not os.fspath(self.version).strip():
            raise ValueError(
                f"version must be a GFPGAN version, file, folder or repo id, got {self.version!r}"
            )
        if isinstance(self.upscale, bool) or not isinstance(self.upscale, int | float):
            raise ValueError(f"upscale must be a number in [1, 8], got {self.upscale!r}")
        if not (MIN_UPSCALE <= self.upscale <= MAX_UPSCALE):
            raise ValueError(f"upscale must be in [{MIN_UPSCALE:g}, {MAX_UPSCALE:g}], got {self.upscale}")
        if self.bg_upsampler not in BACKGROUND_CHOICES:
            choices = ", ".join(BACKGROUND_CHOICES)
            raise ValueError(f"unknown background upsampler {self.bg_upsampler!r}; choose one of: {choices}")
        if not isinstance(self.bg_tile, int) or self.bg_tile < 0:
            raise ValueError(f"bg_tile must be an integer >= 0 (0 = no tiling), got {self.bg_tile!r}")
        if not (0.0 <= float(self.strength) <= 1.0):
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        if self.detector not in DETECTORS:
            raise ValueError(
                f"unknown face detector {self.detector!r}; choose one of: {', '.join(DETECTORS)}"
            )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")


@dataclass
class RestoreResult:
    """Everything one :meth:`Restorer.restore` call produced."""

    image: np.ndarray
    """The restored image, same layout and dtype as the input, size × upscale."""
    cropped_faces: list[np.ndarray]
    """Aligned input faces (uint8 BGR, face_size²), in detection order."""
    restored_faces: list[np.ndarray]
    """Restored faces (uint8 BGR), same order."""
    boxes: np.ndarray
    """(N, 5) float32 detection boxes x1, y1, x2, y2, score in input pixels (empty for aligned input)."""
    landmarks: np.ndarray
    """(N, 5, 2) float32 landmarks in input pixels (empty for aligned input)."""
    timings: dict[str, float]
    """Wall seconds per stage (load, detect, align, restore, parse, background, paste, total)."""
    device: str
    face_mask: str = "parsenet"
    """How faces were blended in: "parsenet", "square" (no parser weights or use_parse=False) or "none"."""
    notes: list[str] = field(default_factory=list)
    """Things the caller should know (e.g. why the parser mask was not used)."""


class Restorer:
    """Loads networks lazily (once per model, lock-protected) and restores images; thread-safe.

    ``weights_dir`` is where weights are looked up first (see :func:`gfp.loading.resolve_weights`);
    ``device`` is "auto" (cuda, mps, cpu) or a torch device name; ``half`` runs the generator in float16
    on a GPU (ignored on CPU, where float16 is slow and inaccurate).
    """

    def __init__(
        self, weights_dir: str | os.PathLike[str] | None = None, device: str = "auto", half: bool = False
    ) -> None:
        self.weights_dir = weights_dir
        self.device = select_device(device)
        self.half = bool(half) and self.device.type != "cpu"
        self._lock = threading.Lock()
        self._models: dict[tuple[str, ...], Any] = {}
        self._model_locks: dict[tuple[str, ...], threading.Lock] = {}

    # ------------------------------------------------------------------ models (lazy, shared)
    def _get(self, key: tuple[str, ...], load: Callable[[], Any]) -> tuple[Any, float]:
        """The cached model for ``key``, loading it once (other keys keep loading in parallel).

        Returns (model, seconds this call spent waiting/loading).
        """
        start = time.perf_counter()
        with self._lock:
            if key in self._models:
                return self._models[key], 0.0
            key_lock = self._model_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._models:
                    return self._models[key], time.perf_counter() - start
            model = load()
            with self._lock:
                self._models[key] = model
        return model, time.perf_counter() - start

    def generator(self, version: str) -> tuple[nn.Module, Any]:
        """(network, GeneratorConfig) for a version / file / folder / repo id."""

        def load() -> tuple[nn.Module, Any]:
            return load_generator(version, self.weights_dir, self.device, half=self.half)

        return self._get(("generator", os.fspath(version)), load)[0]

    def detector(self, name: str) -> nn.Module:
        """The RetinaFace detector ``name`` with its weights, on the device."""

        def load() -> nn.Module:
            return load_network(build_detector(name), name, self.weights_dir, self.device)

        return self._get(("detector", name), load)[0]

    def parser(self) -> nn.Module | str:
        """ParseNet with its weights, or the reason it is unavailable (remembered; no retry per call)."""

        def load() -> nn.Module | str:
            try:
                return load_network(build_parser(), "parsenet", self.weights_dir, self.device)
            except WeightsError as err:
                reason = str(err).splitlines()[0].removesuffix("Looked in:").strip().rstrip(".")
                return f"face parser unavailable ({reason}); faces blended with the soft square mask instead"

        return self._get(("parser",), load)[0]

    def background(self, name: str, tile: int) -> BackgroundUpsampler | None:
        """The background upsampler for ``name`` (None for "none"); its networks load on first use."""

        def load() -> BackgroundUpsampler | None:
            return build_background_upsampler(name, self.weights_dir, self.device, tile=tile, half=self.half)

        return self._get(("background", name, str(tile)), load)[0]

    # ------------------------------------------------------------------ restore
    def restore(
        self, img: np.ndarray, options: RestoreOptions | None = None, progress: Progress | None = None
    ) -> RestoreResult:
        """Restore every face of ``img`` (HxW gray, HxWx3 BGR or HxWx4 BGRA; uint8 or uint16)."""
        options = options or RestoreOptions()
        _check_input(img)
        report = progress or (lambda done, total, stage: None)
        timings: dict[str, float] = {}
        notes: list[str] = []
        start = time.perf_counter()
        clock = start

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = timings.get(stage, 0.0) + now - clock
            clock = now

        net, config = self.generator(options.version)
        face_size = config.out_size
        max_value = 65535.0 if img.dtype == np.uint16 else 255.0
        color = _color_part(img)
        # Faces are found and cut on 8-bit values (the official helper scales 16-bit input to [0, 255]).
        work = color if img.dtype == np.uint8 else color.astype(np.float32) * np.float32(255.0 / max_value)
        detector = None if options.aligned else self.detector(options.detector)
        lap("load")

        if options.aligned:
            crops = [cv2.resize(work, (face_size, face_size), interpolation=cv2.INTER_LINEAR)]
            boxes, landmarks, matrices = np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32), []
        else:
            report(0, 1, "detect")
            found = detect_faces(detector, work, only_center_face=options.only_center_face)
            boxes, landmarks = found.boxes, found.landmarks
            report(1, 1, "detect")
            lap("detect")
            crops, matrices = align_faces(work, landmarks, face_size)
            lap("align")

        restored = self._restore_faces(net, crops, options, report)
        lap("restore")
        cropped = [_to_uint8(c) for c in crops]

        if options.aligned:
            out_h, out_w = scaled_size(img.shape[0], img.shape[1], options.upscale)
            image = _aligned_output(img, restored[0], out_h, out_w, max_value)
            face_mask = "none"
        else:
            masks, face_mask = None, "square"
            if options.use_parse and restored:
                parser = self.parser()
                lap("load")
                if isinstance(parser, str):
                    notes.append(parser)
                else:
                    report(0, len(restored), "parse")
                    masks, face_mask = parse_masks(parser, restored, options.batch_size), "parsenet"
                    report(len(restored), len(restored), "parse")
                    lap("parse")
            upsampler = self.background(options.bg_upsampler, options.bg_tile)
            lap("load")
            background = upsample_background(img, options.upscale, upsampler, progress=progress)
            lap("background")
            report(0, len(restored), "paste")
            canvas, alpha = _float_canvas(background)
            paste_faces(canvas, restored, matrices, options.upscale, masks, face_scale=max_value / 255.0)
            image = _compose(canvas, alpha, img.ndim == 2, img.dtype, max_value)
            report(len(restored), len(restored), "paste")
            lap("paste")

        timings["total"] = time.perf_counter() - start
        return RestoreResult(
            image=image,
            cropped_faces=cropped,
            restored_faces=restored,
            boxes=boxes,
            landmarks=landmarks,
            timings=timings,
            device=str(self.device),
            face_mask=face_mask,
            notes=notes,
        )

    def restore_faces(
        self,
        crops: Sequence[np.ndarray],
        options: RestoreOptions | None = None,
        progress: Progress | None = None,
    ) -> list[np.ndarray]:
        """Run the generator of ``options.version`` over aligned faces; returns restored uint8 BGR faces.

        ``crops`` are uint8 BGR squares of the generator's ``out_size`` (as :func:`gfp.faces.align_faces`
        cuts them), restored in batches of ``options.batch_size`` and blended by ``options.strength``,
        exactly as :meth:`restore` does; for callers that align faces themselves, e.g. video, which
        batches the faces of several frames together.
        """
        options = options or RestoreOptions()
        net, config = self.generator(options.version)
        for crop in crops:
            if crop.dtype != np.uint8 or crop.shape != (config.out_size, config.out_size, 3):
                raise ValueError(
                    f"restore_faces expects uint8 {config.out_size}x{config.out_size}x3 BGR crops, "
                    f"got {crop.dtype} {crop.shape}"
                )
        return self._restore_faces(net, list(crops), options, progress or (lambda done, total, stage: None))

    @torch.inference_mode()
    def _restore_faces(
        self, net: nn.Module, crops: list[np.ndarray], options: RestoreOptions, report: Progress
    ) -> list[np.ndarray]:
        """Run the generator over aligned crops in batches; blend by strength; return uint8 BGR faces."""
        restored: list[np.ndarray] = []
        dtype = next(net.parameters()).dtype  # decided once, by gfp.loading.prepare_for_inference
        strength = float(options.strength)
        report(0, len(crops), "restore")
        for start in range(0, len(crops), options.batch_size):
            chunk = np.stack(crops[start : start + options.batch_size])
            x = torch.from_numpy(chunk).to(self.device).permute(0, 3, 1, 2).flip(1).float() / 255.0
            x = (x - 0.5) / 0.5
            out = net(x.to(dtype), return_rgb=False)[0].float().clamp_(-1, 1)
            if strength < 1.0:
                out = strength * out + (1.0 - strength) * x
            out = ((out + 1) / 2 * 255.0).round().flip(1).permute(0, 2, 3, 1)
            restored.extend(np.ascontiguousarray(face) for face in out.to(torch.uint8).cpu().numpy())
            report(len(restored), len(crops), "restore")
        return restored


def _check_input(img: Any) -> None:
    if not isinstance(img, np.ndarray):
        raise TypeError(f"expected a numpy image (as cv2 reads it), got {type(img).__name__}")
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a uint8 or uint16 image, got dtype {img.dtype}")
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4))) or min(img.shape[:2]) < 1:
        raise ValueError(f"expected an HxW, HxWx3 (BGR) or HxWx4 (BGRA) image, got shape {img.shape}")


def _color_part(img: np.ndarray) -> np.ndarray:
    """The BGR part of an image (gray expanded to 3 channels, alpha dropped)."""
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return img if img.shape[2] == 3 else np.ascontiguousarray(img[:, :, :3])


def _float_canvas(img: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(BGR float32 copy at native value scale, alpha or None) of an upscaled background."""
    alpha = img[:, :, 3] if img.ndim == 3 and img.shape[2] == 4 else None
    return _color_part(img).astype(np.float32), alpha


def _compose(
    canvas: np.ndarray, alpha: np.ndarray | None, gray: bool, dtype: np.dtype, max_value: float
) -> np.ndarray:
    """Back to the input's layout: round and clip to ``dtype``, to gray if it was, alpha re-attached."""
    if gray:
        canvas = cv2.cvtColor(canvas, cv2.COLOR_BGR2GRAY)
    out = np.clip(np.rint(canvas), 0, max_value).astype(dtype)
    if alpha is not None:
        out = np.concatenate([out, alpha[:, :, None]], axis=2)
    return out


def _aligned_output(
    img: np.ndarray, face: np.ndarray, out_h: int, out_w: int, max_value: float
) -> np.ndarray:
    """For aligned input: the restored face at input size × upscale, in the input's layout."""
    canvas = cv2.resize(face, (out_w, out_h), interpolation=cv2.INTER_LANCZOS4).astype(np.float32)
    canvas *= np.float32(max_value / 255.0)
    alpha = None
    if img.ndim == 3 and img.shape[2] == 4:
        alpha = cv2.resize(img[:, :, 3], (out_w, out_h), interpolation=cv2.INTER_LANCZOS4)
    return _compose(canvas, alpha, img.ndim == 2, img.dtype, max_value)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return img if img.dtype == np.uint8 else np.clip(np.rint(img), 0, 255).astype(np.uint8)
