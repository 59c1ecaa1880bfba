"""Read and write images in the layout ``cv2.imread(path, IMREAD_UNCHANGED)`` gives.

Arrays are HxW (gray), HxWx3 (BGR) or HxWx4 (BGRA), dtype uint8 or uint16, so the pipeline sees one
layout whatever the file format. On top of plain OpenCV decoding, :func:`read_image`

* refuses images above ``max_pixels`` from the header alone, before any pixel is decoded (decompression
  bombs), with :class:`ImageTooLargeError`;
* applies the EXIF orientation tag (phones store rotated JPEGs; cv2's IMREAD_UNCHANGED ignores the tag,
  except in TIFF, whose pixels OpenCV is made to decode as stored so that the tag is applied once);
* converts CMYK to BGR (OpenCV turns CMYK TIFF into BGRA with a fake opaque alpha; we drop it);
* refuses, from the header, an image whose decode would not fit in the memory left, and says memory for a
  decode that ran out of it (:class:`ImageMemoryError`): the decoders' own errors for that read as a
  corrupt file, and a user would throw a good photo away;
* raises :class:`UnreadableImageError` naming the file for missing, corrupt or non-image input.

PIL reads the header (size, format, mode, EXIF); OpenCV decodes, because it keeps 16-bit colour, which
PIL does not. PIL decodes only what OpenCV cannot (e.g. GIF).

The array carries no metadata: :func:`read_icc_profile` gives a file's ICC colour profile, which
:func:`write_image` puts back into PNG, JPEG and WebP files (OpenCV's encoders write none), so that a
photo tagged Display P3 or Adobe RGB is not shown as sRGB.
"""

from __future__ import annotations

import functools
import io
import os
import re
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from gfp.atomic import PARTIAL_SUFFIX, atomic_path
from gfp.memory import available_memory, size_text

DEFAULT_MAX_PIXELS = 40_000_000
"""Largest image (width x height) read by default: 40 MP, ~120 MB as uint8 BGR before any upscaling."""

WRITE_FORMATS = {".png": ".png", ".jpg": ".jpg", ".jpeg": ".jpg", ".webp": ".webp", ".bmp": ".bmp"}
WRITE_FORMATS |= {".tif": ".tiff", ".tiff": ".tiff"}

DECODE_FACTOR_OPENCV = 2
"""Peak memory of an OpenCV decode over the array it gives: measured 2.0-2.1x (JPEG, PNG 8- and 16-bit, gray,
BGRA; 12 and 40 MP), as the decoder's buffer and the returned array are both held."""
DECODE_FACTOR_PIL = 4
"""The same for PIL's decode (:func:`_decode_with_pil`): measured 3.0x (16-bit gray) to 4.7x (RGB, which
PIL holds at 4 bytes a pixel, then converts and copies twice)."""

_EXIF_ORIENTATION = 0x0112
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"}
"""ISO base media file brands of HEIF images (an iPhone's HEIC photos; AVIF where Pillow lacks it)."""
_FRAMED_FORMATS = {"GIF", "PNG", "WEBP", "TIFF"}
"""Formats whose further frames are an animation or pages (a JPEG's MPO frames are previews or depth)."""

# Pillow refuses a PNG whose colour profile (or a text chunk) is above 1 MB once decompressed: a LUT
# profile of a few MB, which write_image copies from a JPEG into a PNG, made our own output unreadable.
PngImagePlugin.MAX_TEXT_CHUNK = max(PngImagePlugin.MAX_TEXT_CHUNK, 16 * 2**20)
_TIFF_INTEGERS = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}
"""TIFF field types that hold unsigned integers (SHORT, LONG, LONG8): struct code and size."""


class ImageReadError(ValueError):
    """Base class for images that cannot be turned into an array; the message names the source."""


class UnreadableImageError(ImageReadError):
    """Missing, corrupt or not an image (or a pixel type this project does not handle)."""


class ImageTooLargeError(ImageReadError):
    """The header announces more pixels than allowed; raised before decoding.

    ``pixels`` (None when the header did not say) and ``limit`` let a program that offers no way to raise
    the limit (the app) say it in its own words: the message advises Python callers.
    """

    def __init__(self, message: str, pixels: int | None = None, limit: int | None = None) -> None:
        super().__init__(message)
        self.pixels = pixels
        self.limit = limit


class ImageMemoryError(ImageReadError, MemoryError):
    """Too little memory left to decode the image: refused from its header before decoding (``available``
    says what was free), or a decode that ran out of memory (``available`` None). Not a corrupt file.
    ``need`` is about what its decode takes, in bytes; ``width`` and ``height`` are the header's."""

    def __init__(self, name: str, width: int, height: int, need: int, available: int | None) -> None:
        what, about = f"decoding its {width}x{height} pixels ({width * height / 1e6:.1f} MP)", size_text(need)
        if available is None:
            what += f" ran out of it (it needs about {about})"
        else:
            what += f" needs about {about}, {size_text(available)} is free"
        super().__init__(f"{name}: not enough memory: {what}: free some memory or downscale it first")
        self.width, self.height, self.need, self.available = width, height, need, available


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as cv2 does with IMREAD_UNCHANGED, plus EXIF orientation and CMYK→BGR.

    ``max_pixels=None`` lifts our limit (PIL's own hard limit, ~179 MP, still applies).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UnreadableImageError(f"{path}: no such file") from None
    except OSError as exc:
        raise UnreadableImageError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    return read_image_bytes(data, max_pixels=max_pixels, name=str(path))


def read_image_bytes(
    data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str = "<image bytes>"
) -> np.ndarray:
    """Decode an encoded image held in memory (uploads); same rules as :func:`read_image`."""
    if max_pixels is not None and max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive or None, got {max_pixels}")
    if not data:
        raise UnreadableImageError(f"{name}: empty file")
    png_chunks = _png_chunks(data)
    header = _open_header(_png_kept(data, png_chunks) if png_chunks else data, name, max_pixels)
    width, height = header.size
    _check_size(width, height, max_pixels, name)
    if _separate_wide_planes(header):  # OpenCV decodes only the first plane, as garbage; PIL only 8 bits
        raise UnreadableImageError(
            f"{name}: 16-bit TIFF with separate colour planes (PlanarConfiguration 2) cannot be read; "
            "save it with interleaved colour channels (contiguous planar configuration) or as a 16-bit PNG"
        )

    # PIL where OpenCV multiplies a TIFF's colours by its alpha, or where libpng would print its own error
    # line (amid a progress bar) on a damaged PNG, then refuse it
    pil = _unassociated_alpha_tiff(header) or png_chunks is None
    need = _decoded_bytes(header, data) * (DECODE_FACTOR_PIL if pil else DECODE_FACTOR_OPENCV)
    available = available_memory()
    if available is not None and need > available:
        raise ImageMemoryError(name, width, height, need, available)
    try:
        return _decoded(data, header, png_chunks, pil, name, max_pixels)
    except MemoryError:  # numpy's, PIL's, or OpenCV's below: the memory, not the file
        raise ImageMemoryError(name, width, height, need, None) from None
    except cv2.error as exc:
        if exc.code != cv2.Error.StsNoMem:  # ("Insufficient memory")
            raise
        raise ImageMemoryError(name, width, height, need, None) from None


def _decoded(
    data: bytes, header: Image.Image, png_chunks: list | None, pil: bool, name: str, max_pixels: int | None
) -> np.ndarray:
    """The pixels of :func:`read_image_bytes`'s ``data`` (``header``: PIL's open file of it), decoded by PIL
    (``pil``) or OpenCV, in the cv2 layout, oriented as EXIF says."""
    if pil:
        img = _decode_with_pil(header, name)
    else:
        img = cv2.imdecode(np.frombuffer(_as_stored(data, png_chunks), np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:  # (also where OpenCV's decoder ran out of memory: it prints that and returns None)
            img = _decode_with_pil(header, name)
    if img.dtype not in (np.uint8, np.uint16):
        raise UnreadableImageError(f"{name}: unsupported pixel type {img.dtype} (only 8- and 16-bit images)")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if header.mode == "CMYK" and img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if _opaque_gif_frame(header, img):
        img = img[:, :, :3]
    _check_size(img.shape[1], img.shape[0], max_pixels, name)
    return np.ascontiguousarray(_apply_orientation(img, _orientation(header)))


def _decoded_bytes(header: Image.Image, data: bytes) -> int:
    """About the size of the array a decode of ``data`` gives, from PIL's ``header`` of it: its channels
    (gray, BGR, or BGRA for any alpha: a palette's or RGB's transparent colour is decoded as alpha, a gray
    one is not) and sample size (16-bit PNG and TIFF; PIL calls 16-bit RGB "RGB")."""
    width, height = header.size
    bands = len(header.getbands())
    keyed = header.mode in ("P", "RGB") and "transparency" in header.info
    channels = 4 if bands in (2, 4) or keyed else 3 if header.mode == "P" else bands
    wide = header.mode.startswith("I;16") or (header.format == "PNG" and data[24:25] == b"\x10")
    if header.format == "TIFF":
        wide = wide or max(_tag(header, 258, 8)) > 8
    return width * height * channels * (2 if wide else 1)


def read_icc_profile(source: str | os.PathLike | bytes) -> bytes | None:
    """The ICC colour profile embedded in an image file (a path or its bytes); None when it has none, or
    cannot be read (reading its pixels says why). Only the header is read."""
    try:
        with _no_bomb_warning(), _open_tolerant(source) as header:
            profile = header.info.get("icc_profile")
    except Exception:  # (PIL's errors for a file it cannot open are of many kinds)
        return None
    return bytes(profile) if profile else None


def _open_tolerant(source: str | os.PathLike | bytes) -> Image.Image:
    """PIL's header read of a file (a path or its bytes). PIL refuses a PNG with a damaged ancillary chunk
    before its pixels (a text or time chunk whose CRC does not match); it is opened again without that
    chunk, as :func:`read_image` reads it, so that its colour profile is not lost."""
    try:
        return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except UnidentifiedImageError:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        chunks = _png_chunks(data)
        if not chunks:
            raise
        return Image.open(io.BytesIO(_png_kept(data, chunks)))


_WARNINGS_LOCK = threading.Lock()


@contextmanager
def _no_bomb_warning() -> Iterator[None]:
    """PIL's DecompressionBombWarning silenced in the block (we apply our own limit), one thread at a time:
    ``warnings.catch_warnings`` puts back the whole process's filter list as it found it, so two requests'
    blocks interleaved (the app reads uploads in parallel) left the filter on for good, or took it off
    while the other was still reading."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _open_header(data: bytes, name: str, max_pixels: int | None) -> Image.Image:
    """Parse only the header; PIL decodes nothing until asked."""
    try:
        with _no_bomb_warning():
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # PIL's hard limit, met before it gives the size
        found = re.search(r"\((\d+) pixels\)", str(exc))
        hard = Image.MAX_IMAGE_PIXELS * 2
        limit = hard if max_pixels is None else min(max_pixels, hard)  # PIL's may be the lower one
        size, most = megapixels(int(found[1]) if found else 0, limit)
        what = f"{size} MP" if found else "the image"
        raise ImageTooLargeError(
            f"{name}: {what} is above the limit of {most} MP; downscale it first",
            int(found[1]) if found else None,
            limit,
        ) from None
    except UnidentifiedImageError:  # its text names PIL's in-memory buffer, not the file
        pixel_type = _tiff_pixel_type(data)  # PIL opens no float colour TIFF: say why it is refused
        if pixel_type is not None:
            raise UnreadableImageError(
                f"{name}: unsupported pixel type {pixel_type} (only 8- and 16-bit images)"
            ) from None
        tiff = _tiff_header(data)
        if tiff is not None:  # a TIFF, of a layout Pillow does not open (16-bit gray with alpha, say)
            try:
                layout = f"{tiff.values(data, 277)[0]} samples of {max(tiff.values(data, 258))} bits a pixel"
            except (KeyError, struct.error, ValueError, IndexError):
                layout = "its layout"
            raise UnreadableImageError(
                f"{name}: a TIFF that cannot be read here ({layout}, or a damaged file); save it as PNG"
            ) from None
        kind = _unsupported_kind(data)
        why = f"{kind} images cannot be read here; save it as JPEG or PNG" if kind else None
        raise UnreadableImageError(
            f"{name}: {why or 'not an image or corrupt (no image format recognised)'}"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImageError(f"{name}: not an image or corrupt ({exc})") from None


def _unsupported_kind(data: bytes) -> str | None:
    """The format of an image no decoder here opens (HEIC, SVG), so that it is not called corrupt."""
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "HEIC/HEIF"
    if re.match(rb"(\s|<\?xml[^>]*>|<!--.*?-->|<!DOCTYPE[^>]*>)*<svg[\s>]", data[:4096], re.DOTALL):
        return "SVG (vector)"
    return None


def frame_count(source: str | os.PathLike | bytes) -> int:
    """How many frames or pages an animated GIF, PNG or WebP or a multi-page TIFF holds (a path or its
    bytes; 1 for a still and for what cannot be read): :func:`read_image` decodes the first only."""
    try:
        with _no_bomb_warning(), _open_tolerant(source) as header:
            return int(getattr(header, "n_frames", 1)) if header.format in _FRAMED_FORMATS else 1
    except Exception:  # (reading its pixels says what is wrong with it)
        return 1


def first_frame_note(source: str | os.PathLike | bytes, name: str) -> str | None:
    """The note the CLI, the app and the batch job give for an animation or a multi-page file ``name``
    (``source``: its path or bytes), whose first frame alone is restored; None for a still."""
    frames = frame_count(source)
    return f"{name} holds {frames} frames; only the first was restored" if frames > 1 else None


def megapixels(pixels: int, limit: int) -> tuple[str, str]:
    """Both pixel counts in MP with just the decimals that tell them apart, so a message never says that
    0.9 MP is above a limit of 0.9 MP."""
    for decimals in range(1, 7):
        size, most = f"{pixels / 1e6:.{decimals}f}", f"{limit / 1e6:.{decimals}f}"
        if size != most:
            break
    return size, most


def _check_size(width: int, height: int, max_pixels: int | None, name: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        size, most = megapixels(width * height, max_pixels)
        raise ImageTooLargeError(
            f"{name}: {width}x{height} = {size} MP is above the limit of {most} MP; downscale it first "
            "(Python callers may raise read_image's max_pixels)",
            width * height,
            max_pixels,
        )


def _opaque_gif_frame(header: Image.Image, img: np.ndarray) -> bool:
    """A GIF's first frame decoded as BGRA although that frame declares no transparent colour and every
    pixel is opaque: OpenCV gives a GIF four channels when the last frame of the file has a transparent
    colour (Pillow and ffmpeg write later frames so, as the changes over the first), so an opaque animation
    would come out RGBA. A frame that declares one keeps its alpha, as a PNG's does (and PIL's decoding)."""
    if header.format != "GIF" or img.ndim != 3 or img.shape[2] != 4 or "transparency" in header.info:
        return False
    return bool((img[:, :, 3] == 255).all())


def _orientation(header: Image.Image) -> int:
    """EXIF orientation (1..8), read without decoding pixels."""
    try:
        if header.format == "PNG":
            # PngImageFile.getexif() decodes the whole image to look for a trailing eXIf chunk; only the
            # eXIf chunk before the pixel data (where writers put it) is honoured.
            raw = header.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = header.getexif()
        value = int(exif.get(_EXIF_ORIENTATION, 1))
    except Exception:  # malformed EXIF must not make a readable image unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def _apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn pixels the way EXIF says the camera held them (same result as PIL's exif_transpose)."""
    if orientation == 2:
        return img[:, ::-1]
    if orientation == 3:
        return img[::-1, ::-1]
    if orientation == 4:
        return img[::-1]
    if orientation == 5:
        return img.swapaxes(0, 1)
    if orientation == 6:
        return img.swapaxes(0, 1)[:, ::-1]
    if orientation == 7:
        return img.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return img.swapaxes(0, 1)[::-1]
    return img


def _tag(header: Image.Image, tag: int, default: int) -> tuple[int, ...]:
    """A TIFF tag's values as a tuple (Pillow gives a lone value bare); ``(default,)`` when absent."""
    value = header.tag_v2.get(tag, default)
    return value if isinstance(value, tuple) else (value,)


def _separate_wide_planes(header: Image.Image) -> bool:
    """A TIFF with more than one sample per pixel, stored plane by plane, above 8 bits per sample."""
    if header.format != "TIFF":
        return False
    return _tag(header, 284, 1) == (2,) and _tag(header, 277, 1)[0] > 1 and max(_tag(header, 258, 1)) > 8


def _unassociated_alpha_tiff(header: Image.Image) -> bool:
    """An 8-bit TIFF with a straight (unassociated) alpha, what Pillow and most editors write: OpenCV's
    decoder gives its colours multiplied by the alpha (16-bit ones it reads as stored)."""
    if header.format != "TIFF" or header.mode not in ("RGBA", "LA"):
        return False
    if max(_tag(header, 258, 8)) > 8:  # Pillow would decode 16-bit ones to 8
        return False
    return 2 in _tag(header, 338, 0)  # ExtraSamples 2: unassociated alpha


class _TiffHeader(NamedTuple):
    """The first directory (IFD0) of a TIFF file, read from its bytes without decoding anything."""

    order: str  # struct's byte order: "<" or ">"
    big: bool  # BigTIFF: 8-byte counts and offsets
    entries: dict[int, tuple[int, int, int]]  # tag -> (field type, count, offset of its value field)

    def values(self, data: bytes, tag: int) -> tuple[int, ...]:
        """The integers of ``tag``: ``KeyError`` if absent or not integers, ``struct.error`` if cut short."""
        kind, count, field = self.entries[tag]
        code, size = _TIFF_INTEGERS[kind]
        at = field
        if count * size > (8 if self.big else 4):  # too long for the entry: stored elsewhere
            (at,) = struct.unpack_from(self.order + ("Q" if self.big else "I"), data, field)
        return struct.unpack_from(f"{self.order}{count}{code}", data, at)


def _tiff_header(data: bytes) -> _TiffHeader | None:
    """IFD0 of TIFF (or BigTIFF) bytes; None for other formats or a header cut short."""
    order = {b"II": "<", b"MM": ">"}.get(bytes(data[:2]))
    if order is None:
        return None
    try:
        (version,) = struct.unpack_from(order + "H", data, 2)
        if version not in (42, 43):
            return None
        big = version == 43
        (ifd,) = struct.unpack_from(order + "Q", data, 8) if big else struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + ("Q" if big else "H"), data, ifd)
        first, size, number = (ifd + 8, 20, "Q") if big else (ifd + 2, 12, "I")  # entries; their counts' type
        entries = {}
        for at in range(first, first + count * size, size):  # tag, type, count, then the value field
            tag, kind = struct.unpack_from(order + "HH", data, at)
            (values,) = struct.unpack_from(order + number, data, at + 4)
            entries[tag] = (kind, values, at + 4 + struct.calcsize(number))
    except struct.error:
        return None
    return _TiffHeader(order, big, entries)


def _tiff_pixel_type(data: bytes) -> str | None:
    """The sample type of a TIFF as NumPy names it (float32, int16, uint32, ...) when it is signed, float
    or wider than 16 bits; None for other TIFFs, a header without BitsPerSample, and other formats."""
    tiff = _tiff_header(data)
    if tiff is None:
        return None
    try:
        bits = max(tiff.values(data, 258))
        sample_format = tiff.values(data, 339)[0] if 339 in tiff.entries else 1  # 1 = unsigned integers
        kind = {2: "int", 3: "float"}.get(sample_format, "uint")
    except (KeyError, struct.error, ValueError, IndexError):
        return None
    return None if kind == "uint" and bits <= 16 else f"{kind}{bits}"


def _png_chunks(data: bytes) -> list[tuple[bytes, int, int]] | None:
    """The chunks of PNG bytes up to IEND as (type, start, end), from its length field to past its CRC
    (empty for bytes that are no PNG); None when the file is cut short (a download or copy that stopped) or
    a critical chunk's CRC does not match. libpng stops on such a file and prints "libpng error: IDAT: CRC
    error" straight to the process's stderr, amid the progress bar; PIL prints nothing, decodes what it can,
    and its error reaches our one-line message.

    An ancillary chunk (its type's first letter lower-case: text, time, EXIF, colour profile) whose CRC does
    not match is left out of the list: libpng (with a warning on stderr) and browsers skip it and show the
    picture, but PIL refuses the file when the chunk comes before the pixels (see :func:`_png_kept`). Not
    one whose type is a critical one's with a letter's case flipped ("iDAT": the flipped bit is the damage),
    nor a list left without pixels (a damaged length field that skipped over them). A damaged animation
    chunk (APNG's acTL, fcTL, fdAT) leaves out the animation's every chunk: the file is read as the still
    its pixels make, as a reader without APNG shows it (without the first frame's fcTL an APNG reader
    shows the second frame first)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return []
    view, at, chunks, animation_damaged = memoryview(data), 8, [], False
    while at + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        end = at + 12 + length
        if end > len(data):
            return None
        if zlib.crc32(view[at + 4 : end - 4]) == int.from_bytes(data[end - 4 : end]):
            chunks.append((kind, at, end))
        elif not kind[0] & 0x20 or kind.upper() in _PNG_CRITICAL:  # a critical chunk, or one whose case broke
            return None
        else:
            animation_damaged |= kind in _APNG_CHUNKS
        if kind == b"IEND":
            if animation_damaged:
                chunks = [chunk for chunk in chunks if chunk[0] not in _APNG_CHUNKS]
            return chunks if any(chunk[0] == b"IDAT" for chunk in chunks) else None
        at = end
    return None


_PNG_CRITICAL = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND"})
_APNG_CHUNKS = frozenset({b"acTL", b"fcTL", b"fdAT"})


def _png_kept(data: bytes, png_chunks: list[tuple[bytes, int, int]], drop: bytes | None = None) -> bytes:
    """PNG ``data`` made of ``png_chunks`` alone (as :func:`_png_chunks` lists them: damaged ancillary chunks
    left out), less the chunks of type ``drop``; ``data`` itself when that leaves nothing out."""
    kept = [(start, end) for kind, start, end in png_chunks if kind != drop]
    if len(kept) == len(png_chunks) and sum(end - start for start, end in kept) == png_chunks[-1][2] - 8:
        return data
    return data[:8] + b"".join(data[start:end] for start, end in kept)


def _as_stored(data: bytes, png_chunks: list[tuple[bytes, int, int]]) -> bytes | bytearray:
    """``data`` as OpenCV is to decode it: for a TIFF whose Orientation tag is not 1 a copy whose tag says
    1, for a PNG with a colour profile or a damaged ancillary chunk a copy without them, else ``data``
    itself.

    OpenCV's TIFF decoder turns the pixels by the tag itself, even with IMREAD_IGNORE_ORIENTATION (and in
    tiled files only part of the way), so :func:`_apply_orientation` would turn them twice. With the tag
    at 1 OpenCV decodes the pixels as stored, and the orientation is applied once, as for other formats.

    A PNG's profile is not applied by OpenCV (:func:`read_icc_profile` carries it to the output), but
    libpng checks it and prints its warnings ("iCCP: known incorrect sRGB profile", an RGB profile in a
    gray PNG) straight to stderr, amid the progress bar, for a file that is read well; as it does for a
    damaged ancillary chunk ("tEXt: CRC error"), which it skips.
    """
    if png_chunks:
        return _png_kept(data, png_chunks, drop=b"iCCP")
    tiff = _tiff_header(data)
    if tiff is None:
        return data
    try:
        kind, count, field = tiff.entries[_EXIF_ORIENTATION]
        if kind not in (3, 4) or count != 1 or tiff.values(data, _EXIF_ORIENTATION) == (1,):
            return data  # (libtiff reads one SHORT or one LONG as the orientation; anything else it ignores)
    except (KeyError, struct.error):
        return data
    stored = bytearray(data)
    struct.pack_into(tiff.order + ("H" if kind == 3 else "I"), stored, field, 1)
    return stored


def _decode_with_pil(header: Image.Image, name: str) -> np.ndarray:
    """Fallback decoder for files OpenCV rejects; returns the cv2 layout."""
    try:
        header.load()
    except MemoryError:
        raise
    except Exception as exc:
        if "out of memory" in str(exc):  # a decoder's own failed allocation (its error -9)
            raise MemoryError(str(exc)) from None
        raise UnreadableImageError(f"{name}: corrupt or truncated image ({exc})") from None
    im = header
    if im.mode in ("I;16", "I;16L", "I;16B"):
        return np.asarray(im, dtype=np.uint16).copy()
    if im.mode in ("1", "L"):
        return np.asarray(im.convert("L")).copy()
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    rgb = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    return cv2.cvtColor(rgb, cv2.COLOR_RGBA2BGRA if has_alpha else cv2.COLOR_RGB2BGR)


def encode_image(
    img: np.ndarray, ext: str = ".png", quality: int = 95, icc_profile: bytes | None = None
) -> bytes:
    """Encode an array in the cv2 layout to file bytes of format ``ext``.

    PNG and TIFF keep every layout (8/16-bit, gray, BGR, BGRA). The others are 8-bit only: 16-bit is
    rounded to 8-bit. JPEG has no alpha: BGRA is composited over white. WebP has no gray mode (readers
    get BGR back). ``quality`` (1-100) applies to JPEG and WebP; WebP at 100 is written lossless.
    ``icc_profile`` (as :func:`read_icc_profile` gives it) is embedded in PNG, JPEG and WebP when its
    colour space is the written image's (RGB, or gray for gray PNG and JPEG); TIFF and BMP get none.
    """
    fmt = _write_format(ext)
    if fmt is None:
        raise ValueError(f"cannot write '{ext}' images; use one of {sorted(WRITE_FORMATS)}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in [1, 100], got {quality}")
    img = as_written(_validated(img), fmt)
    params: list[int] = []
    if fmt == ".jpg":
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif fmt == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, 101 if quality == 100 else int(quality)]
    ok, buf = cv2.imencode(fmt, img, params)
    if not ok:
        raise OSError(f"OpenCV could not encode a {img.shape} {img.dtype} image as {fmt}")
    data = buf.tobytes()
    gray = img.ndim == 2 and fmt != ".webp"
    if icc_profile and icc_profile[16:20] == (b"GRAY" if gray else b"RGB ") and fmt in _EMBED_ICC:
        data = _EMBED_ICC[fmt](data, icc_profile)
    return data


def as_written(img: np.ndarray, ext: str) -> np.ndarray:
    """``img`` (cv2 layout) as a file of format ``ext`` will hold it, before lossy compression: 16-bit
    rounded to 8-bit for JPEG, WebP and BMP, and BGRA composited over white for JPEG, which has no alpha.
    What a preview of the download should show."""
    fmt = _write_format(ext)
    if fmt in (".jpg", ".webp", ".bmp"):
        img = to_8bit(img)
    if fmt == ".jpg" and img.ndim == 3 and img.shape[2] == 4:
        img = _over_white(img)
    return img


def to_8bit(img: np.ndarray) -> np.ndarray:
    """16-bit values rounded to 8-bit (``img`` itself when it is 8-bit already): what 8-bit formats hold.
    OpenCV scales into the 8-bit array with no copy in between (``np.round(img / 257)``, the same values,
    took two float64 copies: 2.4 GB for a 40 MP BGRA result)."""
    return cv2.convertScaleAbs(img, alpha=1 / 257) if img.dtype == np.uint16 else img


def _write_format(ext: str) -> str | None:
    """The format :func:`encode_image` writes for the extension ``ext`` (with or without its dot)."""
    ext = ext.lower()
    return WRITE_FORMATS.get(ext if ext.startswith(".") else "." + ext)


def _png_with_icc(png: bytes, profile: bytes) -> bytes:
    """An iCCP chunk (zlib-compressed profile) right after IHDR, where PNG wants it: before the pixels."""
    body = b"ICC profile\0\0" + zlib.compress(profile)
    chunk = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body))
    ihdr_end = 8 + 8 + 13 + 4  # signature, then IHDR: length, type, 13 bytes, CRC
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def _jpeg_with_icc(jpeg: bytes, profile: bytes) -> bytes:
    """APP2 ICC_PROFILE segments (the profile split in numbered parts of at most 65519 bytes) after the
    JFIF APP0 segment, which must come first."""
    step = 65535 - 2 - 14  # a segment's length field counts itself and the 14-byte "ICC_PROFILE" header
    parts = [profile[i : i + step] for i in range(0, len(profile), step)]
    if len(parts) > 255:
        return jpeg  # (no colour profile is that large; the format cannot number more parts)
    segments = b"".join(
        b"\xff\xe2" + struct.pack(">H", 2 + 14 + len(part)) + b"ICC_PROFILE\0" + bytes([n, len(parts)]) + part
        for n, part in enumerate(parts, 1)
    )
    at = 2  # after SOI
    if jpeg[2:4] == b"\xff\xe0":
        at += 2 + struct.unpack_from(">H", jpeg, 4)[0]
    return jpeg[:at] + segments + jpeg[at:]


def _webp_with_icc(webp: bytes, profile: bytes) -> bytes:
    """An ICCP chunk after a VP8X chunk with its ICC flag set; a simple (VP8 or VP8L) file gets a VP8X
    chunk first, with the canvas size and alpha flag read from its bitstream."""
    first, body = webp[12:16], webp[20:]
    if first == b"VP8X":
        vp8x, rest = bytearray(webp[12:30]), webp[30:]
        vp8x[8] |= 0x20
    else:
        if first == b"VP8L":  # signature byte, then 14 bits width - 1, 14 bits height - 1, 1 bit alpha
            (bits,) = struct.unpack_from("<I", body, 1)
            width, height, alpha = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, (bits >> 28) & 1
        else:  # VP8: 3-byte frame tag, 3-byte start code, then 14-bit width and height
            width, height = (v & 0x3FFF for v in struct.unpack_from("<HH", body, 6))
            alpha = 0
        flags = 0x20 | (0x10 if alpha else 0)
        size = struct.pack("<I", width - 1)[:3] + struct.pack("<I", height - 1)[:3]
        vp8x, rest = b"VP8X" + struct.pack("<I", 10) + bytes([flags, 0, 0, 0]) + size, webp[12:]
    iccp = b"ICCP" + struct.pack("<I", len(profile)) + profile + b"\0" * (len(profile) % 2)
    chunks = bytes(vp8x) + iccp + rest
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


_EMBED_ICC = {".png": _png_with_icc, ".jpg": _jpeg_with_icc, ".webp": _webp_with_icc}


def write_image(
    path: str | os.PathLike, img: np.ndarray, quality: int = 95, icc_profile: bytes | None = None
) -> Path:
    """Write ``img`` (cv2 layout) to ``path``; the format follows the suffix (see :func:`encode_image`,
    also for ``icc_profile``).

    Parent folders are created; the file appears atomically (temp file + rename), so a reader never
    sees half an image.
    """
    path = Path(path)
    data = encode_image(img, path.suffix, quality, icc_profile)
    with atomic_path(path, PARTIAL_SUFFIX) as tmp:
        tmp.write_bytes(data)
    return path


def _validated(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(img).__name__}")
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a uint8 or uint16 image, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4))) or 0 in img.shape:
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {img.shape}")
    return np.ascontiguousarray(img)


def _over_white(bgra: np.ndarray) -> np.ndarray:
    """Composite BGRA (uint8) over a white background: what viewers show for transparent pixels. In integers
    (colour x alpha fits uint16), a channel at a time, rounded as ``round(c * a / 255 + 255 - a)``: float32
    copies of the whole image took 1.5 GB for a 40 MP result."""
    alpha = bgra[:, :, 3].astype(np.uint16)
    white = (255 - alpha) * 255 + 127  # (+127: the division below rounds; no value falls on a half)
    out = np.empty(bgra.shape[:2] + (3,), np.uint8)
    for channel in range(3):
        out[:, :, channel] = (bgra[:, :, channel] * alpha + white) // 255
    return out


def is_image_name(name: str | os.PathLike) -> bool:
    """Whether ``name`` has the extension of an image format :func:`read_image` reads (one Pillow opens:
    every file's header is read by Pillow): what tells a photo from the other files of a folder (an
    iPhone's IMG_1234.AAE sidecar) before reading it."""
    return Path(name).suffix.lower() in _readable_extensions()


@functools.cache
def _readable_extensions() -> frozenset[str]:
    registered = Image.registered_extensions()  # loads Pillow's format plugins once
    return frozenset({ext for ext, fmt in registered.items() if fmt in Image.OPEN} | set(WRITE_FORMATS))


def size_error(ext: str, width: int, height: int) -> str | None:
    """Why an image of ``width`` x ``height`` cannot be written as ``ext`` (None: it can), so that a caller
    refuses it before making it: JPEG holds at most 65500 px a side, WebP 16383 and PNG 1000000 (libpng's
    limit); OpenCV's encoders only print their refusal and return nothing."""
    fmt = _write_format(ext)
    limits = {".jpg": ("JPEG", 65500), ".webp": ("WebP", 16383), ".png": ("PNG", 1_000_000)}
    if fmt not in limits or max(width, height) <= limits[fmt][1]:
        return None
    name, most = limits[fmt]
    return f"{width}x{height} is above the {most} px a side that {name} holds"
