"""Where a model's weights are found. The first hit wins:

1. an explicit path to a file (``.pth`` / ``.safetensors``) or to a folder in our published format
   (``config.json`` + ``model.safetensors``);
2. a weights folder (the ``weights_dir`` argument, else env ``GFP_WEIGHTS_DIR``), where registry models are
   looked up by their official file name (``GFPGANv1.4.pth``) and Hugging Face repos by ``owner/name``;
3. our cache (env ``GFP_CACHE_DIR``, default ``~/.cache/gfp``), official file names again;
4. for an ``owner/name`` repo id: the Hugging Face Hub (its own cache, ``HF_ENDPOINT`` honoured);
5. for a registry model: its official release URL, downloaded into the cache (see
   :mod:`gfp.weights.download`).

A cached registry file that is empty or not its entry's known size is not the model (a cut copy would fail
to load on every run): it is downloaded again (5.), where there is a URL. A weights folder's file is the
user's own and is used whatever its size (a re-saved copy of the same tensors loads); when it fails to
load, :mod:`gfp.loading` says what its size shows.

When nothing works, :class:`WeightsNotFoundError` names the file, every place looked and how to provide it.
"""

from __future__ import annotations

import os
import re
import socket
import urllib.error
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gfp.registry import MODEL_ZOO, ModelEntry, zoo_entry
from gfp.weights.download import describe, download, remove_killed
from gfp.weights.errors import CheckpointError, WeightsError, WeightsNotFoundError
from gfp.weights.files import CONFIG_FILE, WEIGHTS_FILE

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PATH_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors", ".bin")


@dataclass(frozen=True)
class Resolved:
    """What resolution found: the local ``path``, the registry ``entry`` the spec named (None for a file,
    folder or repo given by the user), its ``format``: "checkpoint" (one weights file) or "published"
    (a folder with config.json + model.safetensors), and ``real``, the file's real path when it was
    found, which the model store keeps its networks under: a symbolic link and its target (or two links
    to one file) are read and built once, and a link pointed elsewhere later does not build a second
    network beside the first (``path`` only folds ``..`` and ``.``)."""

    path: Path
    entry: ModelEntry | None
    format: str
    real: str


def _found(path: Path, entry: ModelEntry | None = None) -> Resolved:
    # Absolute and normalised: every spelling of one file (w/x, ./w/x, /abs/w/../w/x) is one file, which
    # the model store loads once, whatever the working folder later becomes.
    path = Path(os.path.abspath(path))
    return Resolved(path, entry, "published" if path.is_dir() else "checkpoint", os.path.realpath(path))


def cache_dir() -> Path:
    """Where downloaded weights live: env ``GFP_CACHE_DIR``, else ``~/.cache/gfp``; ``WeightsError`` when
    neither is there (no ``HOME``, a user without a home folder)."""
    env = os.environ.get("GFP_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    try:
        return Path.home() / ".cache" / "gfp"
    except RuntimeError:  # Path.home(): no HOME and no home folder for this user
        raise WeightsError("no home folder to keep downloaded models in: set GFP_CACHE_DIR") from None


def _weights_dir(weights_dir: str | os.PathLike[str] | None) -> tuple[Path | None, str]:
    """The weights folder to search and where that choice came from (for error messages)."""
    if weights_dir is not None:
        return Path(weights_dir).expanduser(), "--weights-dir / weights_dir argument"
    env = os.environ.get("GFP_WEIGHTS_DIR")
    return (Path(env).expanduser(), "GFP_WEIGHTS_DIR") if env else (None, "")


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(_PATH_SUFFIXES) or spec.startswith(("/", "./", "../", "~", "."))


def resolve(
    name_or_path: str | os.PathLike[str],
    weights_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Resolved:
    """Find (downloading if needed) a model's weights; see the module docstring for the order."""
    spec = os.fspath(name_or_path)
    if not spec.strip():  # Path("") is the current folder
        raise WeightsNotFoundError("no model given: an empty name is neither a file, a folder nor a model")
    if _URL.match(spec):  # Path() would fold its "//" and call it a missing file
        raise WeightsNotFoundError(
            f"{spec}: a URL is not downloaded as a model; download the file and pass its path, or name a "
            "registry model (e.g. 1.4, fetched from its official URL) or a Hugging Face repo id (owner/name)"
        )
    explicit = Path(spec).expanduser()
    if explicit.exists():
        return _found(explicit)
    entry = zoo_entry(spec)
    if entry is not None:
        return _found(_resolve_zoo(entry, weights_dir, progress), entry)
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(spec):
        raise WeightsNotFoundError(f"weights file {explicit} does not exist")
    if _REPO_ID.match(spec):
        return _found(_resolve_hub(spec, weights_dir, progress))
    kinds: dict[str, list[str]] = {}
    for entry in MODEL_ZOO.values():
        kinds.setdefault(entry.kind, []).append(entry.name)
    known = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in kinds.items())
    raise WeightsNotFoundError(
        f"unknown model {spec!r}: give a file path, a Hugging Face repo id (owner/name) or a registry "
        f"model ({known}; GFPGAN versions may also be written 1.4, v1.4, ...)"
    )


def resolve_weights(
    name_or_path: str | os.PathLike[str],
    weights_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Path:
    """The local file or published-format folder of :func:`resolve`."""
    return resolve(name_or_path, weights_dir, progress).path


def _resolve_zoo(entry: ModelEntry, weights_dir: str | os.PathLike[str] | None, progress: bool) -> Path:
    looked: list[str] = []
    folder, origin = _weights_dir(weights_dir)
    if folder is None:
        looked.append("weights folder: none given (--weights-dir / weights_dir argument, or GFP_WEIGHTS_DIR)")
    else:
        candidate = folder / entry.file_name
        if candidate.is_file():
            return candidate  # the user's own, whatever its size (a re-saved copy loads; see size_problem)
        if folder.is_dir():
            looked.append(f"weights folder ({origin}): {candidate} does not exist")
        else:  # the folder itself is wrong: say so, not that one file is missing from it
            looked.append(
                f"weights folder ({origin}): {folder} {'is a file' if folder.exists() else 'does not exist'}"
            )
    cache = cache_dir()
    cached = cache / entry.file_name
    try:  # a cache folder that cannot be searched (no permission) is passed over as a missing file
        unusable = cache.exists() and not cache.is_dir()  # a file: nothing can be kept or downloaded there
        present, missing = not unusable and cached.is_file(), "does not exist"
    except OSError as err:
        unusable, present, missing = False, False, f"cannot be looked at ({describe(err)})"
    if unusable:
        looked.append(f"cache (GFP_CACHE_DIR or ~/.cache/gfp): {cache} is a file, not a folder")
    elif not present:
        looked.append(f"cache (GFP_CACHE_DIR or ~/.cache/gfp): {cached} {missing}")
    elif (problem := size_problem(cached, entry)) is None:
        remove_killed(cached)
        return cached
    elif entry.url is None:
        raise CheckpointError(
            f"{cached} (the download cache) {problem}: it is cut short or another file; delete it and put "
            f"{entry.file_name} there or in a weights folder"
        )
    else:  # a cut or failed copy is no download: fetched again (the download replaces it whole)
        looked.append(
            f"cache (GFP_CACHE_DIR or ~/.cache/gfp): {cached} {problem} (cut short or another copy), not used"
        )
    if entry.url is None:
        looked.append("download: none (no public download of this file)")
    elif unusable:
        looked.append(f"download {entry.url}: not tried (the cache is no folder to save it in)")
    else:
        try:
            return download(entry, cached, progress=progress)
        except (urllib.error.URLError, OSError) as err:
            looked.append(f"download {entry.url}: failed ({describe(err)})")
    source = f"download {entry.file_name} from {entry.url}" if entry.url else f"get {entry.file_name}"
    raise WeightsNotFoundError(
        f"could not find weights {entry.name!r} (file {entry.file_name}). Looked in:\n  - "
        + "\n  - ".join(looked)
        + f"\nTo provide it: {source} on a machine with internet, put it "
        f"in a folder and pass it as --weights-dir (weights_dir in Python) or GFP_WEIGHTS_DIR, or copy it to "
        f"{'a folder GFP_CACHE_DIR names' if unusable else cache}, or pass the file's path instead of the "
        "model name."
    )


def size_problem(path: Path, entry: ModelEntry) -> str | None:
    """Why ``path`` cannot be ``entry``'s official file, told by its size alone (a free stat; hashing hundreds
    of MB on every run would not be): it is empty, or not the entry's known size. None when it may be."""
    size = path.stat().st_size
    if size == 0:
        return "is empty"
    if entry.size is not None and size != entry.size:
        return f"has {size} bytes, not the official file's {entry.size}"
    return None


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
    host = urllib.parse.urlsplit(endpoint or constants.ENDPOINT).hostname or ""
    # Without a network the library retries each file five times (about 25 s each): its cache only, then.
    offline = not _resolvable(host)
    quiet = None if progress else _QuietTqdm
    try:
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            path = hf_hub_download(
                repo_id, name, endpoint=endpoint, tqdm_class=quiet, local_files_only=offline
            )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
        looked.append(f"Hugging Face cache {constants.HF_HUB_CACHE}: not there")
        reason = (str(err).splitlines() or [""])[0][:200]
        if offline:
            reason = f"no connection (cannot look up {host})"
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


def _resolvable(host: str) -> bool:
    """Whether ``host`` has an address (a quick test for a network before a download that retries)."""
    try:
        socket.getaddrinfo(host, 443)
    except (OSError, UnicodeError):
        return False
    return True


class _QuietTqdm(tqdm):
    """A tqdm that never draws, for ``progress=False`` Hub downloads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)
