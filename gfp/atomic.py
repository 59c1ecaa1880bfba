"""Files that appear whole: written under a temporary name beside their destination, then renamed.

A reader never sees half a file under the final name, even if the writer dies. The temporary file is
created with the permissions any new file gets (0666 less the umask, as ``open`` would give), not
``tempfile.mkstemp``'s owner-only 0600, so outputs, downloads and published models are as readable as
the user's other files. A writer killed outright (SIGKILL, the out-of-memory killer) runs no cleanup: a
temporary file it held (``atomic_path(..., held=True)``) is removed by the next writer of the same file
(:func:`remove_abandoned`). :func:`unwinding_on_termination` makes a killed job (SIGTERM, SIGHUP) clean up
as Ctrl-C does, and :func:`new_folders_undone` takes back the empty folders a failed write made.
"""

from __future__ import annotations

import errno
import glob
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows, where a file open in a live writer cannot be deleted anyway
    fcntl = None  # type: ignore[assignment]

# The temporary file of an output (".NAME.XXXX.tmp" beside NAME: write_image's, and gfp.video's for a clip)
# until it is renamed over NAME: what a killed writer leaves behind, and how a later run finds it.
PARTIAL_SUFFIX = ".tmp"
PARTIAL_GLOB = f".*{PARTIAL_SUFFIX}"

_NAME_MAX = 255
"""Bytes in one file name on the usual file systems: a temporary name is cut to fit."""
_TOKEN_HEX = 8
"""Hex digits of the random part of a temporary name."""
ABANDONED_AFTER_S = 60.0
"""A held temporary file this old, and unlocked, has lost its writer (:func:`remove_abandoned`)."""
STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)
"""What a stopped job or service, or a closed terminal, sends (Windows has no SIGHUP)."""
_MADE: ContextVar[list[Path] | None] = ContextVar("gfp_made_folders", default=None)
"""The folders :func:`make_folder` made inside the innermost :func:`new_folders_undone` (None outside)."""
_WRITE_TRIES = 3
"""Folder made again, new file tried again: another writer may remove an empty folder it made meanwhile."""


def _temp_beside(dest: Path, suffix: str) -> tuple[int, Path]:
    """(open write descriptor, path) of a new file named ``.{dest.name}.{random}{suffix}`` beside ``dest``
    (the name cut short where the whole would be longer than a file name may be)."""
    while True:
        tmp = dest.with_name(_temp_name(dest, secrets.token_hex(_TOKEN_HEX // 2), suffix))
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # another writer drew the same name
            continue
        except OSError as err:  # say which file could not be written, not the temporary name
            raise type(err)(err.errno, err.strerror, str(dest)) from None


def _temp_name(dest: Path, token: str, suffix: str) -> str:
    """``.{dest.name}.{token}{suffix}``, ``dest.name`` cut short to fit a file name."""
    tail = f".{token}{suffix}"
    room = _NAME_MAX - len(f".{tail}".encode())
    name = os.fsencode(dest.name)[:room].decode(errors="ignore") if room > 0 else ""
    return f".{name}{tail}"


def temp_files(dest: Path, suffix: str, names: str | None = None) -> list[Path]:
    """The temporary files :func:`atomic_path` made for ``dest`` with ``suffix`` that are still there (a
    killed writer's, or a running one's), and none of another file's; ``names``: those of every file beside
    ``dest`` whose name matches that glob (``"step_*.pt"``) instead."""
    tail = f".{'0' * _TOKEN_HEX}{suffix}"
    start = f".{names}" if names else glob.escape(_temp_name(dest, "0" * _TOKEN_HEX, suffix)[: -len(tail)])
    pattern = f"{start}.{'[0-9a-f]' * _TOKEN_HEX}{glob.escape(suffix)}"
    return sorted(dest.parent.glob(pattern))


def make_folder(folder: Path) -> None:
    """Make ``folder`` and its parents; a file in the way is a ``NotADirectoryError`` naming that file
    (``mkdir`` says only "File exists", naming the folder it was asked for). The folders are looked at
    only when ``mkdir`` fails: every file written passes here. Inside :func:`new_folders_undone` the folders
    made are noted, to be removed again if the block fails."""
    try:
        made = _mkdir(folder)
    except (FileExistsError, NotADirectoryError):
        for part in (folder, *folder.parents):
            if part.exists() and not part.is_dir():
                why = f"{part} is a file, not a folder"
                raise NotADirectoryError(errno.ENOTDIR, why, str(part)) from None
        raise
    noted = _MADE.get()
    if noted is not None:
        noted.extend(made)


def _mkdir(folder: Path) -> list[Path]:
    """Make ``folder`` and its missing parents; the folders this call made, outermost first (a folder made
    meanwhile by another process is not among them: only one ``mkdir`` of a name succeeds)."""
    try:
        folder.mkdir()
    except FileNotFoundError:  # a parent is missing
        if folder.parent == folder:
            raise
        made = _mkdir(folder.parent)
        return made + _mkdir(folder)
    except OSError as err:
        if folder.is_dir():  # a folder already, or a link to one (as ``mkdir(exist_ok=True)`` takes it)
            return []
        if isinstance(err, FileExistsError) and not os.path.lexists(folder):
            return _mkdir(folder)  # there, then removed (a failed writer's, empty) before it was looked at
        raise
    return [folder]


@contextmanager
def new_folders_undone() -> Iterator[None]:
    """Remove the folders :func:`make_folder` made in the block if the block fails (a full disk, Ctrl-C):
    a failed run leaves no empty ``restored_videos/``. Only those this process made, deepest first, and
    each only while empty (``os.rmdir`` refuses another): a folder that another writer (a ``gfp batch``
    worker) has put a file in meanwhile stays, and one it is about to write into is made again by
    :func:`atomic_path`. On success the folders count as made by an enclosing block."""
    made: list[Path] = []
    token = _MADE.set(made)
    try:
        yield
    except BaseException:
        for folder in reversed(made):
            with suppress(OSError):
                os.rmdir(folder)
        raise
    finally:
        _MADE.reset(token)
    outer = _MADE.get()
    if outer is not None:
        outer.extend(made)


@contextmanager
def atomic_path(dest: Path, suffix: str = ".part", held: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``dest``: renamed to ``dest`` if the block succeeds, else deleted.

    A ``dest`` that is a folder, or one that cannot be written, raises ``OSError`` naming ``dest`` before
    the block runs, so no work is done for a file that could not be kept. ``held``: the temporary file is
    locked until it is renamed or deleted, so that :func:`remove_abandoned` leaves it alone (for long
    writes, whose writer may be killed outright: downloads, clips; the block must write the file in place,
    not make it anew). The folders made for ``dest`` are removed again when it is not written (each while
    empty, :func:`new_folders_undone`); one that another writer removes meanwhile is made again.
    """
    with new_folders_undone():  # a failed write leaves no folder it made
        for attempt in range(_WRITE_TRIES):
            make_folder(dest.parent)
            if dest.is_dir():
                raise IsADirectoryError(errno.EISDIR, "a folder is there", str(dest))
            try:
                fd, tmp = _temp_beside(dest, suffix)
                break
            except FileNotFoundError:  # the folder was removed after make_folder (a failed writer's, empty)
                if attempt == _WRITE_TRIES - 1 or dest.parent.is_dir():
                    raise
        mode = os.fstat(fd).st_mode & 0o777
        if held and fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
        else:
            os.close(fd)
            fd = -1
        try:
            yield tmp
            os.chmod(tmp, mode)  # a writer that made the file anew (safetensors' save_file) made it 0600
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
            if fd >= 0:
                os.close(fd)  # the lock goes with it, once the file is in place or gone


def remove_abandoned(dest: Path, suffix: str, names: str | None = None) -> None:
    """Delete the temporary files that held writes of ``dest`` (:func:`atomic_path`) left when their process
    was killed outright, which would stay hidden beside ``dest`` for good, as large as what was written. A
    live writer holds its file's lock, and a new file is left alone (its writer may not have locked it
    yet). ``names`` (a glob): those of every such file beside ``dest``, for files written under a new name
    each time (training checkpoints), whose killed write no later write of the same name clears."""
    for tmp in temp_files(dest, suffix, names):
        try:
            if time.time() - tmp.stat().st_mtime < ABANDONED_AFTER_S or _locked(tmp):
                continue
            tmp.unlink()
        except OSError:  # gone meanwhile, or not ours to delete: the new writer does not need it gone
            continue


def _locked(path: Path) -> bool:
    """Whether a live writer holds ``path``'s lock (never, where there are no such locks)."""
    if fcntl is None:
        return False
    with open(path, "rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


@contextmanager
def unwinding_on_termination() -> Iterator[None]:
    """SIGTERM and SIGHUP (a killed job, a stopped service, a closed terminal) unwind like Ctrl-C, so a
    half-written output's temporary file is removed, an earlier output kept and exit handlers run (Python
    runs none for a signal it does not handle); the previous handlers are put back after."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def termination_handlers_kept() -> Iterator[None]:
    """The SIGTERM and SIGHUP handlers as they were before the block: a library that sets its own in it
    (``ray.init`` makes SIGTERM exit at once, without a word) does not undo
    :func:`unwinding_on_termination`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kept = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in kept.items():
            if handler is not None:
                signal.signal(sig, handler)
