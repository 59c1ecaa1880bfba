"""The Gradio app end to end: launched on 127.0.0.1 and called through gradio_client (and MCP).

The server (tests/conftest.py) runs a tiny self-made generator (random weights, published format); the
detector is the real RetinaFace MobileNet-0.25 when ../shared/data is present, else a seeded random one
saved under the zoo file name (then face counts are arbitrary, so tests assert sizes, formats and
behaviour, not faces).
"""

from __future__ import annotations

import base64
import dataclasses
import inspect
import os
import re
import threading
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from conftest import DETECTOR, MAX_PIXELS, MOBILE, Server, start_server

import app
from gfp import registry
from gfp.app import handlers
from gfp.app.handlers import PREVIEW_MAX_SIDE, OutputFolder, as_display, fit_budget
from gfp.app.settings import (
    AppSettings,
    WeightsCheck,
    check_weights,
    model_specs,
    no_paths,
    parse_args,
    weights_banner,
)
from gfp.app.ui import EXAMPLES as EXAMPLE_NAMES
from gfp.app.ui import build_app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def server_settings() -> dict[str, Any]:
    return {"concurrency": 4}


@pytest.fixture(scope="module")
def client(server: Server):
    return server.client()


def call(client, server: Server, image: Path, rescale: float = 2, fmt: str = "PNG", **kwargs: object):
    """One /restore request with the test defaults; returns (slider, gallery, file path, status)."""
    args = {
        "model": server.model,
        "rescale": rescale,
        "background": "none",
        "strength": 1.0,
        "only_center_face": False,
        "aligned": False,
        "detector": DETECTOR,
        "output_format": fmt,
        "color_fix": "none",
        "faces": "all",
        "min_face": 0,
    } | kwargs
    return client.predict(gradio_client.handle_file(str(image)), *args.values(), api_name="/restore")


def read(path: str | Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, f"{path} is not an image"
    return img


# --- settings, no server ---------------------------------------------------------------------------


def test_flags_and_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GFP_MODEL", "a/b, /x/y.pth")
    monkeypatch.setenv("GFP_DEVICE", "cpu")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    from_env = parse_args([])
    assert from_env.models == ("a/b", "/x/y.pth")
    assert (from_env.device, from_env.port, from_env.server_name) == ("cpu", 7999, "127.0.0.1")
    assert from_env.backend == "torch"  # GFP_BACKEND, as tests/conftest.py sets it
    assert parse_args(["--backend", "openvino"]).backend == "openvino"
    flags = parse_args(
        ["--model", "m1", "--model", "m2", "--weights-dir", "/w", "--server-name", "0.0.0.0", "--port", "1"]
        + ["--share", "--device", "cuda", "--bg-upsampler", "none", "--detector", DETECTOR, "--no-mcp"]
    )
    assert flags.models == ("m1", "m2") and flags.weights_dir == "/w" and flags.share and not flags.mcp
    assert (flags.server_name, flags.port, flags.device, flags.background) == ("0.0.0.0", 1, "cuda", "none")
    with pytest.raises(SystemExit):
        parse_args(["--concurrency", "0"])


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GFP_MAX_VIDEO_SECONDS", "nan", "--max-video-seconds must be at least 1, got nan"),
        ("GRADIO_SERVER_PORT", "99999", "--port must be from 1 to 65535 (env GRADIO_SERVER_PORT), got 99999"),
        ("GRADIO_SERVER_PORT", "0", "--port must be from 1 to 65535 (env GRADIO_SERVER_PORT), got 0"),
    ],
)
def test_a_limit_of_nan_or_a_port_out_of_range_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    message: str,
) -> None:
    """Both passed the settings and the app died later with a bare traceback (NaN in the video limits while
    the UI was built; the port in gradio's launch, after the weights check)."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exit_:
        parse_args([])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_every_flag_names_its_environment_variable_and_reads_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Space is configured by its variables: ``--help`` names each flag's, and that variable sets it."""
    monkeypatch.setenv("COLUMNS", "1000")  # argparse then keeps each flag's help on one line
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    entries = re.split(r"\n  (?=--)", capsys.readouterr().out.split("options:", 1)[1])[1:]  # one per flag
    named = {entry.split()[0]: re.search(r"\(env ([A-Z_]+)", entry) for entry in entries}
    assert named.keys() >= {"--model", "--share", "--no-mcp", "--port"}, named
    assert all(named.values()), [flag for flag, found in named.items() if not found]
    variables = {flag: found.group(1) for flag, found in named.items() if found}
    assert variables["--share"] == "GRADIO_SHARE"
    monkeypatch.setenv("GRADIO_SHARE", "1")
    assert parse_args([]).share


def test_bad_detector_or_background_in_the_environment_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse checks the choices of flags only: a mistyped variable must not start an app that fails, or
    fail naming no variable (the backend's did, as if it were a flag)."""
    monkeypatch.setenv("GFP_BG_UPSAMPLER", "")  # empty: unset
    assert parse_args([]).background is None
    for variable, value in (("GFP_DETECTOR", "foo"), ("GFP_BG_UPSAMPLER", "bar"), ("GFP_BACKEND", "onnx")):
        monkeypatch.setenv(variable, value)
        with pytest.raises(SystemExit) as exit_:
            parse_args([])
        assert exit_.value.code == 2
        assert f"error: environment variable {variable}: invalid choice: '{value}'" in capsys.readouterr().err
        monkeypatch.delenv(variable)


def test_model_specs_put_launch_models_first(tmp_path: Path) -> None:
    assert list(model_specs([]))[0] == "v1.4"
    specs = model_specs(["owner/repo", "v1.3", str(tmp_path / "mine.pth")])
    assert list(specs)[:3] == ["owner/repo", "v1.3", "mine.pth"]  # a local path is offered by its name only
    assert specs["mine.pth"] == str(tmp_path / "mine.pth") and specs["owner/repo"] == "owner/repo"
    assert set(registry.choice_names("generator")) <= set(specs) and len(specs) == 6


def test_local_models_of_the_same_name_are_all_offered(tmp_path: Path) -> None:
    first, second, official = (str(tmp_path / p) for p in ("run1/model", "run2/model", "runs/v1.3"))
    specs = model_specs([first, second, first, official])
    assert list(specs)[:3] == ["model", "run2/model", "runs/v1.3"]  # a parent folder tells them apart
    assert (specs["model"], specs["run2/model"], specs["runs/v1.3"]) == (first, second, official)
    assert specs["v1.3"] == "v1.3"  # the registry's model is not shadowed by a folder of its name
    # another spelling of one folder is one model; a Hub repo id keeps its own name from a later folder's
    again = str(tmp_path / "run1" / ".." / "run1" / "model")
    specs = model_specs([first, again, second, "run2/model"])
    assert list(specs)[:3] == ["model", f"{tmp_path.name}/run2/model", "run2/model"]
    assert (specs["model"], specs["run2/model"]) == (first, "run2/model") and again not in specs.values()


@pytest.mark.usefixtures("offline")
def test_building_the_ui_is_cheap_and_takes_the_registry_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_lookup(*args: object, **kwargs: object) -> None:
        raise AssertionError("building the UI must not look for weights")

    monkeypatch.setattr("gfp.app.settings.resolve", no_lookup)
    demo = build_app(AppSettings(device="cpu"))
    widgets = {b.label: b for b in demo.blocks.values() if getattr(b, "label", None)}
    assert widgets["Model"].choices == [(label, value) for label, value in registry.choices("generator")]
    assert widgets["Background upsampler"].choices == [tuple(c) for c in registry.choices("upsampler")]
    assert widgets["Face detector"].choices == [tuple(c) for c in registry.choices("detector")]
    assert widgets["Background upsampler"].value == registry.default_for("upsampler", "cpu")
    assert registry.default_for("upsampler", "cpu") == "realesr-general-x4v3"  # the measured CPU choice
    assert registry.default_for("upsampler", "cuda") == registry.DEFAULTS["upsampler"] == "realesrgan"


def test_photo_and_video_requests_share_one_concurrency_limit() -> None:
    """--concurrency is the total: a photo must not run beside a video when the limit is 1."""
    demo = build_app(AppSettings(device="cpu", concurrency=3))
    events = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name in ("restore", "restore_video")}
    assert len(events) == 2
    assert len({fn.concurrency_id for fn in events.values()}) == 1
    assert {fn.concurrency_limit for fn in events.values()} == {3}


def test_examples_exist_and_are_small() -> None:
    for name in EXAMPLE_NAMES:
        path = EXAMPLES / name
        assert path.is_file() and path.stat().st_size < 200_000, name
        assert read(path).shape[0] >= 64
    assert read(EXAMPLES / "astronaut_alpha.png").shape[2] == 4


def test_budget_and_display_helpers() -> None:
    img = np.zeros((300, 200, 4), np.uint16)
    small, notice = fit_budget(img, 15_000)
    assert small.shape[0] * small.shape[1] <= 15_000 and small.shape[2] == 4 and "300" in notice
    same, none = fit_budget(img, 60_000)
    assert same is img and none is None
    shown = as_display(np.full((10, 20, 4), 65535, np.uint16))
    assert shown.dtype == np.uint8 and shown.shape == (10, 20, 4) and shown.max() == 255
    big = as_display(np.zeros((3000, 100), np.uint8))
    assert big.shape == (PREVIEW_MAX_SIDE, 68, 3)


@pytest.mark.parametrize(("side", "shown"), [(3000, None), (100, (230, 230))], ids=["shrunk", "enlarged"])
def test_a_transparent_results_preview_has_no_dark_fringe(side: int, shown: tuple[int, int] | None) -> None:
    """An opaque red disc on transparent black, resized for the slider (shrunk to PREVIEW_MAX_SIDE, or the
    before image enlarged to the after image's size): its edge pixels are red, partly transparent, not the
    transparent pixels' black mixed in (a dark 1 px fringe around every cut-out)."""
    img = np.zeros((side, side, 4), np.uint8)
    cv2.circle(img, (side // 2, side // 2), side // 3, (0, 0, 255, 255), -1, lineType=cv2.LINE_8)
    preview = as_display(img) if shown is None else as_display(img, shown)
    assert preview.shape[:2] == ((PREVIEW_MAX_SIDE,) * 2 if shown is None else shown)
    seen = preview[preview[:, :, 3] > 0]
    assert ((preview[:, :, 3] > 0) & (preview[:, :, 3] < 255)).any()  # the edge was blended
    assert seen[:, 0].min() >= 254 and seen[:, 1:3].max() <= 1, seen[seen[:, 0].argmin()]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_transparent_preview_is_premultiplied_a_band_at_a_time(
    dtype: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full-size premultiplied copy of a large RGBA result took 340 MB and seconds (a plain resize takes
    none): whole blocks are averaged a band of rows at a time, and where the bands fall changes nothing."""
    from gfp.app import handlers

    rng = np.random.default_rng(0)
    img = (rng.integers(0, 256, (1203, 1501, 4)) * (np.iinfo(dtype).max // 255)).astype(dtype)
    whole = handlers._resized(img, (300, 200), cv2.INTER_AREA)  # blocks of 5 (odd sizes: edges repeated)
    monkeypatch.setattr(handlers, "PREMULTIPLY_BAND", 1 << 14)
    tracemalloc.start()
    try:
        banded = handlers._resized(img, (300, 200), cv2.INTER_AREA)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(banded, whole) and banded.shape == (200, 300, 4)
    assert peak < img.nbytes / 2


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_transparent_upload_over_the_budget_keeps_its_edges_colour(dtype: type) -> None:
    """The upload itself, shrunk to the app's budget before the restore, had the dark fringe: in the
    result, not only its preview."""
    top = np.iinfo(dtype).max
    img = np.zeros((600, 600, 4), dtype)
    cv2.circle(img, (300, 300), 200, (0, 0, top, top), -1, lineType=cv2.LINE_8)
    small, _ = fit_budget(img, 200_000)
    seen = small[small[:, :, 3] > 0]
    assert ((small[:, :, 3] > 0) & (small[:, :, 3] < top)).any()
    assert seen[:, 2].min() >= top - top // 255 and seen[:, :2].max() <= top // 255


def test_a_one_pixel_strip_is_fitted_to_the_budget_too() -> None:
    """Scaling both sides by one factor rounds a 1 px side up to 1 again: the other side must still fit."""
    for shape in ((1, 31_000, 3), (70_000, 1), (2, 40_000, 4)):
        small, notice = fit_budget(np.zeros(shape, np.uint8), 30_000)
        assert 0 < small.shape[0] * small.shape[1] <= 30_000 and notice, (shape, small.shape)


def test_old_result_files_are_pruned() -> None:
    folder = OutputFolder()
    old = folder.new_file("old", ".png")
    old.write_bytes(b"x")
    os.utime(old, (0, 0))
    fresh = folder.new_file("fresh", ".png")
    fresh.write_bytes(b"x")
    folder.new_file("next", ".png")
    assert not old.exists() and not old.parent.exists() and fresh.exists()
    assert fresh.name == "fresh_restored.png"


def test_output_folder_is_removed_at_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    at_exit = []
    monkeypatch.setattr("atexit.register", lambda fn, *args, **kwargs: at_exit.append((fn, args, kwargs)))
    folder = OutputFolder()
    folder.new_file("result", ".png").write_bytes(b"x")
    for fn, args, kwargs in at_exit:
        fn(*args, **kwargs)
    assert not folder.path.exists()


def test_a_failed_result_leaves_no_folder() -> None:
    folder = OutputFolder()
    with pytest.raises(OSError), folder.result_file("broken", ".png") as path:
        raise OSError("disk full")
    assert not path.parent.exists() and list(folder.path.iterdir()) == []
    with folder.result_file("fine", ".png") as path:
        path.write_bytes(b"x")
    assert path.exists()


def test_pruning_ignores_a_file_that_vanishes_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    """A concurrent request renames its temporary file into place between our listing and our stat."""
    folder = OutputFolder()
    old = folder.new_file("old", ".png")
    old.write_bytes(b"x")
    os.utime(old, (0, 0))
    moving = folder.new_file("other", ".png").with_name(".other_restored.png.tmp")
    moving.write_bytes(b"x")
    real_stat = Path.stat

    def stat(self: Path, *args, **kwargs):
        if self == moving:
            raise FileNotFoundError(2, "No such file or directory", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    assert folder.new_file("next", ".png").name == "next_restored.png"
    assert not old.exists()  # the sweep went on past the vanished file


@pytest.mark.usefixtures("offline")
def test_missing_weights_banner_names_the_files_and_the_fallbacks(tmp_path: Path) -> None:
    settings = AppSettings(
        models=(str(tmp_path / "nope.pth"),), weights_dir=str(tmp_path), detector=DETECTOR, device="cpu"
    )
    torch.save({}, tmp_path / MOBILE)
    check = check_weights(settings)
    assert len(check.missing) == 1 and "nope.pth" in check.missing[0]
    wanted = ["realesr-general-x4v3.pth", "parsing_parsenet.pth"]  # the CPU's default background
    assert [name for name in wanted for m in check.fallbacks if f"(file {name})" in m] == wanted
    banner = weights_banner(check)
    assert "nope.pth" in banner and "--weights-dir" in banner
    assert "Running with fallbacks" in banner and "Lanczos" in banner and "realesr-general-x4v3.pth" in banner
    assert str(tmp_path) not in banner  # visitors see no server folder (~/.cache/gfp, the default, is none)
    assert "/.cache/" not in banner.replace("~/.cache/gfp", "")
    assert weights_banner(WeightsCheck()) == ""
    explicit = check_weights(dataclasses.replace(settings, background="realesr-general-x4v3"))
    assert any("realesr-general-x4v3.pth" in m for m in explicit.missing)  # asked for at launch: required
    demo = build_app(settings, weights=check)  # still starts, with the banner on top
    shown = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "weights-banner"]
    assert len(shown) == 1 and shown[0].visible and "nope.pth" in shown[0].value


@pytest.mark.usefixtures("offline")
def test_a_default_model_that_does_not_load_is_in_the_banner(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A default model file that is there but does not load (a download cut short) passed the check, which
    only looked for it: the owner learnt of it from the first visitor's failed request. The read is the
    store's, kept for the warm-up."""
    from conftest import make_weights

    import gfp.store
    from gfp.pipeline import Restorer

    reads = []
    read = gfp.store.generator_weights
    monkeypatch.setattr(gfp.store, "generator_weights", lambda *a, **k: reads.append(a) or read(*a, **k))
    weights = make_weights(tmp_path / "weights")
    whole = weights / "tiny" / "model.safetensors"
    settings = AppSettings(models=(str(weights / "tiny"),), weights_dir=str(weights), detector=DETECTOR)
    restorer = Restorer(weights, "cpu", backend="torch")
    assert check_weights(settings, restorer).missing == () and len(reads) == 1
    for thread in app.warm_up(restorer, str(weights / "tiny")):
        thread.join()
    assert len(reads) == 1  # the warm-up built the generator from the check's read
    whole.write_bytes(whole.read_bytes()[:1000])  # cut short
    check = check_weights(settings, Restorer(weights, "cpu", backend="torch"))
    assert len(check.missing) == 1 and "model.safetensors" in check.missing[0]
    banner = weights_banner(check)
    assert "do not load" in banner and "model.safetensors" in banner and str(tmp_path) not in banner


def test_no_paths_cuts_folders_but_keeps_urls() -> None:
    """The banner's download addresses must stay whole; server folders go."""
    url = "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth"
    for text in (f"download GFPGANv1.4.pth from {url} failed", f"download {url}: failed"):
        assert no_paths(text) == text
    assert (
        no_paths("(/srv/w/x.pth is not) `~/w/y.pth` '../w/z.pth' w/u/v.pth")
        == "(x.pth is not) `y.pth` 'z.pth' v.pth"
    )
    assert no_paths("owner/repo") == "owner/repo"  # a Hub repo id is no path
    assert no_paths("dir:/srv/w/x.pth and file:///srv/w/y.pth") == "dir:x.pth and file:y.pth"


@pytest.mark.usefixtures("offline")
def test_the_banner_names_the_download_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The missing-weights message names the download cache as its user knows it; cut to its last part it
    read "cache (GFP_CACHE_DIR or gfp)" and "copy it to gfp"."""
    from gfp.weights.errors import WeightsNotFoundError
    from gfp.weights.resolve import resolve

    monkeypatch.delenv("GFP_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(WeightsNotFoundError) as err:
        resolve("parsenet", tmp_path)
    shown = no_paths(str(err.value))
    assert "cache (GFP_CACHE_DIR or ~/.cache/gfp): ~/.cache/gfp/parsing_parsenet.pth does not" in shown
    assert "or copy it to ~/.cache/gfp," in shown and str(tmp_path) not in shown
    monkeypatch.setenv("GFP_CACHE_DIR", str(tmp_path / "server" / "models"))  # a server's folder: not shown
    with pytest.raises(WeightsNotFoundError) as err:
        resolve("parsenet", tmp_path)
    shown = no_paths(str(err.value))
    assert "or copy it to GFP_CACHE_DIR's folder," in shown and "server" not in shown


def test_bad_device_is_a_clear_exit() -> None:
    with pytest.raises(SystemExit, match="app.py: error: .*cuda:7"):
        app.main(["--device", "cuda:7", "--no-mcp"])


def test_a_port_in_use_is_said_before_the_weights_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """gradio found a taken port only when it started serving, after the weights check (downloads, on a
    Space), and said so with a traceback."""
    import socket

    def no_check(*args: object) -> None:
        raise AssertionError("the weights were checked first")

    monkeypatch.setattr(app, "check_weights", no_check)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=f"app.py: error: cannot listen on 127.0.0.1:{port} .*--port"):
            app.main(["--port", str(port), "--no-mcp"])


def test_a_stopped_app_removes_its_results(tmp_path: Path) -> None:
    """A service stops the app with SIGTERM (``docker stop``, systemd, a Space restarting): it ends as Ctrl-C
    does, closing the server, and its folder of results (every download of the last hour) is removed, where
    Python ran no exit handler for the signal and left it in the temporary folder."""
    import signal
    import socket
    import subprocess
    import sys

    from conftest import free_port, make_weights

    weights = make_weights(tmp_path / "weights")
    (tmp_path / "tmp").mkdir()
    port = free_port()
    args = ["--model", str(weights / "tiny"), "--weights-dir", str(weights), "--port", str(port)]
    args += ["--device", "cpu", "--backend", "torch", "--detector", DETECTOR, "--bg-upsampler", "none"]
    env = os.environ | {"TMPDIR": str(tmp_path / "tmp"), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(
        [sys.executable, "app.py", *args, "--no-mcp"],
        cwd=Path(app.__file__).parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:  # serving once it accepts connections
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr and proc.stderr.read()
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        assert list((tmp_path / "tmp").glob("gfp-app-*"))  # the results' folder is made at launch
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    assert not list((tmp_path / "tmp").glob("gfp-app-*"))


# --- through the server ------------------------------------------------------------------------------


def test_restore_returns_input_size_times_rescale(client, server: Server) -> None:
    slider, gallery, file, status = call(client, server, EXAMPLES / "astronaut_lowres.png", rescale=2)
    out = read(file)
    assert out.shape == (320, 320, 3) and out.dtype == np.uint8
    assert Path(file).name == "astronaut_lowres_restored.png"
    assert Path(file).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before, after = (read(p) for p in slider)
    assert before.shape[:2] == after.shape[:2] == (320, 320)
    assert "device cpu" in status and "output 320x320 PNG" in status
    for item in gallery:
        tile = read(item["image"])
        assert tile.shape[1] == 2 * tile.shape[0]  # aligned crop before | after, side by side
    if server.real_detector:
        assert len(gallery) == 1 and "1 face found" in status


def test_the_slider_is_made_at_preview_size(client, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The before/after pair is shown at most PREVIEW_MAX_SIDE a side: the upload is not first resized to
    the whole result (at 8 MP x 4 on a GPU Space, 128 MP: seconds of work and GBs for a preview)."""
    import gfp.app.handlers as handlers

    sizes: list[tuple[int, int]] = []

    def resize(img: np.ndarray, size: tuple[int, int], **kwargs: object) -> np.ndarray:
        sizes.append(size)
        return cv2.resize(img, size, **kwargs)

    def cvt_color(img: np.ndarray, code: int) -> np.ndarray:
        sizes.append((img.shape[1], img.shape[0]))
        return cv2.cvtColor(img, code)

    monkeypatch.setattr(handlers, "PREVIEW_MAX_SIDE", 100)
    fake = SimpleNamespace(**{**vars(cv2), "resize": resize, "cvtColor": cvt_color})
    monkeypatch.setattr(handlers, "cv2", fake)
    slider, _, file, _ = call(client, server, EXAMPLES / "astronaut_lowres.png", rescale=4)
    assert read(file).shape == (640, 640, 3)
    assert [read(p).shape for p in slider] == [(100, 100, 3)] * 2
    assert max(w * h for w, h in sizes) < 640 * 640, sizes  # no full-size copy of the result was made


@pytest.mark.parametrize(("fmt", "magic", "channels"), [("JPEG", b"\xff\xd8", 3), ("WebP", b"RIFF", 4)])
def test_download_formats(
    client, server: Server, tmp_path: Path, fmt: str, magic: bytes, channels: int
) -> None:
    path = tmp_path / "cutout.png"
    cutout = cv2.resize(read(EXAMPLES / "astronaut_alpha.png"), (112, 112))
    cv2.imwrite(str(path), cutout)
    slider, _, file, _ = call(client, server, path, rescale=1, fmt=fmt)
    assert Path(file).read_bytes()[: len(magic)] == magic
    assert Path(file).suffix == {"JPEG": ".jpg", "WebP": ".webp"}[fmt]
    assert read(file).shape == (112, 112, channels)  # JPEG drops alpha (over white), WebP keeps it
    assert read(slider[1]).shape[2] == channels  # the preview shows what was downloaded
    before = read(slider[0])  # on the same background as the after image, not transparent beside white
    assert before.shape[2] == channels
    if fmt == "JPEG":
        assert before[cutout[:, :, 3] == 0].mean() > 250  # (the slider images are compressed)


def test_alpha_and_16_bit_survive(client, server: Server, tmp_path: Path) -> None:
    bgr = read(EXAMPLES / "astronaut_lowres.png").astype(np.uint16) * 257  # 160x160, one face
    alpha = np.tile(np.linspace(0, 65535, 160, dtype=np.uint16), (160, 1))
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), np.dstack([bgr, alpha]))
    _, _, file, _ = call(client, server, path, rescale=2)
    out = read(file)
    assert out.shape == (320, 320, 4) and out.dtype == np.uint16
    assert np.abs(out[:, :, 3].astype(int) - cv2.resize(alpha, (320, 320)).astype(int)).mean() < 2000
    assert len(np.unique(out[:, :, :3])) > 256  # really 16-bit values, not 8-bit ones scaled up


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_the_upload_colour_profile_is_kept(client, server: Server, tmp_path: Path, fmt: str) -> None:
    """A photo tagged Display P3 (here: any RGB ICC profile) keeps its profile, or its colours shift."""
    from PIL import Image, ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = tmp_path / "tagged.jpg"
    Image.fromarray(cv2.resize(read(EXAMPLES / "astronaut_lowres.png"), (96, 96))).save(
        path, icc_profile=profile
    )
    _, _, file, _ = call(client, server, path, rescale=1, fmt=fmt)
    with Image.open(file) as im:
        assert im.info.get("icc_profile") == profile


def test_over_budget_input_is_downscaled_with_notice(client, server: Server, tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), cv2.resize(read(EXAMPLES / "astronaut_blur_jpeg.jpg"), (200, 200)))
    _, _, file, status = call(client, server, path, rescale=2)
    side = int((MAX_PIXELS) ** 0.5)
    assert read(file).shape == (2 * side, 2 * side, 3)
    assert "downscaled" in status and "200x200" in status


def test_an_animation_is_said_to_be_restored_from_its_first_frame(
    client, server: Server, tmp_path: Path
) -> None:
    from PIL import Image

    first = read(EXAMPLES / "astronaut_lowres.png")
    frames = [Image.fromarray(np.roll(first, shift, axis=1)) for shift in (0, 20)]
    frames[0].save(tmp_path / "wave.gif", save_all=True, append_images=frames[1:])
    _, _, file, status = call(client, server, tmp_path / "wave.gif", rescale=1)
    assert read(file).shape[:2] == first.shape[:2]
    assert "wave.gif holds 2 frames; only the first was restored" in status


def test_no_face_is_a_notice_not_an_error(client, server: Server, tmp_path: Path) -> None:
    path = tmp_path / "wall.png"
    cv2.imwrite(str(path), np.full((80, 120, 3), 128, np.uint8))
    _, gallery, file, status = call(client, server, path, rescale=1.5)
    assert read(file).shape == (120, 180, 3)
    if server.real_detector or not gallery:
        assert gallery == [] and "No face found" in status


def test_face_choice_and_colour_fix_through_the_api(client, server: Server) -> None:
    photo = EXAMPLES / "group_photo.jpg"  # 640x300, downscaled to the test budget (252x118): 3 faces there
    _, every, every_file, status = call(client, server, photo)
    _, chosen, chosen_file, chosen_status = call(client, server, photo, faces="3,1")
    _, _, _, small_status = call(client, server, photo, min_face=65)
    _, _, fixed_file, _ = call(client, server, photo, color_fix="wavelet")
    assert not np.array_equal(read(fixed_file), read(every_file))  # the colour fix reached the faces
    if not server.real_detector:
        return
    assert [item["caption"] for item in every] == [f"Face {n}: before | after" for n in (1, 2, 3)]
    assert "3 faces found, 3 restored" in status
    assert [item["caption"] for item in chosen] == ["Face 1: before | after", "Face 3: before | after"]
    assert "3 faces found, 2 restored, 1 skipped (1 not chosen)" in chosen_status
    for tile, same in ((chosen[0], every[0]), (chosen[1], every[2])):  # the same faces, restored once each
        np.testing.assert_array_equal(read(tile["image"]), read(same["image"]))
    # 65 px of the uploaded photo are 26 px of the downscaled one (two faces there are 24 px wide)
    assert "65 px → 26 px" in small_status and "2 skipped (2 smaller than 26 px)" in small_status


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "../../etc/passwd"}, "Unknown model"),
        ({"detector": "yolo"}, "Unknown detector"),
        ({"output_format": "GIF"}, "Unknown output_format"),
        ({"output_format": None}, "Unknown output_format None"),
        ({"rescale": 9}, '"Rescale factor" (rescale) must be a number between 1 and 4'),
        ({"strength": "lots"}, '"Strength" (strength) must be a number between 0 and 1'),
        ({"color_fix": "sepia"}, "Unknown color_fix 'sepia'"),
        ({"faces": "0"}, "\"Faces to restore\" (faces): face numbers start at 1, got '0'"),
        ({"faces": "x"}, '"Faces to restore" (faces) must be all, largest, center or face numbers'),
        ({"min_face": -3}, '"Smallest face" (min_face) must be a number between 0 and 100000'),
        ({"min_face": 2.5}, '"Smallest face" (min_face) must be a whole number of pixels'),
        (
            {"aligned": "maybe"},
            "\"Input is an aligned 512x512 face\" (aligned) must be true or false, got 'maybe'",
        ),
    ],
)
def test_bad_options_are_gradio_errors(client, server: Server, change: dict, message: str) -> None:
    with pytest.raises(gradio_client.exceptions.AppError, match=re.escape(message)):
        call(client, server, EXAMPLES / "astronaut_lowres.png", **change)


def test_yes_no_options_read_the_words_an_api_client_sends() -> None:
    """``bool("false")`` is True: an API client's "false" must not turn a photo into an aligned face."""
    import gradio as gr

    from gfp.app.handlers import Request, flag, number

    for value, expected in ((True, True), (False, False), (1, True), (0, False), ("false", False),
                            (" True ", True), ("0", False), ("1", True)):  # fmt: skip
        assert flag("Aligned", value) is expected, value
    for value in ("no thanks", 2, None, 0.5):
        with pytest.raises(gr.Error, match="Aligned must be true or false"):
            flag("Aligned", value)
    assert number("Strength", "0.5", 0, 1) == 0.5 and number("Strength", 1, 0, 1) == 1.0
    for value in (True, False, "much", None, 1.5):  # a yes/no is no number, as for the CLI and Python
        with pytest.raises(gr.Error, match="Strength must be a number between 0 and 1"):
            number("Strength", value, 0, 1)
    # results are named after the upload, never as a hidden file
    assert Request("photo", "/tmp/x", ".jpg", "v1.4", {}).stem == "jpg"
    assert Request("photo", "/tmp/x", "..", "v1.4", {}).stem == "photo"


def test_status_notes_name_files_not_server_folders(capsys: pytest.CaptureFixture[str]) -> None:
    """A note about an unreadable optional network reaches visitors with its file name only."""
    from types import SimpleNamespace

    from gfp.app.handlers import Request

    note = "face parser unavailable (/srv/w/parsing_parsenet.pth is not a readable PyTorch checkpoint)"
    backends = {"generator": "OpenVINO", "face parser": "OpenVINO"}
    result = SimpleNamespace(
        device="cpu", timings={"restore": 0.5}, notes=[note, "plain note"], backends=backends
    )
    request = Request("photo", "/tmp/x", "x.png", "v1.4", {"color_fix": "none"})
    status = request.status("**headline**", result)
    assert "device cpu (generator and face parser in OpenVINO) · model" in status  # what ran them
    assert "(parsing_parsenet.pth is not a readable" in status and "/srv" not in status
    assert "Note: plain note" in status
    assert "/srv/w/parsing_parsenet.pth" in capsys.readouterr().err  # the server's log keeps the folder


def test_a_refusal_for_memory_naming_no_control_gets_the_apps_advice() -> None:
    """An upscale refused for the server's memory where no rescale or background fits says what the app's
    user can change (a smaller photo), not the refusal's "free some memory first": the server's memory,
    which a visitor cannot free; one that names a control keeps it."""
    import gradio as gr

    from gfp.app.handlers import Request
    from gfp.background import OutputMemoryError

    request = Request("photo", "/uploads/x", "x.png", "v1.4", {})
    with pytest.raises(gr.Error) as caught, request.user_errors():
        raise OutputMemoryError(
            "{what} is free: free some memory first", what="a 9x9 image needs 1 MiB, 1 KiB"
        )
    assert caught.value.message == "This server ran out of memory for x.png: choose a smaller photo."
    with pytest.raises(gr.Error) as caught, request.user_errors():
        raise OutputMemoryError(
            "{what} is free: use {upscale} {fits:g}", what="a 9x9 image needs 1 MiB, 1 KiB", fits=2
        )
    assert caught.value.message.endswith('1 KiB is free: use "Rescale factor" (rescale) 2.')


def test_unreadable_upload_is_a_gradio_error(client, server: Server, tmp_path: Path) -> None:
    path = tmp_path / "holiday.png"
    path.write_bytes(b"this is not a picture")
    with pytest.raises(gradio_client.exceptions.AppError, match="Could not use this file: holiday.png"):
        call(client, server, path)


def test_a_clients_mistakes_leave_no_traceback_in_the_log(
    client, server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad option or an unreadable upload printed a traceback to the server's log (a Space's), one per
    client mistake, burying the server's own faults; the client is told, the log says nothing. Weights the
    server lacks are its owner's to fix: still logged."""
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not a picture")
    photo = EXAMPLES / "astronaut_lowres.png"
    capsys.readouterr()
    for image, change in ((photo, {"rescale": 9}), (photo, {"faces": "x"}), (bad, {})):
        with pytest.raises(gradio_client.exceptions.AppError):
            call(client, server, image, **change)
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(gradio_client.exceptions.AppError, match="Weights missing"):
        call(client, server, photo, model="gone.pth")
    assert "Traceback" in capsys.readouterr().err


def test_a_video_on_the_photo_tab_points_to_the_video_tab(client, server: Server, tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"  # told by its extension, as the CLI tells videos
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    with pytest.raises(gradio_client.exceptions.AppError, match=r"clip.mp4 is a video: .*Video tab"):
        call(client, server, path)


def test_too_large_upload_is_a_gradio_error(client, server: Server, tmp_path: Path) -> None:
    path = tmp_path / "huge.png"  # 7000x7000 of one colour: a tiny file announcing 49 MP
    cv2.imwrite(str(path), np.zeros((7000, 7000), np.uint8))
    expected = r"huge.png is 49.0 MP, more than this app takes \(40.0 MP\); please downscale it first"
    with pytest.raises(gradio_client.exceptions.AppError, match=expected) as err:
        call(client, server, path)
    assert "Python" not in str(err.value)  # words for visitors, not for programmers


def test_a_photo_given_by_url_is_held_to_the_upload_limit(
    client, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gradio refuses an upload above 50 MB but downloads a URL (API, MCP) whatever its size: a 51 MB file
    given by URL was read and restored. Served here from 127.0.0.1, taken as a public host."""
    import functools
    import http.server

    import safehttpx

    (tmp_path / "big.png").write_bytes(bytes(51 * 2**20))
    monkeypatch.setattr(safehttpx, "is_public_ip", lambda ip: True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as web:
        threading.Thread(target=web.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{web.server_address[1]}/big.png"
        expected = r"Could not use this file: big.png is 51 MB, more than this app takes \(50 MB\)"
        try:
            with pytest.raises(gradio_client.exceptions.AppError, match=expected):
                call(client, server, url)
        finally:
            web.shutdown()


def test_a_result_too_large_for_its_format_is_refused_before_the_work(
    client, server: Server, tmp_path
) -> None:
    """A 4100 px wide photo (within the budget) at rescale 4 as WebP is wider than WebP holds: said before
    the restore, in words, not OpenCV's encoder failure after it."""
    path = tmp_path / "banner.png"
    cv2.imwrite(str(path), np.full((7, 4100, 3), 128, np.uint8))
    with pytest.raises(
        gradio_client.exceptions.AppError, match="16383 px a side that WebP holds: choose PNG"
    ):
        call(client, server, path, rescale=4, fmt="WebP")


def test_refused_options_are_named_by_their_controls_and_parameters(tmp_path: Path) -> None:
    """The pipeline's refusals name each option as the app does, by its control's label (the UI's user)
    and its parameter (an API or MCP client), not by the Python field (``faces``, ``min_face``); the UI's
    labels are the ones the messages say."""
    import gradio as gr

    from gfp.app.handlers import CONTROLS, RequestContext, handle_request, handle_video_request
    from gfp.app.ui import _label
    from gfp.pipeline import Restorer

    ctx = RequestContext.create(AppSettings(device="cpu", detector=DETECTOR), Restorer(device="cpu"))
    photo = str(tmp_path / "a.png")  # refused before it is read
    cases = [
        ({"aligned": True, "faces": "1"},
         '"Faces to restore" (faces) cannot be combined with "Input is an '
         'aligned 512x512 face" (aligned) (each image is one aligned face)'),
        ({"only_center_face": True, "faces": "2"},
         '"Only the centre face" (only_center_face) means "Faces to restore" (faces) \'center\'; it cannot '
         'be combined with "Faces to restore" (faces) \'2\''),
    ]  # fmt: skip
    for change, message in cases:
        fields = {"only_center_face": False, "aligned": False, "faces": "all"} | change
        with pytest.raises(gr.Error) as err:
            handle_request(
                ctx, photo, "v1.4", 2, "none", 1.0, fields["only_center_face"], fields["aligned"], DETECTOR,
                "PNG", "none", fields["faces"], 0,
            )  # fmt: skip
        assert err.value.message == message
    assert all(_label(field) == label for field, (label, _) in CONTROLS.items())
    handlers = (handle_request, handle_video_request)
    parameters = {name for handler in handlers for name in inspect.signature(handler).parameters}
    assert all(parameter in parameters for _, parameter in CONTROLS.values())


def test_photos_up_to_a_higher_budget_are_read() -> None:
    """A --max-pixels above imageio's 40 MP read limit takes effect: such photos are read, then fitted."""
    from gfp.app.handlers import RequestContext
    from gfp.imageio import DEFAULT_MAX_PIXELS
    from gfp.pipeline import Restorer

    restorer = Restorer(device="cpu")
    assert RequestContext.create(AppSettings(device="cpu"), restorer).read_limit == DEFAULT_MAX_PIXELS
    big = RequestContext.create(AppSettings(device="cpu", max_pixels=60_000_000), restorer)
    assert big.read_limit == big.max_pixels == 60_000_000


def test_missing_generator_weights_are_a_gradio_error(client, server: Server) -> None:
    """Named by the model and the file, never by a server path (the full text goes to the server's log)."""
    with pytest.raises(gradio_client.exceptions.AppError, match="gone.pth does not exist") as err:
        call(client, server, EXAMPLES / "astronaut_lowres.png", model="gone.pth")
    assert "Weights missing or broken on this server" in str(err.value) and "/" not in str(err.value)


@pytest.mark.parametrize("error", [MemoryError, torch.OutOfMemoryError])
def test_running_out_of_memory_is_a_plain_sentence(
    client, server: Server, monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    """A photo and rescale too large for the server (CUDA out of memory on a GPU Space) says what helps,
    not gradio's 'has not enabled verbose error reporting'."""
    from gfp.pipeline import Restorer

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise error("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Restorer, "restore", out_of_memory)
    expected = "This server ran out of memory for astronaut_lowres.png: choose a smaller rescale or photo."
    with pytest.raises(gradio_client.exceptions.AppError, match=expected):
        call(client, server, EXAMPLES / "astronaut_lowres.png")


def test_an_output_too_big_for_the_memory_left_names_the_rescale_that_fits(
    client, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upscale refused before its background (it would not fit) is said with the app's own control for
    what fits, not the general "choose a smaller rescale or photo"."""
    from gfp import background

    need = 2 * 640 * 640 * 3  # a 160 px photo at rescale 4: the output and its pasted copy
    monkeypatch.setattr(background, "available_memory", lambda: need // 2)
    expected = (
        r"This server ran out of memory for astronaut_lowres.png: a 640x640 restored image needs at least "
        r"[\d.]+ [KM]iB, [\d.]+ [KM]iB is free: use \"Rescale factor\" \(rescale\) [\d.]+ or less\."
    )
    with pytest.raises(gradio_client.exceptions.AppError, match=expected):
        call(client, server, EXAMPLES / "astronaut_lowres.png", rescale=4)


def test_a_photo_too_big_to_decode_in_the_memory_left_is_not_called_a_broken_file(
    client, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decoders' errors for a photo that does not fit read as "corrupt or truncated image": the app says
    the server's memory, the photo's size and what its decode needs instead."""
    from gfp import imageio

    monkeypatch.setattr(imageio, "available_memory", lambda: 2**16)
    expected = (
        r"This server has too little memory: astronaut_lowres.png \(160x160\) needs about 150 KiB to read, "
        r"64 KiB free; choose a smaller photo\."
    )
    with pytest.raises(gradio_client.exceptions.AppError, match=expected):
        call(client, server, EXAMPLES / "astronaut_lowres.png")


def test_concurrent_requests_get_their_own_results(server: Server, tmp_path: Path) -> None:
    sources = ["astronaut_lowres.png", "astronaut_blur_jpeg.jpg", "astronaut_noise.jpg", "old_photo.jpg"]
    photos = []
    for i, name in enumerate(sources):
        path = tmp_path / f"photo{i}.png"
        cv2.imwrite(str(path), cv2.resize(read(EXAMPLES / name), (144 + 8 * i, 144 + 8 * i)))
        photos.append(path)
    sequential = [read(call(server.client(), server, p)[2]) for p in photos]

    clients = [server.client() for _ in photos]
    results: list[np.ndarray | BaseException | None] = [None] * len(photos)
    barrier = threading.Barrier(len(photos))

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            results[i] = read(call(clients[i], server, photos[i])[2])
        except BaseException as exc:  # reported below, in the test thread
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(photos))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for i, (alone, together) in enumerate(zip(sequential, results, strict=True)):
        assert isinstance(together, np.ndarray), together
        assert together.shape == (2 * (144 + 8 * i),) * 2 + (3,)
        np.testing.assert_array_equal(together, alone)


def _slow_restores(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``Restorer.restore`` made 100 slow progress reports that never end in a result; the steps reached."""
    from gfp.pipeline import Restorer

    steps: list[int] = []

    def slow_restore(self: Restorer, img: np.ndarray, options: object, progress: Any) -> None:
        for step in range(100):
            steps.append(step)
            progress(step, 100, "restore")
            time.sleep(0.05)
        raise AssertionError("a request nobody waits for ran to the end")

    monkeypatch.setattr(Restorer, "restore", slow_restore)
    return steps


def _assert_stopped(steps: list[int]) -> None:
    """No more steps come (after a moment for the one under way)."""
    time.sleep(0.5)
    stopped_at = len(steps)
    time.sleep(0.5)
    assert len(steps) == stopped_at < 100


def test_a_cancelled_request_stops_working(client, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """gradio frees a cancelled request's place in the queue at once but cannot stop its thread: the work
    must end at its next progress report, or it goes on beside the next request, past the concurrency
    limit."""
    steps = _slow_restores(monkeypatch)
    args = {"model": server.model, "background": "none", "detector": DETECTOR}
    photo = gradio_client.handle_file(str(EXAMPLES / "astronaut_lowres.png"))
    job = client.submit(photo, **args, api_name="/restore")
    deadline = time.monotonic() + 30
    while len(steps) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert steps, "the request never started"
    job.cancel()
    _assert_stopped(steps)


def test_a_request_whose_client_went_away_stops_working(
    server: Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A closed tab or a killed client is no cancel: gradio keeps the running event listed, only marked not
    alive, and the work ran to the end for nobody, holding the queue's place (a 3 s clip: a minute on a
    CPU, the next request waiting behind it). It stops, and quietly: no traceback in the server's log."""
    import httpx

    steps = _slow_restores(monkeypatch)
    api = f"{server.url}gradio_api"
    restore = next(fn._id for fn in server.demo.fns.values() if fn.api_name == "restore")
    with httpx.Client(timeout=30) as http:  # as the browser's page calls it: join the queue, then listen
        with (EXAMPLES / "astronaut_lowres.png").open("rb") as photo:
            path = http.post(f"{api}/upload", files={"files": photo}).json()[0]
        data = [{"path": path, "meta": {"_type": "gradio.FileData"}}, server.model, 2, "none", 1.0, False]
        data += [False, DETECTOR, "PNG", "none", "all", 0]
        joined = {"data": data, "fn_index": restore, "session_hash": "went-away"}
        http.post(f"{api}/queue/join", json=joined).raise_for_status()
        with http.stream("GET", f"{api}/queue/data", params={"session_hash": "went-away"}) as stream:
            for _ in stream.iter_lines():  # progress messages come with each step
                if len(steps) >= 3:
                    break  # the tab is closed: its connection ends
    _assert_stopped(steps)
    assert "Traceback" not in capsys.readouterr().err


def test_the_queue_cannot_be_skipped(server: Server) -> None:
    """gradio serves each endpoint at /gradio_api/run/NAME outside the queue unless the app says not to
    (off a Space): a caller could run any number of restores at once, past --concurrency and max_size."""
    import json
    import urllib.error
    import urllib.request

    body = json.dumps({"data": [None]}).encode()
    for route in ("run/restore", "run/restore_video"):
        post = urllib.request.Request(f"{server.url}gradio_api/{route}", body, method="POST")
        post.add_header("Content-Type", "application/json")
        with pytest.raises(urllib.error.HTTPError, match="Error 404") as err:
            urllib.request.urlopen(post, timeout=30)
        assert "join the queue" in err.value.read().decode()


def test_mcp_serves_the_restore_tool(server: Server) -> None:
    pytest.importorskip("mcp")
    import anyio
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    photo = (
        "data:image/png;base64," + base64.b64encode((EXAMPLES / "astronaut_lowres.png").read_bytes()).decode()
    )
    arguments = {"image": photo, "model": server.model, "background": "none", "detector": DETECTOR}

    async def session_calls() -> tuple[dict, str]:
        url = server.url + "gradio_api/mcp/"
        async with streamablehttp_client(url) as (rd, wr, _), ClientSession(rd, wr) as session:
            await session.initialize()
            schemas = {tool.name: tool.inputSchema for tool in (await session.list_tools()).tools}
            result = await session.call_tool("restore", arguments)
            return schemas, " ".join(getattr(part, "text", "") for part in result.content)

    schemas, text = anyio.run(session_calls)
    properties = set(schemas["restore"]["properties"])
    assert {
        "image",
        "model",
        "rescale",
        "strength",
        "output_format",
        "color_fix",
        "faces",
        "min_face",
    } <= properties
    assert "output 320x320 PNG" in text  # the status line of a real run (default rescale 2)
    # each parameter's whole description reaches the schema (gradio keeps one line of each Args entry)
    described = {
        tool: {name: prop.get("description", "") for name, prop in schemas[tool]["properties"].items()}
        for tool in ("restore", "restore_video")
    }
    assert described["restore"]["faces"].endswith("others stay."), described["restore"]["faces"]
    assert described["restore_video"]["faces"].endswith('e.g. "1,3".'), described["restore_video"]["faces"]
    for tool in described:
        assert described[tool]["background"].endswith("plain Lanczos resize."), described[tool]["background"]
        # an optional parameter says its default: gradio leaves a falsy one (false, 0) out of the schema
        required = set(schemas[tool].get("required", ()))
        for name, prop in schemas[tool]["properties"].items():
            assert name in required or "default" in prop or "default" in prop.get("description", ""), name


def test_an_mcp_result_with_and_without_a_progress_token(server: Server) -> None:
    """What the README says a restore tool call returns, in gradio's two forms: with a progress token, the
    restored PNG as an image, its URL and the status line as parts of their own (after the before/after
    pair and the faces, as text); without one, every output in one text (gradio's server puts the outputs'
    tuple in a list), which holds the status line and the restored file's URL but no image. When gradio
    answers both alike, this fails: the README's "MCP" is then to be updated."""
    pytest.importorskip("mcp")
    import anyio
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    photo = (
        "data:image/png;base64," + base64.b64encode((EXAMPLES / "astronaut_lowres.png").read_bytes()).decode()
    )
    arguments = {"image": photo, "model": server.model, "background": "none", "detector": DETECTOR}
    steps: list[str | None] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        steps.append(message)

    async def content(token: bool) -> list[Any]:
        url = server.url + "gradio_api/mcp/"
        async with streamablehttp_client(url) as (rd, wr, _), ClientSession(rd, wr) as session:
            await session.initialize()
            report = progress if token else None
            result = await session.call_tool("restore", arguments, progress_callback=report)
            assert not result.isError
            return result.content

    parts = anyio.run(content, True)
    images = [part for part in parts if part.type == "image"]
    assert [image.mimeType for image in images] == ["image/png"]
    png = np.frombuffer(base64.b64decode(images[0].data), np.uint8)
    assert cv2.imdecode(png, cv2.IMREAD_UNCHANGED).shape[:2] == (320, 320)
    texts = [part.text for part in parts if part.type == "text"]
    assert any(text.startswith("Image URL: http") and text.endswith("_restored.png") for text in texts), texts
    assert texts[-1].startswith("**") and "output 320x320 PNG" in texts[-1], texts[-1]
    assert steps  # the queue and each stage, as progress notifications
    steps.clear()
    (only,) = anyio.run(content, False)
    assert only.type == "text" and "output 320x320 PNG" in only.text and "_restored.png" in only.text
    assert not steps


def test_a_url_that_cannot_be_fetched_is_said_in_one_sentence(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An MCP client's image or video given by a URL gradio cannot download (HTTP 404, no such host, a
    private address, a server that does not answer) got "The upstream Gradio app has raised an exception
    but has not enabled verbose error reporting ...", whatever the cause: it is told what was wrong with
    the URL. A server that never answers held the request for good (gradio's download of a public host has
    no timeout): it is cut off. A page or a cut-short file that does download is refused by the readers."""
    pytest.importorskip("mcp")
    import functools
    import http.server

    import anyio
    import safehttpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    png = (EXAMPLES / "astronaut_lowres.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 3])
    (tmp_path / "page.html").write_text("<html><body>a page, not a photo</body></html>")

    class Site(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.startswith("/slow"):
                time.sleep(3)  # past the time a download may take (made 1 s below): nobody listens now
                return
            super().do_GET()

    monkeypatch.setattr(handlers, "FETCH_TIMEOUT_S", 1)
    args = {"model": server.model, "background": "none", "detector": DETECTOR}
    mcp_url = server.url + "gradio_api/mcp/"

    async def answer(tool: str, url: str) -> str:
        upload = "video" if tool == "restore_video" else "image"
        async with streamablehttp_client(mcp_url) as (rd, wr, _), ClientSession(rd, wr) as session:
            await session.initialize()
            result = await session.call_tool(tool, {upload: url} | args)
            assert result.isError
            return " ".join(getattr(part, "text", "") for part in result.content)

    def said(url: str, tool: str = "restore") -> str:
        return anyio.run(answer, tool, url)

    assert said("http://no-such-host.invalid/a.png") == (
        "Could not fetch http://no-such-host.invalid/a.png: no such host."
    )
    handler = functools.partial(Site, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as web:
        threading.Thread(target=web.serve_forever, daemon=True).start()
        local = f"http://127.0.0.1:{web.server_address[1]}/"
        try:
            private = said(local + "cut.png")  # gradio fetches public addresses only
            assert private == f"Could not fetch {local}cut.png: its host is not a public address " + (
                "(this server fetches only public URLs)."
            )
            monkeypatch.setattr(safehttpx, "is_public_ip", lambda ip: True)  # 127.0.0.1 taken as public
            for tool in ("restore", "restore_video"):
                missing = said(local + "missing.mp4", tool)
                assert missing == f"Could not fetch {local}missing.mp4: its server answered HTTP 404."
            slow = said(local + "slow/cut.png")
            assert slow == f"Could not fetch {local}slow/cut.png: its server did not answer in time."
            read = "Could not use this file: "  # downloaded, then refused by the photo reader
            assert said(local + "page.html").startswith(read + "page.html: not an image")
            assert said(local + "cut.png").startswith(read + "cut.png: corrupt or truncated")
        finally:
            web.shutdown()


@pytest.mark.usefixtures("offline")
def test_offline_default_background_restores_with_a_note(tmp_path: Path) -> None:
    """The README's call with only the image and the detector, without the Real-ESRGAN files."""
    srv = start_server(tmp_path, background=None)  # the CPU's default: realesr-general-x4v3
    try:
        client = srv.client()
        image = gradio_client.handle_file(str(EXAMPLES / "astronaut_lowres.png"))
        _, _, file, status = client.predict(image=image, detector=DETECTOR, api_name="/restore")
        assert read(file).shape == (320, 320, 3)
        assert "background upsampler realesr-general-x4v3 unavailable" in status
        assert "realesr-general-x4v3.pth" in status and "resized with Lanczos instead" in status
        with pytest.raises(gradio_client.exceptions.AppError, match="RealESRGAN_x2plus.pth"):
            call(client, srv, EXAMPLES / "astronaut_lowres.png", background="realesrgan")
    finally:
        srv.close()
