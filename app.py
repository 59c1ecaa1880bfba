"""Gradio app (the Hugging Face Space) for gfp blind face restoration.

Drop a photo, compare before and after on a slider, look at every face before and after, and download
the full-resolution result as the exact file (PNG by default, so alpha and 16-bit survive). The same
function is the API endpoint ``/restore`` (gradio_client) and an MCP tool. The Video tab restores the faces
of a clip and keeps its sound (endpoint and MCP tool ``/restore_video``).

    python app.py                                  # http://127.0.0.1:7860, GFPGAN v1.4
    python app.py --model owner/repo --device cuda # add a Hub model (or a file path) and make it the default

Every flag has an environment variable (shown by ``--help``) so a Space can be configured without code.
Networks are loaded lazily, once per weight file, into one shared :class:`gfp.pipeline.Restorer`. The
models offered, their labels and defaults come from :mod:`gfp.registry`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import gradio as gr
import numpy as np
import torch

import gfp  # noqa: F401  (installs the torchvision shim before anything imports basicsr)
from gfp import registry
from gfp.color import COLOR_FIXES
from gfp.devices import BACKENDS, select_device
from gfp.imageio import ImageReadError, read_image, write_image
from gfp.pipeline import RestoreOptions, Restorer, RunLog
from gfp.video import VideoError, VideoOptions
from gfp.video import restore_video as restore_video_file
from gfp.weights.errors import WeightsError
from gfp.weights.resolve import resolve

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "examples"

FORMATS: dict[str, str] = {"PNG": ".png", "JPEG": ".jpg", "WebP": ".webp"}

PREVIEW_MAX_SIDE = 2048
"""The slider and gallery show at most this many pixels per side; the download is always full size."""
OUTPUT_TTL_S = 3600
"""Result files older than this are deleted from the app's output folder on the next request."""

EXAMPLES = [
    "astronaut_blur_jpeg.jpg",
    "astronaut_noise.jpg",
    "astronaut_lowres.png",
    "old_photo.jpg",
    "group_photo.jpg",
    "astronaut_alpha.png",
]
"""Degraded public-domain photos made by examples/make_examples.py (see examples/README.md)."""


def _env_number(name: str, kind: type[int] | type[float] = int) -> int | float | None:
    """The number in environment variable ``name`` (None when unset or empty); a clear exit when it is not."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return kind(value)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        message = f"app.py: error: environment variable {name} must be {noun}, got {value!r}"
        raise SystemExit(message) from None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class AppSettings:
    """Everything the app is configured with at launch (flags or environment variables)."""

    models: tuple[str, ...] = ()
    weights_dir: str | None = None
    server_name: str = "127.0.0.1"
    port: int | None = None
    share: bool = False
    device: str = "auto"
    backend: str | None = None  # None: env GFP_BACKEND, else auto (gfp.devices.decide_backend)
    detector: str = registry.DEFAULTS["detector"]
    background: str | None = None  # None: the device's default (registry.default_for)
    concurrency: int | None = None
    max_pixels: int | None = None
    mcp: bool = True
    max_video_seconds: float | None = None
    max_video_pixels: int | None = None


def parse_args(argv: Sequence[str] | None = None) -> AppSettings:
    """Read the app settings from command-line flags, falling back to environment variables."""
    env = os.environ.get
    parser = argparse.ArgumentParser(description="gfp face restoration: Gradio app / Hugging Face Space")
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="extra model: a checkpoint path, a folder from save_pretrained, a Hub repo id or a zoo name; "
        "repeatable, the first becomes the default (env GFP_MODEL, comma-separated)",
    )
    parser.add_argument(
        "--weights-dir", default=env("GFP_WEIGHTS_DIR"), help="folder with weight files (env GFP_WEIGHTS_DIR)"
    )
    parser.add_argument(
        "--server-name",
        default=env("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to listen on; 0.0.0.0 for the network (env GRADIO_SERVER_NAME)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=_env_number("GRADIO_SERVER_PORT"),
        help="port; default the first free one from 7860 (env GRADIO_SERVER_PORT)",
    )
    parser.add_argument(
        "--share", action="store_true", default=_env_flag("GRADIO_SHARE"), help="public gradio.live link"
    )
    parser.add_argument(
        "--device", default=env("GFP_DEVICE", "auto"), help="auto, cpu, cuda, cuda:1, mps (env GFP_DEVICE)"
    )
    parser.add_argument(
        "--backend",
        default=env("GFP_BACKEND", "auto"),
        choices=BACKENDS,
        help="auto: OpenVINO on a CPU when installed, else PyTorch; torch; openvino (env GFP_BACKEND)",
    )
    parser.add_argument(
        "--detector",
        default=env("GFP_DETECTOR", registry.DEFAULTS["detector"]),
        choices=registry.choice_names("detector"),
        help="default face detector (env GFP_DETECTOR)",
    )
    parser.add_argument(
        "--bg-upsampler",
        dest="background",
        default=env("GFP_BG_UPSAMPLER"),
        choices=registry.choice_names("upsampler"),
        help="default background upsampler (env GFP_BG_UPSAMPLER; default "
        f"{registry.default_for('upsampler', 'cpu')} on a CPU, {registry.DEFAULTS['upsampler']} on a GPU)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=_env_number("GFP_CONCURRENCY"),
        help="requests processed at once; default 1 on CPU, 2 on GPU (env GFP_CONCURRENCY)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=_env_number("GFP_MAX_PIXELS"),
        help="inputs above this many pixels are downscaled first; default 2 MP on CPU, 8 MP on GPU "
        "(env GFP_MAX_PIXELS)",
    )
    parser.add_argument(
        "--max-video-seconds",
        type=float,
        default=_env_number("GFP_MAX_VIDEO_SECONDS", float),
        help="longest clip (seconds) the Video tab accepts; default 30 on CPU, 600 on GPU "
        "(env GFP_MAX_VIDEO_SECONDS)",
    )
    parser.add_argument(
        "--max-video-pixels",
        type=int,
        default=_env_number("GFP_MAX_VIDEO_PIXELS"),
        help="largest video frame the Video tab accepts; default 1280x720 on CPU, 1920x1080 on GPU "
        "(env GFP_MAX_VIDEO_PIXELS)",
    )
    parser.add_argument(
        "--no-mcp",
        dest="mcp",
        action="store_false",
        default=not _env_flag("GFP_NO_MCP"),
        help="do not serve the MCP tool (env GFP_NO_MCP=1)",
    )
    args = parser.parse_args(argv)
    models = (
        args.model if args.model is not None else [m for m in env("GFP_MODEL", "").split(",") if m.strip()]
    )
    for name, value in (
        ("--concurrency", args.concurrency),
        ("--max-pixels", args.max_pixels),
        ("--max-video-seconds", args.max_video_seconds),
        ("--max-video-pixels", args.max_video_pixels),
    ):
        if value is not None and value < 1:
            parser.error(f"{name} must be at least 1, got {value}")
    return AppSettings(
        models=tuple(m.strip() for m in models if m.strip()),
        weights_dir=args.weights_dir,
        server_name=args.server_name,
        port=args.port,
        share=args.share,
        device=args.device,
        backend=args.backend,
        detector=args.detector,
        background=args.background,
        concurrency=args.concurrency,
        max_pixels=args.max_pixels,
        mcp=args.mcp,
        max_video_seconds=args.max_video_seconds,
        max_video_pixels=args.max_video_pixels,
    )


def model_specs(extra: Sequence[str]) -> dict[str, str]:
    """Model dropdown values -> what the pipeline loads, in dropdown order (the first is the default).

    Launch-time models come first, then the registry's generators. A local file or folder is offered under
    its last path part only, so no server path shows in the UI or the API schema.
    """
    official = registry.choice_names("generator")
    specs: dict[str, str] = {}
    for spec in extra:
        path = Path(spec).expanduser()
        local = spec not in official and (path.is_absolute() or path.exists())
        specs.setdefault(path.name if local else spec, spec)
    for name in official:
        specs.setdefault(name, name)
    return specs


def _background_defaults(settings: AppSettings, device: torch.device) -> tuple[str, str | None]:
    """(the background requests get when they name none, the one of them that may fall back to Lanczos).

    The first is the launch flag, else the device's default (:func:`gfp.registry.default_for`). Only the
    device's default may fall back, and only when no flag named one: a background named at launch or in a
    request must be had.
    """
    device_default = registry.default_for("upsampler", device)
    return settings.background or device_default, None if settings.background else device_default


@dataclass(frozen=True)
class WeightsCheck:
    """The startup check: weights whose absence fails requests, and default models that will fall back."""

    missing: tuple[str, ...] = ()
    """Error messages (file, places looked, how to provide it) of weights requests need."""
    fallbacks: tuple[str, ...] = ()
    """Error messages of default optional models (background upsampler, face parser) that are replaced."""


def default_model_spec(settings: AppSettings) -> str:
    """The spec of the model the app offers first (the first ``--model``, else v1.4)."""
    return next(iter(model_specs(settings.models).values()))


def check_weights(settings: AppSettings) -> WeightsCheck:
    """Try to get the default model, detector, background upsampler and face parser weights.

    On a Space this downloads them at startup (before the first request); offline it explains what to put
    where: the messages come from :class:`gfp.weights.errors.WeightsNotFoundError`. Run by :func:`main`,
    so building the UI (tests) stays cheap.
    """
    default_model = default_model_spec(settings)
    background, may_fall_back = _background_defaults(settings, select_device(settings.device))
    optional_bg = background == may_fall_back
    wanted = [(default_model, False), (settings.detector, False)]
    wanted += [(name, optional_bg) for name in registry.members("upsampler", background)]
    wanted.append((registry.DEFAULTS["parser"], True))
    missing, fallbacks = [], []
    for spec, optional in wanted:
        try:
            resolve(spec, settings.weights_dir)
        except WeightsError as exc:
            (fallbacks if optional else missing).append(str(exc))
    return WeightsCheck(tuple(missing), tuple(fallbacks))


def _banner(check: WeightsCheck) -> str:
    """Markdown shown above the app when weights are missing (empty when nothing is)."""
    parts = []
    if check.missing:
        parts.append(
            "### ⚠️ Some weights are missing\n"
            "The app runs, but requests that need these files will fail until you provide them: put the "
            "files in the weights folder (`--weights-dir` / `GFP_WEIGHTS_DIR`), pass a path or Hub repo id "
            "with `--model`, or give the machine internet access so they download.\n\n"
            + "\n\n".join(f"```\n{m}\n```" for m in check.missing)
        )
    if check.fallbacks:
        parts.append(
            "### Running with fallbacks\n"
            "These default models cannot be had, so the app uses a simpler replacement until you provide "
            "them (same folders as above): the background is resized with Lanczos instead of Real-ESRGAN, "
            "faces are blended with a soft square mask instead of the ParseNet face mask.\n\n"
            + "\n\n".join(f"```\n{m}\n```" for m in check.fallbacks)
        )
    return "\n\n".join(parts)


def _as_display(img: np.ndarray) -> np.ndarray:
    """cv2 layout (any depth) -> 8-bit RGB/RGBA for gradio's image widgets, at most PREVIEW_MAX_SIDE."""
    if img.dtype == np.uint16:
        img = np.round(img / 257.0).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    side = max(img.shape[:2])
    if side > PREVIEW_MAX_SIDE:
        scale = PREVIEW_MAX_SIDE / side
        size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return img


def _read_upload(image: dict[str, Any] | str | None) -> tuple[np.ndarray, str]:
    """Decode the uploaded file itself (not gradio's PIL preprocessing) and name the result after it.

    gradio's image preprocessing drops alpha and 16-bit and fails with a technical message on a bad file;
    reading the file with gfp.imageio keeps every layout, applies EXIF orientation and gives clear errors.
    ``image`` is gradio's raw FileData dict (the event runs with preprocess=False) or, for direct calls,
    a path.
    """
    if isinstance(image, dict):
        path, name = image.get("path"), image.get("orig_name") or image.get("path")
    else:
        path, name = image, image
    if not path:
        raise gr.Error("Please upload a photo first.")
    try:
        img = read_image(path)  # refuses more than imageio.DEFAULT_MAX_PIXELS (40 MP)
    except ImageReadError as exc:
        shown = str(exc).replace(str(path), Path(str(name)).name)  # no server paths in user messages
        raise gr.Error(f"Could not use this file: {shown}") from None
    return img, Path(str(name)).stem[:60] or "photo"


def _number(name: str, value: Any, low: float, high: float) -> float:
    """A numeric option from the request, or a gradio error that says what is allowed."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not low <= number <= high:
        raise gr.Error(f"{name} must be a number between {low:g} and {high:g}, got {value!r}.")
    return number


def _color_fix_text(color_fix: str) -> str:
    """ " · colour fix NAME" for the status line, nothing for "none"."""
    return "" if color_fix == "none" else f" · colour fix {color_fix}"


def _min_face(value: Any) -> int:
    """The smallest face (pixels) from the request, or a gradio error that says what is allowed."""
    number = _number("Smallest face", value, 0, 100_000)
    if number != int(number):
        raise gr.Error(f"Smallest face must be a whole number of pixels, got {value!r}.")
    return int(number)


def _fit_budget(img: np.ndarray, max_pixels: int) -> tuple[np.ndarray, str | None]:
    """Downscale (area averaging) so that width x height <= max_pixels; say so when it happens."""
    h, w = img.shape[:2]
    if h * w <= max_pixels:
        return img, None
    scale = math.sqrt(max_pixels / (h * w))
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return small, (
        f"The photo ({w}x{h}) is above this app's budget of {max_pixels / 1e6:.3g} MP and was downscaled "
        f"to {size[0]}x{size[1]} first."
    )


def _face_pairs(
    numbers: Sequence[int], cropped: Sequence[np.ndarray], restored: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, str]]:
    """One gallery tile per restored face, by face number: the aligned crop before (left) and after (right),
    captioned with the number "Faces" takes."""
    tiles = []
    for number, before, after in sorted(zip(numbers, cropped, restored, strict=True), key=lambda t: t[0]):
        if after.shape != before.shape:
            after = cv2.resize(after, (before.shape[1], before.shape[0]), interpolation=cv2.INTER_AREA)
        tiles.append((_as_display(np.hstack([before, after])), f"Face {number}: before | after"))
    return tiles


def _status(result: Any, model: str, fmt: str, notices: Sequence[str], color_fix: str = "none") -> str:
    """The status line (Markdown): faces found, restored and skipped, output, device, model (and colour fix),
    time per stage, then any notices."""
    height, width = result.image.shape[:2]
    lines = [f"**Note:** {notice}" for notice in notices]
    lines.append(
        f"**{result.selection.summary()}** · output {width}x{height} {fmt} · device {result.device} · "
        f"model {model}{_color_fix_text(color_fix)}"
    )
    lines.append(
        "Time: " + " · ".join(f"{stage} {seconds:.2f} s" for stage, seconds in result.timings.items())
    )
    lines += [f"Note: {note}" for note in result.notes]
    return "  \n".join(lines)


class _OutputFolder:
    """Where result files are written for download; old ones are pruned so the folder cannot grow forever."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="gfp-app-"))
        self._lock = threading.Lock()

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


@dataclass(frozen=True)
class RequestContext:
    """What every request needs, fixed at launch: settings, the shared Restorer, allowed values, budgets."""

    settings: AppSettings
    restorer: Restorer
    specs: dict[str, str]
    """Model dropdown values -> what the pipeline loads (see :func:`model_specs`)."""
    allowed: dict[str, tuple[str, ...]]
    background: str
    """The background requests get when they name none (see :func:`_background_defaults`)."""
    may_fall_back: str | None
    """The background that falls back to Lanczos without its weights (None: none does)."""
    max_pixels: int
    outputs: _OutputFolder

    @classmethod
    def create(cls, settings: AppSettings, restorer: Restorer) -> RequestContext:
        """Choices from the registry and the settings; budgets from the Restorer's device."""
        on_gpu = restorer.device.type != "cpu"
        specs = model_specs(settings.models)
        allowed = {
            "model": tuple(specs),
            "detector": tuple(registry.choice_names("detector")),
            "background": tuple(registry.choice_names("upsampler")),
            "output_format": tuple(FORMATS),
            "color_fix": COLOR_FIXES,
        }
        background, may_fall_back = _background_defaults(settings, restorer.device)
        return cls(
            settings=settings,
            restorer=restorer,
            specs=specs,
            allowed=allowed,
            background=background,
            may_fall_back=may_fall_back,
            max_pixels=settings.max_pixels or (8_000_000 if on_gpu else 2_000_000),
            outputs=_OutputFolder(),
        )

    def bg_upsampler(self, background: str) -> str | None:
        """``RestoreOptions.bg_upsampler`` for a request's background: None (the pipeline's own default,
        which falls back, noted) for the one that may fall back, else the name, which must be had."""
        return None if background == self.may_fall_back else background


def handle_request(
    ctx: RequestContext,
    image: dict[str, Any] | str | None,
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
    """One /restore request: check the options, restore, write the file; gradio errors for bad input."""
    for name, value in (
        ("model", model),
        ("detector", detector),
        ("background", background),
        ("output_format", output_format),
        ("color_fix", color_fix),
    ):
        if value not in ctx.allowed[name]:
            raise gr.Error(f"Unknown {name} {value!r}; choose one of {sorted(ctx.allowed[name])}.")
    rescale, strength = _number("Rescale", rescale, 1.0, 4.0), _number("Strength", strength, 0.0, 1.0)
    min_face = _min_face(min_face)
    img, stem = _read_upload(image)
    uploaded_width = img.shape[1]
    img, notice = _fit_budget(img, ctx.max_pixels)
    if notice and min_face:  # the smallest face is in the uploaded photo's pixels: scale it with the photo
        scaled = round(min_face * img.shape[1] / uploaded_width)
        notice += f" The smallest face size was scaled with it: {min_face} px → {scaled} px."
        min_face = scaled
    if notice:
        gr.Info(notice)

    def report(done: int, total: int, stage: str) -> None:
        if progress is not None:
            progress((done, total) if total else None, desc=stage)

    try:
        options = RestoreOptions(
            version=ctx.specs[model],
            upscale=rescale,
            bg_upsampler=ctx.bg_upsampler(background),
            only_center_face=bool(only_center_face),
            aligned=bool(aligned),
            strength=strength,
            detector=detector,
            color_fix=color_fix,
            faces=faces,
            min_face=min_face,
        )
        result = ctx.restorer.restore(img, options, progress=report)
    except (WeightsError, ValueError) as exc:  # missing/bad weights, or options the pipeline refuses
        raise gr.Error(str(exc)) from None

    out = result.image
    path = ctx.outputs.new_file(stem, FORMATS[output_format])
    write_image(path, out)
    before = cv2.resize(img, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_CUBIC)
    notices = [notice] if notice else []
    if not result.selection.found:
        notices.append("No face found: the photo was only upscaled.")
        gr.Warning(notices[-1])
    status = _status(result, registry.label(model), output_format, notices, color_fix)
    pairs = _face_pairs(result.face_numbers, result.cropped_faces, result.restored_faces)
    return (_as_display(before), _as_display(out)), pairs, str(path), status


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
            background: background upsampler: "realesrgan", "RealESRGAN_x2plus", "realesr-general-x4v3",
                "realesr-animevideov3" or "none" (plain Lanczos resize).
            strength: 0 keeps the original faces, 1 uses the restored faces fully.
            only_center_face: restore only the face nearest the centre (the same as faces "center").
            aligned: the input is already an aligned 512x512 face crop (no detection).
            detector: face detector, "retinaface_resnet50" or "retinaface_mobile0.25".
            output_format: file format of the download, "PNG", "JPEG" or "WebP".
            color_fix: give restored faces their input's colours: "none", "wavelet" or "adain".
            faces: faces to restore: "all", "largest", "center", or face numbers such as "1,3" (numbered from
                1, left to right, as the gallery shows them); the others are left as they are.
            min_face: skip faces smaller than this many pixels (shorter side of the face's box); 0 = any size.

        Returns:
            the before/after pair, the faces before and after, the full-resolution file, a status line.
        """
        return handle_request(
            ctx, image, model, rescale, background, strength, only_center_face, aligned, detector,
            output_format, color_fix, faces, min_face, progress,
        )  # fmt: skip

    return _on_zero_gpu(restore)


def _on_zero_gpu(handler: Callable[..., Any]) -> Callable[..., Any]:
    """On ZeroGPU Spaces a request borrows a GPU (``spaces.GPU``); elsewhere `spaces` is not installed."""
    try:
        import spaces
    except ImportError:
        return handler
    return spaces.GPU(handler)


def build_app(
    settings: AppSettings, restorer: Restorer | None = None, weights: WeightsCheck | None = None
) -> gr.Blocks:
    """Build the Blocks UI around one shared Restorer (created here unless given).

    ``weights`` is the startup check (:func:`check_weights`, run by :func:`main`); its findings show as a
    banner. Building downloads nothing.
    """
    restorer = restorer or Restorer(settings.weights_dir, settings.device, backend=settings.backend)
    ctx = RequestContext.create(settings, restorer)
    handler = build_handler(ctx)
    video_handler = _on_zero_gpu(_video_handler(ctx))
    models = [(registry.label(name), name) for name in ctx.specs]
    banner = _banner(weights or WeightsCheck())
    with gr.Blocks(title="gfp: GFPGAN face restoration", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# GFPGAN face restoration\n"
            "Blind face restoration with a generative facial prior (GFPGAN, CVPR 2021), open implementation. "
            "Upload a photo, press **Restore**, compare with the slider, download the full-resolution file; "
            "or restore the faces of a clip, with its sound, in the **Video** tab."
        )
        gr.Markdown(banner, visible=bool(banner), elem_id="weights-banner")
        with gr.Tab("Photo"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = gr.Image(
                        type="filepath",
                        image_mode=None,
                        sources=["upload", "clipboard", "webcam"],
                        label="Photo",
                        elem_id="input-image",
                    )
                    model, rescale, background, strength = _restore_controls(models, ctx.background)
                    with gr.Accordion("Advanced", open=False):
                        color_fix, faces_choice, min_face = _choice_controls(photo=True)
                        only_center_face = gr.Checkbox(False, label="Only the centre face (= Faces: center)")
                        aligned = gr.Checkbox(False, label="Input is an aligned 512x512 face")
                        detector = gr.Dropdown(
                            registry.choices("detector"), value=settings.detector, label="Face detector"
                        )
                        output_format = gr.Radio(list(FORMATS), value="PNG", label="Download format")
                    run = gr.Button("Restore", variant="primary", elem_id="restore-button")
                    examples = [
                        str(EXAMPLES_DIR / name) for name in EXAMPLES if (EXAMPLES_DIR / name).is_file()
                    ]
                    if examples:
                        gr.Examples(
                            [[path] for path in examples], inputs=[image], label="Examples (click one)"
                        )
                with gr.Column(scale=2):
                    slider = gr.ImageSlider(
                        label="Before / after", type="numpy", format="webp", elem_id="slider"
                    )
                    faces = gr.Gallery(
                        label="Faces: before | after",
                        columns=3,
                        height=300,
                        object_fit="contain",
                        elem_id="faces",
                    )
                    download = gr.File(label="Full-resolution result", elem_id="download")
                    status = gr.Markdown(label="Status", elem_id="status")
            run.click(
                handler,
                inputs=[
                    image,
                    model,
                    rescale,
                    background,
                    strength,
                    only_center_face,
                    aligned,
                    detector,
                    output_format,
                    color_fix,
                    faces_choice,
                    min_face,
                ],
                outputs=[slider, faces, download, status],
                api_name="restore",
                preprocess=False,  # we read the uploaded file ourselves: see _read_upload
            )
        with gr.Tab("Video"):
            _video_tab(video_handler, models, ctx)
    on_gpu = restorer.device.type != "cpu"
    demo.queue(default_concurrency_limit=settings.concurrency or (2 if on_gpu else 1), max_size=64)
    return demo


def _video_limits(settings: AppSettings, on_gpu: bool) -> VideoOptions:
    """The Video tab's limits: the settings', else 30 s and 1280x720 on CPU, 600 s and 1920x1080 on GPU."""
    seconds = settings.max_video_seconds or (600.0 if on_gpu else 30.0)
    pixels = settings.max_video_pixels or (1920 * 1080 if on_gpu else 1280 * 720)
    return VideoOptions(max_seconds=seconds, max_pixels=pixels)


def _video_handler(ctx: RequestContext) -> Callable[..., Any]:
    """The Video tab's function (endpoint and MCP tool ``restore_video``), over the app's shared Restorer."""
    settings, restorer, specs, allowed, outputs = (
        ctx.settings,
        ctx.restorer,
        ctx.specs,
        ctx.allowed,
        ctx.outputs,
    )
    on_gpu = restorer.device.type != "cpu"
    limits = _video_limits(settings, on_gpu)

    def restore_video(
        video: dict[str, Any] | str | None,
        model: str = next(iter(specs)),
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
            background: background upsampler: "realesrgan", "realesr-general-x4v3", "realesr-animevideov3"
                or "none" (plain Lanczos resize).
            strength: 0 keeps the original faces, 1 uses the restored faces fully.
            only_center_face: restore only the person nearest the centre (the same as faces "center").
            detector: face detector, "retinaface_resnet50" or "retinaface_mobile0.25".
            smooth: smooth the face landmarks from frame to frame so restored faces do not jitter.
            color_fix: give restored faces their input's colours: "none", "wavelet" or "adain".
            faces: people to restore, each followed through the clip: "all", "largest", "center", or
                numbers such as "1,3" (numbered from 1 in the order they appear, left to right).
            min_face: skip people whose face is smaller than this many pixels (median over the clip).

        Returns:
            the input clip, the restored clip (MP4, H.264, same frame rate, duration and sound), the
            restored file for download, a status line.
        """
        for name, value in (
            ("model", model),
            ("detector", detector),
            ("background", background),
            ("color_fix", color_fix),
        ):
            if value not in allowed[name]:
                raise gr.Error(f"Unknown {name} {value!r}; choose one of {sorted(allowed[name])}.")
        rescale, strength = _number("Rescale", rescale, 1.0, 4.0), _number("Strength", strength, 0.0, 1.0)
        min_face = _min_face(min_face)
        if isinstance(video, dict) and isinstance(video.get("video"), dict):  # older gradio: VideoData
            video = video["video"]
        if isinstance(video, dict):
            path, name = video.get("path"), video.get("orig_name") or video.get("path")
        else:
            path, name = video, video
        if not path:
            raise gr.Error("Please upload a video first.")
        shown = Path(str(name)).name
        target = outputs.new_file(Path(shown).stem[:60] or "video", ".mp4")

        def report(done: int, total: int, stage: str) -> None:
            progress((done, total) if total else None, desc=f"{stage}: {done}")

        try:
            options = RestoreOptions(
                version=specs[model],
                upscale=rescale,
                bg_upsampler=ctx.bg_upsampler(background),
                only_center_face=bool(only_center_face),
                strength=strength,
                detector=detector,
                color_fix=color_fix,
                faces=faces,
                min_face=min_face,
            )
            video_options = VideoOptions(
                smooth=bool(smooth), max_seconds=limits.max_seconds, max_pixels=limits.max_pixels
            )
            result = restore_video_file(path, target, options, video_options, restorer, progress=report)
        except VideoError as exc:  # no server paths in user messages
            raise gr.Error(f"Could not use this file: {str(exc).replace(str(path), shown)}") from None
        except (WeightsError, ValueError) as exc:
            raise gr.Error(str(exc)) from None
        lines = [
            f"**{result.frames} frames · {result.selection.summary()}** · {result.faces} faces pasted · "
            f"output {result.width}x{result.height} H.264 · {result.fps:.3g} fps · {result.duration:.2f} s · "
            f"audio {result.audio} · "
            f"device {result.device} · model {registry.label(model)}{_color_fix_text(color_fix)}",
            "Time: " + " · ".join(f"{stage} {seconds:.2f} s" for stage, seconds in result.timings.items()),
        ]
        if not result.selection.found:
            lines.insert(0, "**Note:** No face found: the video was only upscaled.")
        lines += [f"Note: {note}" for note in result.notes]
        return str(path), str(result.path), str(result.path), "  \n".join(lines)

    return restore_video


def _restore_controls(
    models: list[tuple[str, str]], background: str
) -> tuple[gr.Dropdown, gr.Slider, gr.Radio, gr.Slider]:
    """The controls the Photo and Video tabs share: model, rescale factor, background upsampler (with
    ``background`` selected), strength."""
    model = gr.Dropdown(models, value=models[0][1], label="Model")
    rescale = gr.Slider(1, 4, value=2, step=0.5, label="Rescale factor")
    background = gr.Radio(registry.choices("upsampler"), value=background, label="Background upsampler")
    strength = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Strength (0 = original face)")
    return model, rescale, background, strength


def _choice_controls(photo: bool) -> tuple[gr.Radio, gr.Textbox, gr.Number]:
    """The colour fix and face choice controls of the Photo and Video tabs' Advanced section."""
    color_fix = gr.Radio(
        list(COLOR_FIXES),
        value="none",
        label="Colour fix",
        info="Give restored faces the input's colours and brightness, for models that tint or darken faces: "
        "wavelet keeps the restored detail, adain matches each colour's mean and spread.",
        elem_id="color-fix" if photo else "video-color-fix",
    )
    numbered = "as the gallery numbers them" if photo else "in the order people appear, left to right"
    faces = gr.Textbox(
        "all",
        label="Faces to restore",
        info=f"all, largest, center, or face numbers {numbered} (e.g. 1,3); the others are left as they are.",
        elem_id="faces-choice" if photo else "video-faces-choice",
    )
    min_face = gr.Number(
        0,
        minimum=0,
        precision=0,
        label="Smallest face (pixels)",
        info="Skip faces whose box is smaller than this on its shorter side (0: any size).",
        elem_id="min-face" if photo else "video-min-face",
    )
    return color_fix, faces, min_face


def _video_tab(handler: Callable[..., Any], models: list[tuple[str, str]], ctx: RequestContext) -> None:
    """The Video tab's components and its event (API name ``restore_video``), in the current Blocks."""
    with gr.Row():
        with gr.Column(scale=1):
            video = gr.Video(sources=["upload"], label="Video", elem_id="input-video")
            model, rescale, background, strength = _restore_controls(models, ctx.background)
            with gr.Accordion("Advanced", open=False):
                color_fix, faces, min_face = _choice_controls(photo=False)
                only_center_face = gr.Checkbox(False, label="Only the centre face (= Faces: center)")
                detector = gr.Dropdown(
                    registry.choices("detector"), value=ctx.settings.detector, label="Face detector"
                )
                smooth = gr.Checkbox(True, label="Smooth faces across frames (no jitter)")
            run = gr.Button("Restore video", variant="primary", elem_id="restore-video-button")
        with gr.Column(scale=2):
            with gr.Row():
                before = gr.Video(label="Before", interactive=False, elem_id="video-before")
                after = gr.Video(label="After", interactive=False, elem_id="video-after")
            download = gr.File(label="Restored video (MP4)", elem_id="video-download")
            status = gr.Markdown(elem_id="video-status")
    run.click(
        handler,
        inputs=[
            video,
            model,
            rescale,
            background,
            strength,
            only_center_face,
            detector,
            smooth,
            color_fix,
            faces,
            min_face,
        ],
        outputs=[before, after, download, status],
        api_name="restore_video",
        preprocess=False,  # the clip is read from the uploaded file itself (gfp.video)
    )


def launch(demo: gr.Blocks, settings: AppSettings, **kwargs: Any) -> Any:
    """Start the server with the settings' address, port, share link and MCP tool."""
    mcp = settings.mcp
    if mcp:
        try:
            import mcp as _mcp  # noqa: F401
        except ImportError:
            print("MCP disabled: install gradio[mcp] to serve the restore tool to MCP clients.")
            mcp = False
    return demo.launch(
        server_name=settings.server_name,
        server_port=settings.port,
        share=settings.share,
        mcp_server=mcp,
        max_file_size="50mb",
        **kwargs,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: parse flags, check (and on a Space download) the weights, build, serve."""
    settings = parse_args(argv)
    try:
        restorer = Restorer(settings.weights_dir, settings.device, backend=settings.backend)
    except ValueError as exc:  # e.g. --device cuda on a machine without CUDA, --backend openvino on a GPU
        raise SystemExit(f"app.py: error: {exc}") from None
    weights = check_weights(settings)
    for message in weights.missing + weights.fallbacks:
        print(f"app.py: {message.splitlines()[0]}")
    if not weights.missing:
        warm_up(restorer, default_model_spec(settings))
    launch(build_app(settings, restorer, weights), settings)


def warm_up(restorer: Restorer, spec: str) -> threading.Thread:
    """Load the default generator and the face parser and run each once on a blank face, in a background
    thread while the server starts, so the first request does not wait for that: with the OpenVINO backend
    it converts them (about 15 s the first time) and compiles them for their input shape. A request that
    comes sooner waits on the same load (the Restorer loads each model once); a failure here is left for
    that request to report."""

    def run() -> None:
        with contextlib.suppress(Exception):  # the request that needs the model reports the error
            options = RestoreOptions(version=spec)
            size = restorer.face_network(spec)[1].out_size
            restored = restorer.restore_faces([np.zeros((size, size, 3), np.uint8)], options)
            restorer.face_masks(restored, options, RunLog(None))

    thread = threading.Thread(target=run, name="gfp-warm-up", daemon=True)
    thread.start()
    return thread


if __name__ == "__main__":
    main()
