"""gfp.imageio: formats, EXIF orientation, alpha, gray, 16-bit, CMYK, size limit, bad files."""

from __future__ import annotations

import io
import os
import struct
import threading
import tracemalloc
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from gfp import imageio
from gfp.imageio import (
    ImageMemoryError,
    ImageTooLargeError,
    UnreadableImageError,
    as_written,
    encode_image,
    frame_count,
    read_icc_profile,
    read_image,
    read_image_bytes,
    write_image,
)


def _smooth_bgr(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth colour image (lossy codecs keep it close) with an asymmetric layout."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp", ".webp", ".jpg"])
@pytest.mark.parametrize("layout", ["bgr", "gray", "bgra"])
def test_round_trip(tmp_path: Path, ext: str, layout: str) -> None:
    bgr = _smooth_bgr()
    img = {"bgr": bgr, "gray": bgr[:, :, 1].copy(), "bgra": np.dstack([bgr, bgr[:, :, 0]])}[layout]
    out = read_image(write_image(tmp_path / f"x{ext}", img, quality=100))
    lossless = ext in (".png", ".tif", ".bmp", ".webp")  # webp at quality 100 is lossless
    expected = img
    if ext == ".jpg" and layout == "bgra":  # no alpha in JPEG: composited over white
        a = img[:, :, 3:].astype(np.float64) / 255
        expected = np.round(img[:, :, :3] * a + 255 * (1 - a)).astype(np.uint8)
    if ext == ".webp" and layout == "gray":  # WebP has no gray mode
        expected = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    assert out.shape == expected.shape and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - expected.astype(int))
    if ext == ".webp" and layout == "bgra":  # libwebp may change the colour of fully transparent pixels
        diff = diff[img[:, :, 3] > 0]
    if lossless:
        assert diff.max() == 0
    else:
        assert diff.mean() < 3


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("channels", [0, 3, 4])
def test_16bit_stays_16bit(tmp_path: Path, ext: str, channels: int) -> None:
    rng = np.random.default_rng(1)
    shape = (20, 30) if channels == 0 else (20, 30, channels)
    img = rng.integers(0, 65536, shape, dtype=np.uint16)
    out = read_image(write_image(tmp_path / f"x{ext}", img))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, img)


def _peak_bytes(work: object) -> int:
    """The most bytes Python and NumPy held at once while ``work()`` ran, above what they held before."""
    tracemalloc.start()
    try:
        work()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_what_an_8bit_format_holds_is_made_without_whole_image_float_copies() -> None:
    """16-bit rounded to 8-bit, and BGRA composited over white for JPEG, as before (every value, every
    colour and alpha), without float copies of the whole image: a 40 MP BGRA result's JPEG and its
    preview took 2.4 GB (16-bit) and 1.5 GB (8-bit) above the image itself."""
    wide = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    np.testing.assert_array_equal(as_written(wide, ".jpg"), np.round(wide / 257.0).astype(np.uint8))
    colour, alpha = np.meshgrid(np.arange(256), np.arange(256))
    bgra = np.dstack([colour, 255 - colour, colour // 2, alpha]).astype(np.uint8)
    a = bgra[:, :, 3:].astype(np.float32) / 255
    over_white = np.round(bgra[:, :, :3].astype(np.float32) * a + 255 * (1 - a)).astype(np.uint8)
    np.testing.assert_array_equal(as_written(bgra, ".jpg"), over_white)

    big = np.zeros((1000, 1000, 4), np.uint16)
    assert _peak_bytes(lambda: as_written(big, ".webp")) < 2 * big.size  # the 8-bit result, and a little
    small = big.astype(np.uint8)
    assert _peak_bytes(lambda: as_written(small, ".jpg")) < 4 * small.size


@pytest.mark.parametrize("ext", [".jpg", ".webp", ".bmp"])
def test_16bit_to_8bit_formats_scales_down(tmp_path: Path, ext: str) -> None:
    img8 = _smooth_bgr()
    out = read_image(write_image(tmp_path / f"x{ext}", img8.astype(np.uint16) * 257, quality=100))
    assert out.dtype == np.uint8
    assert np.abs(out.astype(int) - img8.astype(int)).mean() < 3


def test_matches_cv2_imread_layout(tmp_path: Path) -> None:
    img = np.dstack([_smooth_bgr(), np.full((48, 64), 7, np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), img)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), cv2.imread(str(tmp_path / "a.png"), -1))


def _with_orientation(img_rgb: np.ndarray, fmt: str, orientation: int, **kw) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(img_rgb).save(buf, fmt, exif=exif.tobytes(), **kw)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil_lossless(orientation: int) -> None:
    rgb = _smooth_bgr(30, 50)[:, :, ::-1].copy()
    data = _with_orientation(rgb, "PNG", orientation)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))[:, :, ::-1]
    out = read_image_bytes(data)
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("kind", ["tiff", "tiff16", "jpeg"])
def test_orientation_matches_pil_in_tiff_and_jpeg(kind: str, orientation: int) -> None:
    """OpenCV's TIFF decoder turns the pixels by the Orientation tag itself: they must be turned once."""
    rgb = _smooth_bgr(30, 50)[:, :, ::-1].copy()
    image = Image.fromarray(rgb)
    if kind == "tiff16":  # 16-bit gray, values that 8 bits cannot hold
        image = Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257 + 3)
    data = _with_orientation(np.asarray(image), "JPEG" if kind == "jpeg" else "TIFF", orientation)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    expected = expected[:, :, ::-1] if expected.ndim == 3 else expected
    out = read_image_bytes(data)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    if kind == "jpeg":  # decoders may round differently
        assert np.abs(out.astype(int) - expected.astype(int)).max() <= 2
    else:
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_an_orientation_stored_as_a_long_turns_a_tiff_once(orientation: int) -> None:
    """The TIFF spec's Orientation is a SHORT, but writers may store a LONG, which libtiff (so OpenCV) reads
    too: such files were turned twice."""
    from gfp.imageio import _EXIF_ORIENTATION, _tiff_header

    rgb = _smooth_bgr(30, 50)[:, :, ::-1].copy()
    data = bytearray(_with_orientation(rgb, "TIFF", orientation))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(bytes(data)))))[:, :, ::-1]
    tiff = _tiff_header(bytes(data))
    assert tiff is not None and tiff.order == "<"  # little-endian: the SHORT's value reads as the same LONG
    entry = tiff.entries[_EXIF_ORIENTATION][2] - 8  # the entry's start: tag, then its type
    struct.pack_into("<H", data, entry + 2, 4)
    assert _tiff_header(bytes(data)).entries[_EXIF_ORIENTATION][:2] == (4, 1)
    np.testing.assert_array_equal(read_image_bytes(bytes(data)), expected)


def test_a_tiff_of_a_layout_no_decoder_reads_is_said_to_be_one() -> None:
    """16-bit gray with alpha: neither Pillow nor OpenCV decodes it; it was called 'not an image'."""
    tifffile = pytest.importorskip("tifffile")
    buf = io.BytesIO()
    gray_alpha = np.zeros((8, 6, 2), np.uint16)
    tifffile.imwrite(buf, gray_alpha, photometric="minisblack", extrasamples=[2])
    with pytest.raises(UnreadableImageError, match=r"a TIFF that cannot be read here \(2 samples of 16 bits"):
        read_image_bytes(buf.getvalue(), name="la16.tif")


def test_orientation_of_16bit_colour_and_tiled_tiff() -> None:
    tifffile = pytest.importorskip("tifffile")
    rgb = np.random.default_rng(2).integers(0, 65536, (32, 48, 3), dtype=np.uint16)
    for tile in (None, (16, 16)):
        buf = io.BytesIO()
        tag = [(0x0112, "H", 1, 6, True)]  # rotate 90 degrees clockwise
        tifffile.imwrite(buf, rgb, photometric="rgb", compression="zlib", tile=tile, extratags=tag)
        expected = np.rot90(rgb[:, :, ::-1], -1)
        np.testing.assert_array_equal(read_image_bytes(buf.getvalue()), expected)
        gray = (rgb[:, :, 0] >> 8).astype(np.uint8)  # 8-bit tiles: OpenCV turned only some of the way
        buf = io.BytesIO()
        tifffile.imwrite(buf, gray, compression="zlib", tile=tile, extratags=tag)
        np.testing.assert_array_equal(read_image_bytes(buf.getvalue()), np.rot90(gray, -1))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_jpeg(tmp_path: Path, orientation: int) -> None:
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:20, :30] = (255, 0, 0)  # red top-left quadrant marks where "up" went
    (tmp_path / "o.jpg").write_bytes(_with_orientation(rgb, "JPEG", orientation, quality=95))
    out = read_image(tmp_path / "o.jpg")
    red = (out[:, :, 2] > 200) & (out[:, :, 1] < 60)
    if orientation == 3:  # rotated 180: red quadrant at bottom-right
        assert out.shape[:2] == (40, 60) and red[30, 45] and not red[10, 15]
    elif orientation == 6:  # rotate 90 cw: red at top-right, portrait
        assert out.shape[:2] == (60, 40) and red[10, 30] and not red[10, 10]
    else:  # 8: rotate 90 ccw: red at bottom-left
        assert out.shape[:2] == (60, 40) and red[50, 10] and not red[10, 10]


def test_cmyk_jpeg_and_tiff_become_bgr(tmp_path: Path) -> None:
    rgb = _smooth_bgr()[:, :, ::-1].copy()
    for fmt, ext in (("JPEG", ".jpg"), ("TIFF", ".tif")):
        Image.fromarray(rgb).convert("CMYK").save(tmp_path / f"c{ext}", fmt, quality=95)
        out = read_image(tmp_path / f"c{ext}")
        assert out.shape == (48, 64, 3) and out.dtype == np.uint8
        expected = np.asarray(Image.open(tmp_path / f"c{ext}").convert("RGB"))[:, :, ::-1]
        assert np.abs(out.astype(int) - expected.astype(int)).max() <= 2, fmt


def _raw_tiff(pixels: np.ndarray, separate: bool) -> bytes:
    """An uncompressed RGB TIFF of any sample type, one strip a plane (PlanarConfiguration 2) or one strip
    (Pillow writes neither for 16-bit or float colour)."""
    h, w, n = pixels.shape
    little = pixels.astype(pixels.dtype.newbyteorder("<"))
    strips = [little[:, :, c].tobytes() for c in range(n)] if separate else [little.tobytes()]
    tags = {  # tag: (type, values); type 3 = SHORT, 4 = LONG
        256: (4, (w,)), 257: (4, (h,)), 258: (3, (pixels.itemsize * 8,) * n), 259: (3, (1,)),
        262: (3, (2,)), 273: (4, (0,) * len(strips)), 277: (3, (n,)), 278: (4, (h,)),
        279: (4, tuple(len(s) for s in strips)), 284: (3, (2 if separate else 1,)),
        339: (3, (3 if pixels.dtype.kind == "f" else 1,) * n),
    }  # fmt: skip
    size = {3: 2, 4: 4}
    extra_at = 8 + 2 + 12 * len(tags) + 4  # values longer than 4 bytes go after the directory
    at = extra_at + sum(len(v) * size[k] for k, v in tags.values() if len(v) * size[k] > 4)
    tags[273] = (4, tuple(at + sum(len(s) for s in strips[:i]) for i in range(len(strips))))
    directory, extra = struct.pack("<H", len(tags)), b""
    for tag, (kind, values) in tags.items():
        packed = struct.pack(f"<{len(values)}{'H' if kind == 3 else 'I'}", *values)
        if len(packed) > 4:
            packed, extra = struct.pack("<I", extra_at + len(extra)), extra + packed
        directory += struct.pack("<HHI", tag, kind, len(values)) + packed.ljust(4, b"\0")
    return b"II*\0" + struct.pack("<I", 8) + directory + struct.pack("<I", 0) + extra + b"".join(strips)


def test_16bit_tiff_in_separate_planes_is_refused_not_garbled(tmp_path: Path) -> None:
    rgb = np.random.default_rng(3).integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    (tmp_path / "planes.tif").write_bytes(_raw_tiff(rgb, separate=True))
    with pytest.raises(UnreadableImageError, match=r"planes.tif: 16-bit TIFF with separate colour planes"):
        read_image(tmp_path / "planes.tif")
    rgb8 = (rgb >> 8).astype(np.uint8)  # 8-bit planes are decoded
    np.testing.assert_array_equal(read_image_bytes(_raw_tiff(rgb8, separate=True)), rgb8[:, :, ::-1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_colour_tiff_is_named_as_such(tmp_path: Path, dtype: type) -> None:
    """Pillow cannot open float colour TIFFs: the error must name the pixel type, as for float gray."""
    (tmp_path / "float.tif").write_bytes(_raw_tiff(np.zeros((6, 8, 3), dtype), separate=False))
    name = np.dtype(dtype).name
    with pytest.raises(UnreadableImageError, match=rf"float.tif: unsupported pixel type {name} \(only 8-"):
        read_image(tmp_path / "float.tif")
    Image.fromarray(np.zeros((6, 8), np.float32)).save(tmp_path / "gray.tif")
    with pytest.raises(UnreadableImageError, match=r"gray.tif: unsupported pixel type float32 \(only 8-"):
        read_image(tmp_path / "gray.tif")
    uint16 = np.random.default_rng(4).integers(
        0, 65536, (6, 8, 3), dtype=np.uint16
    )  # the helper's files are valid
    np.testing.assert_array_equal(read_image_bytes(_raw_tiff(uint16, separate=False)), uint16[:, :, ::-1])


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_too_large_refused_from_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The file has a header and no pixel data at all: refusing it proves nothing was decoded.
    def no_decode(*args, **kwargs):
        raise AssertionError("decoded an image that the header already refused")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    (tmp_path / "bomb.png").write_bytes(_png_header_only(8000, 6000))  # 48 MP > default 40 MP
    with pytest.raises(ImageTooLargeError, match="bomb.png"):
        read_image(tmp_path / "bomb.png")
    (tmp_path / "just.png").write_bytes(_png_header_only(1282, 722))  # 0.9256 MP against 0.9216
    with pytest.raises(
        ImageTooLargeError, match=r"just.png: 1282x722 = 0.93 MP is above the limit of 0.92 MP;"
    ):
        read_image(tmp_path / "just.png", max_pixels=921_600)
    (tmp_path / "huge.png").write_bytes(_png_header_only(100_000, 100_000))  # above PIL's hard limit
    for limit in (None, 500_000_000):  # PIL stops first: its limit is the one said
        with pytest.raises(ImageTooLargeError, match=r"huge.png: 10000.0 MP is above the limit of 179.0 MP;"):
            read_image(tmp_path / "huge.png", max_pixels=limit)
    with pytest.raises(ImageTooLargeError) as err:
        read_image(tmp_path / "just.png", max_pixels=921_600)
    assert (err.value.pixels, err.value.limit) == (1282 * 722, 921_600)  # for callers' own words
    # our own limit's words, not PIL's ("could be decompression bomb DOS attack"), where PIL stops first
    with pytest.raises(ImageTooLargeError, match=r"huge.png: 10000.0 MP is above the limit of 40.0 MP;"):
        read_image(tmp_path / "huge.png")


def test_max_pixels_configurable(tmp_path: Path) -> None:
    path = write_image(tmp_path / "s.png", _smooth_bgr(20, 30))
    assert read_image(path, max_pixels=600).shape == (20, 30, 3)
    with pytest.raises(ImageTooLargeError, match="limit"):
        read_image(path, max_pixels=599)


@pytest.mark.parametrize(
    "content", [b"", b"definitely not an image", b"\x89PNG\r\n\x1a\n garbage after the signature"]
)
def test_unreadable_names_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(UnreadableImageError, match="bad.png"):
        read_image(tmp_path / "bad.png")


def test_truncated_and_missing(tmp_path: Path) -> None:
    data = encode_image(_smooth_bgr(), ".png")
    (tmp_path / "cut.png").write_bytes(data[:60])
    with pytest.raises(UnreadableImageError, match="cut.png"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(UnreadableImageError, match="nope.png"):
        read_image(tmp_path / "nope.png")


@pytest.mark.parametrize(
    ("layout", "depth", "need"),
    [
        ((1000, 2000, 3), np.uint8, "11 MiB"),
        ((1000, 2000, 3), np.uint16, "23 MiB"),
        ((1000, 2000, 4), np.uint8, "15 MiB"),
        ((1000, 2000, 4), np.uint16, "31 MiB"),
        ((1000, 2000), np.uint8, "4 MiB"),
        ((1000, 2000), np.uint16, "8 MiB"),
    ],
)
def test_a_decode_that_would_not_fit_is_refused_from_the_header_saying_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: tuple[int, ...], need: str, depth: type
) -> None:
    """Under a cgroup's or ``ulimit -v``'s limit, the decoders' errors for a big photo read as a corrupt file
    (or OpenCV's "Insufficient memory"): refused before decoding, from the header's size, saying what it
    needs and what is free; with room enough it is read."""
    img = np.zeros(layout, depth)
    cv2.imwrite(str(tmp_path / "big.png"), img)
    monkeypatch.setattr(imageio, "available_memory", lambda: 3 * 2**20)
    with pytest.raises(ImageMemoryError) as caught:
        read_image(tmp_path / "big.png")
    assert str(caught.value) == (
        f"{tmp_path / 'big.png'}: not enough memory: decoding its 2000x1000 pixels (2.0 MP) needs about "
        f"{need}, 3 MiB is free: free some memory or downscale it first"
    )
    monkeypatch.setattr(imageio, "available_memory", lambda: img.nbytes * 2)
    np.testing.assert_array_equal(read_image(tmp_path / "big.png"), img)


@pytest.mark.parametrize("mode", ["L", "I;16", "1"])
def test_a_gray_png_with_a_transparent_colour_is_sized_as_the_gray_it_decodes_to(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """A gray PNG's tRNS colour is no alpha channel in the decode (gray, as without it): it was sized as
    BGRA, four times its decode, and refused where it fitted."""
    gray = Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) % 2).convert(mode)
    buffer = io.BytesIO()
    gray.save(buffer, "PNG", transparency=1)
    wide = 2 if mode == "I;16" else 1
    monkeypatch.setattr(imageio, "available_memory", lambda: 2 * 64 * 48 * wide)  # the decode's 2x, no more
    img = read_image_bytes(buffer.getvalue())
    assert img.shape == (48, 64) and img.itemsize == wide


@pytest.mark.parametrize("failure", [MemoryError(), OSError("out of memory when reading image file")])
def test_a_decode_that_runs_out_of_memory_says_memory_not_corrupt(
    monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    """PIL's MemoryError, or its decoder's own "out of memory" OSError, was said "corrupt or truncated
    image": a user would throw the photo away. (OpenCV's decoder prints its failure and gives None, so PIL
    decodes next; a really corrupt file still says corrupt: test_a_damaged_png_prints_nothing_of_libpng.)"""
    monkeypatch.setattr(cv2, "imdecode", lambda *_: None)

    def load(self: Image.Image) -> None:
        raise failure

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(ImageMemoryError, match="^a.png: not enough memory: decoding its 64x48 pixels "):
        read_image_bytes(encode_image(_smooth_bgr(), ".png"), name="a.png")


def test_opencvs_insufficient_memory_says_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenCV's own error for an allocation that failed ("(-4:Insufficient memory) Failed to allocate ...
    bytes in function 'OutOfMemoryError'", seen under ``ulimit -v``) is said as memory, naming the file."""
    error = cv2.error("(-4:Insufficient memory) Failed to allocate 9216 bytes in function 'OutOfMemoryError'")
    error.code = cv2.Error.StsNoMem

    def imdecode(*_: object) -> None:
        raise error

    monkeypatch.setattr(cv2, "imdecode", imdecode)
    with pytest.raises(ImageMemoryError, match=r"^a.png: not enough memory: decoding .* ran out of it \("):
        read_image_bytes(encode_image(_smooth_bgr(), ".png"), name="a.png")


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (struct.pack(">I", 24) + b"ftypheic" + bytes(4) + b"mif1heic" + bytes(64), "HEIC/HEIF"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="9"/>', "SVG"),
    ],
    ids=["heic", "svg"],
)
def test_a_known_format_no_decoder_opens_is_named_not_called_corrupt(
    tmp_path: Path, content: bytes, kind: str
) -> None:
    """An iPhone's HEIC photo is an image, not a corrupt file: the message says what to convert it to."""
    (tmp_path / "IMG_0001.heic").write_bytes(content)
    with pytest.raises(UnreadableImageError, match=f"IMG_0001.heic: {kind}.*save it as JPEG or PNG"):
        read_image(tmp_path / "IMG_0001.heic")


def test_frame_count_of_animations_and_pages(tmp_path: Path) -> None:
    """read_image decodes the first frame only; frame_count lets its callers say so."""
    frames = [Image.fromarray(_smooth_bgr(seed=seed)) for seed in range(3)]
    for name in ("anim.gif", "anim.webp", "anim.png", "pages.tif"):
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:])
        assert frame_count(tmp_path / name) == 3, name
        assert read_image(tmp_path / name).shape[:2] == (48, 64)
    frames[0].save(tmp_path / "still.gif")
    frames[0].save(tmp_path / "still.jpg")
    assert frame_count(tmp_path / "still.gif") == frame_count(tmp_path / "still.jpg") == 1
    assert frame_count(tmp_path / "missing.gif") == 1


def test_an_opaque_animated_gif_is_read_without_alpha() -> None:
    """Pillow (and ffmpeg) write an animation's later frames with a transparent colour, for the pixels that
    do not change; OpenCV then gave the opaque first frame an alpha channel, and the output was RGBA."""
    frames = [_smooth_bgr(seed=0), _smooth_bgr(seed=0)]
    frames[1][10:20, 10:30] = 0  # the second frame changes a part only
    buf = io.BytesIO()
    first, *rest = (Image.fromarray(f[:, :, ::-1]).convert("P") for f in frames)
    first.save(buf, "GIF", save_all=True, append_images=rest)
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))[:, :, ::-1]
    np.testing.assert_array_equal(read_image_bytes(buf.getvalue()), expected)


@pytest.mark.parametrize("used", [True, False])
def test_a_gif_frame_that_declares_a_transparent_colour_keeps_its_alpha(used: bool) -> None:
    """As a PNG's alpha (or palette transparency) is kept when every pixel is opaque, so is a GIF frame's."""
    index = (np.arange(48 * 64).reshape(48, 64) % 16).astype(np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(bytes(range(256)) * 3)
    buf = io.BytesIO()
    image.save(buf, "GIF", transparency=0 if used else 200, optimize=False)
    img = read_image_bytes(buf.getvalue())
    assert img.shape == (48, 64, 4)
    np.testing.assert_array_equal(img[:, :, 3] == 0, (index == 0) & used)


def _damaged_png(damage: str) -> tuple[bytes, np.ndarray]:
    """A PNG of a smooth image damaged as ``damage`` says (its first IDAT's CRC, its first IDAT's data, cut
    in half: libpng is silent on a file of one IDAT cut short, and this one has three)."""
    bgr = _smooth_bgr(96, 128)
    data = bytearray(encode_image(bgr, ".png"))
    at = data.find(b"IDAT")
    (length,) = struct.unpack_from(">I", data, at - 4)
    if damage == "cut":
        return bytes(data[: len(data) // 2]), bgr
    data[at + 4 + (length if damage == "crc" else length // 2)] ^= 0x10
    return bytes(data), bgr


@pytest.mark.parametrize("damage", ["crc", "data", "cut"])
def test_a_damaged_png_prints_nothing_of_libpng(capfd: pytest.CaptureFixture[str], damage: str) -> None:
    """libpng printed "libpng error: IDAT: CRC error" on stderr itself, amid the CLI's progress bar: a PNG
    whose pixels are intact is read, one whose pixels are not is refused in our message alone."""
    data, bgr = _damaged_png(damage)
    if damage == "crc":
        np.testing.assert_array_equal(read_image_bytes(data, name="a.png"), bgr)
    else:
        with pytest.raises(UnreadableImageError, match="^a.png: corrupt or truncated image"):
            read_image_bytes(data, name="a.png")
    assert "libpng" not in capfd.readouterr().err


def _with_damaged_chunk(png: bytes, kind: bytes, body: bytes, before: bytes) -> bytes:
    """``png`` with a chunk ``kind`` put in before its first chunk of type ``before``, its CRC wrong."""
    crc = zlib.crc32(kind + body) ^ 1
    at = png.find(before) - 4
    return png[:at] + struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc) + png[at:]


@pytest.mark.parametrize("kind", [b"tEXt", b"zTXt", b"iTXt", b"tIME", b"pHYs"])
@pytest.mark.parametrize("before", [b"IDAT", b"IEND"])
def test_a_damaged_ancillary_png_chunk_is_skipped(
    capfd: pytest.CaptureFixture[str], kind: bytes, before: bytes
) -> None:
    """libpng and browsers skip an ancillary chunk whose CRC does not match and show the picture; PIL
    refused the whole file when the chunk came before the pixels (and its colour profile was lost), and
    decoded one whose chunk came after them itself, 16-bit colour as 8-bit. Orientation and profile stay."""
    bodies = {b"tIME": struct.pack(">HBBBBB", 2024, 1, 2, 3, 4, 5), b"pHYs": struct.pack(">IIB", 1, 1, 1)}
    body = bodies.get(kind, b"Comment\0\0\0\0\0damaged")
    bgr = _smooth_bgr()
    clean = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(bgr[:, :, ::-1]).save(clean, "PNG", icc_profile=_rgb_profile(), exif=exif.tobytes())
    data = _with_damaged_chunk(clean.getvalue(), kind, body, before)
    bgr16 = bgr.astype(np.uint16) * 257 + 1
    data16 = _with_damaged_chunk(encode_image(bgr16, ".png"), kind, body, before)
    capfd.readouterr()
    np.testing.assert_array_equal(read_image_bytes(data), read_image_bytes(clean.getvalue()))
    assert read_image_bytes(data).shape == (64, 48, 3)  # turned as the EXIF says
    assert read_icc_profile(data) == _rgb_profile() and frame_count(data) == 1
    got = read_image_bytes(data16)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, bgr16)
    assert "libpng" not in capfd.readouterr().err


@pytest.mark.parametrize("kind", [b"IHDR", b"PLTE"])
def test_a_damaged_critical_png_chunk_is_refused(capfd: pytest.CaptureFixture[str], kind: bytes) -> None:
    """A critical chunk whose CRC does not match is not skipped: the file is refused in our one line."""
    buf = io.BytesIO()
    Image.fromarray(_smooth_bgr()).convert("P").save(buf, "PNG")
    data = bytearray(buf.getvalue())
    at = data.find(kind)
    (length,) = struct.unpack_from(">I", data, at - 4)
    data[at + 4 + length] ^= 1
    with pytest.raises(UnreadableImageError, match=r"^a.png: [^\n]*$"):
        read_image_bytes(bytes(data), name="a.png")
    assert "libpng" not in capfd.readouterr().err


def _damaged_crc(png: bytes, kind: bytes, nth: int = 0) -> bytes:
    """``png`` with the CRC of its ``nth`` chunk of type ``kind`` made wrong."""
    at = -1
    for _ in range(nth + 1):
        at = png.index(kind, at + 1)
    (length,) = struct.unpack_from(">I", png, at - 4)
    data = bytearray(png)
    data[at + 4 + length] ^= 1
    return bytes(data)


@pytest.mark.parametrize(("kind", "nth"), [(b"acTL", 0), (b"fcTL", 0), (b"fcTL", 1), (b"fdAT", 0)])
def test_a_damaged_apng_chunk_reads_the_first_frame(
    capfd: pytest.CaptureFixture[str], kind: bytes, nth: int
) -> None:
    """An animation chunk is ancillary too: left out alone, a damaged fcTL of the first frame made the
    pixels no frame, and OpenCV's APNG reader gave the second frame; a later one's made libpng warn on
    stderr. The whole animation is left out: its first frame is read, as a still."""
    frames = [Image.fromarray(np.full((16, 16, 3), value, np.uint8)) for value in (10, 120, 240)]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])
    data = _damaged_crc(buf.getvalue(), kind, nth)
    capfd.readouterr()
    np.testing.assert_array_equal(read_image_bytes(data), np.full((16, 16, 3), 10, np.uint8))
    assert frame_count(data) in (1, 3)
    assert "libpng" not in capfd.readouterr().err


def test_a_png_chunk_damaged_in_its_type_or_length_is_refused(capfd: pytest.CaptureFixture[str]) -> None:
    """A chunk whose CRC does not match is not skipped as ancillary where the damage is what made it look
    so: an IDAT with its first letter's case flipped ("iDAT"), or a text chunk whose length field reaches
    over the pixels. libpng printed its error for the pixels left; the file is refused in our one line."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), np.uint8)).save(buf, "PNG")
    png = buf.getvalue()  # its pixels in more than one IDAT chunk: the second is damaged
    flipped = bytearray(png)
    flipped[png.index(b"IDAT", png.index(b"IDAT") + 1)] ^= 0x20
    text = _with_damaged_chunk(png, b"tEXt", b"Comment\0x", b"IDAT")
    at = text.index(b"tEXt") - 4
    over = bytearray(text)
    struct.pack_into(">I", over, at, text.index(b"IEND") - 4 - at - 12)  # its chunk ends where IEND begins
    for data in (bytes(flipped), bytes(over)):
        with pytest.raises(UnreadableImageError, match=r"^a.png: [^\n]*$"):
            read_image_bytes(data, name="a.png")
    err = capfd.readouterr().err
    assert "libpng" not in err and "WARN" not in err


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16"])
def test_a_png_colour_profile_prints_nothing_of_libpng(capfd: pytest.CaptureFixture[str], mode: str) -> None:
    """libpng checks a PNG's profile and printed its warnings itself ("iCCP: ... RGB color space not
    permitted on grayscale PNG", "known incorrect sRGB profile") amid the progress bar, for a file read well:
    the profile is not given to it, and the pixels and the profile read are those of the file."""
    from PIL import ImageCms

    rgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    bgr = _smooth_bgr()
    image = {
        "L": Image.fromarray(bgr[:, :, 1]),
        "RGB": Image.fromarray(bgr[:, :, ::-1]),
        "RGBA": Image.fromarray(np.dstack([bgr[:, :, ::-1], bgr[:, :, 0]])),
        "I;16": Image.fromarray(bgr[:, :, 1].astype(np.uint16) * 257),
    }[mode]
    plain, profiled = io.BytesIO(), io.BytesIO()
    image.save(plain, "PNG")
    image.save(profiled, "PNG", icc_profile=rgb)  # an RGB profile, in the gray PNGs too
    expected = cv2.imdecode(np.frombuffer(plain.getvalue(), np.uint8), cv2.IMREAD_UNCHANGED)
    capfd.readouterr()
    np.testing.assert_array_equal(read_image_bytes(profiled.getvalue()), expected)
    assert "libpng" not in capfd.readouterr().err
    assert read_icc_profile(profiled.getvalue()) == rgb


def test_a_png_with_a_colour_profile_above_1_mb_is_read(tmp_path: Path) -> None:
    """Pillow refuses an iCCP chunk above 1 MB by default: a JPEG's large LUT profile, written into our PNG
    output, made that output unreadable here."""
    profile = _rgb_profile()[:16] + b"RGB " + bytes(range(256)) * 8000  # 2 MB
    jpeg = encode_image(_smooth_bgr(), ".jpg", icc_profile=profile)
    out = write_image(tmp_path / "out.png", read_image_bytes(jpeg), icc_profile=read_icc_profile(jpeg))
    assert read_image(out).shape == (48, 64, 3) and read_icc_profile(out) == profile


def test_fallback_decoder_for_formats_cv2_lacks() -> None:
    rgb = _smooth_bgr()[:, :, ::-1].copy()
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("P").save(buf, "GIF")
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))[:, :, ::-1]
    np.testing.assert_array_equal(read_image_bytes(buf.getvalue()), expected)


def _rgb_profile() -> bytes:
    """A real RGB ICC profile (littleCMS's sRGB; a Display P3 or Adobe RGB one travels alike)."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp"])
@pytest.mark.parametrize("layout", ["bgr", "bgra", "bgr16"])
@pytest.mark.parametrize("quality", [90, 100])
def test_icc_profile_is_written_where_the_format_holds_one(
    tmp_path: Path, ext: str, layout: str, quality: int
) -> None:
    """OpenCV writes no colour profile: without the input's, a Display P3 photo is shown as sRGB."""
    profile, bgr = _rgb_profile(), _smooth_bgr()
    img = {"bgr": bgr, "bgra": np.dstack([bgr, bgr[:, :, 0]]), "bgr16": bgr.astype(np.uint16) * 257}[layout]
    Image.fromarray(bgr[:, :, ::-1]).save(tmp_path / "in.png", icc_profile=profile)
    assert (
        read_icc_profile(tmp_path / "in.png")
        == profile
        == read_icc_profile((tmp_path / "in.png").read_bytes())
    )
    out = write_image(tmp_path / f"out{ext}", img, quality, icc_profile=read_icc_profile(tmp_path / "in.png"))
    with Image.open(out) as im:
        assert im.info.get("icc_profile") == profile
        im.load()  # (still a valid file)
    np.testing.assert_array_equal(read_image(out), read_image_bytes(encode_image(img, ext, quality)))


def test_icc_profile_other_cases(tmp_path: Path) -> None:
    profile, bgr = _rgb_profile(), _smooth_bgr()
    large = profile[:16] + b"RGB " + bytes(range(256)) * 300  # 76 kB: three JPEG segments
    with Image.open(io.BytesIO(encode_image(bgr, ".jpg", icc_profile=large))) as im:
        assert im.info["icc_profile"] == large
    gray = profile[:16] + b"GRAY" + bytes(200)
    with Image.open(io.BytesIO(encode_image(bgr[:, :, 0].copy(), ".jpg", icc_profile=gray))) as im:
        assert im.info["icc_profile"] == gray
    for img, ext, wrong in (
        (bgr, ".jpg", gray),
        (np.dstack([bgr, bgr[:, :, 0]]), ".png", gray),  # a gray PNG with alpha is read (and written) BGRA
        (bgr[:, :, 0].copy(), ".png", profile),
        (bgr, ".tif", profile),
    ):
        assert read_icc_profile(encode_image(img, ext, icc_profile=wrong)) is None  # (TIFF holds none here)
    assert read_icc_profile(encode_image(bgr, ".bmp", icc_profile=profile)) is None
    assert read_icc_profile(encode_image(bgr, ".png")) is None
    assert read_icc_profile(b"not an image") is None and read_icc_profile(tmp_path / "missing.png") is None


def test_write_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot write"):
        write_image(tmp_path / "x.gifx", _smooth_bgr())
    with pytest.raises(ValueError, match="uint8 or uint16"):
        write_image(tmp_path / "x.png", _smooth_bgr().astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="quality"):
        write_image(tmp_path / "x.jpg", _smooth_bgr(), quality=0)
    assert not list(tmp_path.iterdir())


def test_write_creates_folders(tmp_path: Path) -> None:
    out = write_image(tmp_path / "a" / "b" / "x.png", _smooth_bgr())
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["x.png"]


def test_write_names_the_file_it_cannot_write_and_takes_the_longest_names(tmp_path: Path) -> None:
    """A folder in the way, or a folder that cannot be written to: the error names the output (not a
    temporary file). A name as long as a file name may be is written: its temporary name is cut to fit."""
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(IsADirectoryError, match="taken.png"):
        write_image(tmp_path / "taken.png", _smooth_bgr())
    assert list((tmp_path / "taken.png").iterdir()) == []
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if not os.access(locked, os.W_OK):  # (root writes anywhere)
        with pytest.raises(PermissionError, match=r"Permission denied: '.*locked/x.png'"):
            write_image(locked / "x.png", _smooth_bgr())
    name = "é" * 123 + ".png"  # 250 bytes in UTF-8
    out = write_image(tmp_path / name, _smooth_bgr())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["taken.png", "locked", name])
    assert read_image(out).shape == _smooth_bgr().shape


def test_real_photos_match_cv2_imread(shared_data: Path) -> None:
    """Real-world files (JPEG/PNG, colour/gray, assorted encoders) decode exactly as cv2.imread does."""
    photos = sorted((shared_data / "photos").iterdir(), key=lambda p: p.stat().st_size)[:16]
    assert photos
    for photo in photos:
        with Image.open(photo) as im:
            orientation = im.getexif().get(0x0112, 1)
            w, h = im.size
        ours = read_image(photo)
        assert ours.shape[:2] == ((w, h) if orientation in (5, 6, 7, 8) else (h, w)), photo.name
        if orientation == 1:
            expected = cv2.imread(str(photo), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(ours, expected, err_msg=photo.name)


def test_written_files_get_the_permissions_of_any_new_file(tmp_path: Path) -> None:
    """Outputs, downloads and published models are renamed into place from a temporary file, which must
    not stay owner-only (``tempfile.mkstemp``'s 0600) when the umask lets others read new files."""
    from gfp.atomic import atomic_path

    old = os.umask(0o022)
    try:
        image = write_image(tmp_path / "a.png", _smooth_bgr(8, 8))
        with atomic_path(tmp_path / "model.safetensors") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    for path in (image, tmp_path / "model.safetensors"):
        assert path.stat().st_mode & 0o777 == 0o644, (path, oct(path.stat().st_mode))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "model.safetensors"]  # no temp left


def test_reads_in_parallel_leave_the_warning_filters_as_they_were(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app reads uploads in parallel threads: one read's warning filters (PIL's size warning silenced)
    are the whole process's, so a read that began inside another's and ended after it left the filter on
    for good. A second read now waits for the first (given 0.5 s to get in beside it)."""
    data = encode_image(_smooth_bgr(), ".png")
    opened = Image.open
    inside = [threading.Event(), threading.Event()]
    may_end = [threading.Event(), threading.Event()]

    def slow_open(*args: object, **kwargs: object) -> Image.Image:
        n = 1 if inside[0].is_set() else 0
        inside[n].set()
        may_end[n].wait(10)
        return opened(*args, **kwargs)

    monkeypatch.setattr(Image, "open", slow_open)
    with warnings.catch_warnings():  # the filters as they were, for the next tests, even if this one fails
        before = list(warnings.filters)
        first = threading.Thread(target=read_icc_profile, args=(data,))
        first.start()
        assert inside[0].wait(10)
        second = threading.Thread(target=frame_count, args=(data,))
        second.start()
        overlapped = inside[1].wait(0.5)
        may_end[0].set()  # the first read ends first, the second after it
        first.join()
        may_end[1].set()
        second.join()
        after = list(warnings.filters)
    assert after == before
    assert not overlapped


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_tiff_with_a_straight_alpha_keeps_its_colours(tmp_path: Path, mode: str) -> None:
    """Pillow (and most editors) write TIFF alpha unassociated; OpenCV gave the colours multiplied by it,
    so a half-transparent orange came out half as bright."""
    rgba = np.zeros((6, 5, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = np.arange(5, dtype=np.uint8) * 60 + 10
    source = Image.fromarray(rgba, "RGBA").convert(mode)
    source.save(tmp_path / "cut.tif")
    expected = np.asarray(source.convert("RGBA"))
    got = read_image(tmp_path / "cut.tif")
    assert np.array_equal(cv2.cvtColor(got, cv2.COLOR_BGRA2RGBA), expected)


def test_a_16bit_tiff_with_a_straight_alpha_stays_16bit(tmp_path: Path) -> None:
    """OpenCV reads these as stored; Pillow would decode them to 8 bits."""
    tifffile = pytest.importorskip("tifffile")
    rgba = np.zeros((6, 5, 4), np.uint16)
    rgba[..., :3] = (60000, 30000, 1000)
    rgba[..., 3] = 32768
    tifffile.imwrite(tmp_path / "cut16.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    got = read_image(tmp_path / "cut16.tif")
    assert got.dtype == np.uint16 and got[0, 0].tolist() == [1000, 30000, 60000, 32768]


def test_errors_cross_processes() -> None:
    """Raised in a worker (Ray, a process pool), an error is pickled to the caller."""
    import pickle

    from gfp.imageio import ImageTooLargeError

    err = pickle.loads(pickle.dumps(ImageTooLargeError("x.png: 50 MP is above the limit", 50, 40)))
    assert (str(err), err.pixels, err.limit) == ("x.png: 50 MP is above the limit", 50, 40)
