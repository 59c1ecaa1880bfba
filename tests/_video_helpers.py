"""Test helpers for video: write small clips (frames from numpy, a sine tone) and read them back with PyAV."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

TONE_HZ = 440.0


def tone(seconds: float, rate: int = 48000, channels: int = 2) -> np.ndarray:
    """A sine tone, float32 (channels, samples) in [-0.3, 0.3]."""
    t = np.arange(round(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
    return np.repeat(wave[None], channels, axis=0)


def write_clip(
    path: Path,
    frames: Sequence[np.ndarray],
    fps: float = 25,
    times: Sequence[float] | None = None,
    audio: str | None = "aac",
    audio_seconds: float | None = None,
    codec: str = "libx264",
    rotation: int = 0,
    container: str | None = None,
    metadata: dict[str, dict[str, str]] | None = None,
) -> Path:
    """Encode BGR ``frames`` (even sizes) at ``fps`` (or at explicit ``times``, for variable rates).

    ``audio`` is the codec of a 48 kHz stereo sine tone as long as the clip (``audio_seconds`` to
    change), or None for no audio track. ``rotation`` is stored as display metadata (degrees
    counter-clockwise), the pixels are written as given. ``metadata`` maps "container", "video" or
    "audio" to the tags (title, language ...) to write there.
    """
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", format=container) as out:
        video = out.add_stream(codec, rate=rate)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        if codec == "libx264":
            video.options = {"crf": "10"}
        time_base = Fraction(1, 1000) if times is not None else 1 / rate
        video.codec_context.time_base = time_base
        if rotation:
            video.set_display_rotation(rotation)
        sound = None
        if audio is not None:
            sound = out.add_stream(audio, rate=48000)
            sound.layout = "stereo"
        for place, tags in (metadata or {}).items():
            {"container": out, "video": video, "audio": sound}[place].metadata.update(tags)
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24")
            frame.pts = round(times[i] * 1000) if times is not None else i
            frame.time_base = time_base
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            seconds = audio_seconds if audio_seconds is not None else len(frames) / float(rate)
            samples = tone(seconds)
            fmt = sound.codec_context.format.name
            for start in range(0, samples.shape[1], 1024):
                chunk = samples[:, start : start + 1024]
                if fmt.startswith("s16"):
                    chunk = (chunk * 32767).astype(np.int16)
                elif fmt.startswith("s32"):  # libmp3lame
                    chunk = (chunk * (2**31 - 1)).astype(np.int32)
                if not fmt.endswith("p"):  # packed: one plane, channels interleaved
                    chunk = chunk.T.reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=fmt, layout="stereo")
                frame.sample_rate, frame.pts = 48000, start
                out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
    return path


@dataclass
class Clip:
    """A decoded clip: frames (BGR), their times, audio samples and what the container says."""

    frames: list[np.ndarray]
    times: list[float]
    fps: float
    duration: float
    """Video stream duration (s) from the container."""
    audio: np.ndarray | None
    """(channels, samples) float32 at audio_rate, None without audio."""
    audio_rate: int
    audio_codec: str | None
    video_codec: str
    rotation: int


def read_clip(path: Path) -> Clip:
    """Decode every frame and the whole audio track of ``path``."""
    with av.open(str(path)) as src:
        stream = src.streams.video[0]
        duration = float(stream.duration * stream.time_base) if stream.duration else src.duration / 1e6
        frames, times, rotation = [], [], 0
        for frame in src.decode(stream):
            frames.append(frame.to_ndarray(format="bgr24"))
            times.append(float(frame.time))
            rotation = frame.rotation
        fps = float(stream.average_rate or 0)
        codec = stream.codec_context.name
    audio, rate, audio_codec = None, 0, None
    with av.open(str(path)) as src:
        if src.streams.audio:
            stream = src.streams.audio[0]
            audio_codec = stream.codec_context.name
            resampler = av.AudioResampler(format="fltp", layout="stereo", rate=48000)
            chunks = [out.to_ndarray() for frame in src.decode(stream) for out in resampler.resample(frame)]
            audio, rate = np.concatenate(chunks, axis=1), 48000
    return Clip(frames, times, fps, duration, audio, rate, audio_codec, codec, rotation)
