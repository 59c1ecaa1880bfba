"""What the project knows about each model family, in one place.

A :class:`ModelFamily` owns its downloadable files (one :class:`ModelEntry` each: name, file, URL, sha256,
size, licence note, UI label, what it supports), how to build its network from a config and how to
recognise that config from a state dict. The pipeline, the CLI, the app and ``train/`` take their choices,
defaults and labels from here, so adding a model is one :func:`register` call (or one entry in a family).

gfp registers the families it runs: GFPGAN generators (paper v1 and clean v1.2-v1.4), RetinaFace
(ResNet-50, MobileNet-0.25), ParseNet and Real-ESRGAN (RRDB x2plus, SRVGG general-x4v3 and animevideov3).
``train/`` registers its training networks itself (see ``train/models.py``).

The detector and Real-ESRGAN networks are gfp's own plain-PyTorch ones (:mod:`gfp.archs.retinaface`,
:mod:`gfp.archs.realesrgan`: facexlib's and basicsr's functions and weights), so running the pipeline
imports neither facexlib, basicsr nor torchvision (a large part of a process start); they remain the
test oracles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gfp.archs import GeneratorConfig, UnknownArchitectureError, build_generator, detect_config
from gfp.archs.realesrgan import RRDBNet, SRVGGNetCompact
from gfp.archs.retinaface import build_retinaface

NO_BACKGROUND = "none"
"""The background choice that uses no network (a Lanczos resize)."""

DEFAULTS: dict[str, str] = {
    "generator": "v1.4",
    "detector": "retinaface_resnet50",
    "parser": "parsenet",
    "upsampler": "realesrgan",
}
"""The choice used for each kind of model when the user names none (on a GPU; see :func:`default_for`)."""

CPU_DEFAULTS: dict[str, str] = {"upsampler": "realesr-general-x4v3"}
"""Where the choice on a CPU differs, by measured cost: RealESRGAN_x2plus as the background took most of a
photo's time on a CPU, realesr-general-x4v3 (the official Space's CPU choice) restores the photo much sooner
(README, "Speed")."""


def default_for(kind: str, device: torch.device | str) -> str:
    """The choice for ``kind`` when the user names none, on ``device`` (a torch device or its name)."""
    if torch.device(device).type == "cpu":
        return CPU_DEFAULTS.get(kind, DEFAULTS[kind])
    return DEFAULTS[kind]


@dataclass(frozen=True)
class Supports:
    """What a network is made for: its native scale, fixed input side (None: any) and good precisions."""

    scale: int = 1
    input_size: int | None = None
    precisions: tuple[torch.dtype, ...] = (torch.float32,)


HALF_OK = (torch.float32, torch.float16)
"""Networks that run well in float16 on a GPU (the generator and the background upsamplers)."""
BF16_OK = (*HALF_OK, torch.bfloat16)
"""...and also in bfloat16 autocast on a CPU, measured within parity (README, "Speed")."""


@dataclass(frozen=True)
class ModelEntry:
    """One downloadable model file: where it comes from, how to check it, and how the family builds it.

    ``url`` None means there is no public download: the file must be given (path or weights folder).
    ``sha256`` None means the download is not verified (``note`` says why); ``size`` alone is still checked.
    ``config`` is the family's architecture config for this file (a :class:`GeneratorConfig` for GFPGAN).
    """

    name: str
    file_name: str
    url: str | None
    kind: str  # "generator" | "detector" | "parser" | "upsampler" | train/'s "identity" | "perceptual"
    sha256: str | None = None
    size: int | None = None
    config: Any = None
    note: str = ""
    license: str = ""
    label: str = ""
    family: str = ""
    supports: Supports = Supports()


@dataclass(frozen=True)
class ModelFamily:
    """An architecture and its released files.

    ``build(config)`` returns the network (random weights, CPU) for an entry's ``config`` or a recognised
    one. ``recognise(state_dict)`` returns the config of a state dict of this family, None when the state
    dict is not of this family, and raises :class:`UnknownArchitectureError` when it looks like this family
    but does not fit. ``combined`` (optional) makes the family's own name a choice standing for several of
    its entries, in order of native scale (Real-ESRGAN: x2plus up to 2x, general-x4v3 above).
    """

    name: str
    kind: str
    label: str
    entries: tuple[ModelEntry, ...]
    build: Callable[[Any], nn.Module]
    recognise: Callable[[Mapping[str, Tensor]], Any | None] | None = None
    combined: tuple[str, ...] = ()


FAMILIES: dict[str, ModelFamily] = {}
"""Registered families by name, in registration order."""
MODEL_ZOO: dict[str, ModelEntry] = {}
"""Every registered entry by name (derived from :data:`FAMILIES`; tests may patch single entries)."""


def register(family: ModelFamily) -> ModelFamily:
    """Add ``family`` and its entries; a name already taken is a ``ValueError``.

    Family and entry names share one namespace (a combined family's name is a choice); a family with a
    single entry may share that entry's name.
    """
    own = [e.name for e in family.entries]
    taken = set(FAMILIES) | set(MODEL_ZOO) | {NO_BACKGROUND}
    clash = sorted(taken & {family.name, *own})
    if clash or len(set(own)) != len(own) or (family.combined and family.name in own):
        taken_text = ", ".join(clash or own)
        raise ValueError(f"cannot register model family {family.name!r}: names already taken ({taken_text})")
    unknown = set(family.combined) - set(own)
    if unknown:
        raise ValueError(f"family {family.name!r} combines entries it does not have: {sorted(unknown)}")
    entries = tuple(
        dataclasses.replace(e, family=family.name, kind=family.kind, label=e.label or e.name)
        for e in family.entries
    )
    family = dataclasses.replace(family, entries=entries)
    FAMILIES[family.name] = family
    MODEL_ZOO.update((e.name, e) for e in entries)
    return family


def unregister(name: str) -> None:
    """Remove a family and its entries (for tests that register made-up families)."""
    family = FAMILIES.pop(name)
    for entry in family.entries:
        MODEL_ZOO.pop(entry.name, None)


def family_of(entry: ModelEntry) -> ModelFamily:
    """The family an entry belongs to."""
    return FAMILIES[entry.family]


def zoo_entry(name: str) -> ModelEntry | None:
    """The entry for a model name, a GFPGAN version ("1.4", "v1.4", "GFPGANv1.4") or an official file name."""
    if name in MODEL_ZOO:
        return MODEL_ZOO[name]
    version = name.lower().removeprefix("gfpgan").removeprefix("v")
    entry = MODEL_ZOO.get(f"v{version}")
    if entry is not None and entry.kind == "generator":
        return entry
    return next((e for e in MODEL_ZOO.values() if e.file_name == name), None)


def entries(kind: str) -> list[ModelEntry]:
    """Registered entries of one kind, in registration order."""
    return [e for f in FAMILIES.values() if f.kind == kind for e in f.entries]


def choices(kind: str) -> list[tuple[str, str]]:
    """(label, value) pairs a user may pick for ``kind``, for dropdowns and ``--help``.

    For upsamplers: each combined family first, then every entry, then "none" (a Lanczos resize).
    """
    pairs: list[tuple[str, str]] = []
    for family in FAMILIES.values():
        if family.kind != kind:
            continue
        if family.combined:
            pairs.append((family.label, family.name))
        pairs += [(e.label, e.name) for e in family.entries]
    if kind == "upsampler":
        pairs.append(("none (Lanczos)", NO_BACKGROUND))
    return pairs


def choice_names(kind: str) -> list[str]:
    """The values of :func:`choices`."""
    return [value for _, value in choices(kind)]


def label(name: str) -> str:
    """The UI label of a choice (the name itself when it is not registered)."""
    for kind in {f.kind for f in FAMILIES.values()}:
        for text, value in choices(kind):
            if value == name:
                return text
    return name


def members(kind: str, choice: str) -> tuple[str, ...]:
    """The entry names a choice stands for: a combined family's entries, an entry itself, or () for none."""
    if kind == "upsampler" and choice == NO_BACKGROUND:
        return ()
    family = FAMILIES.get(choice)
    if family is not None and family.kind == kind and family.combined:
        return family.combined
    entry = MODEL_ZOO.get(choice)
    if entry is not None and entry.kind == kind:
        return (entry.name,)
    raise ValueError(f"unknown {kind} {choice!r}; choose one of: {', '.join(choice_names(kind))}")


def build(entry: ModelEntry, config: Any = None) -> nn.Module:
    """The network of ``entry`` (or of ``config`` for its family), random weights, on the CPU."""
    return family_of(entry).build(entry.config if config is None else config)


def detector_entry(name: str) -> ModelEntry:
    """The registry detector ``name``; an unknown name is a clear :class:`ValueError` naming the choices."""
    entry = MODEL_ZOO.get(name)
    if entry is None or entry.kind != "detector":
        raise ValueError(
            f"unknown face detector {name!r}; choose one of: {', '.join(choice_names('detector'))}"
        )
    return entry


def build_detector(name: str = "retinaface_resnet50") -> nn.Module:
    """The network of the registry detector ``name`` (random weights, CPU)."""
    return build(detector_entry(name))


def recognise(state_dict: Mapping[str, Tensor], kind: str | None = None) -> tuple[ModelFamily, Any]:
    """(family, config) of a state dict, trying every registered family (of ``kind`` when given)."""
    tried = []
    for family in FAMILIES.values():
        if family.recognise is None or (kind is not None and family.kind != kind):
            continue
        tried.append(family.name)
        config = family.recognise(state_dict)
        if config is not None:
            return family, config
    sample = ", ".join(list(state_dict)[:5]) or "no keys"
    raise UnknownArchitectureError(
        f"not a network of a known family ({', '.join(tried)}); first keys: {sample}"
    )


# --------------------------------------------------------------------------------------------- GFPGAN


def _recognise_gfpgan(state_dict: Mapping[str, Tensor]) -> GeneratorConfig | None:
    if not any(k.startswith("conv_body_first.") for k in state_dict):
        return None
    return detect_config(state_dict)


def generator_supports(config: GeneratorConfig) -> Supports:
    """What a GFPGAN generator of this layout is made for, zoo entry or not (a trained model's folder).

    Any generator runs in float16 on a GPU. bf16 autocast keeps the clean layout (v1.2-v1.4 and our trained
    models) 52-56 dB from float32; the paper's v1 layout drops to 41 dB, so it stays out of bf16.
    """
    return Supports(
        scale=1, input_size=config.out_size, precisions=BF16_OK if config.arch == "clean" else HALF_OK
    )


def _gfpgan(name: str, file_name: str, tag: str, arch: str, multiplier: int, label: str, **kw: Any):
    config = GeneratorConfig(arch=arch, out_size=512, channel_multiplier=multiplier)
    return ModelEntry(
        name=name,
        file_name=file_name,
        url=f"https://github.com/TencentARC/GFPGAN/releases/download/{tag}/{file_name}",
        kind="generator",
        config=config,
        license="Apache-2.0 (TencentARC/GFPGAN; see its LICENSE for third-party parts)",
        label=label,
        supports=generator_supports(config),
        **kw,
    )


_PINNED = "sha256 as pinned independently by several public projects (AUR, SwarmUI, model managers)"

GFPGAN = ModelFamily(
    name="gfpgan",
    kind="generator",
    label="GFPGAN",
    build=build_generator,
    recognise=_recognise_gfpgan,
    entries=(  # newest first: the order of the app's model dropdown
        _gfpgan(
            "v1.4",
            "GFPGANv1.4.pth",
            "v1.3.0",
            "clean",
            2,
            "GFPGAN v1.4",
            note=_PINNED,
            size=348_632_874,
            sha256="e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad",
        ),
        _gfpgan(
            "v1.3",
            "GFPGANv1.3.pth",
            "v1.3.0",
            "clean",
            2,
            "GFPGAN v1.3",
            note=_PINNED,
            size=348_632_874,
            sha256="c953a88f2727c85c3d9ae72e2bd4846bbaf59fe6972ad94130e23e7017524a70",
        ),
        _gfpgan(
            "v1.2",
            "GFPGANCleanv1-NoCE-C2.pth",
            "v0.2.0",
            "clean",
            2,
            "GFPGAN v1.2",
            note=_PINNED,
            sha256="29e25ee90c170f4231163f4c83df6b59c968b73f3ce00cb884015ae005db083c",
        ),
        _gfpgan(
            "v1",
            "GFPGANv1.pth",
            "v0.1.0",
            "v1",
            1,
            "GFPGAN v1 (paper)",
            note="no published sha256 known: not verified",
        ),
    ),  # fmt: skip
)

# ----------------------------------------------------------------------------------------- RetinaFace

_FACEXLIB = "https://github.com/xinntao/facexlib/releases/download"
_MIT_FACEXLIB = "MIT (xinntao/facexlib)"


def _recognise_retinaface(state_dict: Mapping[str, Tensor]) -> str | None:
    if not any(k.startswith("ClassHead.") for k in state_dict):
        return None
    if "body.stage1.0.0.weight" in state_dict:
        return "mobile0.25"
    if "body.layer1.0.conv1.weight" in state_dict:
        return "resnet50"
    raise UnknownArchitectureError("a RetinaFace state dict with neither a MobileNet nor a ResNet-50 body")


RETINAFACE = ModelFamily(
    name="retinaface",
    kind="detector",
    label="RetinaFace",
    build=build_retinaface,
    recognise=_recognise_retinaface,
    entries=(
        ModelEntry(
            "retinaface_resnet50",
            "detection_Resnet50_Final.pth",
            f"{_FACEXLIB}/v0.1.0/detection_Resnet50_Final.pth",
            "detector",
            sha256="6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d",
            size=109497761,
            config="resnet50",
            license=_MIT_FACEXLIB,
            label="RetinaFace ResNet-50",
        ),
        ModelEntry(
            "retinaface_mobile0.25",
            "detection_mobilenet0.25_Final.pth",
            f"{_FACEXLIB}/v0.1.0/detection_mobilenet0.25_Final.pth",
            "detector",
            sha256="38ec7bb3c9cbfe2f40edabc05fab970a6d648747cbc534092be85d5eb9b37ed0",
            size=1789735,
            config="mobile0.25",
            note="hash of the offline copy (shared data SHA256SUMS), a legacy-format original, not re-saved",
            license=_MIT_FACEXLIB,
            label="RetinaFace MobileNet-0.25 (fast)",
        ),
    ),
)

# ------------------------------------------------------------------------------------------- ParseNet


def _build_parsenet(_: Any) -> nn.Module:
    from gfp.paste import build_parser

    return build_parser()


def _recognise_parsenet(state_dict: Mapping[str, Tensor]) -> str | None:
    return "parsenet" if "out_mask_conv.conv2d.weight" in state_dict else None


PARSENET = ModelFamily(
    name="parsenet",
    kind="parser",
    label="ParseNet",
    build=_build_parsenet,
    recognise=_recognise_parsenet,
    entries=(
        ModelEntry(
            "parsenet",
            "parsing_parsenet.pth",
            f"{_FACEXLIB}/v0.2.2/parsing_parsenet.pth",
            "parser",
            sha256="3d558d8d0e42c20224f13cf5a29c79eba2d59913419f945545d8cf7b72920de2",
            size=85331193,
            license=_MIT_FACEXLIB,
            label="ParseNet face parsing",
            supports=Supports(input_size=512, precisions=(torch.float32, torch.bfloat16)),  # README, "Speed"
        ),
    ),
)

# ---------------------------------------------------------------------------------------- Real-ESRGAN

_REALESRGAN = "https://github.com/xinntao/Real-ESRGAN/releases/download"
_BSD_REALESRGAN = "BSD-3-Clause (xinntao/Real-ESRGAN)"


@dataclass(frozen=True)
class RealESRGANConfig:
    """A Real-ESRGAN network: "rrdb" (RRDBNet, ``depth`` blocks) or "srvgg" (SRVGGNetCompact, ``depth``
    convolutions)."""

    arch: str
    scale: int
    depth: int
    num_feat: int = 64
    num_grow_ch: int = 32


def _build_realesrgan(config: RealESRGANConfig) -> nn.Module:
    if config.arch == "rrdb":
        return RRDBNet(
            num_in_ch=3, num_out_ch=3, num_feat=config.num_feat, num_block=config.depth,
            num_grow_ch=config.num_grow_ch, scale=config.scale,
        )  # fmt: skip
    return SRVGGNetCompact(
        num_in_ch=3, num_out_ch=3, num_feat=config.num_feat, num_conv=config.depth, upscale=config.scale,
        act_type="prelu",
    )  # fmt: skip


def _recognise_realesrgan(state_dict: Mapping[str, Tensor]) -> RealESRGANConfig | None:
    if "conv_first.weight" in state_dict and "body.0.rdb1.conv1.weight" in state_dict:
        unshuffled = {3: 4, 12: 2, 48: 1}.get(state_dict["conv_first.weight"].shape[1])
        if unshuffled is None:
            raise UnknownArchitectureError("an RRDBNet with an input width other than 3, 12 or 48")
        depth = sum(1 for k in state_dict if k.startswith("body.") and k.endswith(".rdb1.conv1.weight"))
        return RealESRGANConfig(
            "rrdb", unshuffled, depth, state_dict["conv_first.weight"].shape[0],
            state_dict["body.0.rdb1.conv1.weight"].shape[0],
        )  # fmt: skip
    srvgg = "body.0.weight" in state_dict and "body.1.weight" in state_dict
    if srvgg and "conv_first.weight" not in state_dict:
        layers = [int(k.split(".")[1]) for k in state_dict if k.startswith("body.") and k.endswith(".weight")]
        last = max(layers)
        scale = round((state_dict[f"body.{last}.weight"].shape[0] / 3) ** 0.5)
        return RealESRGANConfig("srvgg", scale, (last - 2) // 2, state_dict["body.0.weight"].shape[0])
    return None


def _realesrgan(name: str, tag: str, config: RealESRGANConfig, label: str, **kw: Any) -> ModelEntry:
    return ModelEntry(
        name=name,
        file_name=f"{name}.pth",
        url=f"{_REALESRGAN}/{tag}/{name}.pth",
        kind="upsampler",
        config=config,
        license=_BSD_REALESRGAN,
        label=label,
        supports=Supports(scale=config.scale, precisions=BF16_OK if config.arch == "srvgg" else HALF_OK),
        **kw,
    )


REALESRGAN = ModelFamily(
    name="realesrgan",
    kind="upsampler",
    label="Real-ESRGAN",
    build=_build_realesrgan,
    recognise=_recognise_realesrgan,
    combined=("RealESRGAN_x2plus", "realesr-general-x4v3"),
    entries=(
        _realesrgan(  # the official GFPGAN CLI's background network
            "RealESRGAN_x2plus",
            "v0.2.1",
            RealESRGANConfig("rrdb", 2, 23),
            "Real-ESRGAN x2plus",
            sha256="49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb",
            size=67061725,
        ),
        _realesrgan(  # the official GFPGAN Space's background network
            "realesr-general-x4v3",
            "v0.2.5.0",
            RealESRGANConfig("srvgg", 4, 32),
            "Real-ESRGAN general-x4v3",
            sha256="8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292",
            size=4_885_111,
            note=_PINNED,
        ),
        _realesrgan(
            "realesr-animevideov3",
            "v0.2.5.0",
            RealESRGANConfig("srvgg", 4, 16),
            "Real-ESRGAN animevideov3 (fast)",
            sha256="b8a8376811077954d82ca3fcf476f1ac3da3e8a68a4f4d71363008000a18b75d",
            size=2504012,
        ),
    ),  # fmt: skip
)

for _family in (GFPGAN, RETINAFACE, PARSENET, REALESRGAN):
    register(_family)
