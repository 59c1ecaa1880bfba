"""The app's requests: the photo and video handlers (API endpoints and MCP tools) over one shared Restorer.

Both handlers go through :class:`Request`: the choices are checked against what the UI offers, the upload
is found, progress is reported, :class:`gfp.pipeline.RestoreOptions` are built, errors become ``gr.Error``
messages without server paths, and the status line is written. Only what differs stays in each handler:
the photo is read, fitted to the pixel budget and written in the chosen format; the clip is restored by
:func:`gfp.video.restore_video` within the Video tab's limits.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import math
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import gradio as gr
import httpx
import numpy as np
import torch
from gradio.context import LocalContext

from gfp import registry
from gfp.app.settings import AppSettings, background_defaults, model_specs, no_paths, video_limits
from gfp.background import scaled_size
from gfp.color import COLOR_FIXES
from gfp.imageio import (
    DEFAULT_MAX_PIXELS,
    ImageMemoryError,
    ImageReadError,
    ImageTooLargeError,
    as_written,
    first_frame_note,
    megapixels,
    read_icc_profile,
    read_image,
    size_error,
    to_8bit,
    write_image,
)
from gfp.memory import size_text
from gfp.messages import OptionError, headline, in_words
from gfp.pipeline import RestoreOptions, Restorer, RestoreResult
from gfp.stages import backends_text
from gfp.video import VideoError, VideoOptions, VideoResult, is_video, restore_video
from gfp.weights.errors import WeightsError

FORMATS: dict[str, str] = {"PNG": ".png", "JPEG": ".jpg", "WebP": ".webp"}

CONTROLS: dict[str, tuple[str, str]] = {
    "version": ("Model", "model"),
    "upscale": ("Rescale factor", "rescale"),
    "bg_upsampler": ("Background upsampler", "background"),
    "strength": ("Strength", "strength"),
    "only_center_face": ("Only the centre face", "only_center_face"),
    "aligned": ("Input is an aligned 512x512 face", "aligned"),
    "detector": ("Face detector", "detector"),
    "color_fix": ("Colour fix", "color_fix"),
    "faces": ("Faces to restore", "faces"),
    "min_face": ("Smallest face", "min_face"),
    "smooth": ("Smooth faces across frames", "smooth"),
}
"""Each option's field name → (the label its control begins with, the request's parameter for it): the UI
takes its labels from here (:mod:`gfp.app.ui`), and the handlers' parameters are these names."""
OPTION_NAMES = {field: f'"{label}" ({parameter})' for field, (label, parameter) in CONTROLS.items()}
"""How the app's messages name an option: by its control's label, for the UI's user, and its parameter, for
an API or MCP client (``"Faces to restore" (faces) must be ...``)."""

MAX_UPLOAD_MB = 50
"""The largest upload (photo or clip), in MB: gradio refuses a larger upload (``max_file_size``); a file
given by URL (API, MCP), which gradio downloads whatever its size, is refused by the handlers."""

FETCH_TIMEOUT_S = 120
"""The longest a file given by URL (API, MCP) may take to download. gradio's download of a public host has
no time limit of its own (its SSRF-safe transport drops httpx's timeouts): a server that never answered held
the request, and its place in the queue, for good."""

PREVIEW_MAX_SIDE = 2048
"""The slider and gallery show at most this many pixels per side; the download is always full size."""
PREMULTIPLY_BAND = 1 << 20
"""Pixels of an RGBA image premultiplied at a time for a preview or a downscale (16 MB of float32)."""
OUTPUT_TTL_S = 3600
"""Result files older than this are deleted from the app's output folder on the next request."""

Upload = dict[str, Any] | str | None
"""An uploaded file as the handlers get it: gradio's raw FileData dict (the events run with
preprocess=False) or, for direct calls, a path."""


class OutputFolder:
    """Where result files are written for download; old ones are pruned so the folder cannot grow forever,
    and the whole folder is removed when the app exits."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="gfp-app-"))
        self._lock = threading.Lock()
        atexit.register(shutil.rmtree, self.path, ignore_errors=True)

    def new_file(self, stem: str, suffix: str) -> Path:
        """A fresh, unique path whose file name is what the user downloads."""
        with self._lock:
            now = time.time()
            for old in self.path.glob("*/*"):
                try:  # another request may be renaming its temporary file into place right now
                    expired = now - old.stat().st_mtime > OUTPUT_TTL_S
                except FileNotFoundError:
                    continue
                if expired:
                    old.unlink(missing_ok=True)
                    with contextlib.suppress(OSError):
                        old.parent.rmdir()
        folder = Path(tempfile.mkdtemp(dir=self.path))
        return folder / f"{stem}_restored{suffix}"

    @contextlib.contextmanager
    def result_file(self, stem: str, suffix: str) -> Iterator[Path]:
        """:meth:`new_file` for the result being made in the block: when making it fails, its folder is
        removed again (pruning only sees folders with a file in them)."""
        path = self.new_file(stem, suffix)
        try:
            yield path
        except BaseException:
            shutil.rmtree(path.parent, ignore_errors=True)
            raise


@dataclass(frozen=True)
class RequestContext:
    """What every request needs, fixed at launch: settings, the shared Restorer, allowed values, budgets."""

    settings: AppSettings
    restorer: Restorer
    specs: dict[str, str]
    """Model dropdown values -> what the pipeline loads (see :func:`gfp.app.settings.model_specs`)."""
    allowed: dict[str, tuple[str, ...]]
    background: str
    """The background requests get when they name none (see :func:`gfp.app.settings.background_defaults`)."""
    may_fall_back: str | None
    """The background that falls back to Lanczos without its weights (None: none does)."""
    max_pixels: int
    """The photo budget: larger photos are downscaled first."""
    read_limit: int
    """The largest photo read at all (decompression bombs): gfp.imageio's default, or the budget when that
    is higher, so every photo the budget could take is read, then downscaled to it."""
    video_limits: VideoOptions
    """The Video tab's limits (``max_seconds``, ``max_pixels``)."""
    outputs: OutputFolder

    @classmethod
    def create(cls, settings: AppSettings, restorer: Restorer) -> RequestContext:
        """Choices from the registry and the settings; budgets from the Restorer's device."""
        on_gpu = restorer.device.type != "cpu"
        max_pixels = settings.max_pixels or (8_000_000 if on_gpu else 2_000_000)
        specs = model_specs(settings.models)
        allowed = {
            "model": tuple(specs),
            "detector": tuple(registry.choice_names("detector")),
            "background": tuple(registry.choice_names("upsampler")),
            "output_format": tuple(FORMATS),
            "color_fix": COLOR_FIXES,
        }
        background, may_fall_back = background_defaults(settings, restorer.device)
        return cls(
            settings=settings,
            restorer=restorer,
            specs=specs,
            allowed=allowed,
            background=background,
            may_fall_back=may_fall_back,
            max_pixels=max_pixels,
            read_limit=max(DEFAULT_MAX_PIXELS, max_pixels),
            video_limits=video_limits(settings, on_gpu),
            outputs=OutputFolder(),
        )

    def bg_upsampler(self, background: str) -> str | None:
        """``RestoreOptions.bg_upsampler`` for a request's background: None (the pipeline's own default,
        which falls back, noted) for the one that may fall back, else the name, which must be had."""
        return None if background == self.may_fall_back else background


class UserError(gr.Error):
    """A gradio error for what a request got wrong (an option, the upload): the client is told, and the
    server's log gets no traceback, which it got for each client's mistake, burying the server's own
    faults (missing weights, a full disk, running out of memory: those stay ``gr.Error``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, print_exception=False)


class Cancelled(UserError):
    """Raised from a request's progress report when its event was cancelled, to end the work. No traceback
    either: nobody waits for it, and a client that went away is no fault of the server's (its log got a
    traceback for each closed tab)."""


def queued_event() -> str | None:
    """The id of the gradio event this thread runs while gradio's queue lists it alive; None once it is
    cancelled (the UI's Stop, gradio_client's ``Job.cancel``) or its client has gone (a closed tab, a killed
    client), and outside a queued event: a direct call, or a ZeroGPU worker process, whose copy of the queue
    never changes.

    On a cancel gradio stops waiting and frees the request's place in the queue at once, but cannot stop
    the thread that runs the handler: :meth:`Request.stop_if_cancelled` compares this with the id the
    request started under, so the work ends instead of running on beside the next request. A client that
    goes away leaves its running event listed, only marked not alive: the work would run to the end for
    nobody, holding the queue's place.
    """
    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    running = getattr(getattr(blocks, "_queue", None), "event_ids_to_events", None)  # gradio's queue
    event = running.get(event_id) if isinstance(running, dict) else None
    return event_id if event is not None and getattr(event, "alive", True) else None


def number(name: str, value: Any, low: float, high: float) -> float:
    """A numeric option from the request, or a gradio error that says what is allowed (an API client's
    ``true`` is no strength of 1)."""
    try:
        found = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        found = math.nan
    if not low <= found <= high:
        raise UserError(f"{name} must be a number between {low:g} and {high:g}, got {value!r}.")
    return found


def flag(name: str, value: Any) -> bool:
    """A yes/no option from the request: a boolean, 0 or 1, or "true"/"false" (an API client may send the
    word; ``bool("false")`` would be True), else a gradio error that says what is allowed."""
    words = {"true": True, "1": True, "false": False, "0": False}
    if isinstance(value, bool | int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in words:
        return words[value.strip().lower()]
    raise UserError(f"{name} must be true or false, got {value!r}.")


def min_face_pixels(value: Any) -> int:
    """The smallest face (pixels) from the request, or a gradio error that says what is allowed."""
    found = number(OPTION_NAMES["min_face"], value, 0, 100_000)
    if found != int(found):
        raise UserError(f"{OPTION_NAMES['min_face']} must be a whole number of pixels, got {value!r}.")
    return int(found)


def upload_path(upload: Upload, noun: str) -> tuple[str, str]:
    """(the uploaded file's path on the server, its name as the user named it, without folders).

    gradio's FileData carries the user's name as ``orig_name``; older gradio wraps a clip in a VideoData
    dict. No upload is a gradio error asking for one (``noun``: "photo", "video").
    """
    if isinstance(upload, dict) and isinstance(upload.get("video"), dict):  # older gradio: VideoData
        upload = upload["video"]
    if isinstance(upload, dict):
        path, name = upload.get("path"), upload.get("orig_name") or upload.get("path")
    else:
        path, name = upload, upload
    if not path:
        raise UserError(f"Please upload a {noun} first.")
    shown = Path(str(name)).name
    with contextlib.suppress(OSError):  # a file that is not there is said by its reader
        size = Path(path).stat().st_size
        if size > MAX_UPLOAD_MB * 2**20:
            message = f"{shown} is {size / 2**20:.0f} MB, more than this app takes ({MAX_UPLOAD_MB} MB)."
            raise UserError(f"Could not use this file: {message}")
    return str(path), shown


def fetch_error(url: str, exc: BaseException) -> str:
    """One sentence for a file given by an http(s) URL (API, MCP) that gradio could not download before
    the handler runs: what was wrong with the URL. gradio's own error is no message for the client (an MCP
    client got "The upstream Gradio app has raised an exception ...", whatever the cause)."""
    text = str(exc)
    status = re.search(r"Status code: (\d+)", text)
    if status:
        why = f"its server answered HTTP {status[1]}"
    elif isinstance(exc, httpx.TimeoutException | TimeoutError):
        why = "its server did not answer in time"
    elif isinstance(exc, httpx.TransportError):
        why = "its server could not be reached"
    elif "Unable to resolve hostname" in text:
        why = "no such host"
    elif "failed validation" in text:
        why = "its host is not a public address (this server fetches only public URLs)"
    else:
        why = "the download failed"
    shown = url if len(url) <= 200 else url[:200] + "..."
    return f"Could not fetch {shown}: {why}."


def say_fetch_errors(upload: gr.Image | gr.Video) -> None:
    """A file given to the component ``upload`` by an http(s) URL (API, MCP) is downloaded by gradio before
    the handler runs, with the component's own method, wrapped here: the download is cut off after
    :data:`FETCH_TIMEOUT_S`, and one that fails is refused in one sentence (:func:`fetch_error`)."""
    download = getattr(upload, "async_move_resource_to_block_cache", None)
    if download is None:  # another gradio 6 release: its own download and error stand
        return

    async def fetched(url_or_file_path: str | Path | None) -> str | None:
        url = str(url_or_file_path)
        if not url.startswith(("http://", "https://")):
            return await download(url_or_file_path)
        try:
            return await asyncio.wait_for(download(url_or_file_path), FETCH_TIMEOUT_S)
        except Exception as exc:
            raise UserError(fetch_error(url, exc)) from None

    upload.async_move_resource_to_block_cache = fetched


@dataclass(frozen=True)
class Request:
    """One request's checked inputs, and what both handlers do with them.

    Made by :meth:`check`; :meth:`options` builds the pipeline's options, :meth:`report` is its progress
    callback, :meth:`user_errors` turns what the pipeline raises into gradio errors, :meth:`status` writes
    the status line.
    """

    noun: str
    """ "photo" or "video": what the messages call the upload (a clip's progress counts frames)."""
    path: str
    """The uploaded file on the server (never shown)."""
    name: str
    """The uploaded file's name as the user named it: what messages show and results are named after."""
    model: str
    fields: dict[str, Any]
    """The :class:`RestoreOptions` fields the request chose."""
    progress: Callable[..., Any] | None = None
    event: str | None = None
    """The queued gradio event the request runs under (:func:`queued_event`; None: not in the queue)."""

    @classmethod
    def check(
        cls,
        ctx: RequestContext,
        noun: str,
        upload: Upload,
        progress: Callable[..., Any] | None,
        *,
        model: str,
        rescale: float,
        background: str,
        strength: float,
        only_center_face: bool,
        detector: str,
        color_fix: str,
        faces: str,
        min_face: float,
        aligned: bool = False,
        output_format: str | None = None,
    ) -> Request:
        """Check the request's choices (values the UI offers, numbers in range) and find its upload;
        gradio errors that say what is allowed. Only a photo has an ``output_format`` (an API caller's
        None is refused like any other unknown format); a clip has none."""
        choices = {"model": model, "detector": detector, "background": background}
        if noun == "photo":
            choices["output_format"] = output_format
        choices["color_fix"] = color_fix
        for name, value in choices.items():
            if value not in ctx.allowed[name]:
                raise UserError(f"Unknown {name} {value!r}; choose one of {sorted(ctx.allowed[name])}.")
        fields = {
            "version": ctx.specs[model],
            "upscale": number(OPTION_NAMES["upscale"], rescale, 1.0, 4.0),
            "bg_upsampler": ctx.bg_upsampler(background),
            "only_center_face": flag(OPTION_NAMES["only_center_face"], only_center_face),
            "aligned": flag(OPTION_NAMES["aligned"], aligned),
            "strength": number(OPTION_NAMES["strength"], strength, 0.0, 1.0),
            "detector": detector,
            "color_fix": color_fix,
            "faces": faces,
            "min_face": min_face_pixels(min_face),
        }
        try:  # the pipeline's own checks (faces "x"), said now as the client's mistake
            RestoreOptions(**fields)
        except ValueError as exc:
            raise UserError(in_words(exc, OPTION_NAMES)) from None
        path, name = upload_path(upload, noun)
        return cls(noun, path, name, model, fields, progress, queued_event())

    @property
    def stem(self) -> str:
        """The name results are saved under (``<stem>_restored.<ext>``)."""
        return Path(self.name).stem.lstrip(".")[:60] or self.noun  # ".jpg" would name a hidden file

    @property
    def min_face(self) -> int:
        """The smallest face the request asked for, in pixels of the upload."""
        return self.fields["min_face"]

    def options(self, **changes: Any) -> RestoreOptions:
        """The request's :class:`RestoreOptions`, with ``changes`` (call it inside :meth:`user_errors`:
        options the pipeline refuses are a ``ValueError``)."""
        return RestoreOptions(**(self.fields | changes))

    def report(self, done: int, total: int, stage: str) -> None:
        """The pipeline's progress callback: gradio's progress bar (a clip's stages show a frame count);
        :class:`Cancelled` when the request was cancelled, which ends the work at this stage."""
        self.stop_if_cancelled()
        if self.progress is not None:
            desc = f"{stage}: {done}" if self.noun == "video" else stage
            self.progress((done, total) if total else None, desc=desc)

    def stop_if_cancelled(self) -> None:
        """:class:`Cancelled` when the request's event was cancelled (:func:`queued_event`): nobody waits.
        Only in the thread gradio runs the event in: another thread has no gradio context to tell."""
        in_event = self.event is not None and LocalContext.event_id.get(None) == self.event
        if in_event and queued_event() is None:
            raise Cancelled(f"{self.name}: request cancelled")

    @contextlib.contextmanager
    def user_errors(self) -> Iterator[None]:
        """Turn a bad file, missing or bad weights, refused options and running out of memory into gradio
        errors that name the upload as the user named it, never a server path."""
        try:
            yield
        except ImageTooLargeError as exc:  # its own text tells Python callers how to raise the limit
            size, most = megapixels(exc.pixels or 0, exc.limit)
            what = f"is {size} MP, more than" if exc.pixels else "is larger than"
            message = f"{self.name} {what} this app takes ({most} MP); please downscale it first."
            raise UserError(f"Could not use this file: {message}") from None
        except ImageMemoryError as exc:  # the server's memory, not the file: a good photo is not broken
            free = "" if exc.available is None else f", {size_text(exc.available)} free"
            size, need = f"{exc.width}x{exc.height}", size_text(exc.need)
            message = f"{self.name} ({size}) needs about {need} to read{free}"
            raise gr.Error(f"This server has too little memory: {message}; choose a smaller photo.") from None
        except (ImageReadError, VideoError) as exc:
            message = in_words(exc, OPTION_NAMES).replace(self.path, self.name)
            raise UserError(f"Could not use this file: {message}") from None
        except WeightsError as exc:  # the full text (where it looked) is for the server's log
            print(f"app: {exc}", file=sys.stderr)
            raise gr.Error(f"Weights missing or broken on this server: {no_paths(headline(exc))}") from None
        except gr.Error:  # already a message for the user (and a ValueError, whose str() quotes it)
            raise
        except (MemoryError, torch.OutOfMemoryError) as exc:  # the request's size, not a fault: what helps
            if isinstance(exc, OptionError) and set(exc.fields) <= OPTION_NAMES.keys():
                # refused up front, naming what fits in the app's own controls (a smaller rescale, say); where
                # none does, its "free some memory first" is the server's memory, which a visitor cannot free
                helps = in_words(exc, OPTION_NAMES) if exc.fields else f"choose a smaller {self.noun}"
            else:
                helps = f"choose a smaller rescale or {self.noun}"
            raise gr.Error(f"This server ran out of memory for {self.name}: {helps}.") from None
        except OSError as exc:  # the server's own trouble (a full disk): its text is for the server's log
            print(f"app: {exc}", file=sys.stderr)
            raise gr.Error("Could not write the result on this server; please try again later.") from None
        except OptionError as exc:  # an option refused: the client's mistake, said in the app's words
            raise UserError(in_words(exc, OPTION_NAMES)) from None
        except ValueError as exc:
            raise gr.Error(str(exc)) from None

    def status(self, headline: str, result: RestoreResult | VideoResult, notices: Sequence[str] = ()) -> str:
        """The status line (Markdown): ``notices`` first, the headline with the device (and what ran the
        generator and the parser there), model and colour fix, the time per stage, then the result's notes
        (e.g. a default model that fell back) with file names only (a note that names a server folder is
        printed whole to the server's log)."""
        color_fix = self.fields["color_fix"]
        fix = "" if color_fix == "none" else f" · colour fix {color_fix}"
        lines = [f"**Note:** {notice}" for notice in notices]
        ran = backends_text(result.backends)  # OpenVINO or PyTorch: why a run was slow, or differs slightly
        device = f"device {result.device}" + (f" ({ran})" if ran else "")
        lines.append(f"{headline} · {device} · model {registry.label(self.model)}{fix}")
        lines.append(
            "Time: " + " · ".join(f"{stage} {seconds:.2f} s" for stage, seconds in result.timings.items())
        )
        for note in result.notes:
            shown = no_paths(note)
            if shown != note:
                print(f"app: {note}", file=sys.stderr)
            lines.append(f"Note: {shown}")
        return "  \n".join(lines)


def as_display(img: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """cv2 layout (any depth) -> 8-bit RGB/RGBA for gradio's image widgets, at most PREVIEW_MAX_SIDE, or
    resized to ``size`` (width, height: the before image at the after image's size)."""
    img = to_8bit(img)
    side = max(img.shape[:2])
    if size is None and side > PREVIEW_MAX_SIDE:
        scale = PREVIEW_MAX_SIDE / side
        size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
    if size is not None and size != (img.shape[1], img.shape[0]):  # before the channels are reordered
        shrink = size[0] <= img.shape[1] and size[1] <= img.shape[0]
        img = _resized(img, size, cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def _resized(img: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """``img`` resized to ``size``; BGRA with its colours premultiplied by alpha, so that the colour of
    transparent pixels (black, in a cut-out) does not bleed into the edges as a dark fringe. A large shrink
    first box-averages whole blocks of the premultiplied image a band at a time (:func:`_premultiplied`), so
    no full-size copy is made: one of a 32 MP result took 340 MB and seconds, a plain resize none."""
    if img.ndim == 2 or img.shape[2] != 4:
        return cv2.resize(img, size, interpolation=interpolation)
    top = np.iinfo(img.dtype).max
    block = max(1, min(img.shape[1] // size[0], img.shape[0] // size[1]))  # whole pixels per output pixel
    small = cv2.resize(_premultiplied(img, block), size, interpolation=interpolation).astype(np.float32)
    alpha = small[:, :, 3:].copy()
    small[:, :, :3] *= top
    np.divide(small[:, :, :3], alpha, out=small[:, :, :3], where=alpha > 0)
    small[:, :, 3:] /= top
    return np.clip(np.round(small, out=small), 0, top, out=small).astype(img.dtype)


def _premultiplied(img: np.ndarray, block: int) -> np.ndarray:
    """BGRA ``img`` with its colours multiplied by alpha (and alpha by its top value, to keep its scale),
    averaged over ``block`` x ``block`` pixels (the last row and column repeated to whole blocks), made a
    band of rows at a time: uint16 for 8-bit, where colour x alpha fits, float32 for 16-bit."""
    height, width = img.shape[:2]
    top = np.iinfo(img.dtype).max
    wide = width + -width % block
    rows = max(1, PREMULTIPLY_BAND // (wide * block)) * block
    band = np.empty((rows, wide, 4), np.float32)
    out = np.empty((-(-height // block), wide // block, 4), np.uint16 if top == 255 else np.float32)
    for y in range(0, height, rows):
        part = img[y : y + rows]
        n = len(part)
        whole = band[: n + -n % block]
        whole[:n, :width] = part
        whole[:n, :width, :3] *= whole[:n, :width, 3:]
        whole[:n, :width, 3] *= top
        whole[:n, width:] = whole[:n, width - 1 : width]
        whole[n:] = whole[n - 1]
        averaged = cv2.resize(whole, (wide // block, len(whole) // block), interpolation=cv2.INTER_AREA)
        out[y // block : y // block + len(averaged)] = np.rint(averaged) if top == 255 else averaged
    return out


def fit_budget(img: np.ndarray, max_pixels: int) -> tuple[np.ndarray, str | None]:
    """Downscale (area averaging) so that width x height <= max_pixels; say so when it happens."""
    h, w = img.shape[:2]
    if h * w <= max_pixels:
        return img, None
    scale = math.sqrt(max_pixels / (h * w))
    # a side rounded up to 1 pixel (a 1x31000 strip) leaves the other over the budget: it gets what is left
    small_h = max(1, int(h * scale))
    small_w = max(1, min(int(w * scale), max_pixels // small_h))
    size = (small_w, min(small_h, max_pixels // small_w))
    small = _resized(img, size, cv2.INTER_AREA)  # (a cut-out's edges keep their colour in the result too)
    return small, (
        f"The photo ({w}x{h}) is above this app's budget of {max_pixels / 1e6:.3g} MP and was downscaled "
        f"to {size[0]}x{size[1]} first."
    )


def frame_rate(fps: float) -> str:
    """A frame rate as people write it: up to 3 decimals, no trailing zeros (25, 29.97, 23.976)."""
    return f"{fps:.3f}".rstrip("0").rstrip(".")


def face_pairs(
    numbers: Sequence[int], cropped: Sequence[np.ndarray], restored: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, str]]:
    """One gallery tile per restored face, by face number: the aligned crop before (left) and after (right),
    captioned with the number "Faces" takes."""
    tiles = []
    for face, before, after in sorted(zip(numbers, cropped, restored, strict=True), key=lambda t: t[0]):
        if after.shape != before.shape:
            after = cv2.resize(after, (before.shape[1], before.shape[0]), interpolation=cv2.INTER_AREA)
        tiles.append((as_display(np.hstack([before, after])), f"Face {face}: before | after"))
    return tiles


def handle_request(
    ctx: RequestContext,
    image: Upload,
    model: str,
    rescale: float,
    background: str,
    strength: float,
    only_center_face: bool,
    aligned: bool,
    detector: str,
    output_format: str,
    color_fix: str = "none",
    faces: str = "all",
    min_face: float = 0,
    progress: Callable[..., Any] | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], list[tuple[np.ndarray, str]], str, str]:
    """One /restore request: check the options, restore, write the file; gradio errors for bad input.

    The photo is read from the uploaded file itself, not gradio's PIL preprocessing, which drops alpha and
    16-bit and fails with a technical message on a bad file: gfp.imageio keeps every layout, applies EXIF
    orientation and gives clear errors.
    """
    request = Request.check(
        ctx, "photo", image, progress, model=model, rescale=rescale, background=background,
        strength=strength, only_center_face=only_center_face, detector=detector, color_fix=color_fix,
        faces=faces, min_face=min_face, aligned=aligned, output_format=output_format,
    )  # fmt: skip
    if is_video(request.name):  # the photo reader would call a clip "not an image or corrupt"
        raise UserError(f"{request.name} is a video: restore it in the Video tab (API /restore_video).")
    with request.user_errors():
        img = read_image(request.path, max_pixels=ctx.read_limit)
    animated = first_frame_note(request.path, request.name)
    uploaded_width = img.shape[1]
    img, notice = fit_budget(img, ctx.max_pixels)
    min_face = request.min_face
    if notice and min_face:  # the smallest face is in the uploaded photo's pixels: scale it with the photo
        scaled = round(min_face * img.shape[1] / uploaded_width)
        notice += f" The smallest face size was scaled with it: {min_face} px → {scaled} px."
        min_face = scaled
    if notice:
        gr.Info(notice)
    with request.user_errors():
        options = request.options(min_face=min_face)
        height, width = scaled_size(img.shape[0], img.shape[1], options.upscale)
        too_large = size_error(FORMATS[output_format], width, height)  # said now, not after the work
        if too_large:
            raise UserError(f"The restored photo's size, {too_large}: choose PNG or a smaller rescale.")
        result = ctx.restorer.restore(img, options, progress=request.report)

    out = result.image
    request.stop_if_cancelled()  # before the write, which for a large PNG takes seconds
    with request.user_errors(), ctx.outputs.result_file(request.stem, FORMATS[output_format]) as path:
        write_image(path, out, icc_profile=read_icc_profile(request.path))  # the upload's colours
    # the slider's pair at preview size (never a full-size copy of the result), the result as its file holds
    # it: a JPEG download has no transparency to show
    after = as_display(as_written(out, FORMATS[output_format]))
    before = as_display(img, (after.shape[1], after.shape[0]))
    if before.ndim == 3 and before.shape[2] > after.shape[2]:  # flattened too: one background either side
        before = as_written(before, FORMATS[output_format])  # (over white at preview size; RGBA: same sums)
    notices = [notice] if notice else []
    if animated:  # an animated GIF, WebP or PNG, or a multi-page TIFF
        notices.append(f"{animated}.")
        gr.Info(notices[-1])
    if not result.selection.found:
        notices.append("No face found: the photo was only upscaled.")
        gr.Warning(notices[-1])
    height, width = out.shape[:2]
    headline = f"**{result.selection.summary()}** · output {width}x{height} {output_format}"
    pairs = face_pairs(result.face_numbers, result.cropped_faces, result.restored_faces)
    return (before, after), pairs, str(path), request.status(headline, result, notices)


def handle_video_request(
    ctx: RequestContext,
    video: Upload,
    model: str,
    rescale: float,
    background: str,
    strength: float,
    only_center_face: bool,
    detector: str,
    smooth: bool,
    color_fix: str = "none",
    faces: str = "all",
    min_face: float = 0,
    progress: Callable[..., Any] | None = None,
) -> tuple[str, str, str, str]:
    """One /restore_video request: check the options, restore the clip within the Video tab's limits into
    an MP4 named after it; gradio errors for bad input (a clip above the limits names the file)."""
    request = Request.check(
        ctx, "video", video, progress, model=model, rescale=rescale, background=background,
        strength=strength, only_center_face=only_center_face, detector=detector, color_fix=color_fix,
        faces=faces, min_face=min_face,
    )  # fmt: skip
    limits = ctx.video_limits
    smooth = flag(OPTION_NAMES["smooth"], smooth)
    with ctx.outputs.result_file(request.stem, ".mp4") as target, request.user_errors():
        video_options = VideoOptions(
            smooth=smooth, max_seconds=limits.max_seconds, max_pixels=limits.max_pixels
        )
        result = restore_video(
            request.path, target, request.options(), video_options, ctx.restorer, progress=request.report
        )
    people = result.selection.summary("person", "people")  # a clip's faces are people, as the CLI says
    headline = (
        f"**{result.frames} frames · {people}** · {result.faces} faces pasted · "
        f"output {result.width}x{result.height} H.264 · {frame_rate(result.fps)} fps · "
        f"{result.duration:.2f} s · audio {result.audio}"
    )
    notices = [] if result.selection.any_face else ["No face found: the video was only upscaled."]
    return request.path, str(result.path), str(result.path), request.status(headline, result, notices)


def build_handler(ctx: RequestContext) -> Callable[..., Any]:
    """The /restore endpoint (and MCP tool): :func:`handle_request` with the launch defaults as its
    parameter defaults, which gradio shows in the UI, the API schema and the MCP tool description."""
    settings = ctx.settings

    def restore(
        image: dict[str, Any] | str | None,
        model: str = next(iter(ctx.specs)),
        rescale: float = 2,
        background: str = ctx.background,
        strength: float = 1.0,
        only_center_face: bool = False,
        aligned: bool = False,
        detector: str = settings.detector,
        output_format: str = "PNG",
        color_fix: str = "none",
        faces: str = "all",
        min_face: float = 0,
        progress: gr.Progress = gr.Progress(),  # noqa: B008  (gradio injects the tracker through the default)
    ) -> tuple[tuple[np.ndarray, np.ndarray], list[tuple[np.ndarray, str]], str, str]:
        """Restore the faces in a photo with GFPGAN and upscale the rest.

        Args:
            image: the photo (any format OpenCV or Pillow reads; alpha and 16-bit are kept in PNG output).
            model: GFPGAN version ("v1.4", "v1.3", "v1.2", "v1") or a model the app was launched with.
            rescale: final upscaling factor of the whole photo, 1 to 4.
            background: background upsampler, one of the listed choices; "none" is a plain Lanczos resize.
            strength: 0 keeps the original faces, 1 uses the restored faces fully.
            only_center_face: restore only the face nearest the centre (as faces "center"); default false.
            aligned: the input is already an aligned 512x512 face crop (no detection); default false.
            detector: face detector, "retinaface_resnet50" or "retinaface_mobile0.25".
            output_format: file format of the download, "PNG", "JPEG" or "WebP".
            color_fix: give restored faces their input's colours: "none", "wavelet" or "adain".
            faces: "all", "largest", "center" or face numbers from 1, left to right, e.g. "1,3"; others stay.
            min_face: skip faces under this many pixels (shorter side of the face's box); default 0: any.

        Returns:
            the before/after pair, the faces before and after, the full-resolution file, a status line.
        """
        return handle_request(
            ctx, image, model, rescale, background, strength, only_center_face, aligned, detector,
            output_format, color_fix, faces, min_face, progress,
        )  # fmt: skip

    return _on_zero_gpu(restore)


def build_video_handler(ctx: RequestContext) -> Callable[..., Any]:
    """The /restore_video endpoint (and MCP tool): :func:`handle_video_request` with the launch defaults as
    its parameter defaults."""
    settings = ctx.settings

    def restore_video(
        video: dict[str, Any] | str | None,
        model: str = next(iter(ctx.specs)),
        rescale: float = 2,
        background: str = ctx.background,
        strength: float = 1.0,
        only_center_face: bool = False,
        detector: str = settings.detector,
        smooth: bool = True,
        color_fix: str = "none",
        faces: str = "all",
        min_face: float = 0,
        progress: gr.Progress = gr.Progress(),  # noqa: B008  (gradio injects the tracker through the default)
    ) -> tuple[str, str, str, str]:
        """Restore the faces in a video clip with GFPGAN, upscale the rest and keep the sound.

        Args:
            video: the clip (mp4, mov, mkv, webm, avi, ...: what FFmpeg decodes).
            model: GFPGAN version ("v1.4", "v1.3", "v1.2", "v1") or a model the app was launched with.
            rescale: final upscaling factor of the frames, 1 to 4.
            background: background upsampler, one of the listed choices; "none" is a plain Lanczos resize.
            strength: 0 keeps the original faces, 1 uses the restored faces fully.
            only_center_face: restore only the person nearest the centre (as faces "center"); default false.
            detector: face detector, "retinaface_resnet50" or "retinaface_mobile0.25".
            smooth: smooth the face landmarks from frame to frame so restored faces do not jitter.
            color_fix: give restored faces their input's colours: "none", "wavelet" or "adain".
            faces: people: "all", "largest", "center" or numbers in order of appearance, e.g. "1,3".
            min_face: skip people whose face is under this many pixels (median over the clip); default 0.

        Returns:
            the input clip, the restored MP4 (same frame rate, duration and sound), its download, a status.
        """
        return handle_video_request(
            ctx, video, model, rescale, background, strength, only_center_face, detector, smooth,
            color_fix, faces, min_face, progress,
        )  # fmt: skip

    return _on_zero_gpu(restore_video)


def _on_zero_gpu(handler: Callable[..., Any]) -> Callable[..., Any]:
    """On ZeroGPU Spaces a request borrows a GPU (``spaces.GPU``); elsewhere `spaces` is not installed."""
    try:
        import spaces
    except ImportError:
        return handler
    return spaces.GPU(handler)
