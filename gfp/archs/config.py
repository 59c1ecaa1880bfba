"""Generator configurations: build a network from a config, or recognise the config of a state dict.

Detection reads only key names and tensor shapes (spandrel-style), so any checkpoint in the official
layout — ``GFPGANv1.pth``, ``GFPGANCleanv1-NoCE-C2.pth``, ``GFPGANv1.3.pth``, ``GFPGANv1.4.pth`` or a
smaller model trained with our ``train/`` package — is recognised without being told its version.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from gfp.archs.gfpgan import GFPGANClean, GFPGANv1
from gfp.archs.stylegan2_clean import stylegan_channels
from gfp.archs.unfilled import unfilled

ARCHS = ("clean", "v1")
_KINDS = {
    "bool": "true or false",
    "float": "a number",
    "int": "a whole number",
    "int | None": "a whole number or null",
    "str": "a name",
}


class UnknownArchitectureError(ValueError):
    """A state dict that is not a GFPGAN generator we can build."""


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything needed to build a GFPGAN generator. Defaults are those of GFPGAN v1.3/v1.4."""

    arch: str = "clean"
    out_size: int = 512
    channel_multiplier: int = 2
    narrow: float = 1.0
    num_style_feat: int = 512
    num_mlp: int = 8
    sft_half: bool = True
    different_w: bool = True
    input_is_latent: bool = True
    # Add the input face to the decoder's output, so that a small model trained from scratch starts at its
    # input and learns only the correction (the CPU training recipe). No official model has it; a state
    # dict that does carries an ``input_residual`` entry, which is how it is recognised.
    input_residual: bool = False
    # Run the layers at this size while faces come and go at out_size (the CPU recipe): the face is shrunk
    # by area averaging, and the network's correction is enlarged (bilinear) and added to the full-size
    # face, so the face's own detail above work_size passes through untouched. None: the layers run at
    # out_size, as in every official model. Needs input_residual; recognised by a ``full_size`` entry
    # whose length is the shrink factor.
    work_size: int | None = None
    # With work_size: the layers also see the full-size face folded into channels (pixel unshuffle) and
    # add a full-size correction unfolded from their last features (pixel shuffle), so they can change
    # detail above work_size, where the noise and blur of small degradations lie. Recognised by a
    # ``detail_in`` layer.
    detail: bool = False

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # a config file's null or "2" is named, not a TypeError later
            value = getattr(self, field.name)
            if not _is_kind(value, field.type):
                raise ValueError(f"{field.name} must be {_KINDS[field.type]}, got {value!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.out_size not in {2**i for i in range(4, 11)}:
            raise ValueError(f"out_size must be a power of two from 16 to 1024, got {self.out_size}")
        if self.work_size is not None and not (
            self.input_residual
            and self.work_size in {2**i for i in range(4, 11)}
            and self.work_size < self.out_size
        ):
            raise ValueError(
                f"work_size must be a power of two below out_size ({self.out_size}) and needs "
                f"input_residual, got {self.work_size}"
            )
        if self.detail and self.work_size is None:
            raise ValueError("detail needs work_size")
        if not 0 < self.narrow <= 4 or self.channel_multiplier < 1:
            raise ValueError("narrow must be in (0, 4] and channel_multiplier >= 1")
        # every layer needs a channel (the U-Net runs at half the width, and SFT splits the GAN's in two)
        top = self.work_size or self.out_size
        unet = stylegan_channels(self.channel_multiplier, self.narrow * 0.5)
        gan = stylegan_channels(self.channel_multiplier, self.narrow)
        least = min(min(unet[res], gan[res] // (2 if self.sft_half else 1)) for res in unet if res <= top)
        if least < 1:
            raise ValueError(
                f"narrow {self.narrow} with channel_multiplier {self.channel_multiplier} leaves a layer of "
                f"the {top} px network without channels; widen the network"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeneratorConfig:
        """Build from a dict of config fields; an unknown key (a typo such as ``chanel_multiplier``) is a
        ``ValueError`` naming it and the allowed keys, so it cannot silently build another model."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names), key=str)
        if unknown:
            raise ValueError(
                f"unknown generator config key{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}; allowed: {', '.join(names)}"
            )
        return cls(**data)


def _is_kind(value: Any, kind: str) -> bool:
    """Whether ``value`` is of a config field's annotated ``kind`` (a bool is no number here)."""
    if isinstance(value, bool):
        return kind == "bool"
    if kind in ("int", "int | None"):
        return isinstance(value, numbers.Integral) or (value is None and kind == "int | None")
    if kind == "float":
        return isinstance(value, numbers.Real)
    return kind == "str" and isinstance(value, str)


def build_generator(config: GeneratorConfig) -> nn.Module:
    """Instantiate the generator described by ``config`` (randomly initialised)."""
    cls = GFPGANClean if config.arch == "clean" else GFPGANv1
    return cls(
        out_size=config.work_size or config.out_size,
        num_style_feat=config.num_style_feat,
        channel_multiplier=config.channel_multiplier,
        num_mlp=config.num_mlp,
        input_is_latent=config.input_is_latent,
        different_w=config.different_w,
        narrow=config.narrow,
        sft_half=config.sft_half,
        input_residual=config.input_residual,
        full_size=config.out_size if config.work_size else None,
        detail=config.detail,
    )


def _shape(state_dict: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise UnknownArchitectureError(f"not a GFPGAN generator state dict: key {key!r} is missing")
    return tuple(state_dict[key].shape)


def detect_config(state_dict: Mapping[str, Tensor]) -> GeneratorConfig:
    """Recognise the GFPGAN variant, size and widths of an (unwrapped) generator state dict."""
    if "conv_body_first.0.weight" in state_dict:
        arch = "v1"
    elif "conv_body_first.weight" in state_dict:
        arch = "clean"
    else:
        sample = ", ".join(list(state_dict)[:5]) or "no keys"
        raise UnknownArchitectureError(
            "not a GFPGAN v1 or clean (v1.2/v1.3/v1.4) generator: it has no 'conv_body_first' layer "
            f"(first keys: {sample})"
        )
    dec = "stylegan_decoder."
    num_levels = sum(1 for k in state_dict if k.startswith("toRGB.") and k.endswith(".weight"))
    if num_levels < 1:
        raise UnknownArchitectureError("not a GFPGAN generator: it has no 'toRGB' layers")
    log_size = num_levels + 2
    num_style_feat = _shape(state_dict, dec + "style_conv1.modulated_conv.modulation.weight")[1]
    num_mlp = sum(1 for k in state_dict if k.startswith(dec + "style_mlp.") and k.endswith(".weight"))
    narrow = _shape(state_dict, dec + "constant_input.weight")[1] / 512
    channel_multiplier = 2 if arch == "clean" else 1
    if log_size >= 6:  # the 64-px level is the first whose width depends on the multiplier
        ch64 = _shape(state_dict, dec + "to_rgbs.3.modulated_conv.weight")[2]
        channel_multiplier = round(ch64 / (256 * narrow))
    num_latent = log_size * 2 - 2
    different_w = _shape(state_dict, "final_linear.weight")[0] == num_latent * num_style_feat
    unet_ch8 = _shape(state_dict, "condition_scale.0.0.weight")[0]
    sft_half = _shape(state_dict, "condition_scale.0.2.weight")[0] == unet_ch8
    try:
        config = GeneratorConfig(
            arch=arch,
            out_size=2**log_size * (_shape(state_dict, "full_size")[0] if "full_size" in state_dict else 1),
            work_size=2**log_size if "full_size" in state_dict else None,
            channel_multiplier=channel_multiplier,
            narrow=narrow,
            num_style_feat=num_style_feat,
            num_mlp=num_mlp,
            sft_half=sft_half,
            different_w=different_w,
            input_residual="input_residual" in state_dict,
            detail="detail_in.weight" in state_dict,
        )
    except ValueError as err:
        raise UnknownArchitectureError(f"unsupported GFPGAN layout: {err}") from err
    _check_shapes(config, state_dict)
    return config


def _check_shapes(config: GeneratorConfig, state_dict: Mapping[str, Tensor]) -> None:
    """Build the config (its random initialisation skipped) and compare every key and shape with the
    state dict."""
    with unfilled():
        expected = {k: tuple(v.shape) for k, v in build_generator(config).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
    if missing or unexpected or wrong:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                details.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise UnknownArchitectureError(
            f"state dict looks like a GFPGAN '{config.arch}' generator (out_size {config.out_size}) but does "
            f"not match its layout: {'; '.join(details)}"
        )
