"""Reading checkpoints without running pickled code, and our published format.

``.pth`` files go through ``torch.load(weights_only=True)``; our own format is a folder with
``config.json`` (a :class:`~gfp.archs.GeneratorConfig` plus format markers) and ``model.safetensors``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from gfp.archs import GeneratorConfig
from gfp.atomic import atomic_path
from gfp.messages import load_failure
from gfp.weights.errors import CheckpointError, UnsafeCheckpointError, WeightsNotFoundError

FORMAT_NAME = "gfp-generator"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
_FORMAT_KEYS = ("format", "format_version")
_CONFIG_KEY = "gfp_config"  # model.safetensors metadata: config.json's content

# Wrapper keys under which checkpoints keep their state dict, most preferred first: basicsr's EMA and
# plain weights, then the MobileFaceNet identity checkpoint's and the common ``state_dict``.
_STATE_DICT_KEYS = ("params_ema", "params", "net_state_dict", "state_dict")

HEAD_BYTES = 512
"""Bytes read from a would-be weights file's start to tell a checkpoint from a web page or text."""
CHECKPOINT_STARTS = (b"PK\x03\x04", b"\x80")
"""How a PyTorch checkpoint begins: ``torch.save``'s zip format, or a pickle (the legacy format)."""


def page_or_text(head: bytes) -> str | None:
    """What a would-be weights file is when its first bytes ``head`` show a web page or text (a server's
    error page saved under the file's name is the usual case), else None."""
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if text.startswith(b"<"):
        return "a web page (HTML or XML)"
    decoded = text.decode("utf-8", errors="ignore")  # ignore: a character cut at the end of ``head``
    return "a text file" if decoded and all(c.isprintable() or c.isspace() for c in decoded) else None


def load_state_dict(path: str | os.PathLike[str], mapped: bool = False) -> dict[str, Tensor]:
    """Load a state dict without running pickled code (:func:`read_weights` without the metadata)."""
    return read_weights(path, mapped)[0]


def read_weights(
    path: str | os.PathLike[str], mapped: bool = False
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(state dict, metadata) of a weights file, opened once; the metadata is a safetensors header's
    (where our format embeds its config: :func:`embedded_config`), empty for a ``.pth``.

    A folder means its ``model.safetensors``. Unwraps ``params_ema`` (preferred), ``params``,
    ``net_state_dict`` or ``state_dict`` and drops a ``module.`` prefix that every key carries.
    ``mapped``: the tensors are the file's pages, memory-mapped (a ``.pth`` where torch can; safetensors
    always maps), so nothing is read until their values are (README "Speed"); they must be copied before
    they are kept, or a file rewritten in place changes them or kills the process with SIGBUS. Otherwise
    the tensors have memory of their own. A file that does not load is looked at once more, to say when it
    is a web page or text rather than weights.
    """
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            return _read_safetensors(path, mapped)
        return _state_dict(_torch_load(path, mapped), path), {}
    except (CheckpointError, UnsafeCheckpointError):
        _refuse_page_or_text(path)  # the cause when it is a saved error page, rather than the loader's riddle
        raise


def _read_safetensors(path: Path, mapped: bool) -> tuple[dict[str, Tensor], dict[str, str]]:
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            keys = handle.keys()
            tensors = {key: handle.get_tensor(key) for key in keys}  # views of the mapped file
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    return (tensors if mapped else {key: tensor.clone() for key, tensor in tensors.items()}), metadata


def _state_dict(checkpoint: Any, path: Path) -> dict[str, Tensor]:
    """The state dict in a loaded ``.pth`` (unwrapped, ``module.`` prefixes dropped), checked."""
    if isinstance(checkpoint, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise CheckpointError(f"{path} holds no state dict (found {type(checkpoint).__name__})")
    bad = [k for k, v in checkpoint.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if bad:
        raise CheckpointError(
            f"{path} is not a state dict of tensors: {len(bad)} entries are not (e.g. {bad[0]!r}); "
            f"top-level keys: {', '.join(map(str, list(checkpoint)[:8]))}"
        )
    # Checkpoints saved from nn.DataParallel (some facexlib detectors) prefix every key with "module.".
    if all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k.removeprefix("module."): v for k, v in checkpoint.items()}
    return checkpoint


def _refuse_page_or_text(path: Path) -> None:
    """Say what a weights file is when it is a web page or text, instead of the loader's riddle
    (torch: "Unsupported operand 60")."""
    try:
        with open(path, "rb") as fh:
            kind = page_or_text(fh.read(HEAD_BYTES))
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from err
    if kind is not None:
        what = "safetensors file" if path.suffix == ".safetensors" else "PyTorch checkpoint"
        # no cure here: the loader of a registry model adds the one for where the file is (the download
        # cache's copy is downloaded again once deleted; a user's copy is replaced)
        raise CheckpointError(
            f"{path} is not a readable {what}: it is {kind}, not weights (a failed download can save a "
            "server's error page under the file's name)"
        )


def _torch_load(path: Path, mapped: bool) -> Any:
    try:
        return _load_mapped(path) if mapped else torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is None:
            raise CheckpointError(
                f"{path} is not a readable PyTorch checkpoint (refused by the safe loader, nothing in it was "
                f"run): {_unpickler_reason(err)}"
            ) from err
        raise UnsafeCheckpointError(
            f"refused to load {path}: it holds pickled Python objects other than tensors (it asks for "
            f"{found.group(1)}), which could run code. Nothing in it was executed. Load only checkpoints "
            "from sources you trust, saved as plain state dicts or safetensors."
        ) from err
    except Exception as err:  # arbitrary bytes make the unpickler fail in arbitrary ways (IndexError, ...)
        reason = (
            f"{type(err).__name__}: {load_failure(err)}"
            if str(err)
            else "the file ends early (empty or cut short)"
        )
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {reason}") from err


def _load_mapped(path: Path) -> Any:
    """``torch.load`` memory-mapping the file. Files that cannot be mapped (the pre-1.6 format; some
    re-saved files whose storages torch cannot map) are read whole, and any real fault shows there."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        return torch.load(path, map_location="cpu", weights_only=True)


def _unpickler_reason(err: Exception) -> str:
    """The informative part of torch's long weights-only error (or its first line)."""
    text = str(err)
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    return (found.group(1) if found else text.splitlines()[0]).strip()


def read_config(folder: str | os.PathLike[str]) -> GeneratorConfig:
    """The GeneratorConfig of a published-format folder, after checking its format markers."""
    config_path = Path(folder) / CONFIG_FILE
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {config_path}: {err}") from err
    return _config_from(data, config_path)


def embedded_config(metadata: dict[str, str], path: str | os.PathLike[str]) -> GeneratorConfig | None:
    """The GeneratorConfig that :func:`save_pretrained` writes into a ``model.safetensors``'s ``metadata``
    (:func:`read_weights`), so that the file alone, out of its folder, loads with its layout
    (``input_is_latent`` cannot be told from the weights); None for a file without one (a .pth, another
    tool's, one written before it was embedded). ``path`` names the file in errors."""
    text = metadata.get(_CONFIG_KEY)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise CheckpointError(f"{path}: its embedded {_CONFIG_KEY} is not JSON: {err}") from err
    return _config_from(data, f"{path} (its embedded {_CONFIG_KEY})")


def _config_from(data: Any, where: str | Path) -> GeneratorConfig:
    """The GeneratorConfig of a published config (``where`` names it in errors), its markers checked."""
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise CheckpointError(f'{where} is not a {FORMAT_NAME} config (no "format": "{FORMAT_NAME}")')
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} has format_version {version!r}; this gfp reads versions 1 to {FORMAT_VERSION} "
            "(a newer format needs a newer gfp)"
        )
    try:
        return GeneratorConfig.from_dict({k: v for k, v in data.items() if k not in _FORMAT_KEYS})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where} holds an invalid generator config: {err}") from err


def save_pretrained(
    generator: nn.Module, config: GeneratorConfig, folder: str | os.PathLike[str], card: str | None = None
) -> Path:
    """Write our published format (config.json + model.safetensors [+ README.md card]) into ``folder``."""
    folder = Path(folder)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in generator.state_dict().items()}
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **config.to_dict()}
    embedded = {"format": "pt", "gfp_format": FORMAT_NAME, _CONFIG_KEY: json.dumps(meta)}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(tensors, tmp, metadata=embedded)
    with atomic_path(folder / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if card is not None:
        with atomic_path(folder / CARD_FILE) as tmp:
            tmp.write_text(card, encoding="utf-8")
    return folder
