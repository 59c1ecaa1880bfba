"""Weights: the model zoo, where files are found, downloading, safe loading and device choice.

This is the only module that touches weight files, the network or devices. A model is resolved in this
order, the first hit wins:

1. an explicit path to a file (``.pth`` / ``.safetensors``) or to a folder in our published format
   (``config.json`` + ``model.safetensors``);
2. a weights folder (the ``weights_dir`` argument, else env ``GFP_WEIGHTS_DIR``), where zoo models are
   looked up by their official file name (``GFPGANv1.4.pth``) and Hugging Face repos by ``owner/name``;
3. our cache (env ``GFP_CACHE_DIR``, default ``~/.cache/gfp``), official file names again;
4. for an ``owner/name`` repo id: the Hugging Face Hub (its own cache, ``HF_ENDPOINT`` honoured);
5. for a zoo model: its official release URL, downloaded into the cache with a progress bar, written
   atomically (temp file + ``os.replace``) and checked against the official sha256 where it is known.

When nothing works, :class:`WeightsNotFoundError` names the file, every place looked and how to provide
it. Loading never unpickles code: ``.pth`` files go through ``torch.load(weights_only=True)`` and our own
format is safetensors.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import pickle
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

from gfp.archs import GeneratorConfig, UnknownArchitectureError, build_generator, detect_config

FORMAT_NAME = "gfp-generator"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
_CHUNK = 1 << 20
_TIMEOUT_S = 30.0
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class WeightsError(Exception):
    """Base class of every error this module raises for a missing, broken or unsafe weight file."""


class WeightsNotFoundError(WeightsError):
    """No copy of the requested weights could be found or downloaded."""


class ChecksumMismatchError(WeightsError):
    """A downloaded file does not have the official sha256 (it has been deleted)."""


class DownloadError(WeightsError):
    """A download started but did not complete (nothing was kept)."""


class UnsafeCheckpointError(WeightsError):
    """A checkpoint holds pickled objects other than tensors and plain containers; it was not loaded."""


class CheckpointError(WeightsError):
    """A file that is not a readable checkpoint of the expected kind."""


@dataclass(frozen=True)
class ModelEntry:
    """One downloadable model: where it comes from, how to check it, and (generators) how to build it."""

    name: str
    file_name: str
    url: str
    kind: str  # "generator" | "detector" | "parser" | "upsampler" | "identity" | "perceptual"
    sha256: str | None = None
    size: int | None = None
    config: GeneratorConfig | None = None
    note: str = ""


def _gfpgan(name: str, file_name: str, tag: str, arch: str, multiplier: int) -> ModelEntry:
    return ModelEntry(
        name=name,
        file_name=file_name,
        url=f"https://github.com/TencentARC/GFPGAN/releases/download/{tag}/{file_name}",
        kind="generator",
        config=GeneratorConfig(arch=arch, out_size=512, channel_multiplier=multiplier),
        note="official sha256 not available offline: not verified",
    )


_FACEXLIB = "https://github.com/xinntao/facexlib/releases/download"
_REALESRGAN = "https://github.com/xinntao/Real-ESRGAN/releases/download"

MODEL_ZOO: dict[str, ModelEntry] = {
    e.name: e
    for e in (
        _gfpgan("v1", "GFPGANv1.pth", "v0.1.0", "v1", 1),
        _gfpgan("v1.2", "GFPGANCleanv1-NoCE-C2.pth", "v0.2.0", "clean", 2),
        _gfpgan("v1.3", "GFPGANv1.3.pth", "v1.3.0", "clean", 2),
        _gfpgan("v1.4", "GFPGANv1.4.pth", "v1.3.0", "clean", 2),
        ModelEntry(
            "retinaface_resnet50",
            "detection_Resnet50_Final.pth",
            f"{_FACEXLIB}/v0.1.0/detection_Resnet50_Final.pth",
            "detector",
            sha256="6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d",
            size=109497761,
        ),
        ModelEntry(
            "retinaface_mobile0.25",
            "detection_mobilenet0.25_Final.pth",
            f"{_FACEXLIB}/v0.1.0/detection_mobilenet0.25_Final.pth",
            "detector",
            sha256="38ec7bb3c9cbfe2f40edabc05fab970a6d648747cbc534092be85d5eb9b37ed0",
            size=1789735,
            note="hash of the offline copy (shared data SHA256SUMS), a legacy-format original, not re-saved",
        ),
        ModelEntry(
            "parsenet",
            "parsing_parsenet.pth",
            f"{_FACEXLIB}/v0.2.2/parsing_parsenet.pth",
            "parser",
            sha256="3d558d8d0e42c20224f13cf5a29c79eba2d59913419f945545d8cf7b72920de2",
            size=85331193,
        ),
        ModelEntry(
            "RealESRGAN_x2plus",
            "RealESRGAN_x2plus.pth",
            f"{_REALESRGAN}/v0.2.1/RealESRGAN_x2plus.pth",
            "upsampler",
            sha256="49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb",
            size=67061725,
        ),
        ModelEntry(
            "realesr-general-x4v3",
            "realesr-general-x4v3.pth",
            f"{_REALESRGAN}/v0.2.5.0/realesr-general-x4v3.pth",
            "upsampler",
            note="official sha256 not available offline: not verified",
        ),
        ModelEntry(
            "arcface_resnet18",
            "arcface_resnet18.pth",
            "https://github.com/TencentARC/GFPGAN/releases/download/v0.1.0/arcface_resnet18.pth",
            "identity",
            note="official sha256 not available offline: not verified",
        ),
        ModelEntry(
            "vgg19",
            "vgg19-dcbb9e9d.pth",
            "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
            "perceptual",
            note="torchvision ImageNet VGG19; full sha256 not known offline: not verified",
        ),
        ModelEntry(
            "realesr-animevideov3",
            "realesr-animevideov3.pth",
            f"{_REALESRGAN}/v0.2.5.0/realesr-animevideov3.pth",
            "upsampler",
            sha256="b8a8376811077954d82ca3fcf476f1ac3da3e8a68a4f4d71363008000a18b75d",
            size=2504012,
        ),
    )
}


def zoo_entry(name: str) -> ModelEntry | None:
    """The zoo entry for a model name, a GFPGAN version ("1.4", "v1.4", "1") or an official file name."""
    if name in MODEL_ZOO:
        return MODEL_ZOO[name]
    version = name.lower().removeprefix("gfpgan").removeprefix("v")
    if f"v{version}" in MODEL_ZOO and MODEL_ZOO[f"v{version}"].kind == "generator":
        return MODEL_ZOO[f"v{version}"]
    return next((e for e in MODEL_ZOO.values() if e.file_name == name), None)


def cache_dir() -> Path:
    """Where downloaded weights live: env ``GFP_CACHE_DIR``, else ``~/.cache/gfp``."""
    return Path(os.environ.get("GFP_CACHE_DIR") or Path.home() / ".cache" / "gfp").expanduser()


def _weights_dir(weights_dir: str | os.PathLike[str] | None) -> tuple[Path | None, str]:
    """The weights folder to search and where that choice came from (for error messages)."""
    if weights_dir is not None:
        return Path(weights_dir).expanduser(), "weights_dir argument"
    env = os.environ.get("GFP_WEIGHTS_DIR")
    return (Path(env).expanduser(), "GFP_WEIGHTS_DIR") if env else (None, "")


def _looks_like_path(spec: str) -> bool:
    suffixes = (".pth", ".pt", ".ckpt", ".safetensors", ".bin")
    return spec.endswith(suffixes) or spec.startswith(("/", "./", "../", "~", "."))


def resolve_weights(
    name_or_path: str | os.PathLike[str],
    weights_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Path:
    """Find (downloading if needed) a model's weights and return the local file or published-format folder."""
    spec = os.fspath(name_or_path)
    explicit = Path(spec).expanduser()
    if explicit.exists():
        return explicit
    entry = zoo_entry(spec)
    if entry is not None:
        return _resolve_zoo(entry, weights_dir, progress)
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(spec):
        raise WeightsNotFoundError(f"weights file {explicit} does not exist")
    if _REPO_ID.match(spec):
        return _resolve_hub(spec, weights_dir, progress)
    raise WeightsNotFoundError(
        f"unknown model {spec!r}: give a file path, a Hugging Face repo id (owner/name) or one of "
        f"{', '.join(MODEL_ZOO)} (GFPGAN versions may also be written 1.4, v1.4, ...)"
    )


def _resolve_zoo(entry: ModelEntry, weights_dir: str | os.PathLike[str] | None, progress: bool) -> Path:
    looked: list[str] = []
    folder, origin = _weights_dir(weights_dir)
    if folder is None:
        looked.append("weights folder: none given (weights_dir argument / GFP_WEIGHTS_DIR not set)")
    else:
        candidate = folder / entry.file_name
        if candidate.is_file():
            return candidate
        looked.append(f"weights folder ({origin}): {candidate} does not exist")
    cached = cache_dir() / entry.file_name
    if cached.is_file():
        return cached
    looked.append(f"cache (GFP_CACHE_DIR or ~/.cache/gfp): {cached} does not exist")
    try:
        return download(entry, cached, progress=progress)
    except (urllib.error.URLError, OSError) as err:
        looked.append(f"download {entry.url}: failed ({_describe(err)})")
    raise WeightsNotFoundError(
        f"could not find weights {entry.name!r} (file {entry.file_name}). Looked in:\n  - "
        + "\n  - ".join(looked)
        + f"\nTo provide it: download {entry.file_name} from {entry.url} on a machine with internet, put it "
        f"in a folder and pass that folder as weights_dir (or set GFP_WEIGHTS_DIR to it), or copy it to "
        f"{cache_dir()}, or pass the file's path instead of the model name."
    )


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"no connection: {err.reason}"
    return f"{type(err).__name__}: {err}"


@contextmanager
def _atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temp path beside ``dest``; it is renamed to ``dest`` only if the block succeeds, else deleted.

    Readers therefore never see a half-written file under the final name, even if the process dies.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def download(entry: ModelEntry, dest: Path, progress: bool = True) -> Path:
    """Download ``entry`` to ``dest`` atomically with a progress bar, verifying its sha256 when known.

    Network failures before any byte arrives propagate as ``urllib.error.URLError``/``OSError`` (the caller
    reports them with the other places looked); a download cut midway raises :class:`DownloadError`.
    """
    request = urllib.request.Request(entry.url, headers={"User-Agent": "gfp"})
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response, _atomic_path(dest) as tmp:
        total = int(response.headers.get("Content-Length") or 0) or None
        try:
            sha256, size = _copy_with_progress(response, tmp, total, entry.file_name, progress)
            if total is not None and size != total:
                raise DownloadError(f"connection closed after {size} of {total} bytes")
        except (OSError, http.client.HTTPException, DownloadError) as err:
            reason = err if isinstance(err, DownloadError) else _describe(err)
            raise DownloadError(
                f"download of {entry.file_name} from {entry.url} was interrupted ({reason}); nothing was "
                f"saved as {dest}. Try again, or download it yourself and pass its path."
            ) from err
        _verify(entry, sha256, size, dest)
    return dest


def _copy_with_progress(
    response: IO[bytes], dest: Path, total: int | None, label: str, progress: bool
) -> tuple[str, int]:
    """Stream ``response`` into ``dest`` under a tqdm bar; return the sha256 and byte count written."""
    digest = hashlib.sha256()
    size = 0
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not progress)
    with open(dest, "wb") as fh, bar:
        while chunk := response.read(_CHUNK):
            fh.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            bar.update(len(chunk))
    return digest.hexdigest(), size


def _verify(entry: ModelEntry, sha256: str, size: int, dest: Path) -> None:
    """Raise (so the temp file is discarded) when a download does not match the official file."""
    if entry.sha256 is not None and sha256 != entry.sha256:
        problem = f"sha256 {sha256}, expected {entry.sha256}"
    elif entry.sha256 is None and entry.size is not None and size != entry.size:
        problem = f"{size} bytes, expected {entry.size}"
    else:
        return
    raise ChecksumMismatchError(
        f"downloaded {entry.file_name} from {entry.url} has {problem}; the file was deleted and not used "
        f"(nothing saved as {dest}). The download may be corrupt or the release changed."
    )


def _resolve_hub(repo_id: str, weights_dir: str | os.PathLike[str] | None, progress: bool) -> Path:
    """A published-format folder: ``weights_dir/owner/name`` if present, else from the Hugging Face Hub."""
    folder, origin = _weights_dir(weights_dir)
    looked = [f"local path {Path(repo_id).resolve()}: does not exist"]
    if folder is not None:
        local = folder / repo_id
        if (local / CONFIG_FILE).is_file():
            return local
        looked.append(f"weights folder ({origin}): {local}/{CONFIG_FILE} does not exist")
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now: the library reads it only at import
    quiet = None if progress else _QuietTqdm
    try:
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            path = hf_hub_download(repo_id, name, endpoint=endpoint, tqdm_class=quiet)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
        looked.append(f"Hugging Face cache {constants.HF_HUB_CACHE}: not there")
        reason = (str(err).splitlines() or [""])[0][:200]
        looked.append(
            f"Hugging Face Hub {endpoint or constants.ENDPOINT}/{repo_id}: {type(err).__name__} {reason}"
        )
        raise WeightsNotFoundError(
            f"could not get {CONFIG_FILE} + {WEIGHTS_FILE} of Hugging Face repo {repo_id!r}. Looked in:\n  - "
            + "\n  - ".join(looked)
            + f"\nTo provide it: download the repo (e.g. `hf download {repo_id} --local-dir DIR`) and pass "
            f"DIR, or put it at <weights folder>/{repo_id} and pass weights_dir (or set GFP_WEIGHTS_DIR)."
        ) from err
    return Path(path).parent


class _QuietTqdm(tqdm):
    """A tqdm that never draws, for ``progress=False`` Hub downloads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


# Wrapper keys under which checkpoints keep their state dict, most preferred first: basicsr's EMA and
# plain weights, then the MobileFaceNet identity checkpoint's and the common ``state_dict``.
_STATE_DICT_KEYS = ("params_ema", "params", "net_state_dict", "state_dict")


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Load a state dict without running pickled code.

    Unwraps ``params_ema`` (preferred), ``params``, ``net_state_dict`` or ``state_dict`` and drops a
    ``module.`` prefix that every key carries.
    """
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    checkpoint = _torch_load(path)
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


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
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
        reason = f"{type(err).__name__}: {err}"
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {reason}") from err


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
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise CheckpointError(f'{config_path} is not a {FORMAT_NAME} config (no "format": "{FORMAT_NAME}")')
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path} has format_version {version!r}; this gfp reads versions 1 to {FORMAT_VERSION} "
            "(a newer format needs a newer gfp)"
        )
    try:
        return GeneratorConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{config_path} holds an invalid generator config: {err}") from err


def load_generator(
    spec: str | os.PathLike[str],
    weights_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    half: bool = False,
) -> tuple[nn.Module, GeneratorConfig]:
    """Build and load a GFPGAN generator from a version, file, published folder or Hub repo id.

    Returns the network ready for inference (see :func:`prepare_for_inference`) and its config. The layout
    of a ``.pth``/``.safetensors`` file is recognised from its keys and shapes, so any official or
    self-trained checkpoint works without being told what it is.
    """
    path = resolve_weights(spec, weights_dir)
    state_dict = load_state_dict(path)
    if path.is_dir():
        config = read_config(path)
    else:
        try:
            config = detect_config(state_dict)
        except UnknownArchitectureError as err:
            raise UnknownArchitectureError(f"{path}: {err}") from err
    entry = zoo_entry(os.fspath(spec))
    if entry is not None and entry.config is not None and entry.config != config:
        raise CheckpointError(f"{path} is not GFPGAN {entry.name}: its layout is {config}")
    generator = build_generator(config)
    try:
        generator.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit its config {config}: {err}") from err
    return prepare_for_inference(generator, device, half), config


def load_network(
    net: nn.Module,
    name_or_path: str | os.PathLike[str],
    weights_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    half: bool = False,
) -> nn.Module:
    """Load the weights of ``name_or_path`` strictly into ``net`` and prepare it for inference.

    For the helper networks (detector, face parser, background upsampler) whose architecture the caller
    builds; GFPGAN generators go through :func:`load_generator`, which recognises their layout.
    """
    path = resolve_weights(name_or_path, weights_dir)
    try:
        net.load_state_dict(load_state_dict(path), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit {type(net).__name__}: {err}") from err
    return prepare_for_inference(net, device, half)


def prepare_for_inference(
    net: nn.Module, device: str | torch.device | None = None, half: bool = False
) -> nn.Module:
    """Eval mode, no gradients, on ``device`` (see :func:`select_device`); float16 only off the CPU.

    This is the one place that decides where and in which precision a network runs.
    """
    target = select_device(device)
    dtype = torch.float16 if half and target.type != "cpu" else torch.float32
    return net.eval().requires_grad_(False).to(device=target, dtype=dtype)


def save_pretrained(
    generator: nn.Module, config: GeneratorConfig, folder: str | os.PathLike[str], card: str | None = None
) -> Path:
    """Write our published format (config.json + model.safetensors [+ README.md card]) into ``folder``."""
    folder = Path(folder)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in generator.state_dict().items()}
    with _atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt", "gfp_format": FORMAT_NAME})
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **config.to_dict()}
    with _atomic_path(folder / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if card is not None:
        with _atomic_path(folder / CARD_FILE) as tmp:
            tmp.write_text(card, encoding="utf-8")
    return folder


def select_device(name: str | torch.device | None = None) -> torch.device:
    """``None``/"auto" picks cuda, then mps, then cpu; an explicit device is checked to exist."""
    if name is None or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise ValueError(f"device {name!r} requested but {count} CUDA device(s) are available")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} requested but MPS is not available")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device
