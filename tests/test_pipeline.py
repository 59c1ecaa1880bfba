"""gfp.pipeline: options, layouts (gray, alpha, 16-bit), strength, batching, threads, parser fallback.

Small and fast: a tiny random generator (64 px faces). Without the shared data a "blind" detector (random
MobileNet whose class head always says background) gives face-free runs; with it, the real MobileNet-0.25
finds the faces of real photos.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _official_pipeline import psnr
from _zoo_helpers import save_tiny_generator, tiny_config, tiny_generator
from conftest import MOBILE, make_weights

from gfp import faces, registry
from gfp.archs import GeneratorConfig
from gfp.background import lanczos_upsample, scaled_size, upsample_background
from gfp.faces import alignment_matrix
from gfp.loading import WeightsNotFoundError, load_generator
from gfp.paste import inverse_affine
from gfp.pipeline import RestoreOptions, Restorer, RunLog, Unavailable

pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture(scope="module")
def blind_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny generator + a MobileNet detector that never finds a face."""
    return make_weights(tmp_path_factory.mktemp("blind"))


@pytest.fixture(scope="module")
def real_weights(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """Tiny generator + the real MobileNet-0.25 detector and realesr-animevideov3 (linked, not copied)."""
    files = shared_data / "weights"
    return make_weights(
        tmp_path_factory.mktemp("real"), files / MOBILE, links=[files / "realesr-animevideov3.pth"]
    )


def _options(folder: Path, **kw: object) -> RestoreOptions:
    base = {"version": str(folder / "tiny"), "bg_upsampler": "none", "detector": "retinaface_mobile0.25"}
    return RestoreOptions(**(base | kw))


def _gradient(h: int = 60, w: int = 80) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.dstack([xx * 3, yy * 4, (xx + yy) * 2]).astype(np.uint8)


def _layouts(bgr: np.ndarray) -> dict[str, np.ndarray]:
    alpha = np.linspace(0, 255, bgr.shape[1], dtype=np.uint8)[None].repeat(bgr.shape[0], 0)
    return {
        "gray": cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY),
        "bgr": bgr,
        "bgra": np.dstack([bgr, alpha]),
        "bgr16": bgr.astype(np.uint16) * 257,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"upscale": 0.5}, "upscale"),
        ({"upscale": 9}, "upscale"),
        ({"strength": 1.5}, "strength"),
        ({"bg_upsampler": "magic"}, "background upsampler"),
        ({"detector": "yolo"}, "face detector"),
        ({"batch_size": 0}, "batch_size"),
        ({"bg_tile": -1}, "bg_tile"),
        ({"version": " "}, "version"),
        ({"color_fix": "histogram"}, "unknown colour fix 'histogram'; choose one of: none, wavelet, adain"),
        ({"faces": "0"}, "face numbers start at 1, got '0'"),
        ({"faces": "x"}, "faces must be all, largest, center or face numbers"),
        ({"min_face": -3}, "min_face must be a whole number of pixels >= 0, got -3"),
        ({"min_face": 2.5}, "min_face must be a whole number"),
        (
            {"only_center_face": True, "faces": "largest"},
            "only_center_face means faces 'center'; it cannot be combined with faces 'largest'",
        ),
        ({"aligned": True, "faces": "2"}, "^faces cannot be combined with aligned"),
        ({"aligned": True, "min_face": 20}, "^min_face cannot be combined with aligned"),
        # wrong types are the same readable ValueError, not an error from inside, nor silently truthy
        ({"strength": None}, "strength must be a number in \\[0, 1\\], got None"),
        ({"strength": "0.5"}, "strength must be a number"),
        ({"faces": 2.0}, "faces must be all, largest, center or face numbers"),
        ({"faces": True}, "faces must be all, largest, center or face numbers"),
        ({"faces": None}, "faces must be all, largest, center or face numbers"),
        ({"faces": [True, 2]}, "faces must be all, largest, center or face numbers"),
        ({"aligned": "False"}, "aligned must be True or False, got 'False'"),
        ({"only_center_face": "no"}, "only_center_face must be True or False"),
        ({"use_parse": 0}, "use_parse must be None, True or False, got 0"),
        ({"bg_tile": True}, "bg_tile must be an integer"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"weight": float("nan")}, "weight must be a number"),
    ],
)
def test_options_are_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RestoreOptions(**kwargs)


def test_numpy_numbers_are_numbers_for_every_option() -> None:
    options = RestoreOptions(upscale=np.float32(1.5), strength=np.float64(0.5), bg_tile=np.int64(0))
    assert (options.upscale, options.strength) == (1.5, 0.5)
    assert RestoreOptions(upscale=np.int64(3)).upscale == 3
    # NumPy's bools too (an array's element or comparison), kept as Python's; an array of one is no bool
    flags = RestoreOptions(aligned=np.True_, only_center_face=np.False_, use_parse=np.bool_(True))
    assert [type(v) for v in (flags.aligned, flags.only_center_face, flags.use_parse)] == [bool] * 3
    assert (flags.aligned, flags.only_center_face, flags.use_parse) == (True, False, True)
    with pytest.raises(ValueError, match="aligned must be True or False"):
        RestoreOptions(aligned=np.array([True]))


@pytest.mark.parametrize(
    ("img", "error"),
    [
        (np.zeros((8, 8, 3), np.float32), ValueError),
        (np.zeros((8, 8, 2), np.uint8), ValueError),
        (np.zeros((0, 8, 3), np.uint8), ValueError),
        ([[0, 1]], TypeError),
    ],
)
def test_bad_images_are_clear_errors(blind_weights: Path, img: object, error: type) -> None:
    with pytest.raises(error, match="expected"):
        Restorer(blind_weights, device="cpu").restore(img, _options(blind_weights))


@pytest.mark.parametrize("layout", ["gray", "bgr", "bgra", "bgr16"])
def test_no_face_image_is_only_upscaled(blind_weights: Path, layout: str) -> None:
    img = _layouts(_gradient())[layout]
    result = Restorer(blind_weights, device="cpu").restore(img, _options(blind_weights, upscale=2))
    assert result.restored_faces == [] and result.cropped_faces == []
    assert result.boxes.shape == (0, 5) and result.landmarks.shape == (0, 5, 2)
    assert result.image.dtype == img.dtype and result.image.shape == (120, 160, *img.shape[2:])
    np.testing.assert_array_equal(result.image, lanczos_upsample(img, 2))
    assert result.device == "cpu" and result.timings["total"] >= result.timings["detect"] > 0


@pytest.mark.parametrize("aligned", [False, True])
def test_a_big_endian_16_bit_image_is_restored_as_its_native_copy(blind_weights: Path, aligned: bool) -> None:
    """A big-endian uint16 array (as some TIFF and FITS readers give) is uint16: it was refused as "expected
    a uint8 or uint16 image, got dtype >u2"."""
    img = _layouts(_gradient(96, 96))["bgr16"]
    swapped = img.astype(">u2")
    restorer, options = Restorer(blind_weights, device="cpu"), _options(blind_weights, aligned=aligned)
    np.testing.assert_array_equal(
        restorer.restore(swapped, options).image, restorer.restore(img, options).image
    )


def test_fractional_upscale_sizes(blind_weights: Path) -> None:
    img = _gradient(61, 83)
    result = Restorer(blind_weights, device="cpu").restore(img, _options(blind_weights, upscale=1.5))
    assert result.image.shape[:2] == scaled_size(61, 83, 1.5)


@pytest.mark.parametrize("layout", ["gray", "bgra", "bgr16"])
def test_aligned_input(blind_weights: Path, layout: str) -> None:
    img = _layouts(_gradient(96, 96))[layout]
    result = Restorer(blind_weights, device="cpu").restore(
        img, _options(blind_weights, aligned=True, upscale=1)
    )
    assert len(result.restored_faces) == 1 and result.restored_faces[0].shape == (64, 64, 3)
    assert result.cropped_faces[0].dtype == np.uint8 and result.boxes.shape == (0, 5)
    assert result.image.shape == img.shape and result.image.dtype == img.dtype
    assert result.face_mask == "none" and result.notes == []


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_gray_with_alpha_stays_gray(blind_weights: Path, tmp_path: Path, dtype: type) -> None:
    """A gray+alpha file (PNG mode LA) reads as BGRA with equal colour channels: the restored image and
    the file written keep them equal (no tinted face), with the alpha."""
    from PIL import Image

    from gfp.imageio import read_image, write_image
    from gfp.paste import paste_back

    gray = _layouts(_gradient(96, 96))["gray"]
    alpha = np.linspace(255, 40, 96, dtype=np.uint8)[:, None].repeat(96, 1)
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(tmp_path / "la.png")
    img = read_image(tmp_path / "la.png")
    img = img if dtype == np.uint8 else img.astype(np.uint16) * 257
    result = Restorer(blind_weights, device="cpu").restore(
        img, _options(blind_weights, aligned=True, upscale=1)
    )
    out = read_image(write_image(tmp_path / "out.png", result.image))
    assert out.shape == img.shape and out.dtype == dtype
    assert (out[:, :, 0] == out[:, :, 1]).all() and (out[:, :, 1] == out[:, :, 2]).all()
    assert not (
        result.restored_faces[0][:, :, 0] == result.restored_faces[0][:, :, 2]
    ).all()  # (a coloured face)
    np.testing.assert_array_equal(out[:, :, 3], img[:, :, 3])
    # a photo's faces are pasted the same way
    face = np.dstack([np.full((16, 16), v, np.uint8) for v in (40, 120, 200)])
    matrix = np.float32([[1, 0, -8], [0, 1, -8]])  # the face's corner at (8, 8) of the photo
    pasted = paste_back(img, img, [face], [matrix], None, 1)
    assert pasted.shape == img.shape and (pasted[:, :, 0] == pasted[:, :, 2]).all()
    assert (pasted != img).any()


def test_a_non_square_aligned_input_is_noted(blind_weights: Path) -> None:
    """A whole photo given as an aligned face is stretched as the official aligned path stretches it, and
    the result says so."""
    options = _options(blind_weights, aligned=True, upscale=1)
    result = Restorer(blind_weights, device="cpu").restore(_gradient(60, 96), options)
    assert result.image.shape == (60, 96, 3)
    assert [n for n in result.notes if "is 96x60, not square" in n] == result.notes and result.notes


def test_aligned_results_never_share_the_callers_array(blind_weights: Path) -> None:
    img = _gradient(64, 64)  # already the model's size: nothing to resize
    kept = img.copy()
    options = _options(blind_weights, aligned=True, upscale=1)
    result = Restorer(blind_weights, device="cpu").restore(img, options)
    assert np.array_equal(result.cropped_faces[0], img)
    result.cropped_faces[0][:] = 0
    assert np.array_equal(img, kept)


def test_missing_generator_raises_weights_not_found(blind_weights: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="v1.4"):
        Restorer(blind_weights, device="cpu").restore(_gradient(), RestoreOptions(bg_upsampler="none"))


def test_spellings_and_paths_share_one_loaded_generator(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tiny_config()
    torch.save({"params_ema": tiny_generator(config).state_dict()}, tmp_path / "GFPGANv1.4.pth")
    monkeypatch.setitem(
        registry.MODEL_ZOO, "v1.4", dataclasses.replace(registry.MODEL_ZOO["v1.4"], config=config)
    )
    store = Restorer(tmp_path, device="cpu").store
    got = store.generator("1.4")
    assert got.config == config
    for spec in ("v1.4", "GFPGANv1.4.pth", str(tmp_path / "GFPGANv1.4.pth")):
        assert store.generator(spec).run is got.run, spec
    assert Restorer(tmp_path, device="cpu").store.generator("1.4").run is not got.run  # one per Restorer


def test_background_networks_are_shared_and_tile_is_per_call(tmp_path: Path) -> None:
    entry = registry.MODEL_ZOO["realesr-animevideov3"]
    torch.manual_seed(0)
    torch.save({"params": registry.build(entry).state_dict()}, tmp_path / entry.file_name)
    store = Restorer(tmp_path, device="cpu").store
    upsampler = store.background(entry.name)
    assert store.background(entry.name) is upsampler  # the tile is not part of its identity
    assert upsampler.network(4) is store.network(entry.name).run
    img = _gradient(24, 32)
    whole = upsampler.upsample(img, 2, tile=0)
    assert np.abs(upsampler.upsample(img, 2, tile=16).astype(int) - whole).max() <= 1


def test_default_background_falls_back_to_lanczos_with_a_note(
    blind_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried: list[str] = []

    def no_network(request: urllib.request.Request, *args: object, **kwargs: object) -> None:
        tried.append(request.full_url)
        raise urllib.error.URLError("offline test")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    restorer = Restorer(blind_weights, device="cpu")
    img = _gradient()
    for _ in range(2):
        result = restorer.restore(img, _options(blind_weights, bg_upsampler=None, upscale=2))
        np.testing.assert_array_equal(result.image, lanczos_upsample(img, 2))
        assert len(result.notes) == 1
        note = result.notes[0]
        # the CPU's default background
        assert note.startswith("background upsampler realesr-general-x4v3 unavailable (could not find")
        assert "realesr-general-x4v3.pth" in note and note.endswith("resized with Lanczos instead")
    assert tried == [registry.MODEL_ZOO["realesr-general-x4v3"].url]  # remembered: not retried per request
    assert isinstance(restorer.store.optional("realesr-general-x4v3"), Unavailable)


@pytest.mark.parametrize(
    ("name", "file_name"),
    [("realesrgan", "RealESRGAN_x2plus.pth"), ("realesr-general-x4v3", "realesr-general-x4v3.pth")],
)
def test_a_background_asked_for_by_name_must_be_had(blind_weights: Path, name: str, file_name: str) -> None:
    """Before any work: it failed once the faces had been found and restored."""
    reported: list[str] = []
    with pytest.raises(WeightsNotFoundError) as err:
        Restorer(blind_weights, device="cpu").restore(
            _gradient(),
            _options(blind_weights, bg_upsampler=name),
            lambda done, total, stage: reported.append(stage),
        )
    assert file_name in str(err.value) and str(blind_weights / file_name) in str(err.value)
    assert reported == []  # no stage began


def test_a_model_asked_for_by_name_is_looked_for_again_after_it_was_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A named model's error says how to provide the file: a shared Restorer (the app's) must then find it,
    not repeat the error until a restart. A default one stays remembered as missing (not retried)."""
    tried: list[str] = []

    def no_network(request: urllib.request.Request, *args: object, **kwargs: object) -> None:
        tried.append(request.full_url)
        raise urllib.error.URLError("offline test")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    folder = make_weights(tmp_path / "w")
    restorer = Restorer(folder, device="cpu")
    entry = registry.MODEL_ZOO["realesr-animevideov3"]
    named = _options(folder, bg_upsampler=entry.name)
    with pytest.raises(WeightsNotFoundError, match=entry.file_name):
        restorer.restore(_gradient(), named)
    torch.manual_seed(0)
    torch.save({"params": registry.build(entry).state_dict()}, folder / entry.file_name)
    assert restorer.restore(_gradient(), named).image.shape == (120, 160, 3)
    parser = registry.MODEL_ZOO["parsenet"].url
    tried.clear()
    for required, attempts in ((False, 1), (False, 1), (True, 2), (True, 3)):
        if required:
            with pytest.raises(WeightsNotFoundError, match="parsing_parsenet.pth"):
                restorer.store.parser(required=True)
        else:
            assert isinstance(restorer.store.parser(), Unavailable)
        assert tried.count(parser) == attempts, required


@pytest.mark.shared
def test_background_model_is_used(real_weights: Path) -> None:
    img = _gradient(24, 32)  # no face: the output is the background upsampler's output
    upsampler = Restorer(real_weights, device="cpu").store.background("realesr-animevideov3")
    result = Restorer(real_weights, device="cpu", bf16=False).restore(  # float32, as the direct call
        img, _options(real_weights, bg_upsampler="realesr-animevideov3", upscale=3)
    )
    np.testing.assert_array_equal(result.image, upsample_background(img, 3, upsampler))


@pytest.fixture(scope="module")
def group(shared_data: Path) -> np.ndarray:
    return cv2.imread(str(shared_data / "photos" / "codeformer_01.jpg"), cv2.IMREAD_COLOR)


@pytest.mark.shared
def test_real_photo_all_faces_in_detection_order(real_weights: Path, group: np.ndarray) -> None:
    seen: list[tuple[int, int, str]] = []
    result = Restorer(real_weights, device="cpu").restore(
        group, _options(real_weights), progress=lambda d, t, s: seen.append((d, t, s))
    )
    n = len(result.restored_faces)
    assert n == len(result.cropped_faces) == len(result.boxes) == len(result.landmarks) == 4
    assert all(
        f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in result.restored_faces + result.cropped_faces
    )
    assert list(result.boxes[:, 4]) == sorted(result.boxes[:, 4], reverse=True)
    assert result.image.shape == (group.shape[0] * 2, group.shape[1] * 2, 3)
    assert result.face_mask == "square" and "face parser unavailable" in result.notes[0]
    assert ("restore", n, n) in [(s, d, t) for d, t, s in seen] and ("paste", n, n) in [
        (s, d, t) for d, t, s in seen
    ]
    assert {"load", "detect", "align", "restore", "background", "paste", "total"} <= set(result.timings)
    # the faces really were pasted: the output differs from the plain upscale around each face
    plain = lanczos_upsample(group, 2).astype(int)
    for x1, y1, x2, y2, _ in result.boxes.astype(int):
        box = (slice(2 * y1, 2 * y2), slice(2 * x1, 2 * x2))
        assert np.abs(result.image[box].astype(int) - plain[box]).mean() > 5


@pytest.mark.shared
def test_a_parser_asked_for_must_be_had(real_weights: Path, group: np.ndarray) -> None:
    restorer = Restorer(real_weights, device="cpu")
    with pytest.raises(WeightsNotFoundError, match="parsing_parsenet.pth"):
        restorer.restore(group, _options(real_weights, use_parse=True))
    unparsed = restorer.restore(group, _options(real_weights, use_parse=False))
    assert unparsed.face_mask == "square" and unparsed.notes == []


@pytest.mark.shared
def test_only_center_face(real_weights: Path, group: np.ndarray) -> None:
    result = Restorer(real_weights, device="cpu").restore(
        group, _options(real_weights, only_center_face=True)
    )
    assert len(result.restored_faces) == 1


@pytest.mark.shared
def test_strength_blends_restored_and_input_faces(real_weights: Path, group: np.ndarray) -> None:
    restorer = Restorer(real_weights, device="cpu")
    full = restorer.restore(group, _options(real_weights))
    none = restorer.restore(group, _options(real_weights, strength=0.0))
    half = restorer.restore(group, _options(real_weights, strength=0.5))
    faces = zip(
        full.cropped_faces, none.restored_faces, half.restored_faces, full.restored_faces, strict=True
    )
    for crop, f0, f5, f1 in faces:
        assert np.abs(f0.astype(int) - crop).max() <= 1
        expected = (crop.astype(float) + f1) / 2
        assert np.abs(f5 - expected).max() <= 1.5
        assert np.abs(f1.astype(int) - crop).mean() > 10


@pytest.mark.shared
@pytest.mark.parametrize("bf16", [False, True])
def test_batch_size_does_not_change_results(real_weights: Path, group: np.ndarray, bf16: bool) -> None:
    restorer = Restorer(real_weights, device="cpu", bf16=bf16)
    one = restorer.restore(group, _options(real_weights, batch_size=1))
    three = restorer.restore(group, _options(real_weights, batch_size=3))
    for a, b in zip(one.restored_faces, three.restored_faces, strict=True):
        if bf16:  # bf16 sums depend on how a batch is blocked: close, not equal
            assert psnr(a, b) >= 45.0  # measured 49.7-51.1 dB
        else:
            assert np.abs(a.astype(int) - b).max() <= 1


@pytest.mark.shared
def test_layouts_keep_gray_alpha_and_16bit(real_weights: Path, group: np.ndarray) -> None:
    restorer = Restorer(real_weights, device="cpu", bf16=False)  # float32: 16-bit input must match 8-bit
    layouts = _layouts(group)
    out8 = restorer.restore(layouts["bgr"], _options(real_weights)).image

    gray = restorer.restore(layouts["gray"], _options(real_weights))
    assert gray.image.ndim == 2 and gray.image.shape == out8.shape[:2] and len(gray.restored_faces) > 0

    bgra = restorer.restore(layouts["bgra"], _options(real_weights)).image
    assert bgra.shape == (*out8.shape[:2], 4)
    np.testing.assert_array_equal(bgra[:, :, 3], lanczos_upsample(layouts["bgra"][:, :, 3], 2))
    np.testing.assert_array_equal(bgra[:, :, :3], out8)

    out16 = restorer.restore(layouts["bgr16"], _options(real_weights)).image
    assert out16.dtype == np.uint16
    # faces on the 16-bit scale: the 16-bit result is the 8-bit one times 257, up to rounding
    diff = np.abs(out16.astype(float) / 257 - out8)
    assert diff.max() <= 1.5 and diff.mean() < 0.3


@pytest.mark.shared
def test_one_restorer_serves_threads(real_weights: Path, group: np.ndarray) -> None:
    images = [group, np.ascontiguousarray(group[:, ::-1])]
    restorer = Restorer(real_weights, device="cpu")
    expected = [restorer.restore(img, _options(real_weights)).image for img in images]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = restorer.restore(images[i % 2], _options(real_weights)).image

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        np.testing.assert_array_equal(results[i], expected[i % 2])


@pytest.mark.shared
def test_cpu_bf16_background_runs_and_stays_close(real_weights: Path, group: np.ndarray) -> None:
    from gfp import stages

    options = _options(real_weights, bg_upsampler="realesr-animevideov3")
    images = []
    for bf16 in (False, True):
        run = RunLog(None)
        upsampler = stages.background_upsampler(
            Restorer(real_weights, device="cpu", bf16=bf16).store, options, run
        )
        images.append(stages.background(upsampler, group, options, run))
    assert 45.0 <= psnr(images[0], images[1]) < math.inf  # bf16 really ran; measured 52.9 dB on a photo


@pytest.mark.shared
def test_half_runs_float16_where_declared_and_stays_close(
    real_weights: Path, group: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``half=True`` (``--half``) runs on a GPU, run on the CPU: torch's CPU float16 kernels are slow but
    real, so every dtype hand-over between the float16 generator and background and the float32 detector is
    exercised without a GPU. On a CPU the Restorer itself never picks float16 (tested in test_loading)."""
    import gfp.devices

    monkeypatch.setattr(
        gfp.devices, "decide_precision", lambda device, half: torch.float16 if half else torch.float32
    )
    photo = group[: group.shape[0] // 2]  # two of its faces: float16 convolutions are slow on a CPU
    options = _options(real_weights, bg_upsampler="realesr-animevideov3")
    full, half = (Restorer(real_weights, device="cpu", half=h, bf16=False) for h in (False, True))
    expected, got = (r.restore(photo, options) for r in (full, half))

    assert half.store.placement.half and not full.store.placement.half
    generator = half.store.generator(options.version).run
    background = half.store.network("realesr-animevideov3").run
    detector = half.store.detector(options.detector).run
    assert next(generator.parameters()).dtype == next(background.parameters()).dtype == torch.float16
    assert next(detector.parameters()).dtype == torch.float32  # declared float32 only
    assert len(got.restored_faces) == len(expected.restored_faces) >= 1
    assert got.image.shape == expected.image.shape and got.image.dtype == np.uint8
    for a, b in zip(expected.restored_faces, got.restored_faces, strict=True):
        assert 45.0 <= psnr(a, b) < math.inf  # float16 really ran; measured 59.1 and 60.2 dB
    assert 45.0 <= psnr(expected.image, got.image) < math.inf  # measured 59.1 dB


def test_bf16_is_declared_only_where_it_was_measured() -> None:
    bf16 = torch.bfloat16
    # ParseNet in bf16 keeps whole photos above the 45 dB guard, and it is the slowest face stage on a CPU
    # (measured in README, "Speed")
    assert bf16 in registry.MODEL_ZOO["parsenet"].supports.precisions
    assert bf16 in registry.MODEL_ZOO["realesr-general-x4v3"].supports.precisions
    assert bf16 in registry.MODEL_ZOO["realesr-animevideov3"].supports.precisions
    assert bf16 not in registry.MODEL_ZOO["RealESRGAN_x2plus"].supports.precisions  # RRDB: 48.6 dB, thin
    assert bf16 in registry.MODEL_ZOO["v1.4"].supports.precisions  # clean layout: 52-56 dB
    assert bf16 not in registry.MODEL_ZOO["v1"].supports.precisions  # paper layout: 41 dB
    trained = GeneratorConfig(arch="clean", out_size=128, narrow=0.125)  # a folder, not a zoo entry
    assert registry.generator_supports(trained).precisions == registry.MODEL_ZOO["v1.3"].supports.precisions
    store = Restorer(device="cpu", bf16=True).store
    assert store.background("realesr-general-x4v3").placement.bf16
    assert not store.background("realesrgan").placement.bf16  # its x2plus member would run in bf16
    assert store.placement.for_model(registry.MODEL_ZOO["parsenet"].supports).bf16
    assert (
        not Restorer(device="cpu", bf16=False)
        .store.placement.for_model(registry.MODEL_ZOO["parsenet"].supports)
        .bf16
    )
    generator = registry.generator_supports(trained)
    assert store.placement.for_model(generator).bf16
    assert not Restorer(device="cpu", bf16=False).store.placement.for_model(generator).bf16


def test_default_batch_is_one_face_on_a_cpu() -> None:
    restorer = Restorer(device="cpu")
    assert RestoreOptions().batch_size is None
    assert restorer.batch_size(RestoreOptions()) == 1  # measured faster per face on a 2-core CPU
    assert restorer.batch_size(RestoreOptions(batch_size=3)) == 3
    with pytest.raises(ValueError, match="batch_size"):
        RestoreOptions(batch_size=0)


def test_detect_max_side_reaches_the_detector(blind_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gfp.stages as stages

    seen = []
    detect = stages.detect_faces
    monkeypatch.setattr(
        stages, "detect_faces", lambda *a, **kw: seen.append(kw["max_side"]) or detect(*a, **kw)
    )
    restorer = Restorer(blind_weights, device="cpu")
    for side in (None, 96):
        restorer.restore(_gradient(), _options(blind_weights, upscale=1, detect_max_side=side))
    assert seen == [None, 96]


@pytest.mark.parametrize("side", [0, 63, 2048.0, True, "2048"])
def test_detect_max_side_must_be_a_real_side(side) -> None:
    with pytest.raises(ValueError, match="detect_max_side must be an integer >= 64"):
        RestoreOptions(detect_max_side=side)
    assert RestoreOptions(detect_max_side=2048).detect_max_side == 2048


# --- colour fix ------------------------------------------------------------------------------------------
CAST = torch.tensor([0.82, 0.97, 1.12]).view(1, 3, 1, 1)  # a generator that tints faces blue and darkens


def _tinting(restorer: Restorer, options: RestoreOptions, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``restorer``'s face network hand back its input faces tinted: a known colour shift."""
    real = restorer.store.face_network(options.version)
    tint = lambda x: ((x + 1) * CAST - 1.12).clamp(-1, 1)  # noqa: E731
    tinting = dataclasses.replace(real, run=tint)
    monkeypatch.setattr(restorer.store, "face_network", lambda spec: tinting)


def _aligned_face(size: int = 64) -> np.ndarray:
    face = cv2.imread(str(Path(__file__).resolve().parents[1] / "examples" / "astronaut_lowres.png"))
    return cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)


def test_no_colour_fix_is_the_generators_output_bit_for_bit(blind_weights: Path) -> None:
    """``color_fix="none"`` (the default) adds nothing: the face is the network's output, rounded."""
    face = _aligned_face()
    net = load_generator(blind_weights / "tiny")[0]
    with torch.no_grad():
        x = torch.from_numpy(face[None]).permute(0, 3, 1, 2).flip(1).float() / 255.0  # BGR → RGB
        out = net((x - 0.5) / 0.5, return_rgb=False)[0].clamp(-1, 1)
    expected = ((out + 1) / 2 * 255.0).round().flip(1).permute(0, 2, 3, 1).to(torch.uint8)[0].numpy()
    restorer = Restorer(blind_weights, device="cpu", bf16=False)
    for options in (_options(blind_weights, aligned=True, upscale=1), _options(blind_weights, aligned=True,
                    upscale=1, color_fix="none")):  # fmt: skip
        result = restorer.restore(face, options)
        np.testing.assert_array_equal(result.restored_faces[0], expected)
        np.testing.assert_array_equal(result.image, expected)


@pytest.mark.parametrize("fix", ["wavelet", "adain"])
def test_colour_fix_undoes_a_tint_on_the_aligned_path(
    blind_weights: Path, monkeypatch: pytest.MonkeyPatch, fix: str
) -> None:
    face = cv2.resize(_aligned_face(), (96, 96))  # bigger than the model: shrunk to 64 first, as the crop
    restorer = Restorer(blind_weights, device="cpu")
    options = _options(blind_weights, aligned=True, upscale=1)
    _tinting(restorer, options, monkeypatch)
    crop = restorer.restore(face, options).cropped_faces[0]
    tinted = restorer.restore(face, options).restored_faces[0]
    fixed = restorer.restore(face, dataclasses.replace(options, color_fix=fix)).restored_faces[0]
    assert psnr(tinted, crop) < 22 and psnr(fixed, crop) > psnr(tinted, crop) + 7  # measured +9.9, +13


@pytest.mark.parametrize("fix", ["wavelet", "adain"])
def test_a_gray_photo_saved_in_colour_stays_gray_with_a_colour_fix(blind_weights: Path, fix: str) -> None:
    """ "It cannot add colour an input does not have": a gray photo of three equal channels kept the colour
    the generator gave its faces' fine detail (the wavelet fix takes only the coarse colour)."""
    gray = cv2.cvtColor(
        cv2.cvtColor(cv2.resize(_aligned_face(), (64, 64)), cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR
    )
    restorer = Restorer(blind_weights, device="cpu")
    options = _options(blind_weights, aligned=True, upscale=1)
    plain = restorer.restore(gray, options).restored_faces[0].astype(int)
    assert np.abs(plain - plain.mean(2, keepdims=True)).max() > 5  # the generator gives it colour
    fixed = restorer.restore(gray, dataclasses.replace(options, color_fix=fix)).restored_faces[0]
    assert fixed.ndim == 3 and (fixed == fixed[:, :, :1]).all()


@pytest.mark.shared
@pytest.mark.parametrize("fix", ["wavelet", "adain"])
def test_colour_fix_takes_each_faces_own_input_colours(
    real_weights: Path, group: np.ndarray, monkeypatch: pytest.MonkeyPatch, fix: str
) -> None:
    restorer = Restorer(real_weights, device="cpu")
    options = _options(real_weights, upscale=1)
    _tinting(restorer, options, monkeypatch)
    tinted = restorer.restore(group, options)
    fixed = restorer.restore(group, dataclasses.replace(options, color_fix=fix))
    faces = zip(tinted.cropped_faces, tinted.restored_faces, fixed.restored_faces, strict=True)
    for crop, before, after in faces:
        assert psnr(after, crop) > psnr(before, crop) + 10
    plain = group.astype(int)  # the tint darkened the faces in the photo; the fix brings their light back
    box = tuple(slice(int(a), int(b)) for a, b in ((fixed.boxes[0, 1], fixed.boxes[0, 3]),
                (fixed.boxes[0, 0], fixed.boxes[0, 2])))  # fmt: skip
    assert abs(fixed.image[box].mean() - plain[box].mean()) < 0.3 * abs(
        tinted.image[box].mean() - plain[box].mean()
    )


@pytest.mark.shared
@pytest.mark.parametrize("fix", ["none", "wavelet", "adain"])
def test_strength_zero_returns_the_input_faces_exactly_with_any_colour_fix(
    real_weights: Path, group: np.ndarray, fix: str
) -> None:
    restorer = Restorer(real_weights, device="cpu")
    none = restorer.restore(group, _options(real_weights, upscale=1, strength=0.0, color_fix=fix))
    for crop, face in zip(none.cropped_faces, none.restored_faces, strict=True):
        np.testing.assert_array_equal(face, crop)
    full = restorer.restore(group, _options(real_weights, upscale=1, color_fix=fix))
    half = restorer.restore(group, _options(real_weights, upscale=1, strength=0.5, color_fix=fix))
    for crop, f5, f1 in zip(full.cropped_faces, half.restored_faces, full.restored_faces, strict=True):
        assert np.abs(f5 - (crop.astype(float) + f1) / 2).max() <= 1.0  # a blend of the fixed face


# --- face choice -----------------------------------------------------------------------------------------
def _paste_support(result, shape: tuple[int, ...], size: int = 64) -> np.ndarray:
    """Where the restored faces of ``result`` (upscale 1) may have been pasted: their warped squares."""
    support = np.zeros(shape[:2], np.uint8)
    for points in result.landmarks:
        inverse = inverse_affine(alignment_matrix(points, size), 1)
        support |= cv2.warpAffine(np.ones((size, size), np.uint8), inverse, (shape[1], shape[0]))
    return cv2.dilate(support, np.ones((5, 5), np.uint8)) > 0


def _box(row: np.ndarray) -> tuple[slice, slice]:
    x1, y1, x2, y2 = np.round(row[:4]).astype(int)
    return slice(y1, y2), slice(x1, x2)


@pytest.mark.shared
def test_faces_are_numbered_left_to_right_and_all_is_every_number(
    real_weights: Path, group: np.ndarray
) -> None:
    restorer = Restorer(real_weights, device="cpu")
    every = restorer.restore(group, _options(real_weights, upscale=1))
    assert sorted(every.face_numbers) == [1, 2, 3, 4]
    centres = (every.boxes[:, 0] + every.boxes[:, 2]) / 2
    assert [every.face_numbers[i] for i in np.argsort(centres)] == [1, 2, 3, 4]  # left to right
    listed = restorer.restore(group, _options(real_weights, upscale=1, faces="4,3,2,1"))
    np.testing.assert_array_equal(listed.image, every.image)
    assert every.selection.summary() == "4 faces found, 4 restored"


@pytest.mark.shared
@pytest.mark.parametrize("choice", ["2,4", "largest", "center", "min-size"])
def test_face_choice_restores_exactly_the_chosen_faces(
    real_weights: Path, group: np.ndarray, choice: str
) -> None:
    restorer = Restorer(real_weights, device="cpu")
    every = restorer.restore(group, _options(real_weights, upscale=1))
    number = dict(zip(every.face_numbers, every.boxes, strict=True))  # face number → its box
    sides = {n: min(b[2] - b[0], b[3] - b[1]) for n, b in number.items()}
    centre = np.array([group.shape[1] / 2, group.shape[0] / 2])
    if choice == "min-size":
        threshold = int(np.ceil(np.median(list(sides.values()))))
        kwargs, expected = {"min_face": threshold}, [n for n in sorted(sides) if sides[n] >= threshold]
    else:
        kwargs = {"faces": choice}
        expected = {
            "2,4": [2, 4],
            "largest": [
                max(number, key=lambda n: (number[n][2] - number[n][0]) * (number[n][3] - number[n][1]))
            ],
            "center": [
                min(number, key=lambda n: np.linalg.norm((number[n][:2] + number[n][2:4]) / 2 - centre))
            ],
        }[choice]
    assert 0 < len(expected) < 4
    result = restorer.restore(group, _options(real_weights, upscale=1, **kwargs))
    assert sorted(result.face_numbers) == expected and len(result.restored_faces) == len(expected)
    for n, face in zip(result.face_numbers, result.restored_faces, strict=True):  # the same faces as in "all"
        np.testing.assert_array_equal(face, every.restored_faces[every.face_numbers.index(n)])
    assert result.selection.found == 4 and len(result.selection.skipped) == 4 - len(expected)
    # Skipped faces are pasted back untouched: every pixel the chosen faces were not pasted on is the input's.
    support = _paste_support(result, group.shape)
    np.testing.assert_array_equal(result.image[~support], group[~support])
    for n, box in number.items():
        region = _box(box)
        if n in expected:
            assert np.abs(result.image[region].astype(int) - group[region]).mean() > 5
        else:
            assert (~support[region]).mean() > 0.5  # the check above covers most of this face


@pytest.mark.shared
def test_only_center_face_is_faces_center(real_weights: Path, group: np.ndarray) -> None:
    restorer = Restorer(real_weights, device="cpu")
    official = restorer.restore(group, _options(real_weights, only_center_face=True))
    spelled = restorer.restore(group, _options(real_weights, faces="center"))
    np.testing.assert_array_equal(official.image, spelled.image)
    assert official.face_numbers == spelled.face_numbers and len(official.face_numbers) == 1


def test_each_spec_is_resolved_once_and_its_checkpoint_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store resolves a spec and reads its checkpoint once, whatever asks (config first, then the
    network, then more requests): no second parse of a 340 MB file for its layout."""
    import gfp.store

    folder = save_tiny_generator(tmp_path / "tiny")
    counts = {"resolve": 0, "read": 0}

    def counted(name: str, real):  # noqa: ANN001, ANN202
        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            counts[name] += 1
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(gfp.store, "resolve", counted("resolve", gfp.store.resolve))
    monkeypatch.setattr(gfp.store, "generator_weights", counted("read", gfp.store.generator_weights))
    restorer = Restorer(device="cpu", backend="torch")
    options = RestoreOptions(version=str(folder), aligned=True, upscale=1, bg_upsampler="none")
    face = np.full((64, 64, 3), 128, np.uint8)
    for _ in range(2):
        restorer.restore(face, options)
    restorer.restore_faces([face], options)
    assert counts == {"resolve": 1, "read": 1}
    # other spellings of the same folder are resolved (once each) but read and built no more
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(folder)  # a link to the folder, and a link to the link
    (tmp_path / "link2").symlink_to(tmp_path / "link")
    spellings = ("tiny", "./tiny", f"{tmp_path}/../{tmp_path.name}/tiny", f"{tmp_path}//tiny", "link")
    spellings += ("link2",)
    for spelling in spellings:
        restorer.restore(face, dataclasses.replace(options, version=spelling))
    assert counts == {"resolve": 7, "read": 1}


def _diverged(folder: Path) -> Path:
    """A published tiny generator with one NaN weight (a diverged run): every face it gives is NaN."""
    from gfp.loading import save_pretrained

    config = tiny_config()
    net = tiny_generator(config)
    with torch.no_grad():
        net.conv_body_first.weight[0, 0, 0, 0] = float("nan")
    return save_pretrained(net, config, folder)


def test_a_generator_giving_nan_is_an_error_not_black_faces(tmp_path: Path) -> None:
    """One NaN weight (a diverged training run) makes every face NaN, which clamping turned into black
    faces pasted as restored, exit 0: it is a CheckpointError naming the model."""
    from gfp.loading import CheckpointError

    folder = _diverged(tmp_path / "diverged")
    options = RestoreOptions(version=str(folder), aligned=True, upscale=1, bg_upsampler="none")
    with pytest.raises(CheckpointError, match="diverged gives NaN or inf values: its weights are broken"):
        Restorer(device="cpu", backend="torch").restore(_gradient(64, 64), options)


def test_a_generator_fixed_after_giving_nan_serves_without_a_restart(tmp_path: Path) -> None:
    """The NaN error says the weights are broken: once the file is replaced, the same Restorer (the app's,
    shared by every user) restores with the new weights, as it finds missing weights once provided; it
    served the broken network it had cached until the app was restarted."""
    from gfp.loading import CheckpointError

    folder = _diverged(tmp_path / "model")
    options = RestoreOptions(version=str(folder), aligned=True, upscale=1, bg_upsampler="none")
    restorer = Restorer(device="cpu", backend="torch")
    with pytest.raises(CheckpointError, match="NaN or inf"):
        restorer.restore(_gradient(64, 64), options)
    save_tiny_generator(folder)  # the file fixed in place
    expected = Restorer(device="cpu", backend="torch").restore(_gradient(64, 64), options).image
    np.testing.assert_array_equal(restorer.restore(_gradient(64, 64), options).image, expected)


def test_wrong_argument_types_are_clear_errors(blind_weights: Path) -> None:
    """What a caller may get wrong is said, not taken for something else: bool("no") is True, Path("") is
    the current folder, a dict is no RestoreOptions."""
    from gfp.loading import WeightsNotFoundError, load_generator

    with pytest.raises(ValueError, match="bf16 must be True, False or None"):
        Restorer(blind_weights, device="cpu", bf16="no")  # type: ignore[arg-type]
    with pytest.raises(WeightsNotFoundError, match="no model given"):
        load_generator("")
    restorer = Restorer(blind_weights, device="cpu")
    with pytest.raises(TypeError, match="options must be a RestoreOptions, got dict"):
        restorer.restore(_gradient(8, 8), {"aligned": True})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="options must be a RestoreOptions, got dict"):
        restorer.restore(_gradient(8, 8), {})  # type: ignore[arg-type]  (empty: no stand-in for the defaults)
    for method in (restorer.prepare, restorer.batch_size, lambda o: restorer.restore_faces([], o)):
        with pytest.raises(TypeError, match="options must be a RestoreOptions, got dict"):
            method({"version": "1.4"})  # type: ignore[arg-type]


def test_a_detection_too_big_for_the_memory_left_is_refused_before_it_starts(
    blind_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Full-size detection of a big photo takes 64 (MobileNet) to 240 (ResNet-50) bytes a pixel, about
    9 GB at 40 MP: with less memory free it is refused before the detector runs, naming a max side that
    fits; the faces found do not change with the memory free (no silent shrink). That size then runs."""
    monkeypatch.setattr(faces, "available_memory", lambda: 20 * 2**20)
    restorer, img = Restorer(blind_weights, device="cpu"), np.zeros((768, 1024, 3), np.uint8)
    ran: list[tuple[int, ...]] = []
    detector = restorer.store.detector(_options(blind_weights).detector).run
    detector.register_forward_hook(lambda module, args, out: ran.append(tuple(args[0].shape)))
    with pytest.raises(faces.DetectionMemoryError, match=r"1024x768 pixels .* detect_max_side 512 or less"):
        restorer.restore(img, _options(blind_weights, upscale=1))
    assert ran == []
    result = restorer.restore(img, _options(blind_weights, upscale=1, detect_max_side=512))
    assert ran == [(1, 3, 384, 512)] and result.image.shape == img.shape


def test_an_output_too_big_for_the_memory_left_is_refused_before_any_work(
    blind_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upscaled photo whose background and paste-back would not fit is refused before any work (not
    after minutes of the background, with an allocator's error; nor once every face was detected and
    restored), naming the largest upscale that fits in the CLI's flag; that upscale then runs."""
    from gfp import background
    from gfp.cli import failure

    img = _gradient(60, 80)
    need = background.output_memory(img, 4, 1)
    monkeypatch.setattr(background, "available_memory", lambda: need // 3)
    restorer = Restorer(blind_weights, device="cpu")
    reported: list[str] = []
    with pytest.raises(background.OutputMemoryError) as refused:
        restorer.restore(
            img, _options(blind_weights, upscale=4), lambda done, total, stage: reported.append(stage)
        )
    assert reported == []  # no stage began
    line = failure(refused.value, "photo.png")
    assert line.startswith("not enough memory: a 320x240 restored image needs at least")
    assert "--upscale" in line
    fits = float(line.split("--upscale ")[1].split()[0])
    result = restorer.restore(img, _options(blind_weights, upscale=fits))
    assert result.image.shape[:2] == scaled_size(60, 80, fits)
