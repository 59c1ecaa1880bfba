"""The app's launch settings: flags and environment variables, the models offered, the startup weight check.

Every flag has an environment variable (shown by ``--help``) so a Space can be configured without code.
The models offered, their defaults and the background each device gets come from :mod:`gfp.registry`.
Nothing here imports gradio.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gfp import registry
from gfp.devices import BACKENDS, select_device
from gfp.pipeline import Restorer
from gfp.video import VideoOptions
from gfp.weights.errors import WeightsError
from gfp.weights.resolve import cache_dir, resolve


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
    """Whether environment variable ``name`` says yes (1, true, yes, on)."""
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
    detectors, upsamplers = registry.choice_names("detector"), registry.choice_names("upsampler")
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
        "--share",
        action="store_true",
        default=_env_flag("GRADIO_SHARE"),
        help="public gradio.live link (env GRADIO_SHARE=1)",
    )
    parser.add_argument(
        "--device", default=env("GFP_DEVICE", "auto"), help="auto, cpu, cuda, cuda:1, mps (env GFP_DEVICE)"
    )
    parser.add_argument(
        "--backend",
        default=(env("GFP_BACKEND") or "auto").strip().lower(),  # as gfp.devices reads it
        choices=BACKENDS,
        help="auto: OpenVINO on a CPU when installed, else PyTorch; torch; openvino (env GFP_BACKEND)",
    )
    parser.add_argument(
        "--detector",
        default=env("GFP_DETECTOR") or registry.DEFAULTS["detector"],
        choices=detectors,
        help="default face detector (env GFP_DETECTOR)",
    )
    parser.add_argument(
        "--bg-upsampler",
        dest="background",
        default=env("GFP_BG_UPSAMPLER") or None,
        choices=upsamplers,
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
    for variable, value, choices in (
        ("GFP_DETECTOR", args.detector, detectors),
        ("GFP_BG_UPSAMPLER", args.background, upsamplers),
        ("GFP_BACKEND", args.backend, BACKENDS),
    ):
        if value is not None and value not in choices:  # argparse checks flags given, not env defaults
            listed = ", ".join(map(repr, choices))
            parser.error(f"environment variable {variable}: invalid choice: {value!r} (choose from {listed})")
    models = (
        args.model if args.model is not None else [m for m in env("GFP_MODEL", "").split(",") if m.strip()]
    )
    for name, value in (
        ("--concurrency", args.concurrency),
        ("--max-pixels", args.max_pixels),
        ("--max-video-seconds", args.max_video_seconds),
        ("--max-video-pixels", args.max_video_pixels),
    ):
        if value is not None and not value >= 1:  # "nan" is a float, and not < 1: it failed later
            parser.error(f"{name} must be at least 1, got {value}")
    if args.port is not None and not 1 <= args.port <= 65535:  # gradio fails late on it, with a traceback
        parser.error(f"--port must be from 1 to 65535 (env GRADIO_SERVER_PORT), got {args.port}")
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
    its last path part only, so no server path shows in the UI or the API schema; one whose name an earlier
    model or a registry generator took gets as many of its parent folders as tell them apart
    (``run2/model``), so none is lost.
    """
    official = registry.choice_names("generator")

    def local(spec: str) -> bool:
        path = Path(spec).expanduser()
        return spec not in official and (path.is_absolute() or path.exists())

    reserved = {*official, *(spec for spec in extra if not local(spec))}  # names that are specs themselves
    specs: dict[str, str] = {}
    local_files: dict[str, Path] = {}  # the dropdown values of local models -> their real paths
    for spec in extra:
        if not local(spec):
            specs.setdefault(spec, spec)
            continue
        full = Path(os.path.realpath(Path(spec).expanduser()))
        for depth in range(1, len(full.parts)):  # parts[0] is the root
            name = "/".join(full.parts[-depth:])
            if local_files.get(name) == full or (name not in specs and name not in reserved):
                break  # this very file given again (any spelling), or a free name
        specs.setdefault(name, spec)
        local_files.setdefault(name, full)
    for name in official:
        specs.setdefault(name, name)
    return specs


def default_model_spec(settings: AppSettings) -> str:
    """The spec of the model the app offers first (the first ``--model``, else v1.4)."""
    return next(iter(model_specs(settings.models).values()))


def background_defaults(settings: AppSettings, device: torch.device) -> tuple[str, str | None]:
    """(the background requests get when they name none, the one of them that may fall back to Lanczos).

    The first is the launch flag, else the device's default (:func:`gfp.registry.default_for`). Only the
    device's default may fall back, and only when no flag named one: a background named at launch or in a
    request must be had.
    """
    device_default = registry.default_for("upsampler", device)
    return settings.background or device_default, None if settings.background else device_default


def video_limits(settings: AppSettings, on_gpu: bool) -> VideoOptions:
    """The Video tab's limits: the settings', else 30 s and 1280x720 on CPU, 600 s and 1920x1080 on GPU."""
    seconds = settings.max_video_seconds or (600.0 if on_gpu else 30.0)
    pixels = settings.max_video_pixels or (1920 * 1080 if on_gpu else 1280 * 720)
    return VideoOptions(max_seconds=seconds, max_pixels=pixels)


@dataclass(frozen=True)
class WeightsCheck:
    """The startup check: weights whose absence fails requests, and default models that will fall back."""

    missing: tuple[str, ...] = ()
    """Error messages (file, places looked, how to provide it) of weights requests need."""
    fallbacks: tuple[str, ...] = ()
    """Error messages of default optional models (background upsampler, face parser) that are replaced."""


def check_weights(settings: AppSettings, restorer: Restorer | None = None) -> WeightsCheck:
    """Try to get the default model, detector, background upsampler and face parser weights.

    On a Space this downloads them at startup (before the first request); offline it explains what to put
    where: the messages come from :class:`gfp.weights.errors.WeightsNotFoundError`. With ``restorer`` the
    default model is also read through it (a file that is there but cut short or no generator is found
    now, not by the first request; the read is kept for the warm-up). Run by the app's ``main``, so
    building the UI (tests) stays cheap.
    """
    default_model = default_model_spec(settings)
    background, may_fall_back = background_defaults(settings, select_device(settings.device))
    optional_bg = background == may_fall_back
    wanted = [(default_model, False), (settings.detector, False)]
    wanted += [(name, optional_bg) for name in registry.members("upsampler", background)]
    wanted.append((registry.DEFAULTS["parser"], True))
    missing, fallbacks = [], []
    for spec, optional in wanted:
        try:
            resolve(spec, settings.weights_dir)
            if restorer is not None and spec == default_model:
                restorer.generator_config(spec)
        except WeightsError as exc:
            (fallbacks if optional else missing).append(str(exc))
    return WeightsCheck(tuple(missing), tuple(fallbacks))


_PART = r"[^/\s'\"():`]+"
_PATH = re.compile(rf"(?<![\w/.~-])[\w.~-]*(?:/+{_PART})+/+({_PART})")
"""A file path with its folders (absolute, from ~ or .., or relative with two slashes or more: one slash is
a Hub repo id) that starts a word (or follows a colon: ``dir:/srv/...``, ``file:///srv/...``)."""
_KEPT = re.compile(r"\bhttps?://[^\s'\"()`]+|~/\.cache/gfp\b")
"""Kept whole: a web address (a download's), and the download cache's default folder, which name no
folder of this server (cut to its last part, the cache read "GFP_CACHE_DIR or gfp")."""


def listen_problem(settings: AppSettings) -> str | None:
    """Why the app cannot listen on its ``--server-name`` and ``--port`` (taken by another program, an
    address not of this machine), found before the weights are checked (on a Space, downloaded): gradio
    finds it only then, with a traceback. None when it can, or when no port is set (gradio picks one)."""
    if settings.port is None:
        return None
    with socket.socket(socket.AF_INET6 if ":" in settings.server_name else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is free
        try:
            sock.bind((settings.server_name, settings.port))
        except OSError as err:
            why = err.strerror or str(err)
            return f"cannot listen on {settings.server_name}:{settings.port} ({why}); choose another --port"
    return None


def no_paths(text: str) -> str:
    """``text`` with every file path cut to its last part: what visitors see names files, never the
    server's folders. Web addresses (a download's) are kept whole, and the download cache is named as its
    user set it (``~/.cache/gfp``, or GFP_CACHE_DIR's folder)."""
    text = _cache_named(text)
    kept = _KEPT.findall(text)
    cut = [_PATH.sub(r"\1", part) for part in _KEPT.split(text)]
    return "".join(part + url for part, url in zip(cut, [*kept, ""], strict=True))


def _cache_named(text: str) -> str:
    """``text`` with the download cache's folder written as ``~/.cache/gfp`` (the default) or "GFP_CACHE_DIR's
    folder" (one set: a server folder)."""
    try:
        folder = str(cache_dir())
    except WeightsError:  # no home folder: no cache folder to name
        return text
    return text.replace(
        folder, "GFP_CACHE_DIR's folder" if os.environ.get("GFP_CACHE_DIR") else "~/.cache/gfp"
    )


def weights_banner(check: WeightsCheck) -> str:
    """Markdown shown above the app when weights are missing (empty when nothing is); file names only, no
    server folder (the app's console has the whole text)."""
    parts = []
    if check.missing:
        parts.append(
            "### ⚠️ Some weights are missing or do not load\n"
            "The app runs, but requests that need these files will fail until you provide them: put the "
            "files in the weights folder (`--weights-dir` / `GFP_WEIGHTS_DIR`), pass a path or Hub repo id "
            "with `--model`, or give the machine internet access so they download.\n\n"
            + "\n\n".join(f"```\n{no_paths(m)}\n```" for m in check.missing)
        )
    if check.fallbacks:
        parts.append(
            "### Running with fallbacks\n"
            "These default models cannot be had, so the app uses a simpler replacement until you provide "
            "them (in the weights folder, `--weights-dir` / `GFP_WEIGHTS_DIR`): the background is resized "
            "with Lanczos instead of Real-ESRGAN, faces are blended with a soft square mask instead of the "
            "ParseNet face mask.\n\n" + "\n\n".join(f"```\n{no_paths(m)}\n```" for m in check.fallbacks)
        )
    return "\n\n".join(parts)
