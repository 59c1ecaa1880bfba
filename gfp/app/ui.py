"""The app's Blocks UI: the Photo and Video tabs around one shared Restorer, and serving it.

Drop a photo, compare before and after on a slider, look at every face before and after, and download
the full-resolution result as the exact file. The Video tab restores the faces of a clip and keeps its
sound. Each tab's button is an API endpoint and an MCP tool (``restore``, ``restore_video``: see
:mod:`gfp.app.handlers`); the choices offered come from :mod:`gfp.registry`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from gfp import registry
from gfp.app.handlers import (
    CONTROLS,
    FORMATS,
    MAX_UPLOAD_MB,
    RequestContext,
    build_handler,
    build_video_handler,
    say_fetch_errors,
)
from gfp.app.settings import AppSettings, WeightsCheck, weights_banner
from gfp.color import COLOR_FIXES
from gfp.pipeline import Restorer

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"

RESTORE_QUEUE = "restore"
"""The concurrency id of the Photo and Video events: one queue, so the concurrency limit counts both tabs'
requests together (gradio gives each event its own limit otherwise)."""

EXAMPLES = [
    "astronaut_blur_jpeg.jpg",
    "astronaut_noise.jpg",
    "astronaut_lowres.png",
    "old_photo.jpg",
    "group_photo.jpg",
    "astronaut_alpha.png",
]
"""Degraded public-domain photos made by examples/make_examples.py (see examples/README.md)."""


def build_app(
    settings: AppSettings, restorer: Restorer | None = None, weights: WeightsCheck | None = None
) -> gr.Blocks:
    """Build the Blocks UI around one shared Restorer (created here unless given).

    ``weights`` is the startup check (:func:`gfp.app.settings.check_weights`, run by the app's ``main``); its
    findings show as a banner. Building downloads nothing.
    """
    restorer = restorer or Restorer(settings.weights_dir, settings.device, backend=settings.backend)
    ctx = RequestContext.create(settings, restorer)
    models = [(registry.label(name), name) for name in ctx.specs]
    banner = weights_banner(weights or WeightsCheck())
    limit = settings.concurrency or (2 if restorer.device.type != "cpu" else 1)
    with gr.Blocks(title="gfp: GFPGAN face restoration", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# GFPGAN face restoration\n"
            "Blind face restoration with a generative facial prior (GFPGAN, CVPR 2021), open implementation. "
            "Upload a photo, press **Restore**, compare with the slider, download the full-resolution file; "
            "or restore the faces of a clip, with its sound, in the **Video** tab."
        )
        gr.Markdown(banner, visible=bool(banner), elem_id="weights-banner")
        with gr.Tab("Photo"):
            _photo_tab(ctx, models, limit)
        with gr.Tab("Video"):
            _video_tab(ctx, models, limit)
    # api_open=False: gradio otherwise serves POST /gradio_api/run/restore outside the queue (off a Space),
    # where no concurrency limit or queue size applies
    demo.queue(default_concurrency_limit=limit, max_size=64, api_open=False)
    return demo


def _photo_tab(ctx: RequestContext, models: list[tuple[str, str]], limit: int) -> None:
    """The Photo tab's components and its event (API name ``restore``, in the shared queue of ``limit``
    requests at once), in the current Blocks."""
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(
                type="filepath",
                image_mode=None,
                sources=["upload", "clipboard", "webcam"],
                label="Photo",
                elem_id="input-image",
            )
            say_fetch_errors(image)
            model, rescale, background, strength = _restore_controls(models, ctx.background)
            with gr.Accordion("Advanced", open=False):
                color_fix, faces_choice, min_face = _choice_controls(photo=True)
                only_center_face = gr.Checkbox(False, label=f"{_label('only_center_face')} (= Faces: center)")
                aligned = gr.Checkbox(False, label=_label("aligned"))
                detector = gr.Dropdown(
                    registry.choices("detector"), value=ctx.settings.detector, label=_label("detector")
                )
                output_format = gr.Radio(list(FORMATS), value="PNG", label="Download format")
            run = gr.Button("Restore", variant="primary", elem_id="restore-button")
            examples = [str(EXAMPLES_DIR / name) for name in EXAMPLES if (EXAMPLES_DIR / name).is_file()]
            if examples:
                gr.Examples([[path] for path in examples], inputs=[image], label="Examples (click one)")
        with gr.Column(scale=2):
            slider = gr.ImageSlider(label="Before / after", type="numpy", format="webp", elem_id="slider")
            faces = gr.Gallery(
                label="Faces: before | after", columns=3, height=300, object_fit="contain", elem_id="faces"
            )
            download = gr.File(label="Full-resolution result", elem_id="download")
            status = gr.Markdown(label="Status", elem_id="status")
    run.click(
        build_handler(ctx),
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
        concurrency_id=RESTORE_QUEUE,
        concurrency_limit=limit,
        preprocess=False,  # the photo is read from the uploaded file itself (gfp.app.handlers)
    )


def _video_tab(ctx: RequestContext, models: list[tuple[str, str]], limit: int) -> None:
    """The Video tab's components and its event (API name ``restore_video``, in the shared queue of
    ``limit`` requests at once), in the current Blocks."""
    with gr.Row():
        with gr.Column(scale=1):
            video = gr.Video(sources=["upload"], label="Video", elem_id="input-video")
            say_fetch_errors(video)
            model, rescale, background, strength = _restore_controls(models, ctx.background)
            with gr.Accordion("Advanced", open=False):
                color_fix, faces, min_face = _choice_controls(photo=False)
                only_center_face = gr.Checkbox(False, label=f"{_label('only_center_face')} (= Faces: center)")
                detector = gr.Dropdown(
                    registry.choices("detector"), value=ctx.settings.detector, label=_label("detector")
                )
                smooth = gr.Checkbox(True, label=f"{_label('smooth')} (no jitter)")
            run = gr.Button("Restore video", variant="primary", elem_id="restore-video-button")
        with gr.Column(scale=2):
            with gr.Row():
                before = gr.Video(label="Before", interactive=False, elem_id="video-before")
                after = gr.Video(label="After", interactive=False, elem_id="video-after")
            download = gr.File(label="Restored video (MP4)", elem_id="video-download")
            status = gr.Markdown(label="Status", elem_id="video-status")
    run.click(
        build_video_handler(ctx),
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
        concurrency_id=RESTORE_QUEUE,
        concurrency_limit=limit,
        preprocess=False,  # the clip is read from the uploaded file itself (gfp.video)
    )


def _restore_controls(
    models: list[tuple[str, str]], background: str
) -> tuple[gr.Dropdown, gr.Slider, gr.Radio, gr.Slider]:
    """The controls the Photo and Video tabs share: model, rescale factor, background upsampler (with
    ``background`` selected), strength."""
    model = gr.Dropdown(models, value=models[0][1], label=_label("version"))
    rescale = gr.Slider(1, 4, value=2, step=0.5, label=_label("upscale"))
    background = gr.Radio(registry.choices("upsampler"), value=background, label=_label("bg_upsampler"))
    strength = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label=f"{_label('strength')} (0 = original face)")
    return model, rescale, background, strength


def _choice_controls(photo: bool) -> tuple[gr.Radio, gr.Textbox, gr.Number]:
    """The colour fix and face choice controls of the Photo and Video tabs' Advanced section."""
    color_fix = gr.Radio(
        list(COLOR_FIXES),
        value="none",
        label=_label("color_fix"),
        info="Give restored faces the input's colours and brightness, for models that tint or darken faces: "
        "wavelet keeps the restored detail, adain matches each colour's mean and spread.",
        elem_id="color-fix" if photo else "video-color-fix",
    )
    numbered = "as the gallery numbers them" if photo else "in the order people appear, left to right"
    faces = gr.Textbox(
        "all",
        label=_label("faces"),
        info=f"all, largest, center, or face numbers {numbered} (e.g. 1,3); the others are left as they are.",
        elem_id="faces-choice" if photo else "video-faces-choice",
    )
    min_face = gr.Number(
        0,
        minimum=0,
        precision=0,
        label=f"{_label('min_face')} (pixels)",
        info="Skip faces whose box is smaller than this on its shorter side (0: any size).",
        elem_id="min-face" if photo else "video-min-face",
    )
    return color_fix, faces, min_face


def _label(field: str) -> str:
    """The label of the control of the option ``field`` (:data:`gfp.app.handlers.CONTROLS`: the app's
    messages name the option by it)."""
    return CONTROLS[field][0]


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
        max_file_size=f"{MAX_UPLOAD_MB}mb",
        **kwargs,
    )
