"""Training configuration: one nested dict, defaults = the official GFPGAN v1 recipe.

A YAML file overrides the defaults (unknown keys are errors, so typos do not silently train the wrong
model) and ``key.sub=value`` command-line overrides go on top (values parsed as YAML).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from gfp import registry
from gfp.archs import GeneratorConfig

# Official options/train_gfpgan_v1.yml, regrouped. Sizes are in pixels at ``data.out_size``.
DEFAULTS: dict[str, Any] = {
    "name": "gfpgan",
    "output_dir": "runs/gfpgan",
    "seed": 0,
    "device": "auto",
    "data": {
        "train": None,  # folder of aligned HQ faces, or a basicsr-style ``*.lmdb`` folder
        "extra_train": [],  # more folders of aligned HQ faces, trained on, never held out (see `train crop`)
        "val": None,  # folder of held-out HQ faces (LQ made from them with a fixed seed)
        "val_holdout": 0,  # or: keep the last N training files (sorted) out for validation
        "out_size": 512,
        "degrade_size": None,  # degrade here, then shrink to out_size as inference does (null: out_size)
        "cache_images": False,  # keep each decoded, resized HQ face in memory (small datasets)
        "use_hflip": True,
        "augment": {  # off by default (the official recipe has flips only); for small datasets
            "rotation": 0.0,  # degrees, ±
            "scale": [1.0, 1.0],
            "shift": 0.0,  # fraction of the face size, ±, per axis
            "color": 0.0,  # ± relative change of saturation, contrast, brightness (half of it per channel)
            "gray_prob": 0.0,  # a gray face (GT and LQ)
        },
        "batch_size": 3,  # per process (official: 3 per GPU x 4 GPUs)
        "num_workers": 4,
        "components": {
            "source": "template",  # "file" (official landmarks .pth) or "template" (FFHQ 5-point template)
            "file": None,
            "eye_enlarge_ratio": 1.4,
        },
    },
    "degradation": {
        "blur_kernel_size": 41,
        "kernel_list": ["iso", "aniso"],
        "kernel_prob": [0.5, 0.5],
        "blur_sigma": [0.1, 10.0],
        "downsample_range": [0.8, 8.0],
        "noise_range": [0.0, 20.0],
        "jpeg_range": [60, 100],
        "color_jitter_prob": 0.3,
        "color_jitter_shift": 20.0,  # in /255 units, per channel
        "color_jitter_pt_prob": 0.3,
        "brightness": [0.5, 1.5],
        "contrast": [0.5, 1.5],
        "saturation": [0.0, 1.5],
        "hue": [-0.1, 0.1],
        "gray_prob": 0.01,
        "gt_gray": False,
    },
    "model": {
        # gfp.archs.GeneratorConfig fields; the paper model (v1) trains at channel multiplier 1.
        "generator": {"arch": "v1", "out_size": 512, "channel_multiplier": 1, "narrow": 1.0},
        "pretrained": None,  # generator to fine-tune: "v1.4", a .pth/.safetensors file, a folder or repo id
        "prior": None,  # StyleGAN2 checkpoint loaded into the decoder (official: StyleGAN2_512_Cmul1 FFHQ)
        "fix_decoder": True,  # freeze the StyleGAN2 decoder (only when a prior or pretrained is loaded)
        "discriminator": {"channel_multiplier": 1, "narrow": 1.0, "weights": None},
        "component_discriminators": {
            "enabled": True,
            "weights": {"left_eye": None, "right_eye": None, "mouth": None},
        },
        "identity": {"arch": "arcface_resnet18", "weights": "arcface_resnet18"},  # or mobilefacenet / none
        "vgg_weights": "vgg19",  # zoo name or file of torchvision vgg19 weights; null = random (tests only)
    },
    "loss": {
        "pixel_weight": 0.1,
        "pixel_type": "l1",  # or "l2": the mean squared error, which is what PSNR scores
        "pyramid_weight": 1.0,
        "pyramid_until": 50000,
        "perceptual_weight": 1.0,
        "style_weight": 50.0,
        "vgg_layers": {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0},
        "gan_weight": 0.1,
        "component_gan_weight": 1.0,
        "component_style_weight": 200.0,
        "identity_weight": 10.0,
        "r1_weight": 10.0,
        "d_reg_every": 16,
        "gan_from": 0,  # reconstruction first: GAN, component and identity losses only after this step
        # identity loss after this step instead (null: with the GAN losses); a number below 1 is a fraction of
        # train.total_iter, so it follows a schedule that train.time_budget_min sizes
        "identity_from": None,
    },
    "optim": {
        "lr_g": 2e-3,
        "lr_d": 2e-3,
        "lr_component": 2e-3,
        "milestones": [600000, 700000],
        "gamma": 0.5,
        "schedule": "multistep",  # or "cosine" (to min_lr_ratio × lr at train.total_iter)
        "min_lr_ratio": 0.0,
        "warmup_iter": 0,  # linear learning-rate warm-up
        "clip_grad_norm": 0.0,  # clip the generator's gradient norm to this (0: off, as the official recipe)
        "betas_g": [0.0, 0.99],  # Adam betas of the generator (official: no momentum, for the GAN's sake)
    },
    "train": {
        "total_iter": 800000,
        # Minutes the training loop may take: the steps are sized from the speed of the first ones (the
        # learning-rate schedule then ends on time), and the loop stops at the budget in any case.
        "time_budget_min": None,
        "ema_decay": 0.5 ** (32 / 10000),  # fixed in the official code (its options' ema_decay unread)
        "ema_warmup": False,  # decay min(ema_decay, (1 + step) / (10 + step)): EMA useful from the start
        "amp": True,  # autocast on CUDA only (bf16 where supported, else fp16 + GradScaler)
        # bf16 autocast on CPU steps too, where the CPU has bf16 instructions (AVX-512 BF16 or AMX;
        # float32 elsewhere, with a warning): the CPU recipe turns it on for more steps in its budget
        "amp_cpu": False,
        "log_every": 100,
        "image_every": 1000,
        "val_every": 5000,
        "ckpt_every": 5000,
        "keep_checkpoints": 3,
        "threads": 0,  # torch threads of the training process (0: torch's default, one per core)
        "profile": False,  # synchronise CUDA around each part of a step so the logged s_* times are exact
    },
}


# Keys whose default is null but whose value, when one is given, is a number of this type.
NULLABLE_NUMBERS: dict[str, type] = {
    "loss.identity_from": float,  # a whole step, or a fraction below 1 (checked by validate)
    "data.degrade_size": int,
    "train.time_budget_min": float,
}


class ConfigError(ValueError):
    """A configuration file or override that cannot be used (message says which key and why)."""


def _merge(base: dict[str, Any], update: dict[str, Any], where: str) -> None:
    for key, value in update.items():
        path = f"{where}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key '{path}' (known here: {', '.join(sorted(base))})")
        free_form = path in ("loss.vgg_layers", "model.generator")
        if isinstance(base[key], dict) and not free_form:
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' must be a mapping, got {value!r}")
            _merge(base[key], value, path + ".")
        elif free_form:
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' must be a mapping, got {value!r}")
            if path == "model.generator":
                base[key] = {**base[key], **value}
            else:  # layer: weight, each weight a number
                base[key] = {k: _number(v, f"{path}.{k}", float) for k, v in value.items()}
        else:
            base[key] = _coerce(base[key], value, path)


def _number(value: Any, path: str, want: type) -> int | float:
    """``value`` as ``want`` (int or float); YAML reads ``1e-3`` as a string, so numeric strings count too."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"config key '{path}' must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"config key '{path}' must be a number, got {value!r}")
    if want is int:
        if not math.isfinite(value) or float(value) != int(value):
            raise ConfigError(f"config key '{path}' must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def _coerce(default: Any, value: Any, path: str) -> Any:
    """``value`` checked against the type of the key's default (numbers written either way accepted)."""
    if value is None:
        return value
    if default is None:
        return _number(value, path, NULLABLE_NUMBERS[path]) if path in NULLABLE_NUMBERS else value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{path}' must be true or false, got {value!r}")
        return value
    if isinstance(default, int | float):
        return _number(value, path, int if isinstance(default, int) else float)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"config key '{path}' must be a string, got {value!r}")
        return value
    if isinstance(default, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{path}' must be a list, got {value!r}")
        numeric = [d for d in default if isinstance(d, int | float) and not isinstance(d, bool)]
        if numeric and len(numeric) == len(default):
            kind = float if any(isinstance(d, float) for d in default) else int
            return [_number(v, f"{path}[{i}]", kind) for i, v in enumerate(value)]
        return list(value)
    return value


def parse_override(text: str) -> dict[str, Any]:
    """``a.b.c=value`` → ``{"a": {"b": {"c": value}}}`` with the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value: Any = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not YAML ({str(err).splitlines()[0]})") from None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Defaults ← YAML file ← overrides; ``model.generator.out_size`` follows ``data.out_size``."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"{p} is not a YAML file: {str(err).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p} must contain a YAML mapping at the top level")
        _merge(cfg, loaded, "")
    for item in overrides or []:
        _merge(cfg, parse_override(item), "")
    cfg["model"]["generator"]["out_size"] = cfg["data"]["out_size"]
    validate(cfg)
    return cfg


def _check_range(cfg: dict[str, Any], key: str, low: float, high: float) -> None:
    value = cfg["degradation"][key]
    if value is None:
        return
    if not (isinstance(value, list | tuple) and len(value) == 2 and low <= value[0] <= value[1] <= high):
        raise ConfigError(f"degradation.{key} must be [min, max] within [{low}, {high}], got {value!r}")


def identity_start(cfg: dict[str, Any]) -> int | None:
    """The step after which the identity loss is on (``loss.identity_from``; null: with the GAN losses).

    A value below 1 is a fraction of ``train.total_iter``, which a time budget sizes and re-sizes.
    """
    start = cfg["loss"]["identity_from"]
    if start is None:
        return None
    return int(start * cfg["train"]["total_iter"]) if 0 < start < 1 else int(start)


NOT_NULL = (
    "name", "output_dir", "seed", "device", "data.out_size", "data.batch_size", "data.num_workers",
    "train.total_iter", "train.ema_decay", "train.log_every", "train.image_every", "train.val_every",
    "train.ckpt_every", "train.keep_checkpoints", "train.threads", "optim.lr_g", "optim.lr_d",
    "optim.lr_component", "optim.schedule", "loss.pixel_weight", "loss.pyramid_weight",
    "loss.perceptual_weight", "loss.style_weight", "loss.gan_weight", "loss.identity_weight",
)  # fmt: skip
"""Keys the trainer needs a value for: ``null`` there is refused by name (other keys use null as "off")."""


@dataclasses.dataclass(frozen=True)
class Span:
    """The numbers a key takes, and how its error says so."""

    low: float
    high: float = math.inf
    words: str = ""
    above_low: bool = False  # low itself is refused
    below_high: bool = False  # high itself is refused

    def __contains__(self, value: float) -> bool:
        over = value > self.low if self.above_low else value >= self.low
        under = value < self.high if self.below_high else value <= self.high
        return over and under


POSITIVE = Span(0, words="above 0", above_low=True)
ZERO_UP = Span(0, words="0 or more")
OFF_OR_EVERY = Span(0, words="0 (off) or a number of steps")
ONE_UP = Span(1, words="1 or more")
FRACTION = Span(0, 1, words="in [0, 1]")

RANGES: dict[str, Span] = {
    "seed": ZERO_UP,
    "data.val_holdout": ZERO_UP,
    "data.components.eye_enlarge_ratio": POSITIVE,
    "data.augment.rotation": ZERO_UP,
    "data.augment.shift": ZERO_UP,
    "data.augment.color": ZERO_UP,
    "data.augment.gray_prob": FRACTION,
    "degradation.blur_kernel_size": ONE_UP,
    "degradation.color_jitter_prob": FRACTION,
    "degradation.color_jitter_shift": ZERO_UP,
    "degradation.color_jitter_pt_prob": FRACTION,
    "degradation.gray_prob": FRACTION,
    "model.discriminator.channel_multiplier": POSITIVE,
    "model.discriminator.narrow": POSITIVE,
    "loss.pixel_weight": ZERO_UP,
    "loss.pyramid_weight": ZERO_UP,
    "loss.pyramid_until": ZERO_UP,
    "loss.perceptual_weight": ZERO_UP,
    "loss.style_weight": ZERO_UP,
    "loss.gan_weight": ZERO_UP,
    "loss.component_gan_weight": ZERO_UP,
    "loss.component_style_weight": ZERO_UP,
    "loss.identity_weight": ZERO_UP,
    "loss.r1_weight": ZERO_UP,
    "loss.d_reg_every": ONE_UP,
    "loss.gan_from": ZERO_UP,
    "optim.lr_g": POSITIVE,
    "optim.lr_d": POSITIVE,
    "optim.lr_component": POSITIVE,
    "optim.gamma": POSITIVE,
    "optim.min_lr_ratio": FRACTION,
    "optim.warmup_iter": Span(-1, words="-1 or 0 (no warm-up, as in basicsr's configs) or more"),
    "optim.clip_grad_norm": Span(0, words="0 (off) or more"),
    "data.batch_size": ONE_UP,
    "data.num_workers": Span(0, words="0 (load in the training process) or more"),
    "train.threads": Span(0, words="0 (torch's default) or a number of threads"),
    "train.time_budget_min": Span(0, words="a positive number of minutes, or null", above_low=True),
    "train.total_iter": ONE_UP,
    "train.ema_decay": Span(0, 1, words="in [0, 1)", below_high=True),
    "train.log_every": OFF_OR_EVERY,
    "train.image_every": OFF_OR_EVERY,
    "train.val_every": OFF_OR_EVERY,
    "train.ckpt_every": OFF_OR_EVERY,
    "train.keep_checkpoints": Span(0, words="0 (keep all) or more"),
}
"""Numeric keys whose values outside a span would fail a step, divide by zero or train nonsense (a
negative loss weight, an average that grows): refused up front, with the key named (null passes: off)."""


def _value(cfg: dict[str, Any], key: str) -> Any:
    """The value of the dotted ``key`` (``train.total_iter``) in ``cfg``."""
    value: Any = cfg
    for part in key.split("."):
        value = value[part]
    return value


def validate(cfg: dict[str, Any]) -> None:
    """Reject values the trainer cannot use, with the key named."""
    for key in NOT_NULL:
        value = _value(cfg, key)
        if value is None or value == "":
            raise ConfigError(f"config key '{key}' needs a value, got {value!r}")
    for key, span in RANGES.items():
        value = _value(cfg, key)
        if value is not None and value not in span:
            raise ConfigError(f"config key '{key}' must be {span.words}, got {value!r}")
    size = cfg["data"]["out_size"]
    if size not in (32, 64, 128, 256, 512, 1024):
        raise ConfigError(f"data.out_size must be a power of two in 32..1024, got {size}")
    degrade_size = cfg["data"]["degrade_size"]
    if degrade_size is not None and degrade_size < size:  # the pairs are shrunk from it to out_size
        raise ConfigError(
            f"data.degrade_size must be data.out_size ({size}) or more, or null, got {degrade_size}"
        )
    if cfg["data"]["components"]["source"] not in ("template", "file"):
        raise ConfigError("data.components.source must be 'template' or 'file'")
    if cfg["data"]["components"]["source"] == "file" and not cfg["data"]["components"]["file"]:
        raise ConfigError("data.components.source is 'file' but data.components.file is not set")
    deg = cfg["degradation"]
    _check_range(cfg, "blur_sigma", 0.0, 100.0)
    _check_range(cfg, "downsample_range", 0.1, 64.0)
    _check_range(cfg, "noise_range", 0.0, 255.0)
    _check_range(cfg, "jpeg_range", 1, 100)
    if deg["blur_kernel_size"] % 2 != 1:
        raise ConfigError("degradation.blur_kernel_size must be odd")
    if len(deg["kernel_list"]) != len(deg["kernel_prob"]) or not set(deg["kernel_list"]) <= {"iso", "aniso"}:
        raise ConfigError("degradation.kernel_list must hold 'iso'/'aniso' with one kernel_prob each")
    if min(deg["kernel_prob"], default=0) < 0 or sum(deg["kernel_prob"]) <= 0:
        raise ConfigError(
            f"degradation.kernel_prob must be 0 or more and not all 0, got {deg['kernel_prob']!r}"
        )
    if cfg["loss"]["pixel_type"] not in ("l1", "l2"):
        raise ConfigError("loss.pixel_type must be 'l1' or 'l2'")
    betas = cfg["optim"]["betas_g"]
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"optim.betas_g must be two numbers in [0, 1), got {betas!r}")
    if cfg["optim"]["schedule"] not in ("multistep", "cosine"):
        raise ConfigError("optim.schedule must be 'multistep' or 'cosine'")
    start = cfg["loss"]["identity_from"]
    if start is not None and (start < 0 or (start >= 1 and start != int(start))):
        raise ConfigError(f"loss.identity_from must be a step or a fraction in (0, 1), got {start!r}")
    identities = [*registry.choice_names("identity"), "none"]  # registered by train.models
    if cfg["model"]["identity"]["arch"] not in identities:
        raise ConfigError(f"model.identity.arch must be one of {', '.join(identities)}")
    allowed = {f.name for f in dataclasses.fields(GeneratorConfig)}
    typos = sorted(set(cfg["model"]["generator"]) - allowed)
    if typos:
        raise ConfigError(
            f"unknown config key(s) model.generator.{', model.generator.'.join(typos)} "
            f"(known here: {', '.join(sorted(allowed))})"
        )
    unknown = set(cfg["loss"]["vgg_layers"]) - set(VGG19_LAYERS)
    if unknown:
        raise ConfigError(f"loss.vgg_layers has unknown VGG19 layers {sorted(unknown)}")
    negative = sorted(k for k, v in cfg["loss"]["vgg_layers"].items() if v < 0)
    if negative:
        raise ConfigError(f"loss.vgg_layers weights must be 0 or more: {', '.join(negative)}")


# Index of each conv output (before ReLU) in torchvision's vgg19().features.
VGG19_LAYERS: dict[str, int] = {
    "conv1_1": 0, "conv1_2": 2, "conv2_1": 5, "conv2_2": 7,
    "conv3_1": 10, "conv3_2": 12, "conv3_3": 14, "conv3_4": 16,
    "conv4_1": 19, "conv4_2": 21, "conv4_3": 23, "conv4_4": 25,
    "conv5_1": 28, "conv5_2": 30, "conv5_3": 32, "conv5_4": 34,
}  # fmt: skip
