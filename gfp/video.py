"""Restore the faces of a video clip: decode → detect, track, smooth → restore (batched) → paste → encode.

Everything streams: frames are decoded one at a time, at most ``VideoOptions.buffer_frames`` wait for a
generator batch, and each restored frame is encoded as soon as it is pasted, so memory stays bounded
whatever the clip's length. The faces of several frames go through the generator (and the face parser)
together. Faces are tracked from frame to frame and their landmarks smoothed before alignment
(:mod:`gfp.tracking`), so the pasted face does not jitter; the checkpoint's fixed noise keeps its texture
stable.

The output is an MP4 (H.264 by default) with the input's timestamps (variable frame rates survive), frame
count and duration; rotation metadata is applied to the pixels (the output is upright, without rotation
metadata); the input's colour matrix is kept and tagged (players guess an untagged one). The audio is
copied when MP4 can hold its codec, else re-encoded to AAC; it keeps its language and title, the video
its own, and the clip keeps the tags MP4 holds (title, date ...). The file is written under a temporary
name next to the output and moved into place only when complete, so the output path never holds a
half-written video. Decoding and encoding use PyAV, whose wheels carry the FFmpeg libraries.

Odd output sizes are padded by one edge pixel to even ones (4:2:0 video needs even sizes).

A face choice other than all faces (``RestoreOptions.faces``, ``min_face``) applies to people, not to
single detections: a first pass detects and tracks the faces of every frame (:func:`plan_faces`) and
decides per person (a track, or tracks one after another at one place), on its median box, so the same
person is restored or skipped in every frame; the second pass restores from those detections without
detecting again.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from gfp import stages
from gfp.atomic import PARTIAL_SUFFIX, atomic_path, remove_abandoned
from gfp.background import BackgroundUpsampler, scaled_size
from gfp.checks import is_bool, is_real, is_whole
from gfp.faces import align_faces
from gfp.imageio import DEFAULT_MAX_PIXELS, megapixels
from gfp.messages import OptionError
from gfp.paste import paste_back
from gfp.pipeline import Progress, RestoreOptions, Restorer, RunLog, expect
from gfp.selection import FacePlan, FaceSelection, FrameFaces, choose_tracks
from gfp.tracking import FaceTracker, SmoothingOptions

try:
    import av
    from av.video.reformatter import Interpolation
except ImportError:  # photos need no PyAV: only opening a video says what to install
    av = None

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv"}
    | {".mts", ".m2ts", ".3gp", ".3g2", ".flv", ".ogv", ".vob", ".mxf", ".h264", ".264", ".hevc", ".h265"}
)
"""Files the CLI treats as videos (anything else in a folder is read as a photo)."""
VIDEO_CODECS: dict[str, tuple[str, int]] = {
    "h264": ("libx264", 51),
    "h265": ("libx265", 51),
    "vp9": ("libvpx-vp9", 63),
    "av1": ("libsvtav1", 63),
}
"""Output codec name → (FFmpeg encoder, highest CRF it takes)."""
MAX_SIDE = {"h264": 16384, "av1": 16384}
"""Output codec name → the widest or tallest frame its encoder takes (measured; the others take more)."""
COPY_AUDIO_CODECS = frozenset({"aac", "mp3", "ac3", "eac3", "alac"})
"""Audio codecs copied into the MP4 as they are; any other audio is re-encoded to AAC."""
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
_MATRICES = frozenset({1, 4, 5, 6, 7, 9})
"""FFmpeg's colour matrices (AVColorSpace: BT.709, FCC, BT.470BG, SMPTE 170M, SMPTE 240M, BT.2020) that its
scaler converts with; frames of any other, or of none, are decoded as BT.601 (SMPTE 170M, 6)."""
_PRIMARIES = frozenset({1, *range(4, 13)})
_TRANSFERS = frozenset({1, *range(4, 19)})
"""Colour primaries and transfers (ITU-T H.273 values) that every output encoder takes: x265 refuses to
open with others that FFmpeg knows (primaries 22, EBU Tech 3213-E), so those are left unspecified."""
_EXACT = None
if av is not None:
    _EXACT = Interpolation.BILINEAR | Interpolation.ACCURATE_RND
    _EXACT |= Interpolation.FULL_CHR_H_INT | Interpolation.FULL_CHR_H_INP
"""swscale's flags for converting between YUV and BGR without bias: with its default rounding each decode
and encode made the picture darker, by 2 levels of 255 a pass through :func:`restore_video`."""
_MISSING_FRAMES_TOLERANCE = 0.01
"""Fewer decoded frames than the header announces, beyond this fraction (and 2 frames), = truncated."""
_AUDIO_JITTER = Fraction(1, 50)
"""Seconds that re-encoded sound may begin before the sound before it ends and still be taken as whole, its
timestamps jittering (a capture's): it follows on, so the sound is late by at most this much."""


class VideoError(ValueError):
    """A video that cannot be read or written; the message names the file and says what is wrong."""


class VideoOptionError(VideoError, OptionError):
    """A clip the options cannot make (its restored frames too large for the codec): the message names the
    file (the value ``path``) and the options to change (see :class:`gfp.messages.OptionError`)."""


@dataclass(frozen=True)
class VideoOptions:
    """How to encode the output and smooth the faces; validated on construction (``ValueError``)."""

    codec: str = "h264"
    """Output video codec: "h264" (default, plays everywhere), "h265", "vp9" or "av1"."""
    crf: int = 18
    """Constant rate factor: lower = better quality and bigger files (0-51 for h264/h265, 0-63 else)."""
    smooth: bool = True
    """Smooth each face track's landmarks before alignment (no jitter); False = per-frame detections."""
    smoothing: SmoothingOptions = field(default_factory=SmoothingOptions)
    buffer_frames: int = 16
    """At most this many decoded frames wait for a generator batch (bounds memory)."""
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    """Refuse frames with more pixels than this (None = no limit), before decoding anything."""
    max_seconds: float | None = None
    """Refuse clips longer than this many seconds (None = no limit)."""

    def __post_init__(self) -> None:
        if self.codec not in VIDEO_CODECS:
            raise ValueError(f"unknown video codec {self.codec!r}; choose one of: {', '.join(VIDEO_CODECS)}")
        top = VIDEO_CODECS[self.codec][1]
        if not is_whole(self.crf) or not 0 <= self.crf <= top:
            raise OptionError(
                "{crf} must be an integer in [0, {top}] for {encoder}, got {value!r}",
                top=top,
                encoder=self.codec,
                value=self.crf,
            )
        if not is_whole(self.buffer_frames) or self.buffer_frames < 1:
            raise OptionError(
                "{buffer_frames} must be an integer >= 1, got {value!r}", value=self.buffer_frames
            )
        if self.max_pixels is not None and not (is_whole(self.max_pixels) and self.max_pixels >= 1):
            raise OptionError(
                "{max_pixels} must be a positive integer or None, got {value!r}", value=self.max_pixels
            )
        if self.max_seconds is not None and not (is_real(self.max_seconds) and self.max_seconds > 0):
            raise OptionError(
                "{max_seconds} must be a positive number or None, got {value!r}", value=self.max_seconds
            )
        if not is_bool(self.smooth) or not isinstance(self.smoothing, SmoothingOptions):
            raise OptionError("{smooth} must be True or False, and {smoothing} a SmoothingOptions")
        object.__setattr__(self, "smooth", bool(self.smooth))  # NumPy's kept as Python's


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a clip (before decoding it)."""

    width: int
    """Frame width as displayed (after rotation)."""
    height: int
    fps: float
    """Average frame rate (0 when unknown)."""
    frames: int
    """Frame count from the header (0 when the container does not say)."""
    duration: float
    """Seconds (0 when unknown)."""
    rotation: int
    """Display rotation in degrees counter-clockwise (0, 90, 180, 270)."""
    codec: str
    audio: str | None
    """Codec of the first audio stream, None without audio."""


@dataclass
class RestoredFrame:
    """One output frame of :func:`restore_frames` and what was done to it."""

    image: np.ndarray
    """The restored frame, uint8 BGR, size × upscale."""
    time: float
    """Presentation time (seconds)."""
    boxes: np.ndarray
    """(N, 5) detections x1, y1, x2, y2, score of the faces restored."""
    landmarks: np.ndarray
    """(N, 5, 2) landmarks the faces were aligned with (smoothed unless smoothing is off)."""
    matrices: list[np.ndarray]
    """Image → crop alignment transforms, one per face."""
    track_ids: list[int]
    """Face track of each face (the same person keeps its id from frame to frame)."""
    restored_faces: list[np.ndarray]


@dataclass
class VideoResult:
    """What :func:`restore_video` wrote."""

    path: Path
    frames: int
    faces: int
    """Faces restored, summed over frames."""
    width: int
    height: int
    fps: float
    """Average frame rate of the output (the input header's unless a variable rate makes it another)."""
    duration: float
    """Seconds, from the first frame's start to the last frame's end."""
    audio: str
    """"copied", "re-encoded (<codec> → aac)" or "none"."""
    timings: dict[str, float]
    device: str
    notes: list[str] = field(default_factory=list)
    selection: FaceSelection = field(default_factory=lambda: FaceSelection(0))
    """Faces (people, i.e. tracks) found, restored and skipped, and why."""
    backends: dict[str, str] = field(default_factory=dict)
    """What ran the generator and the face parser, as :attr:`gfp.pipeline.RestoreResult.backends`."""


def is_video(path: str | os.PathLike[str]) -> bool:
    """Whether the CLI treats ``path`` as a video (by its extension)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _open(path: Path) -> av.container.InputContainer:
    if av is None:
        raise VideoError(f"{path}: videos need PyAV, which is not installed (pip install av)")
    if not path.is_file():
        raise VideoError(f"{path}: {'a folder, not a video' if path.is_dir() else 'no such file'}")
    try:
        return av.open(str(path), metadata_errors="replace")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"{path}: not a video or corrupt ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _first_frame_rotation(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """The display rotation of the first decoded frame (FFmpeg attaches the stream's matrix to frames)."""
    for frame in container.decode(stream):
        return round(frame.rotation / 90) * 90 % 360
    return 0


def probe_video(path: str | os.PathLike[str], options: VideoOptions | None = None) -> VideoInfo:
    """Read a clip's header (and its first frame, for the rotation); ``VideoError`` if unusable."""
    options = expect(options, VideoOptions, "options", VideoOptions)
    path = Path(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        rotation = 0
        with contextlib.suppress(av.FFmpegError):
            rotation = _first_frame_rotation(container, stream)
        info = _info(container, stream, rotation)
    _check_limits(path, info, options)
    return info


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if container.format.name == "image2" or container.format.name.endswith("_pipe"):  # FFmpeg's still images
        streams = container.streams.video
        if not streams or streams[0].codec_context is None or not streams[0].codec_context.width:
            # taken for a picture by its name alone (a text file named .png): it is neither
            raise VideoError(f"{path}: not a video or corrupt (nor a picture, as its name says)")
        raise VideoError(f"{path}: a still image, not a video; restore it as a photo")
    # A cover picture (an "attached pic": music and podcast files carry one) is no video of the clip.
    moving = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not moving:
        only = " (only a cover picture)" if container.streams.video else ""
        raise VideoError(f"{path}: no video stream{only}")
    best = container.streams.best("video")  # FFmpeg's choice: a one-frame picture loses to the clip
    stream = best if best in moving else moving[0]
    if stream.codec_context is None:
        raise VideoError(f"{path}: unsupported video codec (no decoder for it in this FFmpeg)")
    if not stream.codec_context.width or not stream.codec_context.height:
        raise VideoError(f"{path}: the video stream has no frame size (corrupt header?)")
    return stream


def _info(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, rotation: int
) -> VideoInfo:
    width, height = stream.codec_context.width, stream.codec_context.height
    if rotation in (90, 270):
        width, height = height, width
    rate = stream.average_rate or stream.guessed_rate
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / av.time_base
    else:
        duration = 0.0
    audio = _codec_name(container.streams.audio[0]) if container.streams.audio else None
    return VideoInfo(
        width=width,
        height=height,
        fps=float(rate) if rate else 0.0,
        frames=int(stream.frames or 0),
        duration=duration,
        rotation=rotation,
        codec=stream.codec_context.name,
        audio=audio,
    )


def _codec_name(stream: av.stream.Stream) -> str:
    """The codec of ``stream`` ("mp3"), not the name of the decoder FFmpeg chose for it ("mp3float")."""
    return stream.codec_context.codec.canonical_name


def _check_limits(path: Path, info: VideoInfo, options: VideoOptions) -> None:
    pixels = info.width * info.height
    if options.max_pixels is not None and pixels > options.max_pixels:
        size, most = megapixels(pixels, options.max_pixels)
        raise VideoError(
            f"{path}: frames of {info.width}x{info.height} ({size} MP) are above the limit of {most} MP; "
            "downscale the clip first"
        )
    if options.max_seconds is not None and info.duration > options.max_seconds:
        raise VideoError(
            f"{path}: the clip lasts {info.duration:.1f} s, above the limit of {options.max_seconds:g} s; "
            "trim it first"
        )


# ---------------------------------------------------------------------------------------------- restoring
@dataclass
class _Pending:
    image: np.ndarray
    time: float
    boxes: np.ndarray
    landmarks: np.ndarray
    crops: list[np.ndarray]
    matrices: list[np.ndarray]
    track_ids: list[int]


def needs_plan(options: RestoreOptions) -> bool:
    """Whether ``options`` choose among the faces of a clip, which takes a first pass (:func:`plan_faces`)."""
    return options.face_choice != "all" or options.min_face > 0


def _tracked(
    restorer: Restorer,
    frames: Iterable[tuple[np.ndarray, float]],
    options: RestoreOptions,
    video: VideoOptions,
) -> Iterator[tuple[np.ndarray, float, FrameFaces]]:
    """Detect every face of each frame and link them into tracks: (frame, time, its faces) in order."""
    tracker = FaceTracker(video.smoothing, smooth=video.smooth)
    for image, seconds in frames:
        found = stages.detect(restorer.store, image, options)
        landmarks, ids = tracker.update(found.boxes, found.landmarks, seconds)
        yield image, seconds, FrameFaces(found.boxes, landmarks, ids, seconds)


def plan_faces(
    restorer: Restorer,
    frames: Iterable[tuple[np.ndarray, float]],
    options: RestoreOptions | None = None,
    video: VideoOptions | None = None,
    progress: Progress | None = None,
    total: int = 0,
) -> FacePlan:
    """The first pass of a face choice over a clip: detect and track every frame's faces (as
    :func:`restore_frames` would) and choose tracks by ``options.faces`` and ``options.min_face``.
    Holds only boxes and landmarks, not frames. ``progress(done, total, "detect")`` after each frame."""
    options = expect(options, RestoreOptions, "options", RestoreOptions)
    video = expect(video, VideoOptions, "video", VideoOptions)
    return _plan(restorer, frames, options, video, progress, total)


def _plan(
    restorer: Restorer,
    frames: Iterable[tuple[np.ndarray, float]],
    options: RestoreOptions,
    video: VideoOptions,
    progress: Progress | None,
    total: int,
) -> FacePlan:
    """:func:`plan_faces` over arguments already checked (:func:`restore_video` checks its own once)."""
    seen: list[FrameFaces] = []
    height = width = 0
    for done, (image, _, faces) in enumerate(_tracked(restorer, _checked(frames), options, video), 1):
        seen.append(faces)
        height, width = image.shape[:2]
        if progress is not None:
            progress(done, total, "detect")
    return choose_tracks(seen, width, height, options.face_choice, options.min_face)


def _checked(frames: Iterable[tuple[np.ndarray, float]]) -> Iterator[tuple[np.ndarray, float]]:
    """The (frame, seconds) pairs, each checked: frames are uint8 H×W×3 BGR, as decoding makes them (a
    16-bit or float frame would be restored as garbage, not refused)."""
    for item in frames:
        if not isinstance(item, tuple) or len(item) != 2:
            raise ValueError(f"frames must be (image, seconds) pairs, got {type(item).__name__}")
        image, seconds = item
        if not isinstance(image, np.ndarray):
            raise ValueError(f"frames must be uint8 HxWx3 BGR images, got {type(image).__name__}")
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise ValueError(f"frames must be uint8 HxWx3 BGR images, got {image.dtype} {image.shape}")
        if not is_real(seconds) or not math.isfinite(seconds):  # NaN would smooth landmarks into NaN
            raise ValueError(f"frame times must be finite numbers of seconds, got {seconds!r}")
        yield image, float(seconds)


def _replayed(
    frames: Iterable[tuple[np.ndarray, float]], plan: FacePlan
) -> Iterator[tuple[np.ndarray, float, FrameFaces]]:
    """The planned faces of each frame, in order, without detecting again."""
    for index, (image, seconds) in enumerate(frames):
        if index >= len(plan.frames):
            raise ValueError(f"more frames than the plan was made from ({len(plan.frames)})")
        yield image, seconds, plan.frames[index]


def restore_frames(
    restorer: Restorer,
    frames: Iterable[tuple[np.ndarray, float]],
    options: RestoreOptions | None = None,
    video: VideoOptions | None = None,
    notes: list[str] | None = None,
    plan: FacePlan | None = None,
    backends: dict[str, str] | None = None,
) -> Iterator[RestoredFrame]:
    """Restore a stream of (uint8 BGR frame, time in seconds) pairs, in order; yields each restored frame.

    The streaming core of :func:`restore_video`, without any file: frames are detected and tracked one by
    one, their faces restored in generator batches spanning frames, each frame pasted and yielded in
    order. With ``video.smooth=False`` every frame equals ``restorer.restore(frame, options).image``, in
    float32, except with a face choice: that chooses people over the clip (``plan``), a photo the faces of
    its one frame (``faces="1"`` is the first person to appear there, the leftmost face here); in bf16
    (the default on CPUs that compute it natively) a face batched with other frames' faces
    (``batch_size`` > 1) comes out up to a few levels from the same face run alone.
    Notes for the caller (e.g. why the face parser was not used) are appended to ``notes``, and what ran the
    generator and the face parser is put in ``backends`` (see :attr:`gfp.pipeline.RestoreResult.backends`).

    A face choice (:func:`needs_plan`) needs ``plan``, made by :func:`plan_faces` over the same frames:
    its detections are used instead of detecting again, and only the tracks it chose are restored.
    """
    options = expect(options, RestoreOptions, "options", RestoreOptions)
    video = expect(video, VideoOptions, "video", VideoOptions)
    if options.aligned:
        raise OptionError("{aligned} does not apply to videos (their frames are whole scenes, not one face)")
    if plan is None and needs_plan(options):
        raise ValueError("a face choice over a clip needs a first pass: pass plan=plan_faces(...)")
    run = RunLog(None)
    upsampler = stages.background_upsampler(restorer.store, options, run)
    if notes is not None:
        notes.extend(run.notes)
    yield from _restore_frames(restorer, frames, options, video, notes, plan, backends, upsampler)


def _restore_frames(
    restorer: Restorer,
    frames: Iterable[tuple[np.ndarray, float]],
    options: RestoreOptions,
    video: VideoOptions,
    notes: list[str] | None,
    plan: FacePlan | None,
    backends: dict[str, str] | None,
    upsampler: BackgroundUpsampler | None,
) -> Iterator[RestoredFrame]:
    """:func:`restore_frames` over arguments already checked (:func:`restore_video` checks its own once),
    with the clip's background ``upsampler`` (:func:`gfp.stages.background_upsampler`)."""
    frames = _checked(frames)
    tracked = _tracked(restorer, frames, options, video) if plan is None else _replayed(frames, plan)
    store = restorer.store
    face_size = store.generator_config(options.version).out_size
    batch = stages.batch_size(store, options)
    log = RunLog(None)  # the default parser falls back here, noted, as for photos
    pending: list[_Pending] = []
    waiting_faces = 0

    def flush() -> Iterator[RestoredFrame]:
        nonlocal waiting_faces
        crops = [crop for item in pending for crop in item.crops]
        restored = stages.restore_faces(store, crops, options, log) if crops else []
        masks = stages.face_masks(store, restored, options, log)[0]
        start = 0
        for item in pending:
            stop = start + len(item.crops)
            faces = restored[start:stop]
            upscaled = stages.background(upsampler, item.image, options, log)
            mine = None if masks is None else masks[start:stop]
            image = paste_back(item.image, upscaled, faces, item.matrices, mine, options.upscale)
            yield RestoredFrame(
                image, item.time, item.boxes, item.landmarks, item.matrices, item.track_ids, faces
            )
            start = stop
        pending.clear()
        waiting_faces = 0
        if notes is not None:  # each frame notes the same fallback: say it once per clip
            notes.extend(note for note in dict.fromkeys(log.notes) if note not in notes)
        log.notes.clear()
        if backends is not None:  # the clip's log keeps what each network ran in first
            backends.update(log.backends)

    for image, seconds, faces in tracked:
        keep = [i for i, track in enumerate(faces.track_ids) if plan is None or track in plan.restore]
        landmarks, ids = faces.landmarks[keep], [faces.track_ids[i] for i in keep]
        crops, matrices = align_faces(image, landmarks, face_size)
        pending.append(_Pending(image, seconds, faces.boxes[keep], landmarks, crops, matrices, ids))
        waiting_faces += len(crops)
        if waiting_faces >= batch or len(pending) >= video.buffer_frames:
            yield from flush()
    yield from flush()


# ---------------------------------------------------------------------------------------------- files
def _upright(frame: av.VideoFrame) -> np.ndarray:
    """The frame as uint8 BGR, turned as its display matrix says (so faces are upright)."""
    img = frame.to_ndarray(format="bgr24", interpolation=_EXACT)
    turns = round(frame.rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(img, turns)) if turns else img


def _even(img: np.ndarray) -> np.ndarray:
    """Pad odd heights/widths by one edge pixel: 4:2:0 video needs even sizes."""
    pad_h, pad_w = img.shape[0] % 2, img.shape[1] % 2
    return np.pad(img, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge") if pad_h or pad_w else img


def _labels(stream: av.stream.Stream) -> dict[str, str]:
    """A stream's language and title, to keep on the stream that replaces it in the output (an MP4 or MOV
    gives a track's title back as "name")."""
    meta = stream.metadata
    labels = {"language": meta.get("language"), "title": meta.get("title") or meta.get("name")}
    return {key: value for key, value in labels.items() if value}


class _Audio:
    """Carries the first audio stream of the input over: packets copied, or decoded and re-encoded, with
    its language and title."""

    def __init__(self, source: av.audio.stream.AudioStream, output: av.container.OutputContainer) -> None:
        self.source = source
        self.output = output
        self.end = 0.0
        """End time (s) of the last audio packet read: with the video's, it tells a truncated file."""
        self.shift = 0
        """Added to every timestamp after one went back (concatenated segments start again at 0)."""
        self.last: int | None = None
        """The last packet's timestamp: the next one's must be later, or the muxer refuses it."""
        self.next: int | None = None
        """Where the last packet ends: a packet whose timestamp goes back continues from there."""
        self.heard: Fraction | None = None
        """Where the sound re-encoded so far ends (s): a decoded frame that begins before it follows on, or
        is cut there (:meth:`_encode`)."""
        name = _codec_name(source)
        self.copy = name in COPY_AUDIO_CODECS
        if self.copy:
            self.stream = output.add_stream_from_template(source)
            self.how = "copied"
        else:
            rate = source.codec_context.sample_rate or 48000
            self.stream = output.add_stream("aac", rate=rate if rate in AAC_RATES else 48000)
            self.stream.layout = "stereo" if source.codec_context.layout.nb_channels > 1 else "mono"
            self.how = f"re-encoded ({name} → aac)"
        self.stream.metadata.update(_labels(source))

    def packet(self, packet: av.Packet) -> None:
        """Copy or re-encode one demuxed packet (the muxer interleaves it with the video). Timestamps that
        go back (segments joined end to end, a camera's restart) continue after the last packet, as the
        video's frames do, since a muxer refuses them."""
        if packet.dts is None:  # the demuxer's end-of-stream marker (it flushes a decoder)
            if not self.copy:
                for frame in packet.decode():
                    self._encode(frame)
            return
        # A packet that only begins before the last one ends (timestamps jittering by a millisecond) keeps its
        # time: moved, every later packet was late by as much, and the sound drifted behind the picture.
        if self.last is not None and packet.dts + self.shift <= self.last:
            self.shift = self.next - packet.dts
        packet.dts += self.shift
        if packet.pts is not None:
            packet.pts += self.shift
        self.last, self.next = packet.dts, packet.dts + max(packet.duration or 0, 1)
        if packet.pts is not None and packet.time_base:
            self.end = max(self.end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
        if not self.copy:
            for frame in packet.decode():
                self._encode(frame)
        else:
            packet.stream = self.stream
            self.output.mux(packet)

    def _encode(self, frame: av.AudioFrame) -> None:
        """Re-encode one decoded frame that may begin before the sound before it ends: encoded so, the
        encoder's timestamps went back, which the muxer refuses (the whole clip failed). Up to
        :data:`_AUDIO_JITTER` late, it is timestamps jittering: the frame follows on, all of it; more, a
        corrupt packet decoded to more sound than its place holds: the samples there already are cut.
        Less than a tick of the time base is the timestamps' rounding, and left as it is."""
        if frame.pts is not None and frame.time_base and frame.sample_rate:
            start = frame.pts * frame.time_base
            if self.heard is not None and self.heard - start > frame.time_base:
                if self.heard - start <= _AUDIO_JITTER:
                    frame.pts = math.ceil(self.heard / frame.time_base)
                else:
                    skip = math.ceil((self.heard - start) * frame.sample_rate)
                    if skip >= frame.samples:
                        return
                    frame = _cut(frame, skip)
                start = frame.pts * frame.time_base
            self.heard = start + Fraction(frame.samples, frame.sample_rate)
        self.output.mux(self.stream.encode(frame))

    def close(self) -> None:
        if not self.copy:
            self.output.mux(self.stream.encode(None))


def _cut(frame: av.AudioFrame, skip: int) -> av.AudioFrame:
    """``frame`` less its first ``skip`` samples, timed where the rest begins (to a tick of its time base:
    the encoder takes every frame in the first one's)."""
    samples = frame.to_ndarray()  # (channels, samples) planar, (1, samples x channels) packed
    step = 1 if frame.format.is_planar else len(frame.layout.channels)
    rest = np.ascontiguousarray(samples[:, skip * step :])
    cut = av.AudioFrame.from_ndarray(rest, format=frame.format.name, layout=frame.layout.name)
    cut.sample_rate, cut.time_base = frame.sample_rate, frame.time_base
    cut.pts = frame.pts + round(Fraction(skip, frame.sample_rate) / frame.time_base)
    return cut


@dataclass
class _Decoded:
    """Running facts about the decoded video: how many frames, where the stream ended."""

    frames: int = 0
    start: float | None = None
    end: float = 0.0
    discarded: int = 0
    """Video packets the container marks as dropped (before an edit list's start, as a clip cut without
    re-encoding has them): the header counts them as frames, the decoder makes none of them."""
    others_start: float | None = None
    others_end: float = 0.0
    """Where the packets of the other streams (sound, subtitles, more tracks) start and end, in seconds:
    the container's duration spans every stream, which may begin before the video or end after it."""
    seconds: float = 0.0
    """Wall time spent decoding."""

    def other(self, packet: av.Packet) -> None:
        """Note the time span of a packet of a stream other than the video."""
        if packet.pts is None or not packet.time_base:
            return
        start = float(packet.pts * packet.time_base)
        self.others_start = start if self.others_start is None else min(self.others_start, start)
        self.others_end = max(
            self.others_end, float((packet.pts + (packet.duration or 0)) * packet.time_base)
        )


@dataclass
class _Counted:
    """Progress in frames of one pass over a clip: each frame is reported with ``total()``, the frame count
    as far as it is known then, and the end once more with the count decoded where that was not the last
    total (a header that counts frames the container drops, or that says none), so a bar ends full."""

    report: Progress
    stage: str
    total: Callable[[], int]
    last: int = -1
    """The total last reported."""

    def __call__(self, done: int, total: int = 0, stage: str = "") -> None:
        """Report ``done`` frames (a :data:`Progress`: the caller's total and stage give way to ours)."""
        self.last = self.total()
        self.report(done, self.last, self.stage)

    def end(self, frames: int) -> None:
        """The pass is over after ``frames`` frames: say so with that total where the last one differed."""
        if self.last != frames:
            self.report(frames, frames, self.stage)


def _header_count(info: VideoInfo, facts: _Decoded) -> Callable[[], int]:
    """The clip's frame count as far as its header says: less the frames the container drops (their packets
    are read before the first frame after them decodes); 0 when the header gives none."""
    return lambda: max(info.frames - facts.discarded, 0)


def _decode(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    audio: _Audio | None,
    facts: _Decoded,
    source: Path,
    info: VideoInfo,
    limits: VideoOptions,
) -> Iterator[tuple[np.ndarray, float, int]]:
    """Yield (upright BGR frame, seconds, pts) in presentation order; audio packets go to ``audio``, and
    where the other streams' packets lie is noted in ``facts``.

    Frames without a timestamp, or out of order, get the previous one plus one frame period; in an AVI,
    which keeps no presentation times (with B-frames FFmpeg hands frames their neighbours'), every frame
    after the first is timed so, by its count (AVI is constant-rate). The header's
    size and the limits are checked again on every frame (``VideoError``): a raw stream's header gives no
    duration, and its frame size may change midway.
    """
    time_base = stream.time_base or Fraction(1, 1000)
    period = max(1, round(1 / (stream.average_rate or stream.guessed_rate or 25) / time_base))
    by_count = container.format.name == "avi"
    last_pts: int | None = None
    clock = time.perf_counter()
    for packet in container.demux():  # every stream: where each ends tells a truncated file
        if packet.stream is not stream:
            facts.other(packet)
            if audio is not None and packet.stream is audio.source:
                audio.packet(packet)
            continue
        facts.discarded += packet.is_discard
        for frame in packet.decode():
            pts = frame.pts
            if pts is None or (last_pts is not None and (by_count or pts <= last_pts)):
                pts = 0 if last_pts is None else last_pts + period
            last_pts = pts
            img = _upright(frame)
            seconds = float(pts * time_base)
            _check_frame(
                source, img, seconds - (facts.start if facts.start is not None else seconds), info, limits
            )
            facts.frames += 1
            facts.start = seconds if facts.start is None else facts.start
            facts.end = float((pts + (frame.duration or period)) * time_base)
            facts.seconds += time.perf_counter() - clock
            yield img, seconds, pts
            clock = time.perf_counter()


def _check_frame(
    source: Path, img: np.ndarray, elapsed: float, info: VideoInfo, limits: VideoOptions
) -> None:
    """Refuse a frame whose size is not the header's, or that lies beyond ``limits.max_seconds``."""
    height, width = img.shape[:2]
    if (width, height) != (info.width, info.height):
        raise VideoError(
            f"{source}: the frame size changes from {info.width}x{info.height} to {width}x{height} midway; "
            "re-encode the clip at one size first"
        )
    if limits.max_seconds is not None and elapsed > limits.max_seconds:
        raise VideoError(
            f"{source}: the clip lasts more than the limit of {limits.max_seconds:g} s (its header did not "
            "say how long); trim it first"
        )


def _check_complete(
    source: Path, info: VideoInfo, facts: _Decoded, audio: _Audio | None, container_seconds: float
) -> None:
    """Refuse a clip that ended before its header said: fewer frames (besides those the container drops),
    or every stream ending early."""
    if facts.frames == 0:
        raise VideoError(f"{source}: the video stream holds no frames")
    expected = info.frames - facts.discarded
    if info.frames and facts.frames < expected - max(2, _MISSING_FRAMES_TOLERANCE * expected):
        raise VideoError(f"{source}: truncated or corrupt (decoded {facts.frames} of {expected} frames)")
    start = min(facts.start or 0.0, math.inf if facts.others_start is None else facts.others_start)
    end = max(facts.end, facts.others_end, audio.end if audio is not None else 0.0) - start
    if container_seconds and end < container_seconds * (1 - _MISSING_FRAMES_TOLERANCE) - 0.1:
        raise VideoError(
            f"{source}: truncated or corrupt (the streams end at {end:.2f} s of {container_seconds:.2f} s)"
        )


def _video_encoder(
    sink: av.container.OutputContainer, video: VideoOptions, rate: Fraction, time_base: Fraction, size: tuple
) -> av.video.stream.VideoStream:
    """The output video stream: the chosen codec and CRF, 4:2:0, the input's time base (timestamps kept)."""
    encoder, _ = VIDEO_CODECS[video.codec]
    out = sink.add_stream(encoder, rate=rate)
    out.width, out.height = size
    out.pix_fmt = "yuv420p"
    out.codec_context.time_base = time_base
    options = {"crf": str(video.crf)} | ({"b": "0"} if video.codec == "vp9" else {})
    if video.codec == "h264" and (cpu := _x264_cpu_without_avx512()):
        # x264's AVX-512 code reads memory it never wrote (mb-tree with B-frames, at some frame widths), so
        # the same frames came out as other bytes after a restore had left other data in freed memory.
        options["x264-params"] = f"asm={cpu}"
    if video.codec == "h265":  # x265 and SVT-AV1 wrote ~25 lines of their settings to stderr for every clip
        options["x265-params"] = "log-level=error"
    elif video.codec == "av1":  # read when an encoder opens; a level the user set is kept
        os.environ.setdefault("SVT_LOG", "1")  # errors only
    out.options = options
    if video.codec == "h265":
        out.codec_tag = "hvc1"  # what Apple players expect for HEVC in MP4
    return out


def _open_encoder(out: av.video.stream.VideoStream) -> None:
    """Open the video encoder (its options and colour tags set), the calling thread's scheduling kept.
    SVT-AV1 (``av1``), opened in a process of root (a container), switches the thread that opens it to
    real-time SCHED_FIFO at priority 99: every later restore of that thread (the app's, a folder's next
    clip) and every process it starts would run real-time, starving the rest of the machine. Opened here,
    not by the first packet muxed (the sound's may come first), so that it is known which call to guard."""
    if not hasattr(os, "sched_getscheduler"):  # no POSIX thread scheduling (Windows, macOS)
        out.codec_context.open()
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        out.codec_context.open()
    finally:
        if os.sched_getscheduler(0) != policy:
            os.sched_setscheduler(0, policy, param)


def _tag_colours(out: av.video.stream.VideoStream, source: av.video.stream.VideoStream) -> int:
    """Give the output the input's colour matrix, primaries and transfer (those every encoder takes:
    :data:`_PRIMARIES`, :data:`_TRANSFERS`), in limited range (yuv420p), and return the matrix its frames
    are to be converted with: the one the input was decoded with. Untagged, a player guesses (BT.709 for
    HD), and an HD clip converted with BT.601 came out shifted in colour."""
    tags = source.codec_context
    matrix = tags.colorspace if tags.colorspace in _MATRICES else 6
    out.codec_context.colorspace, out.codec_context.color_range = matrix, 1  # 1: limited ("tv") range
    if matrix == tags.colorspace:  # the input's own: its primaries and transfer go with it
        if tags.color_primaries in _PRIMARIES:
            out.codec_context.color_primaries = tags.color_primaries
        if tags.color_trc in _TRANSFERS:
            out.codec_context.color_trc = tags.color_trc
    return matrix


_LOG_LEVEL = threading.Lock()
"""Held while :func:`_x264_cpu_without_avx512` changes PyAV's log level, which is the whole process's: two
clips starting at once (the app) would each restore the level the other set, leaving logging on for good,
and one would read with logging off again (no line: x264 kept its AVX-512 code)."""


@functools.cache
def _x264_cpu_without_avx512() -> str | None:
    """The CPU code x264 picks on this machine less AVX-512, as its ``asm`` parameter takes it
    ("MMX2,SSE2Fast,...,AVX2"); None where x264 picks no AVX-512. Read from the line x264 logs when an
    encoder opens: x264's own choice, since naming code this CPU lacks would crash the encoder."""
    with _LOG_LEVEL:
        level = av.logging.get_level()
        av.logging.set_level(av.logging.INFO)  # the level of that line
        try:
            with av.logging.Capture() as logs:
                probe = av.CodecContext.create("libx264", "w")
                probe.width, probe.height, probe.pix_fmt = 16, 16, "yuv420p"
                probe.time_base = Fraction(1, 25)
                probe.open()
        except (av.FFmpegError, av.codec.codec.UnknownCodecError):
            return None  # no libx264 in this FFmpeg: opening the encoder will say so
        finally:
            av.logging.set_level(level)
    for _, _, message in logs:
        if message.startswith("using cpu capabilities:"):
            names = message.split(":", 1)[1].split()
            return ",".join(name for name in names if name != "AVX512") if "AVX512" in names else None
    return None


def _output_timing(path: Path, fps: float) -> tuple[float, float]:
    """Seconds the written video stream lasts and its average frame rate, as a player will read them. The
    rate is ``fps`` (the input header's) where the written one is within 1% of it (timestamps rounded to
    the millisecond, as Matroska keeps them, make 23.976 fps 23.998), else the written one: a Matroska
    header's rate is its frames' default duration, 25 fps in a variable-rate clip averaging 14."""
    with av.open(str(path)) as written:
        stream = written.streams.video[0]
        rate = float(stream.average_rate or 0)
        if fps and (not rate or abs(rate - fps) <= 0.01 * fps):
            rate = fps
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base), rate
        return (written.duration or 0) / av.time_base, rate


def restore_video(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: RestoreOptions | None = None,
    video: VideoOptions | None = None,
    restorer: Restorer | None = None,
    progress: Progress | None = None,
) -> VideoResult:
    """Restore every face of the clip ``input`` and write an MP4 to ``output``; returns what was written.

    ``options`` are the photo options (model, upscale, background upsampler, strength, detector, batch
    size, face choice ...); ``video`` the codec, quality, smoothing and limits; ``restorer`` a shared
    :class:`~gfp.pipeline.Restorer` (one is made when None). ``progress(done, total, "frames")`` is
    called after each frame, ``total`` the frame count as far as known (the header's, less the frames the
    container drops; 0 when the container does not say), and once more at the end with the count decoded
    if that was not the last total; a face choice first decodes and detects the whole clip
    (:func:`plan_faces`), reported so as ``"detect"``, and its count is the total of the second pass.
    Raises :class:`VideoError` (naming the file) for unreadable, truncated, empty or too large clips;
    nothing is left at ``output`` then, and an earlier file there is kept.
    """
    options = expect(options, RestoreOptions, "options", RestoreOptions)
    video = expect(video, VideoOptions, "video", VideoOptions)
    restorer = expect(restorer, Restorer, "restorer", Restorer)
    source, target = Path(input), Path(output)
    if options.aligned:
        raise OptionError("{aligned} does not apply to videos (their frames are whole scenes, not one face)")
    info = probe_video(source, video)
    report: Progress = progress or (lambda done, total, stage: None)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []
    backends: dict[str, str] = {}
    restorer.generator_config(options.version)  # missing weights fail here, before any file is made
    stages.load_required(restorer.store, options)
    frame = np.broadcast_to(np.zeros((), np.uint8), (info.height, info.width, 3))  # a frame's layout
    clip = RunLog(None)  # not after the first pass: each frame's output, and the clip's upsampler
    upsampler = stages.check_output(restorer.store, frame, options, clip)
    notes.extend(clip.notes)
    timings["load"] = time.perf_counter() - start

    out_h, out_w = scaled_size(info.height, info.width, options.upscale)
    size = (out_w + out_w % 2, out_h + out_h % 2)
    widest = MAX_SIDE.get(video.codec)
    if widest is not None and max(size) > widest:
        raise VideoOptionError(
            "{path}: restored frames of {size} are above the {widest} px a side that {encoder} encodes; "
            "choose a smaller {upscale}, or {codec} h265 or vp9",
            path=str(source),
            size=f"{size[0]}x{size[1]}",
            widest=widest,
            encoder=video.codec,
        )
    if size != (out_w, out_h):
        notes.append(f"{out_w}x{out_h} padded to {size[0]}x{size[1]} (4:2:0 video needs even sizes)")
    facts = _Decoded()
    faces = 0
    seen: list[FrameFaces] = []  # without a plan, to count people as a plan would (choose_tracks)
    plan = None
    try:
        # Written beside the target under a temporary name, held while written and moved into place when
        # whole (a killed run's is removed here: remove_abandoned); a target that cannot be written fails
        # here, before any work.
        remove_abandoned(target, PARTIAL_SUFFIX)
        stack = contextlib.ExitStack()
        partial = stack.enter_context(atomic_path(target, PARTIAL_SUFFIX, held=True))
    except OSError as exc:
        raise VideoError(f"{target}: cannot write the restored clip there ({_reason(exc)})") from None
    with stack:
        try:
            if needs_plan(options):
                clock = time.perf_counter()
                planning = _Decoded()
                detect = _Counted(report, "detect", _header_count(info, planning))
                with _open(source) as container:
                    stream = _video_stream(container, source)
                    frames = _decode(container, stream, None, planning, source, info, video)
                    decoded = (img[:2] for img in frames)
                    plan = _plan(restorer, decoded, options, video, detect, 0)  # detect knows its total
                detect.end(planning.frames)
                timings["plan"] = time.perf_counter() - clock
            with _open(source) as container, av.open(str(partial), "w", format="mp4") as sink:
                stream = _video_stream(container, source)
                stream.thread_type = "AUTO"
                time_base = stream.time_base or Fraction(1, 1000)
                rate = stream.average_rate or stream.guessed_rate or Fraction(25)
                out = _video_encoder(sink, video, rate, time_base, size)
                matrix = _tag_colours(out, stream)
                _open_encoder(out)
                out.metadata.update(_labels(stream))
                # The clip's title, date, artist ...: the muxer writes the tags MP4 holds and drops the others
                # (its own file type and "encoder" replace the input's).
                sink.metadata.update(container.metadata)
                audio = _Audio(container.streams.audio[0], sink) if container.streams.audio else None
                if len(container.streams) > 1 + (audio is not None):
                    notes.append(
                        "only the first video and audio streams are kept (subtitles and others dropped)"
                    )
                pts_of: dict[float, int] = {}

                def timed_frames() -> Iterator[tuple[np.ndarray, float]]:
                    for img, seconds, pts in _decode(container, stream, audio, facts, source, info, video):
                        pts_of[seconds] = pts
                        yield img, seconds

                known = _header_count(info, facts) if plan is None else functools.partial(len, plan.frames)
                counted = _Counted(report, "frames", known)
                clock = time.perf_counter()
                for done, restored in enumerate(
                    _restore_frames(
                        restorer, timed_frames(), options, video, notes, plan, backends, upsampler
                    ),
                    1,
                ):
                    timings["restore"] = timings.get("restore", 0.0) + time.perf_counter() - clock
                    clock = time.perf_counter()
                    frame = av.VideoFrame.from_ndarray(_even(restored.image), format="bgr24")
                    frame.colorspace = matrix  # the matrix the BGR frame is converted to YUV with
                    # converted here, exactly: the encoder's own conversion rounds with a bias
                    frame = frame.reformat(format=out.pix_fmt, interpolation=_EXACT)
                    frame.pts, frame.time_base = pts_of.pop(restored.time), time_base
                    sink.mux(out.encode(frame))
                    faces += len(restored.restored_faces)
                    if plan is None:
                        seen.append(
                            FrameFaces(restored.boxes, restored.landmarks, restored.track_ids, restored.time)
                        )
                    timings["encode"] = timings.get("encode", 0.0) + time.perf_counter() - clock
                    counted(done)
                    clock = time.perf_counter()
                _check_complete(source, info, facts, audio, (container.duration or 0) / av.time_base)
                counted.end(facts.frames)
                # The encoder holds back the frames of its lookahead and threads until flushed: a short
                # clip is mostly encoded here, a long one its last frames, so this is encoding time too.
                clock = time.perf_counter()
                sink.mux(out.encode(None))
                timings["encode"] = timings.get("encode", 0.0) + time.perf_counter() - clock
                if audio is not None:
                    audio.close()
            # Frames are decoded lazily inside the restore loop: report decoding on its own.
            timings["decode"] = facts.seconds
            timings["restore"] = timings.get("restore", 0.0) - facts.seconds
            duration, fps = _output_timing(partial, info.fps)
        except av.FFmpegError as exc:
            raise VideoError(f"{source}: cannot decode or encode this clip ({_reason(exc)})") from None
    timings["total"] = time.perf_counter() - start
    # A face back where its track ended is the same person with every face choice, so "all" counts so too.
    selection = choose_tracks(seen, info.width, info.height).selection if plan is None else plan.selection
    return VideoResult(
        path=target,
        frames=facts.frames,
        faces=faces,
        width=size[0],
        height=size[1],
        fps=fps,
        duration=duration,
        audio="none" if audio is None else audio.how,
        timings=timings,
        device=str(restorer.device),
        notes=notes,
        backends=backends,
        selection=selection,
    )
