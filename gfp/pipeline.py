"""The restore pipeline: detect → align → restore (batched) → parse → upsample background → paste back.

One :class:`Restorer` holds the loaded networks (generators, detectors, parser, background upsamplers),
each loaded lazily on first use under a lock, so it can be shared by threads; everything about a request
lives in local variables of :meth:`Restorer.restore` and is returned in a :class:`RestoreResult`.

With ``strength=1`` the result is the official GFPGAN output (``GFPGANer.enhance``) for the same weights,
apart from rounding instead of truncating the final pixel values and the checkpoint's fixed noise
instead of fresh random noise (and with the default ``color_fix="none"`` and all faces chosen). A face
choice restores some faces and leaves the others as they are (:mod:`gfp.selection`); a colour fix gives
each restored face its input crop's colours (:mod:`gfp.color`). Inputs keep their layout: gray stays
gray, alpha is upscaled on its own and put back, and 16-bit images stay 16-bit with the 8-bit restored
faces rescaled to 16-bit values.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from gfp import openvino, registry
from gfp.archs import FacesOnly, GeneratorConfig
from gfp.background import BackgroundUpsampler, build_background_upsampler, lanczos_upsample, scaled_size
from gfp.color import check_method, color_fix
from gfp.devices import decide_backend, decide_precision, select_device
from gfp.faces import align_faces, detect_faces, resize_aligned
from gfp.loading import load_generator, load_model, read_generator
from gfp.paste import PARSE_SIZE, parse_masks, paste_faces
from gfp.precision import bf16_autocast, cpu_has_native_bf16
from gfp.registry import ModelEntry
from gfp.selection import FaceSelection, parse_faces, reading_order, select_faces
from gfp.weights.errors import WeightsError
from gfp.weights.resolve import Resolved, cache_dir, resolve

Progress = Callable[[int, int, str], None]
"""``progress(done, total, stage)``: called as work advances, for progress bars in UIs."""
FaceNetwork = Callable[[Tensor], Tensor]
"""Aligned faces → restored faces, float32 (B, 3, S, S) RGB in [-1, 1] (see :meth:`Restorer.face_network`)."""

MIN_UPSCALE, MAX_UPSCALE = 1.0, 8.0
T = TypeVar("T")


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
    """1 = the restored face as GFPGAN makes it; 0 = the input face; in between, a linear blend."""
    detector: str = "retinaface_resnet50"
    detect_max_side: int | None = None
    """Detect on a copy whose longer side is at most this (then scale back): much faster on big photos, and
    it finds faces too large for the detector at full size. None: the full photo, as the official stack."""
    batch_size: int | None = None
    """Faces run through the generator (and parser) together. None: 1 on a CPU (one at a time measured
    faster there: 7.4 vs 9.0 s for 4 faces), 4 on a GPU."""
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
            raise ValueError(
                f"version must be a GFPGAN version, file, folder or repo id, got {self.version!r}"
            )
        if isinstance(self.upscale, bool) or not isinstance(self.upscale, int | float):
            raise ValueError(f"upscale must be a number in [1, 8], got {self.upscale!r}")
        if not (MIN_UPSCALE <= self.upscale <= MAX_UPSCALE):
            raise ValueError(f"upscale must be in [{MIN_UPSCALE:g}, {MAX_UPSCALE:g}], got {self.upscale}")
        if self.bg_upsampler is not None and self.bg_upsampler not in registry.choice_names("upsampler"):
            choices = ", ".join(registry.choice_names("upsampler"))
            raise ValueError(f"unknown background upsampler {self.bg_upsampler!r}; choose one of: {choices}")
        if not isinstance(self.bg_tile, int) or self.bg_tile < 0:
            raise ValueError(f"bg_tile must be an integer >= 0 (0 = no tiling), got {self.bg_tile!r}")
        if not (0.0 <= float(self.strength) <= 1.0):
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        if self.detector not in registry.choice_names("detector"):
            choices = ", ".join(registry.choice_names("detector"))
            raise ValueError(f"unknown face detector {self.detector!r}; choose one of: {choices}")
        side = self.detect_max_side
        if side is not None and (isinstance(side, bool) or not isinstance(side, int) or side < 64):
            raise ValueError(f"detect_max_side must be an integer >= 64 (or None), got {side!r}")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        check_method(self.color_fix)
        object.__setattr__(self, "faces", parse_faces(self.faces))
        if isinstance(self.min_face, bool) or not isinstance(self.min_face, int) or self.min_face < 0:
            raise ValueError(f"min_face must be a whole number of pixels >= 0, got {self.min_face!r}")
        if self.only_center_face and self.faces not in ("all", "center"):
            raise ValueError(
                f"only_center_face means faces='center'; it cannot be combined with {self.faces!r}"
            )
        if self.aligned and (self.faces != "all" or self.min_face):
            raise ValueError("faces and min_face do not apply to aligned input (each image is one face)")

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


@dataclass(frozen=True)
class Unavailable:
    """An optional model whose weights cannot be had: its name and the error that says where we looked."""

    name: str
    error: WeightsError

    @property
    def reason(self) -> str:
        """The first line of the error (without the list of places looked)."""
        return str(self.error).splitlines()[0].removesuffix("Looked in:").strip().rstrip(".")

    def note(self, what: str, instead: str) -> str:
        """A one-line note for the result: what was unavailable, why, and what was done instead."""
        return f"{what} unavailable ({self.reason}); {instead}"


class RunLog:
    """Per-call bookkeeping of :meth:`Restorer.restore` (or of one clip in :mod:`gfp.video`): timings per
    stage, notes for the caller, progress reports."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []
        self.start = self.clock = time.perf_counter()

    def report(self, done: int, total: int, stage: str) -> None:
        if self.progress is not None:
            self.progress(done, total, stage)

    def lap(self, stage: str) -> None:
        """Add the time since the previous lap to ``stage``."""
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self.clock
        self.clock = now


class Restorer:
    """Loads networks lazily (once per weight file, lock-protected) and restores images; thread-safe.

    ``weights_dir`` is where weights are looked up first (see :mod:`gfp.weights.resolve`); ``device`` is
    "auto" (cuda, mps, cpu) or a torch device name; ``half`` runs the networks that do well in float16
    (generator, background upsamplers) in float16 on a GPU. ``bf16`` on a CPU runs in bfloat16 autocast the
    networks whose registry ``supports.precisions`` lists bf16: clean-architecture generators
    (:func:`gfp.registry.generator_supports`), the parser and the SRVGG backgrounds (None: where
    the CPU computes bf16 natively, see :func:`gfp.precision.cpu_has_native_bf16`; False: float32).
    ``backend`` (None: env ``GFP_BACKEND``, else "auto") runs the generator and the face parser in PyTorch
    ("torch") or converted for OpenVINO ("openvino", CPU only; "auto" picks it on a CPU when it is
    installed, see :func:`gfp.devices.decide_backend`); a network OpenVINO cannot convert runs in PyTorch,
    with a warning. The backgrounds stay in PyTorch (OpenVINO measured no faster for them), and so does the
    detector (0.08-0.2 s of a 13-16 s photo in the benchmark).
    Device, precision and backend are decided here, once, and passed to every network. Networks are cached
    by the file they were loaded from, so "1.4", "v1.4" and "GFPGANv1.4.pth" share one copy. An optional
    model that cannot be had is remembered (an offline machine does not retry the download on every
    request).
    """

    def __init__(
        self,
        weights_dir: str | os.PathLike[str] | None = None,
        device: str = "auto",
        half: bool = False,
        bf16: bool | None = None,
        backend: str | None = None,
    ) -> None:
        self.weights_dir = weights_dir
        self.device = select_device(device)
        self.backend = decide_backend(self.device, backend)
        self.dtype = decide_precision(self.device, half)
        on_cpu = self.device.type == "cpu"
        self.bf16 = on_cpu and (cpu_has_native_bf16() if bf16 is None else bool(bf16))
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], Any] = {}
        self._model_locks: dict[tuple[str, str], threading.Lock] = {}

    @property
    def half(self) -> bool:
        """Whether the networks that do well in float16 run in it."""
        return self.dtype == torch.float16

    # ------------------------------------------------------------------ models (lazy, shared)
    def _get(self, key: tuple[str, str], load: Callable[[], T]) -> T:
        """The cached value for ``key``, made once by ``load`` (other keys keep loading in parallel)."""
        with self._lock:
            if key in self._models:
                return self._models[key]
            key_lock = self._model_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            value = load()
            with self._lock:
                self._models[key] = value
        return value

    def _resolve(self, spec: str | os.PathLike[str]) -> Resolved:
        """Where the weights of ``spec`` are (found once per spelling; downloads happen once)."""
        spec = os.fspath(spec)
        return self._get(("resolve", spec), lambda: resolve(spec, self.weights_dir))

    def _dtype(self, entry: ModelEntry | None, kind: str) -> torch.dtype:
        """This Restorer's precision where the model runs well in it, else float32."""
        entry = entry or registry.MODEL_ZOO[registry.DEFAULTS[kind]]
        return self.dtype if self.dtype in entry.supports.precisions else torch.float32

    def batch_size(self, options: RestoreOptions) -> int:
        """Faces per generator and parser call: ``options.batch_size``, else 1 on a CPU and 4 on a GPU."""
        if options.batch_size is not None:
            return options.batch_size
        return 1 if self.device.type == "cpu" else 4

    def _runs_bf16(self, *supports: registry.Supports) -> bool:
        """Whether networks that support these run in bf16 autocast: on a bf16 CPU, when every one of them
        is measured good in bf16 (registry ``supports.precisions``)."""
        return self.bf16 and all(torch.bfloat16 in s.precisions for s in supports)

    def _bf16_ok(self, kind: str, choice: str) -> bool:
        """Whether a zoo choice (the parser, a background) runs in bf16 autocast: all its networks do."""
        return self._runs_bf16(*(registry.MODEL_ZOO[n].supports for n in registry.members(kind, choice)))

    def generator(self, spec: str | os.PathLike[str]) -> tuple[nn.Module, GeneratorConfig]:
        """(network, GeneratorConfig) for a version / file / folder / repo id."""
        found = self._resolve(spec)
        dtype = self._dtype(found.entry, "generator")

        def load() -> tuple[nn.Module, GeneratorConfig]:
            return load_generator(found, device=self.device, dtype=dtype)

        return self._get(("generator", str(found.path)), load)

    def generator_config(self, spec: str | os.PathLike[str]) -> GeneratorConfig:
        """The layout of a generator, read from its weights' keys and shapes without building it (raises
        what :meth:`generator` would for missing or foreign weights)."""
        found = self._resolve(spec)
        return self._get(("config", str(found.path)), lambda: read_generator(found)[1])

    def face_network(self, spec: str | os.PathLike[str]) -> tuple[FaceNetwork, GeneratorConfig]:
        """(faces → restored faces, GeneratorConfig) for a version / file / folder / repo id, in this
        Restorer's backend and precision (see :data:`FaceNetwork`); made once per weight file, then a lookup.
        With OpenVINO a converted model found in the cache is used without building the PyTorch module.
        """
        path = str(self._resolve(spec).path)

        def faces_only() -> nn.Module:
            return FacesOnly(self.generator(spec)[0])

        def build() -> tuple[FaceNetwork, GeneratorConfig]:
            config = self.generator_config(spec)
            bf16 = self._runs_bf16(registry.generator_supports(config))
            compiled = self._compiled(path, faces_only, config.out_size, bf16, "faces")
            if compiled is not None:
                return compiled, config
            net = self.generator(spec)[0]
            dtype = next(net.parameters()).dtype  # decided once, by the Restorer

            def faces(x: Tensor) -> Tensor:
                with bf16_autocast(bf16):
                    return net(x.to(dtype), return_rgb=False)[0].float()

            return faces, config

        return self._get(("faces", path), build)

    def _compiled(
        self, path: str, make: Callable[[], nn.Module], size: int, bf16: bool, role: str
    ) -> nn.Module | None:
        """The network ``make()`` (the ``role`` network loaded from ``path``) converted for OpenVINO, for any
        batch of RGB ``size``² images (once; converted models are cached on disk, and ``make`` is called only
        when the cache lacks it), or None: with the PyTorch backend, or when OpenVINO cannot convert it
        (remembered and warned once). The caller then runs it in PyTorch."""
        if self.backend != "openvino":
            return None

        def build() -> nn.Module | None:
            name = Path(path).name
            example = torch.zeros(2, 3, size, size)  # only its layout matters
            try:
                return openvino.compile_network(
                    make, example, (0,), bf16=bf16, cache_dir=cache_dir(), name=name, source=path, role=role
                )
            except Exception as err:  # noqa: BLE001  (a foreign converter failed: use the reference path)
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                warnings.warn(
                    f"OpenVINO could not compile {name} ({first}); it runs in PyTorch", stacklevel=4
                )
                return None

        return self._get(("openvino", path), build)

    def network(self, name: str) -> nn.Module:
        """The registry model ``name`` (detector, parser, upsampler) with its weights, on the device."""
        found = self._resolve(name)
        dtype = self._dtype(found.entry, found.entry.kind if found.entry else "detector")

        def load() -> nn.Module:
            return load_model(found, device=self.device, dtype=dtype)

        return self._get(("network", str(found.path)), load)

    def optional(self, name: str) -> nn.Module | Unavailable:
        """:meth:`network`, or :class:`Unavailable` when its weights cannot be had (remembered)."""

        def load() -> nn.Module | Unavailable:
            try:
                return self.network(name)
            except WeightsError as err:
                return Unavailable(name, err)

        return self._get(("optional", name), load)

    def _required(self, name: str) -> nn.Module:
        got = self.optional(name)
        if isinstance(got, Unavailable):
            raise got.error
        return got

    def detector(self, name: str) -> nn.Module:
        """The face detector ``name`` with its weights, on the device."""
        return self.network(name)

    def parser(self, required: bool = False) -> nn.Module | Unavailable:
        """ParseNet with its weights, or :class:`Unavailable` (raised instead when ``required``)."""
        name = registry.DEFAULTS["parser"]
        return self._required(name) if required else self.optional(name)

    def background(self, name: str) -> BackgroundUpsampler | None:
        """The background upsampler for choice ``name`` (None for "none"); its networks load on first use
        (a network whose weights cannot be had raises then) and are shared with every other choice."""

        def build() -> BackgroundUpsampler | None:
            members = registry.members("upsampler", name)
            dtype = self._dtype(registry.MODEL_ZOO[members[0]], "upsampler") if members else self.dtype
            return build_background_upsampler(name, device=self.device, dtype=dtype, load=self._required)

        return self._get(("background", name), build)

    def prepare(self, options: RestoreOptions) -> list[threading.Thread]:
        """Start loading the generator and the face parser that ``options`` use, and compiling their
        OpenVINO networks for a batch of faces, in background threads; returns them (join to wait).

        One thread per network, so that OpenVINO compiles both at once (0.56 s instead of 0.95 s on 2
        cores), beside whatever the caller does next (reading and detecting its first photo). A call that
        needs a network meanwhile waits for it; an error is left for that call to report.
        """
        batch = self.batch_size(options)

        def generator() -> None:
            faces, config = self.face_network(options.version)
            if isinstance(faces, openvino.OpenVINONetwork):
                faces.prepare((batch, 3, config.out_size, config.out_size))

        def parser() -> None:
            found = self.face_parser(options)[0]
            if isinstance(found, openvino.OpenVINONetwork):
                found.prepare((batch, 3, PARSE_SIZE, PARSE_SIZE))

        def quietly(job: Callable[[], None]) -> None:
            with contextlib.suppress(Exception):  # reported by the call that needs the network
                job()

        jobs = [generator] + ([] if options.aligned or options.use_parse is False else [parser])
        threads = [
            threading.Thread(target=quietly, args=(job,), name="gfp-prepare", daemon=True) for job in jobs
        ]
        for thread in threads:
            thread.start()
        return threads

    # ------------------------------------------------------------------ restore
    def restore(
        self, img: np.ndarray, options: RestoreOptions | None = None, progress: Progress | None = None
    ) -> RestoreResult:
        """Restore every face of ``img`` (HxW gray, HxWx3 BGR or HxWx4 BGRA; uint8 or uint16)."""
        options = options or RestoreOptions()
        _check_input(img)
        run = RunLog(progress)
        config = self.generator_config(options.version)  # missing weights fail here, before any work
        restore = self._restore_aligned if options.aligned else self._restore_photo
        result = restore(img, config, options, run)
        result.timings["total"] = time.perf_counter() - run.start
        return result

    def _restore_aligned(
        self,
        img: np.ndarray,
        config: GeneratorConfig,
        options: RestoreOptions,
        run: RunLog,
    ) -> RestoreResult:
        """An FFHQ-aligned face: restore it whole; the output is the face at input size × upscale."""
        work = _work_image(img)
        run.lap("load")
        crops = [resize_aligned(work, config.out_size)]
        faces, _ = self.face_network(options.version)
        restored = self._restore_faces(faces, config, crops, options, run)
        run.lap("restore")
        out_h, out_w = scaled_size(img.shape[0], img.shape[1], options.upscale)
        image = _aligned_output(img, restored[0], out_h, out_w, _max_value(img))
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
            face_numbers=[1],
            selection=FaceSelection(1, (1,)),
        )

    def _restore_photo(
        self,
        img: np.ndarray,
        config: GeneratorConfig,
        options: RestoreOptions,
        run: RunLog,
    ) -> RestoreResult:
        """A photo: detect and align faces, restore them, upsample the background, paste the faces back."""
        work = _work_image(img)
        detector = self.detector(options.detector)
        run.lap("load")
        run.report(0, 1, "detect")
        found = detect_faces(detector, work, max_side=options.detect_max_side)
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
        faces, _ = self.face_network(options.version)  # OpenVINO may still compile it meanwhile (prepare)
        restored = self._restore_faces(faces, config, crops, options, run)
        run.lap("restore")
        masks, face_mask = self.face_masks(restored, options, run)
        background = self.background_image(img, options, run)
        run.lap("background")
        run.report(0, len(restored), "paste")
        max_value = _max_value(img)
        canvas, alpha = _float_canvas(background)
        paste_faces(canvas, restored, matrices, options.upscale, masks, face_scale=max_value / 255.0)
        image = _compose(canvas, alpha, img.ndim == 2, img.dtype, max_value)
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
            face_numbers=[int(n) for n in numbers[keep]],
            selection=selection,
        )

    def face_parser(self, options: RestoreOptions) -> tuple[nn.Module | Unavailable, bool]:
        """(ParseNet in this Restorer's backend, or :class:`Unavailable` when its weights cannot be had and
        ``options`` do not require it; whether it runs in bf16 autocast)."""
        found = self.parser(required=options.use_parse is True)
        bf16 = self._bf16_ok("parser", registry.DEFAULTS["parser"])
        if isinstance(found, Unavailable):
            return found, bf16
        path = str(self._resolve(registry.DEFAULTS["parser"]).path)
        return self._compiled(path, lambda: found, PARSE_SIZE, bf16, "parser") or found, bf16

    def face_masks(
        self, restored: list[np.ndarray], options: RestoreOptions, run: RunLog
    ) -> tuple[list[np.ndarray] | None, str]:
        """(ParseNet masks, "parsenet"), or (None, "square") without a parser (noted when it was wanted)."""
        if options.use_parse is False or not restored:
            return None, "square"
        parser, bf16 = self.face_parser(options)
        if isinstance(parser, Unavailable):
            run.lap("load")
            run.notes.append(parser.note("face parser", "faces blended with the soft square mask instead"))
            return None, "square"
        run.lap("load")
        run.report(0, len(restored), "parse")
        with bf16_autocast(bf16):
            masks = parse_masks(parser, restored, self.batch_size(options))
        run.report(len(restored), len(restored), "parse")
        run.lap("parse")
        return masks, "parsenet"

    def background_image(self, img: np.ndarray, options: RestoreOptions, run: RunLog) -> np.ndarray:
        """The whole image upscaled; the default upsampler falls back to Lanczos (noted) without weights."""
        choice = options.background_on(self.device)
        upsampler = self.background(choice)
        run.lap("load")
        if upsampler is None:
            return lanczos_upsample(img, options.upscale)
        try:
            with bf16_autocast(self._bf16_ok("upsampler", choice)):
                return upsampler.upsample(img, options.upscale, progress=run.progress, tile=options.bg_tile)
        except WeightsError as err:
            if options.bg_upsampler is not None:  # asked for by name: say what is missing and where we looked
                raise
            instead = "the background was resized with Lanczos instead"
            run.notes.append(Unavailable(choice, err).note(f"background upsampler {choice}", instead))
            return lanczos_upsample(img, options.upscale)

    def restore_faces(
        self,
        crops: Sequence[np.ndarray],
        options: RestoreOptions | None = None,
        progress: Progress | None = None,
    ) -> list[np.ndarray]:
        """Run the generator of ``options.version`` over aligned faces; returns restored uint8 BGR faces.

        ``crops`` are uint8 BGR squares of the generator's ``out_size`` (as :func:`gfp.faces.align_faces`
        cuts them), restored in batches (:meth:`batch_size`) and blended by ``options.strength``,
        exactly as :meth:`restore` does; for callers that align faces themselves, e.g. video, which
        batches the faces of several frames together.
        """
        options = options or RestoreOptions()
        faces, config = self.face_network(options.version)
        for crop in crops:
            if crop.dtype != np.uint8 or crop.shape != (config.out_size, config.out_size, 3):
                raise ValueError(
                    f"restore_faces expects uint8 {config.out_size}x{config.out_size}x3 BGR crops, "
                    f"got {crop.dtype} {crop.shape}"
                )
        return self._restore_faces(faces, config, list(crops), options, RunLog(progress))

    @torch.inference_mode()
    def _restore_faces(
        self,
        faces: FaceNetwork,
        config: GeneratorConfig,
        crops: list[np.ndarray],
        options: RestoreOptions,
        run: RunLog,
    ) -> list[np.ndarray]:
        """Run the generator over aligned crops in batches, fix colours against each crop, blend by strength;
        return uint8 BGR faces."""
        restored: list[np.ndarray] = []
        strength = float(options.strength)
        run.report(0, len(crops), "restore")
        batch = self.batch_size(options)
        for start in range(0, len(crops), batch):
            chunk = np.stack(crops[start : start + batch])
            x = torch.from_numpy(chunk).to(self.device).permute(0, 3, 1, 2).flip(1).float() / 255.0
            x = (x - 0.5) / 0.5
            out = faces(x).clamp_(-1, 1)
            if options.color_fix != "none":  # in float32 on the device, against the face's own crop
                out = color_fix(out, x, options.color_fix).clamp_(-1, 1)
            if strength < 1.0:
                out = strength * out + (1.0 - strength) * x
            out = ((out + 1) / 2 * 255.0).round().flip(1).permute(0, 2, 3, 1)
            restored.extend(np.ascontiguousarray(face) for face in out.to(torch.uint8).cpu().numpy())
            run.report(len(restored), len(crops), "restore")
        return restored


def _max_value(img: np.ndarray) -> float:
    return 65535.0 if img.dtype == np.uint16 else 255.0


def _work_image(img: np.ndarray) -> np.ndarray:
    """The BGR image faces are found and cut on: 8-bit values (as the official helper scales 16-bit)."""
    color = _color_part(img)
    return color if img.dtype == np.uint8 else color.astype(np.float32) * np.float32(255.0 / _max_value(img))


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
