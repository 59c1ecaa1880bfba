"""The stages of a restore that run networks, as functions over a :class:`gfp.store.ModelStore`: detect,
restore faces, face masks, background; the last stage, paste, needs none (:func:`gfp.paste.paste_back`).
Photos, aligned faces and video frames all go through these same functions (:mod:`gfp.pipeline` and
:mod:`gfp.video` only orchestrate them), so a frame is restored exactly as a photo.

Each stage takes the request's :class:`~gfp.pipeline.RestoreOptions` and its :class:`RunLog` (timings,
notes, progress) and keeps no state between calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from gfp.background import BackgroundUpsampler, check_output_memory, lanczos_upsample
from gfp.color import color_fix
from gfp.faces import Detections, detect_faces
from gfp.paste import parse_masks
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


def load_required(store: ModelStore, options: RestoreOptions) -> None:
    """Load the networks of a photo or clip that ``options`` cannot do without: the detector and the face
    parser when ``use_parse`` is True (a background upsampler asked for by name: :func:`check_output`).
    Missing or broken weights then fail before any work, not after the faces of a photo were restored, or a
    clip's first pass (minutes) had run. A default parser is not required: its stage falls back without its
    weights (noted)."""
    store.detector(options.detector)
    if options.use_parse is True:
        store.parser(required=True)


def check_output(
    store: ModelStore, img: np.ndarray, options: RestoreOptions, run: RunLog
) -> BackgroundUpsampler | None:
    """The :func:`background_upsampler` of a photo or clip (a fallback noted in ``run``), for its background
    stage; first, ``img`` (the photo, or a clip's frame) is refused when its output at ``options.upscale``
    and that background would not fit in the memory left (:func:`gfp.background.check_output_memory`).
    Found in the background stage, that cost the detection and restoration of every face first (a minute on
    a big photo), and a clip's first pass; so did a named upsampler's missing weights."""
    upsampler = background_upsampler(store, options, run)
    check_output_memory(img, options.upscale, upsampler)
    return upsampler


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


def background_upsampler(
    store: ModelStore, options: RestoreOptions, run: RunLog
) -> BackgroundUpsampler | None:
    """The background upsampler of ``options`` with its network for ``options.upscale`` loaded, or None for
    a Lanczos resize: the choice "none", or the default upsampler when its weights cannot be had (noted in
    ``run``). One asked for by name must be had (its ``WeightsError`` says what is missing and where we
    looked)."""
    choice = options.background_on(store.placement.device)
    upsampler = store.background(choice, named=options.bg_upsampler is not None)
    if upsampler is None:
        return None
    try:
        upsampler.network(upsampler.scale_for(options.upscale))
    except WeightsError as err:
        if options.bg_upsampler is not None:
            raise
        instead = "the background was resized with Lanczos instead"
        run.notes.append(Unavailable(choice, err).note(f"background upsampler {choice}", instead))
        return None
    return upsampler


def background(
    upsampler: BackgroundUpsampler | None, img: np.ndarray, options: RestoreOptions, run: RunLog
) -> np.ndarray:
    """The whole image upscaled by the request's ``upsampler`` (:func:`background_upsampler`), or resized
    with Lanczos when it is None."""
    if upsampler is None:
        return lanczos_upsample(img, options.upscale)
    with upsampler.placement.autocast():
        return upsampler.upsample(img, options.upscale, progress=run.progress, tile=options.bg_tile)
