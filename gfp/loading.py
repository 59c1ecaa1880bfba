"""Networks from weights: build a registry model or a GFPGAN generator and load its weights strictly.

The weights themselves are handled by :mod:`gfp.weights` (resolution order, download and verification,
safe reading and our published format), what each model is by :mod:`gfp.registry`, devices and precision
by :mod:`gfp.devices`. The names of those modules that callers used to import from here (``MODEL_ZOO``,
``resolve_weights``, ``load_state_dict``, ``save_pretrained``, the errors, ``select_device``, ...) are
re-exported, so ``from gfp.loading import ...`` keeps working.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from gfp.archs import GeneratorConfig, UnknownArchitectureError, detect_config
from gfp.devices import Placement, decide_precision, prepare_for_inference, select_device
from gfp.registry import (
    GFPGAN,
    MODEL_ZOO,
    ModelEntry,
    Supports,
    build,
    generator_supports,
    recognise,
    zoo_entry,
)
from gfp.weights.download import download
from gfp.weights.errors import (
    CheckpointError,
    ChecksumMismatchError,
    DownloadError,
    UnsafeCheckpointError,
    WeightsError,
    WeightsNotFoundError,
)
from gfp.weights.files import (
    CARD_FILE,
    CONFIG_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    embedded_config,
    load_state_dict,
    read_config,
    read_weights,
    save_pretrained,
)
from gfp.weights.resolve import Resolved, cache_dir, resolve, resolve_weights, size_problem

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MODEL_ZOO",
    "WEIGHTS_FILE",
    "CheckpointError",
    "ChecksumMismatchError",
    "DownloadError",
    "ForeignWeightsError",
    "ModelEntry",
    "Network",
    "Placement",
    "Resolved",
    "UnsafeCheckpointError",
    "WeightsError",
    "WeightsNotFoundError",
    "cache_dir",
    "decide_precision",
    "download",
    "generator_from",
    "generator_network",
    "generator_weights",
    "load_generator",
    "load_model",
    "load_network",
    "load_state_dict",
    "model_network",
    "prepare_for_inference",
    "read_config",
    "read_generator",
    "resolve",
    "resolve_weights",
    "save_pretrained",
    "select_device",
    "zoo_entry",
]


class ForeignWeightsError(CheckpointError, UnknownArchitectureError):
    """A readable weight file that is not a network we know (or not the kind asked for): a
    :class:`WeightsError`, so callers stop at once as for missing weights, and an
    :class:`UnknownArchitectureError`, what the recognisers raise."""


Spec = str | os.PathLike[str] | Resolved
"""A model as callers name it (version, registry name, file, folder, Hub repo id) or already resolved."""


@dataclass(frozen=True)
class Network:
    """A network ready to run: called like its module, with what it is made for and where it runs.

    ``run`` is the module (PyTorch or OpenVINO) or, for the generator, a face function (aligned faces →
    restored faces); call it inside ``placement.autocast()``. ``config`` is the generator's
    :class:`GeneratorConfig` (None for others).
    """

    run: Callable[[Tensor], Any]
    supports: Supports
    placement: Placement
    config: GeneratorConfig | None = None


def _resolved(spec: Spec, weights_dir: str | os.PathLike[str] | None) -> Resolved:
    return spec if isinstance(spec, Resolved) else resolve(spec, weights_dir)


def _read(found: Resolved, mapped: bool = False) -> tuple[dict[str, Tensor], dict[str, str]]:
    """:func:`read_weights` of ``found``; when a registry model's file does not load, the error also says
    what its size shows and what to do (a cached copy is downloaded again once deleted)."""
    try:
        return read_weights(found.path, mapped)
    except CheckpointError as err:
        entry = found.entry
        if entry is None:
            raise
        problem = size_problem(found.path, entry)
        what = f"it {problem}, so it is cut short or another file" if problem else ""
        try:
            cached = found.path.parent == Path(os.path.abspath(cache_dir()))  # as resolve() spells it
        except WeightsError:  # no cache folder at all: the file is elsewhere
            cached = False
        fix = (
            "it is the download cache's copy: delete it and it is downloaded again"
            if cached
            else f"replace it with {entry.file_name} from {entry.url or 'its source'}"
        )
        raise type(err)(f"{err} ({'; '.join(filter(None, (what, fix)))})") from err


def read_generator(
    spec: Spec, weights_dir: str | os.PathLike[str] | None = None, mapped: bool = False
) -> tuple[dict[str, Tensor], GeneratorConfig, Resolved]:
    """(state dict, config, where it was found) of a GFPGAN generator, without building it
    (:func:`generator_weights` of what ``spec`` resolves to)."""
    found = _resolved(spec, weights_dir)
    return (*generator_weights(found, mapped), found)


def generator_weights(found: Resolved, mapped: bool = False) -> tuple[dict[str, Tensor], GeneratorConfig]:
    """(state dict, config) of the GFPGAN generator ``found`` by resolution, without building it.

    The config comes from a published folder's config.json, else from the copy our ``model.safetensors``
    carries (:func:`gfp.weights.files.embedded_config`), else it is recognised from the weights' keys and
    shapes. A registry version (e.g. "1.4") must have that version's layout. ``mapped``: see
    :func:`gfp.weights.files.read_weights` (the layout is known without reading the values).
    """
    state_dict, metadata = _read(found, mapped)
    # a published folder's config.json, else the one our model.safetensors carries out of its folder
    config = read_config(found.path) if found.format == "published" else embedded_config(metadata, found.path)
    if config is None:
        try:
            config = detect_config(state_dict)
        except UnknownArchitectureError as err:
            raise ForeignWeightsError(f"{found.path}: {_recognised_as(state_dict) or err}") from err
    entry = found.entry
    if entry is not None and entry.config is not None and entry.config != config:
        raise CheckpointError(f"{found.path} is not GFPGAN {entry.name}: its layout is {config}")
    return state_dict, config


def _recognised_as(state_dict: dict[str, Tensor]) -> str:
    """What weights that are no generator are, when another registered family recognises them (a detector
    or upsampler file given as the model), for the error to say instead of the keys it lacks; else ""."""
    try:
        family, _ = recognise(state_dict)
    except UnknownArchitectureError:
        return ""
    return f"not a GFPGAN generator: it is a {family.label} {family.kind} file (family {family.name})"


def load_generator(
    spec: Spec,
    weights_dir: str | os.PathLike[str] | None = None,
    placement: Placement | None = None,
) -> tuple[nn.Module, GeneratorConfig]:
    """Build and load a GFPGAN generator from a version, file, published folder or Hub repo id.

    Returns the network ready for inference on ``placement`` (None: the CPU in float32) and its config.
    The layout of a ``.pth``/``.safetensors`` file is recognised from its keys and shapes, so any official
    or self-trained checkpoint works without being told what it is.
    """
    state_dict, config, found = read_generator(spec, weights_dir)
    return generator_from(state_dict, config, found, placement), config


def generator_from(
    state_dict: dict[str, Tensor],
    config: GeneratorConfig,
    found: Resolved,
    placement: Placement | None = None,
) -> nn.Module:
    """The generator of ``config`` holding ``state_dict`` (read from ``found``), ready on ``placement``
    (:func:`generator_network`'s module)."""
    return generator_network(state_dict, config, found, placement).run


def generator_network(
    state_dict: dict[str, Tensor],
    config: GeneratorConfig,
    found: Resolved,
    placement: Placement | None = None,
) -> Network:
    """The generator of ``config`` holding ``state_dict`` (read from ``found``), on ``placement`` (None: the
    CPU in float32) narrowed to what its layout supports (:func:`gfp.registry.generator_supports`)."""
    supports = generator_supports(config)
    placed = (placement or Placement()).for_model(supports)
    try:
        net = placed.build(lambda: GFPGAN.build(config), state_dict)
    except RuntimeError as err:
        raise CheckpointError(f"{found.path} does not fit its config {config}: {misfit(err)}") from err
    return Network(net, supports, placed, config)


def misfit(err: RuntimeError) -> str:
    """torch's refusal of a state dict (a line per key, tens of kilobytes for a whole network) in one line:
    how many keys are missing, unexpected, of another shape or not copyable, with the first of each."""
    text = str(err)
    parts = []
    for label, kind in (("missing", "Missing"), ("unexpected", "Unexpected")):
        found = re.search(kind + r" key\(s\) in state_dict: (.*)", text)
        keys = re.findall(r'"([^"]+)"', found[1]) if found else []
        if keys:
            parts.append(
                f"{len(keys)} {label} key(s) ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
            )
    shapes = re.findall(
        r"size mismatch for (\S+): copying a param with shape (\S+) from checkpoint, the shape in current "
        r"model is (\S+?)\.?$", text, re.MULTILINE
    )  # fmt: skip
    if shapes:
        name, theirs, ours = shapes[0]
        parts.append(
            f"{len(shapes)} tensor(s) of another shape (first {name}: {theirs} in the file, {ours} here)"
        )
    copies = re.findall(
        r'While copying the parameter named "([^"]+)".*an exception occurred : \((.*)\)', text
    )
    if copies:
        name, reason = copies[0]
        reason = reason.rstrip(",").strip("'\"")
        parts.append(f"{len(copies)} tensor(s) not copyable (first {name}: {reason})")
    return "; ".join(parts) or (text.strip().splitlines() or [type(err).__name__])[0][:300]


def load_network(
    net: nn.Module,
    spec: Spec,
    weights_dir: str | os.PathLike[str] | None = None,
    placement: Placement | None = None,
) -> nn.Module:
    """Load the weights of ``spec`` strictly into ``net`` (built by the caller); ready it for inference."""
    found = _resolved(spec, weights_dir)
    try:
        net.load_state_dict(_read(found)[0], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{found.path} does not fit {type(net).__name__}: {misfit(err)}") from err
    return prepare_for_inference(net, placement)


def load_model(
    spec: Spec,
    weights_dir: str | os.PathLike[str] | None = None,
    placement: Placement | None = None,
) -> nn.Module:
    """A registry model (detector, parser, upsampler, ...) with its weights, ready for inference
    (:func:`model_network`'s module)."""
    return model_network(_resolved(spec, weights_dir), placement).run


def model_network(found: Resolved, placement: Placement | None = None) -> Network:
    """The model ``found`` by resolution with its weights, on ``placement`` (None: the CPU in float32)
    narrowed to what the model supports: read, recognised, built, in that order and once each.

    A registry name builds that entry's network; a file is recognised from its weights by the registered
    families (see :func:`gfp.registry.recognise`) and runs in float32.
    """
    state_dict = _read(found)[0]
    if found.entry is not None:
        entry = found.entry
        make, what, supports = (lambda: build(entry)), entry.name, entry.supports
    else:
        try:
            family, config = recognise(state_dict)
        except UnknownArchitectureError as err:
            raise ForeignWeightsError(f"{found.path}: {err}") from err
        make, what, supports = (lambda: family.build(config)), family.name, Supports()
    placed = (placement or Placement()).for_model(supports)
    try:
        net = placed.build(make, state_dict)
    except RuntimeError as err:
        raise CheckpointError(f"{found.path} does not fit {what}: {misfit(err)}") from err
    return Network(net, supports, placed)
