"""The app's Video tab end to end: /restore_video through gradio_client and MCP, limits, bad files.

The server of tests/conftest.py (a tiny random generator; the real MobileNet-0.25 when the shared data is
there); clips of a second or two at 64x48 made here, with a sine tone on the audio track.
"""

from __future__ import annotations

from typing import Any

import anyio
import gradio as gr
import numpy as np
import pytest
from _video_helpers import read_clip, write_clip
from conftest import DETECTOR, Server

from gfp.app.handlers import RequestContext, handle_video_request
from gfp.app.settings import AppSettings, parse_args, video_limits
from gfp.pipeline import Restorer

gradio_client = pytest.importorskip("gradio_client")


def _frames(n: int) -> list[np.ndarray]:
    yy, xx = np.mgrid[0:48, 0:64]
    return [np.dstack([xx * 4, yy * 5, np.full_like(xx, 7 * i)]).astype(np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def server_settings() -> dict[str, Any]:
    return {"max_video_seconds": 1.5}


def call(server: Server, clip, **kwargs: object):
    args = {
        "model": server.model,
        "rescale": 2,
        "background": "none",
        "strength": 1.0,
        "only_center_face": False,
        "detector": DETECTOR,
        "smooth": True,
        "color_fix": "none",
        "faces": "all",
        "min_face": 0,
    } | kwargs
    video = gradio_client.handle_file(str(clip))
    return server.client().predict(video, *args.values(), api_name="/restore_video")


def test_video_limits_from_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GFP_MAX_VIDEO_SECONDS", "12.5")
    settings = parse_args(["--max-video-pixels", "640000"])
    assert (settings.max_video_seconds, settings.max_video_pixels) == (12.5, 640_000)
    limits = video_limits(AppSettings(), on_gpu=False)
    assert (limits.max_seconds, limits.max_pixels) == (30.0, 1280 * 720)
    with pytest.raises(SystemExit):
        parse_args(["--max-video-seconds", "-1"])
    monkeypatch.setenv("GFP_MAX_VIDEO_SECONDS", "half a minute")
    with pytest.raises(SystemExit, match="GFP_MAX_VIDEO_SECONDS must be a number, got 'half a minute'"):
        parse_args([])
    monkeypatch.setenv("GFP_MAX_VIDEO_SECONDS", "")
    monkeypatch.setenv("GFP_MAX_PIXELS", "2.5e6")
    with pytest.raises(SystemExit, match="GFP_MAX_PIXELS must be a whole number"):
        parse_args([])


def test_restore_video_keeps_frames_and_sound(server: Server, tmp_path) -> None:
    clip = write_clip(tmp_path / "party.mp4", _frames(25))  # 1 s at 25 fps with a tone
    before, after, file, status = call(server, clip)
    restored = read_clip(file)
    assert len(restored.frames) == 25 and restored.frames[0].shape == (96, 128, 3)
    assert restored.fps == 25 and restored.audio is not None and restored.audio_codec == "aac"
    assert file.endswith("party_restored.mp4") and read_clip(after).frames[0].shape == (96, 128, 3)
    assert len(read_clip(before).frames) == 25
    assert "25 frames" in status and "output 128x96 H.264" in status and "audio copied" in status
    assert "0 people found, 0 restored" in status  # a gradient: nobody to restore


def test_restore_video_takes_the_face_choice_and_colour_fix(server: Server, tmp_path) -> None:
    clip = write_clip(tmp_path / "choice.mp4", _frames(10), fps=30000 / 1001, audio=None)
    status = call(server, clip, faces="largest", min_face=30, color_fix="adain")[3]
    assert "10 frames" in status and "0 people found" in status  # the first pass ran; no face to choose
    assert "29.97 fps" in status  # NTSC's rate as people write it, not rounded to 30
    assert "colour fix adain" in status
    with pytest.raises(gradio_client.exceptions.AppError, match="face numbers start at 1"):
        call(server, clip, faces="0")
    with pytest.raises(gradio_client.exceptions.AppError, match="Unknown color_fix"):
        call(server, clip, color_fix="sepia")


def test_restore_video_refuses_long_clips_and_bad_files(server: Server, tmp_path) -> None:
    long_clip = write_clip(tmp_path / "long.mp4", _frames(50))  # 2 s, above the test app's 1.5 s
    with pytest.raises(gradio_client.exceptions.AppError, match="long.mp4: the clip lasts 2.0 s, above"):
        call(server, long_clip)
    raw = write_clip(tmp_path / "raw.h264", _frames(50), audio=None, container="h264")  # no duration
    with pytest.raises(
        gradio_client.exceptions.AppError, match="raw.h264: the clip lasts more than the limit"
    ):
        call(server, raw)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 10)
    with pytest.raises(gradio_client.exceptions.AppError, match="Could not use this file: broken.mp4: not a"):
        call(server, broken)
    with pytest.raises(gradio_client.exceptions.AppError, match="Unknown detector"):
        call(server, broken, detector="yolo")


def _context() -> RequestContext:
    """A request context of the app's defaults on the CPU, for calling the handler directly."""
    return RequestContext.create(AppSettings(device="cpu", detector=DETECTOR), Restorer(device="cpu"))


def test_a_failed_video_request_leaves_no_result_folder(tmp_path) -> None:
    ctx = _context()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 10)
    with pytest.raises(gr.Error, match="broken.mp4"):
        handle_video_request(ctx, str(broken), "v1.4", 2, "none", 1.0, False, DETECTOR, True)
    assert list(ctx.outputs.path.iterdir()) == []


def test_bad_smooth_value_is_a_plain_sentence(tmp_path) -> None:
    """Not wrapped in quotes, as a gradio error re-raised as one (it is a ValueError) would be."""
    with pytest.raises(gr.Error) as err:
        handle_video_request(
            _context(), str(tmp_path / "a.mp4"), "v1.4", 2, "none", 1, False, DETECTOR, "maybe"
        )
    assert err.value.message == "\"Smooth faces across frames\" (smooth) must be true or false, got 'maybe'."


def test_mcp_lists_the_restore_video_tool(server: Server) -> None:
    pytest.importorskip("mcp")
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def tools() -> dict:
        url = server.url + "gradio_api/mcp/"
        async with streamablehttp_client(url) as (rd, wr, _), ClientSession(rd, wr) as session:
            await session.initialize()
            return {tool.name: tool for tool in (await session.list_tools()).tools}

    listed = anyio.run(tools)
    assert {"restore", "restore_video"} <= set(listed)
    properties = set(listed["restore_video"].inputSchema["properties"])
    assert {"video", "model", "rescale", "smooth", "color_fix", "faces", "min_face"} <= properties
    assert "keep the sound" in listed["restore_video"].description
    returns = server.client().view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert [r["label"] for r in returns["/restore_video"]["returns"]][-1] == "Status"
