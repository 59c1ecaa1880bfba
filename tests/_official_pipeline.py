"""Test/benchmark helper: the official GFPGAN stack and ours on identical local weights.

The official side is ``gfpgan.utils.GFPGANer.enhance`` itself (facexlib ``FaceRestoreHelper`` with
ParseNet, the official ``GFPGANv1Clean`` network, optionally realesrgan ``RealESRGANer``), built without
its constructor's downloads: the helper's detector and parser loaders are pointed at local files while it
is built, and the network runs with its stored noise (``randomize_noise=False``) so both sides are
deterministic. No GFPGAN checkpoint exists offline, so the generator and ParseNet are seeded random
networks; the detector and realesr-animevideov3 are the real files of the shared data. The background
may also be realesr-general-x4v3 (the official Space's CPU choice; seeded random weights, for benchmarks:
speed does not depend on the values). Everything runs on the CPU unless a ``device`` is given.

Used by tests/test_parity_pipeline.py and benchmarks/pipeline.py (which puts this folder on sys.path).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import nn

import gfp  # noqa: F401  (torchvision shim before basicsr/gfpgan imports)

GENERATOR_FILE = "gfpgan_random_clean.pth"
DETECTOR = "retinaface_mobile0.25"
DETECTOR_FILE = "detection_mobilenet0.25_Final.pth"
PARSER_FILE = "parsing_parsenet.pth"
BACKGROUND_FILE = "realesr-animevideov3.pth"
# Background networks the official side can run: zoo name -> SRVGGNetCompact depth (both x4, 64 features).
BACKGROUND_CONVS = {"realesr-animevideov3": 16, "realesr-general-x4v3": 32}
RANDOM_BACKGROUND = "realesr-general-x4v3"


def official_generator(narrow: bool = False) -> nn.Module:
    """The official GFPGANv1Clean in GFPGANer's inference configuration (arch="clean"), randomly initialised;
    ``narrow``: a quarter of its channels and channel multiplier 1, the same code at about 1/16 of the cost,
    for checking the pipeline around it on many faces."""
    from gfpgan.archs.gfpganv1_clean_arch import GFPGANv1Clean

    return GFPGANv1Clean(
        out_size=512, num_style_feat=512, channel_multiplier=1 if narrow else 2, decoder_load_path=None,
        fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True, narrow=0.25 if narrow else 1,
        sft_half=True,
    )  # fmt: skip


def make_weights(folder: Path, shared_data: Path, seed: int = 0, narrow: bool = False) -> Path:
    """Fill ``folder`` (a gfp weights dir) with the seeded random generator (:func:`official_generator`) and
    parser and links to the real detector and background files; returns ``folder``. Idempotent."""
    from facexlib.parsing.parsenet import ParseNet

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / GENERATOR_FILE).is_file():
        torch.manual_seed(seed)
        torch.save({"params_ema": official_generator(narrow).state_dict()}, folder / GENERATOR_FILE)
    if not (folder / PARSER_FILE).is_file():
        torch.manual_seed(seed + 1)
        torch.save(ParseNet(in_size=512, out_size=512, parsing_ch=19).state_dict(), folder / PARSER_FILE)
    if not (folder / f"{RANDOM_BACKGROUND}.pth").is_file():
        from basicsr.archs.srvgg_arch import SRVGGNetCompact

        torch.manual_seed(seed + 2)
        net = SRVGGNetCompact(3, 3, 64, BACKGROUND_CONVS[RANDOM_BACKGROUND], upscale=4, act_type="prelu")
        torch.save({"params": net.state_dict()}, folder / f"{RANDOM_BACKGROUND}.pth")
    for name in (DETECTOR_FILE, BACKGROUND_FILE):
        link = folder / name
        if not link.exists():
            os.symlink(shared_data / "weights" / name, link)
    return folder


def _background_name(background: bool | str) -> str | None:
    """``True`` = realesr-animevideov3 (the real file), ``False`` = none, or a name of BACKGROUND_CONVS."""
    if isinstance(background, str):
        if background not in BACKGROUND_CONVS:
            raise ValueError(f"background must be one of {list(BACKGROUND_CONVS)}, got {background!r}")
        return background
    return "realesr-animevideov3" if background else None


class _FixedNoise(nn.Module):
    """Calls the official network with its stored noise instead of fresh random noise."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, return_rgb: bool = True, **kwargs: object):
        return self.net(x, return_rgb=return_rgb, randomize_noise=False)


def official_restorer(
    folder: Path,
    upscale: float = 2,
    background: bool | str = False,
    use_parse: bool = True,
    device: str | torch.device = "cpu",
    narrow: bool = False,
):
    """A ``GFPGANer`` on the files of :func:`make_weights` (made with the same ``narrow``), built without any
    download."""
    import facexlib.detection
    import facexlib.parsing
    from facexlib.utils.face_restoration_helper import FaceRestoreHelper
    from gfpgan.utils import GFPGANer

    dev = torch.device(device)
    with (
        mock.patch.object(facexlib.detection, "load_file_from_url", lambda **kw: str(folder / DETECTOR_FILE)),
        mock.patch.object(facexlib.parsing, "load_file_from_url", lambda **kw: str(folder / PARSER_FILE)),
    ):
        helper = FaceRestoreHelper(
            upscale, face_size=512, crop_ratio=(1, 1), det_model=DETECTOR, save_ext="png",
            use_parse=use_parse, device=dev,
        )  # fmt: skip
    net = official_generator(narrow)
    net.load_state_dict(torch.load(folder / GENERATOR_FILE, weights_only=True)["params_ema"], strict=True)
    restorer = GFPGANer.__new__(GFPGANer)  # its __init__ would download the detector/parser/generator
    restorer.upscale = upscale
    restorer.device = dev
    restorer.face_helper = helper
    restorer.gfpgan = _FixedNoise(net.eval().to(dev))
    name = _background_name(background)
    restorer.bg_upsampler = official_background(folder, name, dev) if name else None
    return restorer


def official_background(folder: Path, name: str = "realesr-animevideov3", device: str | torch.device = "cpu"):
    """RealESRGANer with ``name``'s file of :func:`make_weights`, official CLI settings (tile 400, pad 10)."""
    from basicsr.archs.srvgg_arch import SRVGGNetCompact
    from realesrgan import RealESRGANer

    model = SRVGGNetCompact(
        num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=BACKGROUND_CONVS[name], upscale=4, act_type="prelu"
    )
    return RealESRGANer(
        scale=4, model_path=str(folder / f"{name}.pth"), model=model, tile=400, tile_pad=10, pre_pad=0,
        half=False, device=torch.device(device),
    )  # fmt: skip


def our_options(folder: Path, upscale: float = 2, background: bool | str = False, use_parse: bool = True):
    """RestoreOptions that match :func:`official_restorer` with the same arguments."""
    from gfp.pipeline import RestoreOptions

    return RestoreOptions(
        version=str(folder / GENERATOR_FILE),
        upscale=upscale,
        bg_upsampler=_background_name(background) or "none",
        detector=DETECTOR,
        use_parse=use_parse,
    )


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images of the same shape (inf when equal)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
