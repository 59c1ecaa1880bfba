"""Downloading a registry entry: progress bar, atomic write, sha256 (or size) verification."""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import IO

from tqdm import tqdm

from gfp.atomic import atomic_path, remove_abandoned
from gfp.registry import ModelEntry
from gfp.weights.errors import ChecksumMismatchError, DownloadError
from gfp.weights.files import CHECKPOINT_STARTS, HEAD_BYTES, page_or_text

_CHUNK = 1 << 20
_TIMEOUT_S = 30.0
_PART = ".part"  # a download's temporary file: .NAME.XXXXXXXX.part beside NAME (gfp.atomic)


def describe(err: BaseException) -> str:
    """A short reason for a failed request (HTTP status, no connection, or the exception)."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"no connection: {err.reason}"
    return f"{type(err).__name__}: {err}"


def remove_killed(dest: Path) -> None:
    """Delete the temporary files that downloads of ``dest`` killed outright left, hundreds of MB each
    (:func:`gfp.atomic.remove_abandoned`). Before each download, and when the cache has the file: one killed
    less than a minute before the next download began is too new to be taken for abandoned then, and no
    download of that file follows."""
    remove_abandoned(dest, _PART)


def download(entry: ModelEntry, dest: Path, progress: bool = True) -> Path:
    """Download ``entry`` to ``dest`` atomically with a progress bar, verifying its sha256 when known.

    Network failures before any byte arrives propagate as ``urllib.error.URLError``/``OSError`` (the caller
    reports them with the other places looked); a download cut midway raises :class:`DownloadError`.
    """
    if entry.url is None:
        raise urllib.error.URLError(f"{entry.name} has no public download")
    remove_killed(dest)
    request = urllib.request.Request(entry.url, headers={"User-Agent": "gfp"})
    with (
        urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response,
        atomic_path(dest, _PART, held=True) as tmp,
    ):
        total = int(response.headers.get("Content-Length") or 0) or None
        try:
            sha256, size, head = _copy_with_progress(response, tmp, total, entry.file_name, progress)
            if total is not None and size != total:
                raise DownloadError(f"connection closed after {size} of {total} bytes")
        except (OSError, http.client.HTTPException, DownloadError) as err:
            reason = err if isinstance(err, DownloadError) else describe(err)
            raise DownloadError(
                f"download of {entry.file_name} from {entry.url} was interrupted ({reason}); nothing was "
                f"saved as {dest}. Try again, or download it yourself and pass its path."
            ) from err
        # torch.save's zip format ends with its directory: without one, a server that gave no length
        # closed the connection early, which only the file itself shows where no size is known
        whole = not head.startswith(CHECKPOINT_STARTS[0]) or zipfile.is_zipfile(tmp)
        verify(entry, sha256, size, dest, head, whole)
    return dest


def _copy_with_progress(
    response: IO[bytes], dest: Path, total: int | None, label: str, progress: bool
) -> tuple[str, int, bytes]:
    """Stream ``response`` into ``dest`` under a tqdm bar; return the sha256, the byte count written and
    the first bytes (up to :data:`~gfp.weights.files.HEAD_BYTES`)."""
    digest = hashlib.sha256()
    size = 0
    head = b""
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not progress)
    with open(dest, "wb") as fh, bar:
        while chunk := response.read(_CHUNK):
            fh.write(chunk)
            digest.update(chunk)
            if len(head) < HEAD_BYTES:
                head += chunk[: HEAD_BYTES - len(head)]
            size += len(chunk)
            bar.update(len(chunk))
    return digest.hexdigest(), size, head


def verify(entry: ModelEntry, sha256: str, size: int, dest: Path, head: bytes, whole: bool = True) -> None:
    """Raise (so the temp file is discarded) when a download does not match the published file; a file with
    neither a known sha256 nor size must at least begin as a PyTorch checkpoint (``head``: its first
    bytes) and, in the zip format, end as one (``whole``), so that a server's error page sent as a success,
    or a download cut short, is not kept and loaded on every later run."""
    if entry.sha256 is not None and sha256 != entry.sha256:
        problem = f"sha256 {sha256}, expected {entry.sha256}"
    elif entry.size is not None and size != entry.size:
        problem = f"{size} bytes, expected {entry.size}"
    elif entry.sha256 is None and entry.size is None and not head.startswith(CHECKPOINT_STARTS):
        problem = (
            f"no PyTorch checkpoint in it: it is {page_or_text(head) or f'a file that begins {head[:8]!r}'}"
        )
    elif entry.sha256 is None and entry.size is None and not whole:
        problem = f"only the start of a PyTorch checkpoint ({size} bytes): the connection closed early"
    else:
        return
    raise ChecksumMismatchError(
        f"downloaded {entry.file_name} from {entry.url} has {problem}; the file was deleted and not used "
        f"(nothing saved as {dest}). The download may be corrupt or the release changed."
    )
