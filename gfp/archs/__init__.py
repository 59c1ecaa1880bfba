"""GFPGAN networks: pure PyTorch modules, no I/O.

- :mod:`gfp.archs.stylegan2_clean` — the StyleGAN2 face prior (clean ops) and its CS-SFT decoder.
- :mod:`gfp.archs.stylegan2_v1` — the original StyleGAN2 layers (paper model, discriminators).
- :mod:`gfp.archs.degradation_removal` — U-Net blocks that remove degradations.
- :mod:`gfp.archs.cs_sft` — channel-split spatial feature transform.
- :mod:`gfp.archs.gfpgan` — the generators that put those stages together.
- :mod:`gfp.archs.config` — configs, building, and recognising a checkpoint's layout.
- :mod:`gfp.archs.parsenet` — the face parser whose labels become the paste-back blend mask.
- :mod:`gfp.archs.retinaface` — the face detector (facexlib's RetinaFace function and weights).
- :mod:`gfp.archs.realesrgan` — the background upsamplers (basicsr's Real-ESRGAN networks and weights).
- :mod:`gfp.archs.unfilled` — building a network without its random initialisation, to load weights into.
"""

from gfp.archs.config import GeneratorConfig, UnknownArchitectureError, build_generator, detect_config
from gfp.archs.gfpgan import FacesOnly, GFPGANClean, GFPGANv1
from gfp.archs.stylegan2_clean import MODULATION_MODES, StyleGAN2Generator, set_modulation_mode
from gfp.archs.stylegan2_v1 import StyleGAN2GeneratorV1

__all__ = [
    "MODULATION_MODES",
    "FacesOnly",
    "GFPGANClean",
    "GFPGANv1",
    "GeneratorConfig",
    "StyleGAN2Generator",
    "StyleGAN2GeneratorV1",
    "UnknownArchitectureError",
    "build_generator",
    "detect_config",
    "set_modulation_mode",
]
