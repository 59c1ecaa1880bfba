"""Build every network a GFPGAN training run needs from the config, loading weights where asked.

Weight files are found through ``gfp.loading`` (explicit path, weights folder, cache, Hub, official URL);
the identity network and VGG19 downloads are entries of gfp's model registry (see :mod:`train.models`).
A ``model.pretrained`` generator goes through the same recognition as ``python -m gfp -v``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from torch import Tensor, nn

from gfp.archs import GeneratorConfig, build_generator
from gfp.loading import WeightsError, load_state_dict, read_generator, resolve_weights
from train.config import DEFAULTS, ConfigError
from train.discriminators import FacialComponentDiscriminator, StyleGAN2Discriminator
from train.identity import IdentityEmbedder
from train.losses import VGGFeatures

log = logging.getLogger("train")


def load_weights(spec: str, weights_dir: str | None = None) -> dict[str, Tensor]:
    """State dict of a zoo name (e.g. ``arcface_resnet18``, ``vgg19``), file or folder, loaded safely."""
    return load_state_dict(resolve_weights(spec, weights_dir))


def _asked_config(cfg: dict[str, Any]) -> GeneratorConfig:
    try:
        return GeneratorConfig.from_dict(cfg["model"]["generator"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.generator: {err}") from err


def generator_config(cfg: dict[str, Any], pretrained: GeneratorConfig | None = None) -> GeneratorConfig:
    """The generator to train: ``model.generator``, or with a pretrained generator its recognised layout.

    Fields of ``model.generator`` left at their defaults take the pretrained layout (so ``pretrained: v1.4``
    fine-tunes v1.4 without restating its architecture); fields set to something else, and ``out_size``
    (which follows ``data.out_size``), must match it: a mismatch is a :class:`ConfigError` naming both.
    """
    asked = _asked_config(cfg)
    if pretrained is None:
        return asked
    default = GeneratorConfig.from_dict(
        {**(DEFAULTS["model"].get("generator") or {}), "out_size": asked.out_size}
    )
    conflicts = [
        f.name
        for f in dataclasses.fields(GeneratorConfig)
        if (f.name == "out_size" or getattr(asked, f.name) != getattr(default, f.name))
        and getattr(asked, f.name) != getattr(pretrained, f.name)
    ]
    if conflicts:
        wanted = ", ".join(f"{k}={getattr(asked, k)!r}" for k in conflicts)
        found = ", ".join(f"{k}={getattr(pretrained, k)!r}" for k in conflicts)
        raise ConfigError(
            f"model.pretrained {cfg['model']['pretrained']!r} is a generator with {found}, but the config "
            f"asks for {wanted} (model.generator / data.out_size): remove those model.generator keys to take "
            "the pretrained layout, or pretrain from a matching checkpoint"
        )
    return pretrained


def build_training_generator(cfg: dict[str, Any], weights_dir: str | None = None) -> nn.Module:
    """Generator (random, fine-tuning start, and/or StyleGAN2 prior in the decoder; decoder maybe frozen).

    With ``model.pretrained`` the generator's layout is recognised from its weights (see
    :func:`generator_config`) and written back into ``cfg["model"]["generator"]``, so the config saved with
    checkpoints (and used by export) describes the network that is trained.
    """
    model = cfg["model"]
    loaded_decoder = False
    if model["pretrained"]:
        state_dict, detected, found = read_generator(model["pretrained"], weights_dir)
        config = generator_config(cfg, detected)
        model["generator"] = config.to_dict()
        net_g = build_generator(config)
        net_g.load_state_dict(state_dict, strict=True)
        loaded_decoder = True
        log.info("generator initialised from %s (%s)", model["pretrained"], found.path)
    else:
        net_g = build_generator(generator_config(cfg))
    if model["prior"]:
        net_g.stylegan_decoder.load_state_dict(load_weights(model["prior"], weights_dir), strict=True)
        loaded_decoder = True
        log.info("StyleGAN2 prior loaded into the decoder from %s", model["prior"])
    if net_g.input_is_latent:  # the decoder is fed W directly: its z→W mapping MLP is never used
        net_g.stylegan_decoder.style_mlp.requires_grad_(False)
    if model["fix_decoder"]:
        if not loaded_decoder:
            log.warning(
                "model.fix_decoder is set but no prior/pretrained was loaded: freezing a random decoder"
            )
        net_g.stylegan_decoder.requires_grad_(False)
    return net_g


def build_discriminators(cfg: dict[str, Any], weights_dir: str | None = None) -> dict[str, nn.Module]:
    """``{"d": whole-face D, and "left_eye"/"right_eye"/"mouth" component Ds when enabled}``."""
    md = cfg["model"]["discriminator"]
    nets: dict[str, nn.Module] = {
        "d": StyleGAN2Discriminator(cfg["data"]["out_size"], md["channel_multiplier"], narrow=md["narrow"])
    }
    if md["weights"]:
        nets["d"].load_state_dict(load_weights(md["weights"], weights_dir), strict=True)
    comp = cfg["model"]["component_discriminators"]
    if comp["enabled"]:
        for part in ("left_eye", "right_eye", "mouth"):
            nets[part] = FacialComponentDiscriminator()
            if comp["weights"].get(part):
                nets[part].load_state_dict(load_weights(comp["weights"][part], weights_dir), strict=True)
    return nets


def build_identity(cfg: dict[str, Any], weights_dir: str | None = None) -> IdentityEmbedder | None:
    """Frozen identity embedder, or None when ``model.identity.arch`` is ``none``."""
    ident = cfg["model"]["identity"]
    if ident["arch"] == "none":
        return None
    embedder = IdentityEmbedder(ident["arch"])
    if ident["weights"]:
        embedder.net.load_state_dict(load_weights(ident["weights"], weights_dir), strict=True)
    else:
        log.warning("identity network has random weights (model.identity.weights is null): tests only")
    return embedder


def build_vgg(cfg: dict[str, Any], weights_dir: str | None = None) -> VGGFeatures | None:
    """Frozen VGG19 feature extractor, or None when the perceptual and style weights are both 0."""
    loss = cfg["loss"]
    if not loss["perceptual_weight"] and not loss["style_weight"]:
        return None
    spec = cfg["model"]["vgg_weights"]
    if spec is None:
        log.warning("VGG19 has random weights (model.vgg_weights is null): tests only")
        return VGGFeatures(list(loss["vgg_layers"]))
    try:
        state = load_weights(spec, weights_dir)
    except WeightsError as err:
        raise ConfigError(
            f"the perceptual loss needs ImageNet VGG19 weights ({spec!r}), which could not be loaded: {err}\n"
            "Download https://download.pytorch.org/models/vgg19-dcbb9e9d.pth and pass its path as "
            "model.vgg_weights=PATH (or put it in GFP_WEIGHTS_DIR), or switch the loss off with "
            "loss.perceptual_weight=0 loss.style_weight=0."
        ) from err
    return VGGFeatures(list(loss["vgg_layers"]), state)
