"""gfp.background: sizes, native-scale choice, Lanczos "none", parity with RealESRGANer, threads."""

from __future__ import annotations

import contextlib
import functools
import io
import math
import threading
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from basicsr.archs.rrdbnet_arch import RRDBNet
from basicsr.archs.srvgg_arch import SRVGGNetCompact
from realesrgan import RealESRGANer

from gfp import background, registry
from gfp.background import (
    BackgroundUpsampler,
    background_choices,
    build_background_upsampler,
    lanczos_upsample,
    scaled_size,
    upsample_background,
)
from gfp.devices import Placement
from gfp.weights.errors import WeightsError


def _tiny_x4(seed: int = 0) -> SRVGGNetCompact:
    torch.manual_seed(seed)
    return SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4, act_type="prelu").eval()


def _tiny_x2(seed: int = 0) -> RRDBNet:
    torch.manual_seed(seed)
    return RRDBNet(num_in_ch=3, num_out_ch=3, scale=2, num_feat=8, num_block=1, num_grow_ch=4).eval()


def _image(h: int = 38, w: int = 50, channels: int = 3, dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    """Smooth colours plus a little noise; channels=0 gives a 2-D gray image."""
    rng = np.random.default_rng(seed)
    c = max(channels, 1)
    small = rng.random((5, 6, c), dtype=np.float32)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, c)
    img = np.clip(img + rng.random((h, w, c)) * 0.1, 0, 1)
    peak = 65535 if dtype == np.uint16 else 255
    img = np.round(img * peak).astype(dtype)
    return img[:, :, 0] if channels == 0 else img


def _reference(net, scale: int, tmp_path: Path, img: np.ndarray, outscale: float, **kw) -> np.ndarray:
    """RealESRGANer.enhance on the same network (its prints silenced)."""
    path = tmp_path / "net.pth"
    if not path.exists():
        torch.save({"params": net.state_dict()}, path)
    ref = RealESRGANer(scale=scale, model_path=str(path), model=net, device="cpu", **kw)
    with contextlib.redirect_stdout(io.StringIO()):
        return ref.enhance(img, outscale=outscale)[0]


@pytest.mark.parametrize("outscale", [1, 1.5, 2, 2.5, 3, 3.3, 4, 5.25, 6, 7, 8])
def test_output_size_for_every_scale(outscale: float) -> None:
    up = BackgroundUpsampler({2: _tiny_x2(), 4: _tiny_x4()}, tile=0)
    img = _image(37, 45)
    out = up.upsample(img, outscale)
    assert out.shape == (*scaled_size(37, 45, outscale), 3) and out.dtype == np.uint8


def test_scaled_size_rounds_half_up() -> None:
    assert scaled_size(37, 45, 1.5) == (56, 68)  # 55.5 -> 56, 67.5 -> 68
    assert scaled_size(64, 64, 3.3) == (211, 211)  # 211.2
    assert scaled_size(10, 3, 8) == (80, 24)
    assert scaled_size(1, 1, 1.2) == (1, 1)


def test_native_scale_choice() -> None:
    nets = {2: _tiny_x2(), 4: _tiny_x4()}
    both = BackgroundUpsampler(nets, tile=0)
    assert [both.scale_for(s) for s in (1, 1.5, 2, 2.01, 3.3, 4, 6, 8)] == [2, 2, 2, 4, 4, 4, 4, 4]
    x4_only = BackgroundUpsampler({4: nets[4]}, tile=0)
    assert x4_only.scale_for(1.5) == 4
    img = _image()
    for outscale, native in ((1.5, 2), (2, 2), (3.3, 4), (8, 4)):
        only = BackgroundUpsampler({native: nets[native]}, tile=0)
        np.testing.assert_array_equal(both.upsample(img, outscale), only.upsample(img, outscale))


def test_none_is_lanczos() -> None:
    img = _image(40, 52, channels=4)
    for outscale in (1.5, 2, 3.3):
        h, w = scaled_size(40, 52, outscale)
        expected = cv2.resize(img, (w, h), interpolation=cv2.INTER_LANCZOS4)
        np.testing.assert_array_equal(upsample_background(img, outscale, None), expected)
    np.testing.assert_array_equal(lanczos_upsample(img, 1), img)


@pytest.mark.parametrize(
    ("case", "tile", "tile_pad", "pre_pad", "outscale"),
    [("bgr", 0, 10, 0, 4), ("bgra", 20, 4, 2, 2.5), ("gray", 20, 4, 0, 4), ("bgr16", 0, 10, 2, 2.5)],
)
def test_parity_real_animevideov3(
    shared_data: Path, tmp_path: Path, case: str, tile: int, tile_pad: int, pre_pad: int, outscale: float
) -> None:
    net = SRVGGNetCompact(num_feat=64, num_conv=16, upscale=4, act_type="prelu")
    state = torch.load(shared_data / "weights" / "realesr-animevideov3.pth", map_location="cpu")
    net.load_state_dict(state["params"], strict=True)
    photo = cv2.imread(str(shared_data / "photos" / "deepface_img1.jpg"))
    img = cv2.resize(photo, (40, 30), interpolation=cv2.INTER_AREA)
    if case == "bgra":
        img = np.dstack([img, np.linspace(0, 255, 40, dtype=np.uint8)[None].repeat(30, 0)])
    elif case == "gray":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    elif case == "bgr16":
        img = img.astype(np.uint16) * 257 + 100
    # outscale 2.5: 30*2.5 and 40*2.5 are whole numbers, where RealESRGANer's int() and our rounding agree
    expected = _reference(net, 4, tmp_path, img, outscale, tile=tile, tile_pad=tile_pad, pre_pad=pre_pad)
    got = BackgroundUpsampler({4: net}, tile=tile, tile_pad=tile_pad, pre_pad=pre_pad).upsample(img, outscale)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    tolerance = 1 if img.dtype == np.uint8 else 257  # one 8-bit level
    assert np.abs(got.astype(np.int64) - expected.astype(np.int64)).max() <= tolerance


@pytest.mark.parametrize(
    ("channels", "dtype", "tile", "tile_pad", "pre_pad", "outscale"),
    [(3, np.uint8, 0, 10, 0, 2), (4, np.uint8, 16, 2, 4, 1.5), (0, np.uint16, 10, 4, 3, 2)],
)
def test_parity_random_rrdbnet_x2(
    tmp_path: Path, channels: int, dtype: type, tile: int, tile_pad: int, pre_pad: int, outscale: float
) -> None:
    net = _tiny_x2(seed=3)
    img = _image(34, 46, channels=channels, dtype=dtype, seed=1)
    if dtype == np.uint16:
        img[0, 0] = 60000  # RealESRGANer decides 16-bit from the maximum value
    expected = _reference(net, 2, tmp_path, img, outscale, tile=tile, tile_pad=tile_pad, pre_pad=pre_pad)
    got = BackgroundUpsampler({2: net}, tile=tile, tile_pad=tile_pad, pre_pad=pre_pad).upsample(img, outscale)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    tolerance = 1 if dtype == np.uint8 else 257  # one 8-bit level
    assert np.abs(got.astype(np.int64) - expected.astype(np.int64)).max() <= tolerance


def test_tiles_join_without_seams_given_enough_context() -> None:
    net = _tiny_x4(seed=5)  # 4 convolutions: each output pixel sees 4 input pixels around it
    img = _image(30, 42)
    whole = BackgroundUpsampler({4: net}, tile=0).upsample(img, 4)
    tiled = BackgroundUpsampler({4: net}, tile=8, tile_pad=5).upsample(img, 4)
    assert np.abs(tiled.astype(int) - whole).max() <= 1
    starved = BackgroundUpsampler({4: net}, tile=8, tile_pad=0).upsample(img, 4)
    assert np.abs(starved.astype(int) - whole).max() > 1  # the test can tell seams apart


def test_odd_tiles_work_for_x2(tmp_path: Path) -> None:
    net = _tiny_x2(seed=5)
    img = _image(18, 26)
    # Odd tile sizes would break pixel-unshuffle (RealESRGANer raises); they are rounded up to even.
    odd = BackgroundUpsampler({2: net}, tile=9, tile_pad=3).upsample(img, 2)
    expected = _reference(net, 2, tmp_path, img, 2, tile=10, tile_pad=4, pre_pad=0)
    assert odd.shape == expected.shape and np.abs(odd.astype(int) - expected).max() <= 1


def test_layouts_and_dtypes_kept() -> None:
    up = BackgroundUpsampler({4: _tiny_x4()}, tile=16, tile_pad=2)
    for img in (
        _image(channels=0),
        _image(channels=4),
        _image(dtype=np.uint16),
        _image(channels=4, dtype=np.uint16),
    ):
        out = up.upsample(img, 3)
        assert out.shape[2:] == img.shape[2:] and out.dtype == img.dtype
    f = _image().astype(np.float32) / 255
    out = up.upsample(f, 4)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    q = up.upsample(_image(), 4)
    assert np.abs(np.round(out * 255) - q).max() <= 1  # float path = 8-bit path without the rounding


def test_no_float_copies_of_the_whole_input() -> None:
    """The network's float32 input is made plane by plane from the image: not also a float32 copy of the
    image and one of its RGB conversion (12 bytes an input pixel each, as much as a x2 uint8 output)."""
    img = _image(200, 300)
    up = BackgroundUpsampler({4: _tiny_x4()}, tile=64, tile_pad=2)
    tracemalloc.start()
    try:
        out = up.upsample(img, 4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < out.nbytes + 18 * img.shape[0] * img.shape[1]  # the uint8 result and one float input


def test_an_output_that_would_not_fit_is_refused_before_upsampling(monkeypatch: pytest.MonkeyPatch) -> None:
    """An upscale whose background and paste-back need more than the memory left is refused before the
    network runs, naming what fits with a margin: a smaller upscale, else the Lanczos background (a x4
    network's native result is the larger buffer at any upscale); nothing known about memory refuses
    nothing."""
    img = _image(100, 120)
    up = BackgroundUpsampler({4: _tiny_x4()}, tile=12, tile_pad=2, batch_pixels=16 * 16)
    ran: list[int] = []
    up.network(4).register_forward_hook(lambda module, args, out: ran.append(1))

    def refusal(available: int, outscale: float, upsampler: BackgroundUpsampler | None = up) -> str:
        monkeypatch.setattr(background, "available_memory", lambda: available)
        run = functools.partial(up.upsample if upsampler else lanczos_upsample, img, outscale)
        return pytest.raises(background.OutputMemoryError, run).value.said(
            {"upscale": "-s", "bg_upsampler": "-b"}
        )

    def room(need: int) -> int:  # memory left in which ``need`` is suggested (with the estimate's margin)
        return math.ceil(need / background.SUGGEST_SHARE)

    at = functools.partial(background.output_memory, img, scale=4, batch_pixels=up.batch_pixels)
    assert at(outscale=3) < at(outscale=4)  # x4: its input and working memory, or (above) two outputs
    said = refusal(room(at(outscale=3)), 4)
    assert said.startswith("a 480x400 restored image needs at least") and said.endswith("use -s 3 or less")
    assert refusal(room(background.output_memory(img, 1, 1)), 2, None).endswith("use -s 1")  # 1 is the least
    lanczos = background.output_memory(img, 2, 1)  # two uint8 x2 outputs: less than a x4 result at 1
    assert lanczos < at(outscale=1)
    assert refusal(room(lanczos), 2).endswith("use -b none")
    assert refusal(room(background.output_memory(img, 1.5, 1)), 2).endswith("use -b none and -s 1.5")
    assert refusal(1, 4).endswith("free some memory first")
    assert refusal(room(background.output_memory(img, 2, 1)), 8, None).endswith("use -s 2 or less")  # Lanczos
    assert ran == []
    monkeypatch.setattr(background, "available_memory", lambda: at(outscale=2))
    assert up.upsample(img, 2).shape[:2] == (200, 240) and ran
    monkeypatch.setattr(background, "available_memory", lambda: None)  # nothing known: nothing refused
    assert up.upsample(img, 4).shape[:2] == (400, 480)


def test_tiny_images_with_x2_model() -> None:
    up = BackgroundUpsampler({2: _tiny_x2()}, tile=4, tile_pad=2, pre_pad=10)
    for h, w in ((1, 1), (1, 7), (3, 2)):
        assert up.upsample(_image(h, w), 2).shape == (2 * h, 2 * w, 3)


def test_progress_reports_every_network_call() -> None:
    calls = []
    up = BackgroundUpsampler({4: _tiny_x4()}, tile=16, tile_pad=2, batch_pixels=1)  # one tile per call
    up.upsample(_image(30, 40, channels=4), 4, progress=lambda d, t, s: calls.append((d, t, s)))
    assert calls == [(i, 12, "background") for i in range(1, 13)]  # 2x3 tiles, colour + alpha
    calls.clear()
    up = BackgroundUpsampler({4: _tiny_x4()}, tile=8, tile_pad=2)
    up.upsample(_image(40, 40), 4, progress=lambda d, t, s: calls.append((d, t, s)))
    # 5x5 tiles whose inputs are 10 (border) or 12 (inside) pixels a side: 4 sizes, 4 batched calls
    assert calls == [(i, 4, "background") for i in range(1, 5)]


def test_batched_tiles_match_one_by_one(tmp_path: Path) -> None:
    net = _tiny_x2(seed=7)
    img = _image(30, 34)
    batched = BackgroundUpsampler({2: net}, tile=10, tile_pad=4).upsample(img, 2)
    single = BackgroundUpsampler({2: net}, tile=10, tile_pad=4, batch_pixels=1).upsample(img, 2)
    assert np.abs(batched.astype(int) - single).max() <= 1
    expected = _reference(net, 2, tmp_path, img, 2, tile=10, tile_pad=4, pre_pad=0)
    assert np.abs(batched.astype(int) - expected).max() <= 1


def test_shared_between_threads() -> None:
    up = BackgroundUpsampler({2: _tiny_x2(), 4: _tiny_x4()}, tile=12, tile_pad=2)
    jobs = [(_image(20 + i, 30 - i, seed=i), s) for i, s in enumerate((1.5, 2, 3.3, 4, 2, 1.5))]
    expected = [up.upsample(img, s) for img, s in jobs]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(3):
            results[i] = up.upsample(*jobs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, exp in enumerate(expected):
        np.testing.assert_array_equal(results[i], exp)


def test_networks_load_lazily_once() -> None:
    built = []

    def make(scale: int):
        def load():
            built.append(scale)
            return _tiny_x2() if scale == 2 else _tiny_x4()

        return load

    up = BackgroundUpsampler({2: make(2), 4: make(4)}, tile=0)
    up.upsample(_image(), 2)
    up.upsample(_image(), 1.5)
    assert built == [2]
    up.upsample(_image(), 3)
    assert built == [2, 4]


def test_half_is_ignored_on_cpu() -> None:
    up = build_background_upsampler(
        "realesr-animevideov3", placement=Placement.decide("cpu", half=True), load=lambda n: _tiny_x4()
    )
    assert up.dtype == torch.float32 and next(up.network(4).parameters()).dtype == torch.float32


@pytest.mark.parametrize("outscale", [0.5, 0, 8.5, float("nan"), "2", True])
def test_bad_outscale(outscale) -> None:
    up = BackgroundUpsampler({4: _tiny_x4()})
    with pytest.raises(ValueError, match="outscale"):
        up.upsample(_image(), outscale)
    with pytest.raises(ValueError, match="outscale"):
        upsample_background(_image(), outscale, None)


def test_bad_images() -> None:
    up = BackgroundUpsampler({4: _tiny_x4()})
    with pytest.raises(ValueError, match="shape"):
        up.upsample(np.zeros((8, 8, 2), np.uint8), 2)
    with pytest.raises(ValueError, match="uint8"):
        up.upsample(np.zeros((8, 8, 3), np.int32), 2)
    with pytest.raises(TypeError, match="numpy"):
        up.upsample([[0]], 2)
    with pytest.raises(ValueError, match="tile"):
        BackgroundUpsampler({4: _tiny_x4()}, tile=-1)


def test_tile_is_an_argument_of_the_call_not_of_the_upsampler() -> None:
    net = _tiny_x4(seed=5)
    img = _image(30, 42)
    shared = BackgroundUpsampler({4: net}, tile=0)
    for tile in (8, 16, 0):
        own = BackgroundUpsampler({4: net}, tile=tile, tile_pad=10).upsample(img, 4)
        np.testing.assert_array_equal(shared.upsample(img, 4, tile=tile), own)
    with pytest.raises(ValueError, match="tile"):
        shared.upsample(img, 4, tile=-1)


def test_choices_come_from_the_registry() -> None:
    assert background_choices() == {
        "realesrgan": ("RealESRGAN_x2plus", "realesr-general-x4v3"),
        "RealESRGAN_x2plus": ("RealESRGAN_x2plus",),
        "realesr-general-x4v3": ("realesr-general-x4v3",),
        "realesr-animevideov3": ("realesr-animevideov3",),
        "none": (),
    }


def test_build_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import gfp.background as background

    loaded = []

    def fake_load(name: str, weights_dir=None):
        loaded.append((name, weights_dir))
        return _tiny_x2() if registry.MODEL_ZOO[name].supports.scale == 2 else _tiny_x4()

    monkeypatch.setattr(background, "load_background_network", fake_load)
    assert build_background_upsampler("none") is None
    with pytest.raises(ValueError, match="realesrgan"):
        build_background_upsampler("esrgan-9000")
    auto = build_background_upsampler("realesrgan", "/w", tile=32)
    assert auto.scales == (2, 4) and auto.tile == 32 and loaded == []
    auto.upsample(_image(), 2)
    auto.upsample(_image(), 4)
    assert loaded == [("RealESRGAN_x2plus", "/w"), ("realesr-general-x4v3", "/w")]
    assert build_background_upsampler("realesr-animevideov3").scales == (4,)


def test_build_loads_real_weights_through_gfp_loading(shared_data: Path) -> None:
    up = build_background_upsampler("realesr-animevideov3", shared_data / "weights", tile=0)
    state = torch.load(shared_data / "weights" / "realesr-animevideov3.pth", map_location="cpu")["params"]
    net = SRVGGNetCompact(num_feat=64, num_conv=16, upscale=4, act_type="prelu")
    net.load_state_dict(state, strict=True)
    img = _image(24, 30)
    np.testing.assert_array_equal(up.upsample(img, 4), BackgroundUpsampler({4: net}, tile=0).upsample(img, 4))
    general = registry.build(registry.MODEL_ZOO["realesr-general-x4v3"])
    with pytest.raises(RuntimeError):  # the x4v3 body is twice as deep: the anime file must not fit it
        general.load_state_dict(state, strict=True)


def test_a_gray_with_alpha_output_counts_the_canvas_its_paste_blends_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Gray with alpha (BGRA with equal colour channels) is pasted on a float32 canvas of the whole output
    (gfp.paste.paste_back), which the estimate left out: such a photo passed the check and could then run
    out of memory in the paste. A colour BGRA image of the same size needs no canvas."""
    gray = np.repeat(_image(100, 120)[:, :, :1], 4, axis=2)
    gray[:, :, 3] = 200
    colour = _image(100, 120, channels=4)
    plain = background.output_memory(gray, 2, 1)
    assert background.output_memory(gray, 2, 1, canvas=True) == 200 * 240 * (4 + 16) > plain
    monkeypatch.setattr(background, "available_memory", lambda: plain)
    with pytest.raises(background.OutputMemoryError):
        lanczos_upsample(gray, 2)
    assert lanczos_upsample(colour, 2).shape == (200, 240, 4)


def test_missing_weights_are_said_before_the_networks_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """An upsampler whose weights cannot be had raises their error, from which the default upsampler falls
    back to Lanczos, even where the network's memory would not fit: it was refused for memory first, with
    "use --bg_upsampler none", where the Lanczos background it would have fallen back to fitted."""

    def missing() -> torch.nn.Module:
        raise WeightsError("realesr-general-x4v3.pth: not found")

    img = _image(100, 120)
    lanczos = background.output_memory(img, 2, 1)
    assert background.output_memory(img, 2, 4, 512 * 512) > 2 * lanczos
    monkeypatch.setattr(background, "available_memory", lambda: 2 * lanczos)
    with pytest.raises(WeightsError, match="not found"):
        BackgroundUpsampler({4: missing}).upsample(img, 2)
    assert lanczos_upsample(img, 2).shape[:2] == (200, 240)  # what the default falls back to
