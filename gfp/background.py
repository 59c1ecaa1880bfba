"""Background upsampling with Real-ESRGAN networks (or plain Lanczos) for the restore pipeline.

The networks are ``RRDBNet`` and ``SRVGGNetCompact`` (:mod:`gfp.archs.realesrgan`: basicsr's function and
weights, without importing basicsr) with the official configurations; the tiling is our own and
reproduces ``realesrgan.RealESRGANer.enhance`` (pre-pad, mod-pad, tile grid, tile padding, gray/alpha
handling, 8/16-bit quantisation, final Lanczos resize) to within one grey level, while

* keeping no per-call state on the object, so one upsampler serves many threads (RealESRGANer stores
  the image being processed on ``self``);
* moving only the tiles being run to the device and quantising each tile straight into the
  uint8/uint16 result (RealESRGANer puts the whole image and a float32 output of the upscaled size on
  the device), and skipping tiles that only cover padding;
* running channels-last convolutions and batching tiles of equal size (faster; the numerical
  difference this makes stays below one grey level);
* accepting any ``outscale`` in [1, 8], choosing the network whose native scale suits it (see
  :meth:`BackgroundUpsampler.scale_for`);
* running on CPU too (the official CLI disables the background upsampler there).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gfp import registry
from gfp.checks import is_real, is_whole
from gfp.devices import Placement, prepare_for_inference
from gfp.loading import load_model
from gfp.memory import available_memory, size_text
from gfp.messages import OptionError
from gfp.paste import is_gray

MIN_OUTSCALE = 1.0
MAX_OUTSCALE = 8.0
STAGE = "background"
_UNSHUFFLE = {2: 2, 1: 4}  # RRDBNet pixel-unshuffles x2 input by 2 and x1 input by 4

Progress = Callable[[int, int, str], None]

NETWORK_BYTES_PER_INPUT_PIXEL = 830
"""The networks' own working memory, in bytes per input pixel of one network call (``batch_pixels`` of them;
measured with realesr-animevideov3 on the CPU)."""
SUGGEST_SHARE = 0.9
"""An upscale is suggested where its least need fits in this share of the memory left: the estimate leaves
out the paste's face boxes and smaller buffers (a 14 MP photo refused at x4 with 1.19 GB left failed at the
x3.5 that fitted its whole 1.19 GB, and ran at x3)."""


class OutputMemoryError(OptionError, MemoryError):
    """An upscaled output whose background and paste-back would not fit in the memory left, refused before
    the background is upsampled; said with the largest ``upscale`` that fits, in each front end's words
    for that option (see :class:`~gfp.messages.OptionError`)."""


def background_choices() -> dict[str, tuple[str, ...]]:
    """Names a user may pick → the registry upsamplers each may load (see :func:`gfp.registry.members`).

    "realesrgan" uses the x2 model up to outscale 2 and the x4 model above; "none" loads nothing.
    """
    return {name: registry.members("upsampler", name) for name in registry.choice_names("upsampler")}


def scaled_size(height: int, width: int, outscale: float) -> tuple[int, int]:
    """Output (height, width) for ``outscale``: each side rounded half up, at least 1 pixel.

    The pipeline must use the same rule wherever it sizes the upscaled result.
    """
    return max(1, math.floor(height * outscale + 0.5)), max(1, math.floor(width * outscale + 0.5))


def lanczos_upsample(img: np.ndarray, outscale: float) -> np.ndarray:
    """The "none" background: resize to :func:`scaled_size` with Lanczos (cv2.INTER_LANCZOS4)."""
    _check_outscale(outscale)
    _check_image(img)
    check_output_memory(img, outscale)
    h, w = img.shape[:2]
    out_h, out_w = scaled_size(h, w, outscale)
    return _resize(img, out_h, out_w)


def output_memory(
    img: np.ndarray, outscale: float, scale: int, batch_pixels: int = 0, canvas: bool = False
) -> int:
    """The least memory, in bytes, the background of ``img`` at ``outscale`` (upsampled with a network of
    native ``scale``, 1 for Lanczos, ``batch_pixels`` a call) and its paste-back take at their peak: the
    larger of the background's (the network's native result, beside either the network's float32 input
    and working memory or that result resized) and the paste's (the background and its pasted copy; with
    ``canvas``, gray with alpha, the background beside a float32 canvas of the whole output and its gray,
    which :func:`gfp.paste.paste_back` blends such an image on). The float32 boxes the faces are blended in
    are left out: they depend on the faces, so that a photo that fits is never refused for them."""
    h, w = img.shape[:2]
    pixel = img.itemsize * (1 if img.ndim == 2 else img.shape[2])
    out_h, out_w = scaled_size(h, w, outscale)
    out = out_h * out_w
    if scale == 1:
        background = out * pixel
    else:
        native = h * w * scale * scale
        resized = out * pixel if native != out else 0
        network = 12 * h * w + NETWORK_BYTES_PER_INPUT_PIXEL * batch_pixels
        background = native * pixel + max(network, resized)
    paste = out * pixel + (16 * out if canvas else out * pixel)
    return max(background, paste)


def check_output_memory(
    img: np.ndarray, outscale: float, upsampler: BackgroundUpsampler | None = None
) -> None:
    """Refuse to upscale ``img`` by ``outscale`` with ``upsampler`` (None: Lanczos) when even the least its
    background and paste-back take (:func:`output_memory`) is more than the memory this process can still
    take: it would otherwise fail (or be killed) only once the slow upsampling had run, or was running.
    The :class:`OutputMemoryError` names what fits in :data:`SUGGEST_SHARE` of that memory: the largest
    upscale, in halves, else (a network's native result is the larger buffer) the Lanczos background."""
    available = available_memory()
    if available is None:
        return
    canvas = img.ndim == 3 and img.shape[2] == 4 and is_gray(img)

    def need(s: float, network: bool) -> int:
        if not network or upsampler is None:
            return output_memory(img, s, 1, canvas=canvas)
        return output_memory(img, s, upsampler.scale_for(s), upsampler.batch_pixels, canvas)

    least = need(outscale, True)
    if least <= available:
        return
    h, w = img.shape[:2]
    out_h, out_w = scaled_size(h, w, outscale)
    least, free = size_text(least), size_text(available)
    what = f"a {out_w}x{out_h} restored image needs at least {least}, {free}"
    halves = [k / 2 for k in range(math.ceil(2 * outscale) - 1, 1, -1)]  # below outscale, down to 1
    room = SUGGEST_SHARE * available
    fits = next((s for s in halves if need(s, True) <= room), None)
    if fits is not None:
        less = "" if fits == MIN_OUTSCALE else " or less"
        raise OutputMemoryError(
            "{what} is free: use {upscale} {fits:g}{less}", what=what, fits=fits, less=less
        )
    if upsampler is not None:
        plain = next((s for s in [outscale, *halves] if need(s, False) <= room), None)
        if plain == outscale:
            raise OutputMemoryError("{what} is free: use {bg_upsampler} none", what=what)
        if plain is not None:
            raise OutputMemoryError(
                "{what} is free: use {bg_upsampler} none and {upscale} {fits:g}", what=what, fits=plain
            )
    raise OutputMemoryError("{what} is free: free some memory first", what=what)


def upsample_background(
    img: np.ndarray,
    outscale: float,
    upsampler: BackgroundUpsampler | None,
    progress: Progress | None = None,
    tile: int | None = None,
) -> np.ndarray:
    """Upscale the whole image with ``upsampler`` (tiles of ``tile`` px), or with Lanczos when it is None."""
    if upsampler is None:
        return lanczos_upsample(img, outscale)
    return upsampler.upsample(img, outscale, progress=progress, tile=tile)


class BackgroundUpsampler:
    """Real-ESRGAN background upsampler; thread-safe, holds only networks and settings.

    ``networks`` maps a native scale (2 or 4) to a network, or to a zero-argument function returning
    one (loaded on first use, once, under a lock). ``tile=0`` runs the whole image at once; otherwise
    the image is cut into ``tile``-pixel tiles, each run with ``tile_pad`` pixels of context.
    ``pre_pad`` reflect-pads the bottom/right edge before the network, as RealESRGANer does.
    ``tile`` is the default of :meth:`upsample`, whose ``tile`` argument overrides it per call.
    ``placement`` is where and in what precision the networks run (:class:`gfp.devices.Placement`, already
    narrowed to these networks; its ``bf16`` autocast is the caller's to apply).
    Tiles of equal size are batched so that one network call sees up to ``batch_pixels`` input
    pixels (tiles larger than that run one by one), which bounds memory like a single big tile.
    Networks given as modules are moved to the device in place.
    """

    def __init__(
        self,
        networks: Mapping[int, nn.Module | Callable[[], nn.Module]],
        *,
        tile: int = 400,
        tile_pad: int = 10,
        pre_pad: int = 0,
        placement: Placement | None = None,
        batch_pixels: int = 512 * 512,
    ) -> None:
        if not networks:
            raise ValueError("BackgroundUpsampler needs at least one network")
        if any(s not in (1, 2, 4) for s in networks):
            raise ValueError(f"native scales must be 1, 2 or 4, got {sorted(networks)}")
        _check_tile(tile)
        if tile_pad < 0 or pre_pad < 0:
            raise ValueError(f"tile_pad and pre_pad must be >= 0, got {tile_pad}, {pre_pad}")
        if batch_pixels < 1:
            raise ValueError(f"batch_pixels must be >= 1, got {batch_pixels}")
        self.tile = int(tile)
        self.tile_pad = int(tile_pad)
        self.pre_pad = int(pre_pad)
        self.placement = placement or Placement()
        self.device, self.dtype = self.placement.device, self.placement.dtype
        self.batch_pixels = int(batch_pixels)
        # NHWC convolutions: measured faster on CPU (oneDNN; README, "Speed"), the tensor-core layout on CUDA.
        cl = self.device.type in ("cpu", "cuda")
        self._memory_format = torch.channels_last if cl else torch.contiguous_format
        self._sources = dict(networks)
        self._loaded: dict[int, nn.Module] = {}
        self._lock = threading.Lock()

    @property
    def scales(self) -> tuple[int, ...]:
        """Native scales of the networks this upsampler can use."""
        return tuple(sorted(self._sources))

    def scale_for(self, outscale: float) -> int:
        """The native scale used for ``outscale``: the smallest that reaches it, else the largest.

        With x2 and x4 networks: outscale <= 2 runs the x2 network, larger ones the x4 network, so
        the final Lanczos step shrinks little (or not at all) instead of enlarging a x2 result.
        """
        _check_outscale(outscale)
        reaching = [s for s in self.scales if s >= outscale]
        return min(reaching) if reaching else max(self.scales)

    def network(self, scale: int) -> nn.Module:
        """The network of native ``scale``, loaded and placed on the device on first use."""
        with self._lock:
            net = self._loaded.get(scale)
            if net is None:
                source = self._sources[scale]
                net = source if isinstance(source, nn.Module) else source()
                net = prepare_for_inference(net, self.placement)
                net = net.to(memory_format=self._memory_format)
                self._loaded[scale] = net
            return net

    def upsample(
        self, img: np.ndarray, outscale: float, progress: Progress | None = None, tile: int | None = None
    ) -> np.ndarray:
        """Upscale ``img`` (HxW, HxWx3 BGR or HxWx4 BGRA; uint8, uint16, or float in [0, 1]).

        Returns the same layout and dtype at :func:`scaled_size`. Gray is run as RGB and converted
        back; alpha is upscaled by the network too (as a gray image), as RealESRGANer does.
        ``progress(done, total, "background")`` is called after every network call. ``tile`` (None: the
        upsampler's default; 0: the whole image at once) bounds memory and does not change the networks.
        """
        scale = self.scale_for(outscale)
        _check_image(img)
        tile = self.tile if tile is None else _check_tile(tile)
        # loaded first: a default upsampler without its weights falls back to Lanczos (see
        # gfp.stages.background), which a refusal sized for the network would stop even where Lanczos fits
        net = self.network(scale)
        check_output_memory(img, outscale, self)
        h, w = img.shape[:2]
        max_range = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(img.dtype, 1.0)

        gray = img.ndim == 2
        out_dtype = img.dtype if max_range != 1.0 else np.dtype(np.float32)
        out = np.empty((h * scale, w * scale, 1 if gray else img.shape[2]), out_dtype)
        # (channels of `img` the network's R, G, B planes are, reduce its output to gray, channels of `out`)
        if gray:
            passes = [((0, 0, 0), True, slice(0, 1))]
        else:
            passes = [((2, 1, 0), False, slice(0, 3))]
            if img.shape[2] == 4:
                passes.append(((3, 3, 3), True, slice(3, 4)))

        batches = self._batches(self._tiles(h, w, scale, tile))
        total, done = len(batches) * len(passes), 0
        with torch.inference_mode():
            for planes, to_gray, channels in passes:
                padded = self._pad(torch.from_numpy(_rgb_planes(img, planes, max_range))[None], scale)
                for batch in batches:
                    self._run_batch(net, scale, padded, batch, out[:, :, channels], to_gray, max_range)
                    done += 1
                    if progress is not None:
                        progress(done, total, STAGE)
                del padded  # (not held beside the next pass's input, nor the resized result)
        out = out[:, :, 0] if gray else out

        out_h, out_w = scaled_size(h, w, outscale)
        if (out_h, out_w) != (h * scale, w * scale):
            out = _resize(out, out_h, out_w)
        return out

    def _pad(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        """Pre-pad, then pad to a multiple of the pixel-unshuffle factor (x2: 2, x1: 4), as RealESRGANer."""
        x = _pad_bottom_right(x, self.pre_pad, self.pre_pad)
        mod = _UNSHUFFLE.get(scale, 1)
        return _pad_bottom_right(x, -x.shape[3] % mod, -x.shape[2] % mod)

    def _tiles(self, h: int, w: int, scale: int, tile: int) -> list[_Tile]:
        """RealESRGANer's tile grid over the padded input, minus tiles lying wholly in the padding.

        Tile size and context are rounded up to the pixel-unshuffle factor, so that every tile of a
        x2 network stays divisible by 2 (RealESRGANer fails on odd ones).
        """
        mod = _UNSHUFFLE.get(scale, 1)
        ph, pw = h + self.pre_pad, w + self.pre_pad
        ph, pw = ph + (-ph % mod), pw + (-pw % mod)
        if tile == 0:
            return [_Tile((0, ph, 0, pw), (0, ph, 0, pw))]
        size, pad = tile + (-tile % mod), self.tile_pad + (-self.tile_pad % mod)
        tiles = []
        for y0 in range(0, h, size):
            for x0 in range(0, w, size):
                y1, x1 = min(y0 + size, ph), min(x0 + size, pw)
                context = (max(y0 - pad, 0), min(y1 + pad, ph), max(x0 - pad, 0), min(x1 + pad, pw))
                tiles.append(_Tile((y0, y1, x0, x1), context))
        return tiles

    def _batches(self, tiles: list[_Tile]) -> list[list[_Tile]]:
        """Tiles of equal input size grouped so one network call sees at most ``batch_pixels`` pixels."""
        groups: dict[tuple[int, int], list[_Tile]] = {}
        for t in tiles:
            groups.setdefault(t.input_size, []).append(t)
        batches = []
        for (th, tw), group in groups.items():
            n = max(1, self.batch_pixels // (th * tw))
            batches += [group[i : i + n] for i in range(0, len(group), n)]
        return batches

    def _run_batch(
        self,
        net: nn.Module,
        scale: int,
        padded: torch.Tensor,
        batch: list[_Tile],
        target: np.ndarray,
        to_gray: bool,
        max_range: float,
    ) -> None:
        """Run tiles (with their context) in one network call; write each one's cropped, quantised output."""
        inputs = [padded[:, :, cy0:cy1, cx0:cx1] for cy0, cy1, cx0, cx1 in (t.context for t in batch)]
        x = torch.cat(inputs).to(device=self.device, dtype=self.dtype)
        results = net(x.contiguous(memory_format=self._memory_format))
        oh, ow = target.shape[:2]
        for result, t in zip(results, batch, strict=True):
            (y0, y1, x0, x1), (cy0, _, cx0, _) = t.box, t.context
            # Keep the tile's own area, minus whatever falls outside the unpadded image.
            ty0, tx0, ty1, tx1 = y0 * scale, x0 * scale, min(y1 * scale, oh), min(x1 * scale, ow)
            oy, ox = (y0 - cy0) * scale, (x0 - cx0) * scale
            # In place on the network's output: no extra full-size float copies.
            tile = result[:, oy : oy + ty1 - ty0, ox : ox + tx1 - tx0].float().clamp_(0, 1)
            if to_gray:  # cv2's BGR->gray on float, as RealESRGANer applies it to its float output
                bgr = np.ascontiguousarray(tile.flip(0).permute(1, 2, 0).cpu().numpy())
                values = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[:, :, None]
                if max_range != 1.0:
                    values = np.round(values * np.float32(max_range))
            else:
                if max_range != 1.0:
                    tile = tile.mul_(max_range).round_().to(torch.int32 if max_range > 255 else torch.uint8)
                values = tile.flip(0).permute(1, 2, 0).cpu().numpy()  # RGB CHW -> BGR HWC
            target[ty0:ty1, tx0:tx1] = values


@dataclass(frozen=True)
class _Tile:
    """A tile of the padded input (y0, y1, x0, x1) and the larger area the network sees for it."""

    box: tuple[int, int, int, int]
    context: tuple[int, int, int, int]

    @property
    def input_size(self) -> tuple[int, int]:
        return self.context[1] - self.context[0], self.context[3] - self.context[2]


def build_background_upsampler(
    name: str,
    weights_dir: str | os.PathLike[str] | None = None,
    placement: Placement | None = None,
    tile: int = 400,
    *,
    tile_pad: int = 10,
    pre_pad: int = 0,
    load: Callable[[str], nn.Module] | None = None,
) -> BackgroundUpsampler | None:
    """Upsampler for a name of :func:`background_choices`; None for "none" (use Lanczos).

    ``placement`` (None: the CPU in float32) is narrowed to the choice's networks (float16 or bf16 only
    where all of them run well in it, :meth:`gfp.devices.Placement.for_model`). ``load(name)`` returns the
    network of a registry upsampler (default :func:`load_background_network`); it is called when a network
    is first used, so "realesrgan" fetches the x4 model only once an outscale above 2 is asked for.
    """
    try:
        names = registry.members("upsampler", name)
    except ValueError as err:
        raise ValueError(f"unknown background upsampler {name!r}; {str(err).split('; ')[-1]}") from None
    if not names:
        return None
    placement = (placement or Placement()).for_model(*(registry.MODEL_ZOO[m].supports for m in names))
    fetch = load or (lambda model: load_background_network(model, weights_dir))

    def loader(model: str) -> Callable[[], nn.Module]:
        return lambda: fetch(model)

    return BackgroundUpsampler(
        {registry.MODEL_ZOO[m].supports.scale: loader(m) for m in names},
        tile=tile,
        tile_pad=tile_pad,
        pre_pad=pre_pad,
        placement=placement,
    )


def load_background_network(name: str, weights_dir: str | os.PathLike[str] | None = None) -> nn.Module:
    """The registry upsampler ``name`` with its weights (strict), on the CPU."""
    return load_model(name, weights_dir)


def _pad_bottom_right(x: torch.Tensor, right: int, bottom: int) -> torch.Tensor:
    """Reflect-pad bottom/right like RealESRGANer; replicate where the image is too small to reflect."""
    if right == 0 and bottom == 0:
        return x
    mode = "reflect" if right < x.shape[3] and bottom < x.shape[2] else "replicate"
    return F.pad(x, (0, right, 0, bottom), mode=mode)


def _rgb_planes(img: np.ndarray, channels: tuple[int, int, int], max_range: float) -> np.ndarray:
    """The network's (3, H, W) float32 input: the R, G, B planes are ``img``'s ``channels`` (all one for gray
    or alpha) divided by ``max_range``. Made plane by plane from ``img``, with the values a float32 copy of
    the whole image and its BGR -> RGB conversion gave, without those two copies (each 4 bytes a value)."""
    planes = np.empty((3, *img.shape[:2]), np.float32)
    for plane, channel in zip(planes, channels, strict=True):
        source = img if img.ndim == 2 else img[:, :, channel]
        if max_range != 1.0:
            np.divide(source, np.float32(max_range), out=plane, dtype=np.float32)
        else:
            plane[...] = source  # float64 rounded to float32, as astype rounds it
    return planes


def _resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    out = cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_LANCZOS4)
    if out.dtype.kind == "f":
        np.clip(out, 0.0, 1.0, out=out)
    return out


def _check_outscale(outscale: float) -> None:
    if not is_real(outscale) or not (MIN_OUTSCALE <= outscale <= MAX_OUTSCALE):
        raise ValueError(
            f"outscale must be a number in [{MIN_OUTSCALE:g}, {MAX_OUTSCALE:g}], got {outscale!r}"
        )


def _check_tile(tile: int) -> int:
    if not is_whole(tile) or tile < 0:
        raise ValueError(f"tile must be an integer >= 0 (0 = no tiling), got {tile!r}")
    return int(tile)


def _check_image(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray):
        raise TypeError(f"expected a numpy image, got {type(img).__name__}")
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4))) or 0 in img.shape:
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {img.shape}")
    if img.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise ValueError(f"expected a uint8, uint16 or float image, got {img.dtype}")
