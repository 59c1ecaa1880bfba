"""The OpenVINO backend: networks compiled by OpenVINO for the CPU, used in place of their PyTorch modules.

Optional (``pip install openvino``); the PyTorch path stays the reference. On a bf16 CPU OpenVINO runs
the GFPGAN generator and the face parser faster than PyTorch's bf16 autocast (it fuses the elementwise
work around the convolutions into them). The realesr-general-x4v3 background stays in PyTorch: in
OpenVINO it was no faster (README, "Speed", has the figures).

A network is converted once, through ``torch.export`` and ``openvino.convert_model`` (too slow to repeat
in every process), and the converted model (OpenVINO IR, float32 weights) is kept under
``<cache>/openvino/<fingerprint>/``. The fingerprint hashes the module's structure, its weights, the input
layout and the OpenVINO and PyTorch versions, so changed weights or a new release convert again and never
reuse a stale model. It is remembered per weight file (by its path, size and modification time, and the
code that builds networks), so a new process finds the model without building or hashing the PyTorch
network, and compiles it for each exact input shape through OpenVINO's compilation cache
(``<cache>/openvino/blobs``). Precision is chosen when compiling: bf16 where the caller says the network
runs well in it on a bf16 CPU, else float32. OpenVINO is imported with its usage statistics (sent
by default on import and on each conversion) turned off: see :func:`_openvino`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any
from xml.etree import ElementTree

import torch
from torch import Tensor, nn

from gfp.atomic import atomic_path

# Bump when the conversion or a converted network's forward changes (the fingerprint sees only structure and
# weights): older cached models are then not reused.
FORMAT = 2
SUBDIR = "openvino"
MAX_SHAPES = 2
"""Input shapes an :class:`OpenVINONetwork` compiles for exactly; others share one compilation."""
Stamp = tuple[tuple[str, int, int, int, int], ...]
"""A weight file as :func:`stamp` knows it."""


class OpenVINONetwork(nn.Module):
    """A converted network with one float32 NCHW input and one output, called like its PyTorch module.

    It is compiled for the exact shape of each input it sees, for the first :data:`MAX_SHAPES` shapes:
    OpenVINO plans a fixed shape better (measured faster, the first call most: README, "Speed").
    Further shapes share one compilation for any shape, so memory stays
    bounded when batch sizes vary. Thread-safe: each call borrows an inference request from a pool, so
    calls never share buffers. It has no parameters; moving it to a device or dtype does nothing, and it
    always runs on the CPU.
    """

    def __init__(self, model: Any, config: dict[str, Any], name: str, folder: Path | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.name = name
        self.folder = folder  # the cache entry the model was read from or saved to, if any
        self._compiled: dict[tuple[int, ...] | None, Any] = {}  # None: the one for any shape
        self._idle: dict[tuple[int, ...] | None, list[Any]] = {}
        self._lock = threading.Lock()

    def forward(self, x: Tensor) -> Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        key, request = self._borrow(tuple(array.shape))
        try:
            result = request.infer([array])  # outputs are copied out of the request's buffers
        finally:
            with self._lock:
                self._idle[key].append(request)
        return torch.from_numpy(result[0])

    def prepare(self, shape: Sequence[int]) -> None:
        """Compile for inputs of ``shape`` now rather than on the first such call, so that a caller can do
        it beside other work (two compilations in parallel threads end sooner than one after the other)."""
        key, request = self._borrow(tuple(shape))
        with self._lock:
            self._idle[key].append(request)

    def _borrow(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...] | None, Any]:
        """(compilation key, an idle inference request of it), compiling for ``shape`` on first use."""
        with self._lock:
            exact = shape in self._compiled or len(self._compiled.keys() - {None}) < MAX_SHAPES
            key = shape if exact else None
            if key not in self._compiled:
                self._compiled[key] = self._compile(key)
                self._idle[key] = []
            idle = self._idle[key]
            return key, idle.pop() if idle else self._compiled[key].create_infer_request()

    def _compile(self, shape: tuple[int, ...] | None) -> Any:
        """The model compiled for inputs of ``shape`` (None: any shape).

        For an exact shape of a cached model, by path through a fixed-shape IR with OpenVINO's compilation
        cache (``<cache>/openvino/blobs``, about 1 MB a network: the plan without the weights, which it
        reads from the IR). A new process then compiles sooner and runs its first inferences faster than
        without it (README, "Speed").
        """
        core = _core()
        fixed = None if shape is None or self.folder is None else _fixed_ir(self.folder, shape)
        if fixed is not None:
            cached = self.config | {
                "CACHE_DIR": str(self.folder.parent / "blobs"),
                "CACHE_MODE": "OPTIMIZE_SIZE",
            }
            try:
                compiled = core.compile_model(str(fixed), "CPU", cached)
                if list(compiled.input(0).get_partial_shape().to_shape()) == list(shape):
                    return compiled
            except RuntimeError:  # an unwritable cache or a property this OpenVINO lacks: compile in memory
                pass
            for path in (fixed, fixed.with_suffix(".bin")):  # maybe damaged: the next process writes it anew
                with contextlib.suppress(OSError):
                    path.unlink()
        model = self.model
        if shape is not None:
            model = self.model.clone()
            model.reshape(list(shape))
        return core.compile_model(model, "CPU", self.config)

    def extra_repr(self) -> str:
        return f"{self.name!r}, OpenVINO"


def fingerprint(net: nn.Module, example: Tensor, dynamic: Sequence[int]) -> str:
    """A hex digest naming the converted model: structure, weights, input layout, library versions."""
    h = _header(net, example, dynamic)
    for key, value in net.state_dict().items():
        tensor = value.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
        h.update(tensor.view(torch.uint8).numpy())
    return h.hexdigest()[:32]


def _header(net: nn.Module, example: Tensor, dynamic: Sequence[int]) -> Any:
    """A sha256 fed with everything but the weights: format, library versions, structure, input layout."""
    h = hashlib.sha256()
    versions = (FORMAT, _openvino().__version__, torch.__version__)
    h.update(repr((versions, repr(net), tuple(example.shape), sorted(dynamic))).encode())
    return h


def stamp(source: str | os.PathLike[str]) -> Stamp:
    """What a weight file (or each file of a published folder) is known by in :func:`_memo`: its path, size,
    inode, modification and change times. Taken when the weights are read, it names what was read even
    if the file is replaced afterwards."""
    path = os.path.abspath(source)
    files = sorted(e.path for e in os.scandir(path) if e.is_file()) if os.path.isdir(path) else [path]
    stats = [(f, os.stat(f)) for f in files]
    return tuple((f, st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns) for f, st in stats)


def _memo(
    cache: Path,
    source: str | os.PathLike[str],
    role: str,
    example: Tensor,
    dynamic: Sequence[int],
    stamped: Stamp | None = None,
) -> Path:
    """Where the fingerprint of the ``role`` network built from the weight file (or published folder)
    ``source`` is remembered: a name made of each file's path, size, inode, modification and change
    times, the input layout, the library versions and the code that builds networks (the source of the
    ``gfp`` package).

    Hashing a generator's and a parser's 430 MB, and building their PyTorch modules to hash them, would
    cost every new process a noticeable part of its start (README, "Speed"). A rewritten or replaced file
    gets a new change time (which, unlike the modification time, a copy that keeps times — ``cp -p``,
    ``rsync -a``, an archive — cannot set back) and edited code a new digest, so either is hashed again;
    models stay named by their weights, so copies of the same weights at other paths share one converted
    model. ``stamped``: the file's :func:`stamp` when its weights were read (None: as it is now).
    """
    versions = (FORMAT, _openvino().__version__, torch.__version__, _code_digest())
    key = (versions, role, tuple(example.shape), sorted(dynamic))
    stats = list(stamp(source) if stamped is None else stamped)
    return cache / "files" / hashlib.sha256(repr((key, stats)).encode()).hexdigest()[:32]


@functools.cache
def _code_digest() -> str:
    """A digest of the ``gfp`` package's Python source: what builds a network from its weights."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        h.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes())
    return h.hexdigest()


def _recall(memo: Path) -> str | None:
    """The fingerprint remembered in ``memo``, or None (not remembered yet, unreadable or damaged)."""
    try:
        remembered = memo.read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return None
    return remembered if len(remembered) == 32 and all(c in "0123456789abcdef" for c in remembered) else None


def _remember(memo: Path, digest: str) -> None:
    """Write ``digest`` to ``memo`` atomically; an unwritable cache only costs hashing again next time."""
    with contextlib.suppress(OSError), atomic_path(memo) as tmp:
        tmp.write_text(digest, encoding="ascii")


def compile_network(
    net: nn.Module | Callable[[], nn.Module],
    example: Tensor,
    dynamic: Sequence[int] = (0,),
    *,
    bf16: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    name: str = "",
    source: str | os.PathLike[str] | None = None,
    role: str = "",
    stamped: Stamp | None = None,
) -> OpenVINONetwork:
    """``net`` (float32, CPU, eval; called with one tensor) converted for OpenVINO on the CPU.

    ``net`` may also be a function that builds it: it is then called only when the network is needed, so
    a model found in the cache by ``source`` costs no PyTorch module (building the v1.4 generator is a
    noticeable part of a new process's start). ``example`` is an input of the right layout; the
    dimensions listed in ``dynamic`` may vary between calls (give the example a size above 1 in each).
    ``bf16`` computes in bfloat16 (only where the CPU does natively; the caller decides), else float32.
    ``cache_dir`` keeps converted models (None: convert every time), named by :func:`fingerprint`.
    ``source``, the weight file or published folder the network is loaded from unchanged, with ``role``
    telling apart the networks built from one file, lets a new process skip building and hashing it
    (see :func:`_memo`); ``stamped`` is its :func:`stamp` when ``net`` read it (None: ``net`` is built
    here, and the file is remembered only if it did not change meanwhile, so that a file replaced while
    it was read is never taken for what was converted). ``threads`` defaults to PyTorch's intra-op thread
    count, so both backends use the same cores. Compiling happens on the first call of each input shape
    (see :class:`OpenVINONetwork`).
    """
    built: list[nn.Module] = [net] if isinstance(net, nn.Module) else []

    def module() -> nn.Module:
        if not built:
            built.append(net())  # type: ignore[operator]  (not a module: a function that builds one)
        return built[0]

    model = None
    folder = None
    if cache_dir is not None:
        cache = Path(cache_dir) / SUBDIR
        memo = None if source is None else _memo(cache, source, role, example, dynamic, stamped)
        entry = None if memo is None else _recall(memo)
        if entry is None:
            entry = fingerprint(module(), example, dynamic)
            if memo is not None and (stamped or _memo(cache, source, role, example, dynamic) == memo):
                _remember(memo, entry)  # (source is not None here)
        folder = cache / entry
        model = _read(folder)
    if model is None:
        model = _convert(module(), example, dynamic)
        if folder is not None and not _save(model, folder):
            folder = None
    return OpenVINONetwork(model, _config(bf16, threads), name or type(module()).__name__, folder)


def _config(bf16: bool, threads: int | None) -> dict[str, Any]:
    return {
        "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
        "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
        "PERFORMANCE_HINT": "LATENCY",
    }


def _read(folder: Path) -> Any:
    """The IR model in cache entry ``folder``, or None (absent, or in a cache folder that cannot be looked
    into, which only costs a conversion as an unwritable one does; a damaged one is removed to be redone)."""
    try:
        if not (folder / "model.xml").is_file():  # raises where a folder on the way is not searchable
            return None
    except OSError:
        return None
    try:
        return _read_ir(folder / "model.xml")
    except RuntimeError:  # a damaged entry (OpenVINO raises RuntimeError): convert again, replace it
        shutil.rmtree(folder, ignore_errors=True)
        return None


def _read_ir(xml: Path) -> Any:
    """The OpenVINO IR model ``xml`` (with its .bin beside it), read by the IR frontend alone.

    ``Core.read_model`` tries each installed frontend in turn on a file the IR one rejects, and the
    TensorFlow one then printed its parse errors to the terminal for a damaged cache entry."""
    frontend = _openvino().frontend.FrontEndManager().load_by_framework("ir")
    return frontend.convert(frontend.load(str(xml)))


def cached_network(
    source: str | os.PathLike[str],
    example: Tensor,
    dynamic: Sequence[int] = (0,),
    *,
    bf16: bool = False,
    cache_dir: str | os.PathLike[str],
    threads: int | None = None,
    name: str = "",
    role: str = "",
    stamped: Stamp | None = None,
) -> OpenVINONetwork | None:
    """The ``role`` network of the weight file ``source`` as :func:`compile_network` would return it, if it
    is already converted in ``cache_dir`` and known by the file (:func:`_memo`; ``stamped``: by its
    :func:`stamp` when the caller read it, so that the conversion of a replacement is not taken for it);
    else None, without converting, building or hashing anything."""
    cache = Path(cache_dir) / SUBDIR
    entry = _recall(_memo(cache, source, role, example, dynamic, stamped))
    model = None if entry is None else _read(cache / entry)
    if model is None:
        return None
    return OpenVINONetwork(model, _config(bf16, threads), name or role, cache / entry)


def convert_in_background(
    source: str | os.PathLike[str],
    role: str,
    example: Tensor,
    dynamic: Sequence[int],
    cache_dir: str | os.PathLike[str],
    builder: str = "gfp.store:conversion_network",
    stamped: Stamp | None = None,
) -> bool:
    """Start a process that converts the ``role`` network of ``source`` into ``cache_dir``; whether one runs.

    The process runs at the lowest CPU priority, so it takes only time the caller leaves idle, and it
    outlives the caller (a one-photo command ends; the next one finds the conversion). ``builder``
    ("module:function") builds the PyTorch network from (role, source). One conversion per network at a
    time: a lock file names its process, and the lock of a process that is gone (killed, say by the
    out-of-memory killer) or older than :data:`STALE_LOCK_S` is taken over. A conversion that failed is
    not tried again for the same weights, code and libraries (a marker beside the locks) until
    :data:`FAILED_RETRY_S` has passed, or, when it could not be saved (a full disk), until the disk has
    room for it (see :func:`_wait_after_failure`). ``stamped``: the file's :func:`stamp` when the caller
    read it; a file replaced since is not converted for this caller (it is marked failed for that stamp, so
    that the caller does not start the process again and again: the next process converts the new file).
    A cache that cannot be written is warned about, once per process (:func:`_unusable`).
    """
    cache = Path(cache_dir) / SUBDIR
    memo = _memo(cache, source, role, example, dynamic, stamped)
    lock, failed = cache / "converting" / memo.name, cache / "failed" / memo.name
    if _wait_after_failure(failed, Path(cache_dir), sum(file[1] for file in stamped or stamp(source))):
        return False
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _unusable(cache_dir, err)  # an unwritable cache (or a file in the way): nothing to convert into
        return False
    try:
        if _stale(lock):
            lock.unlink(missing_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # a plain file, not executable
    except FileExistsError:
        return True  # another process is converting it
    except OSError as err:
        _unusable(cache_dir, err)
        return False
    os.close(fd)
    shape = "x".join(map(str, example.shape))
    # Lowest priority from its first instruction: its interpreter and imports must not slow the caller either
    # (the process lowers itself too, where no ``nice`` command exists).
    nice = shutil.which("nice")
    args = [nice, "-n", "19"] if nice else []
    args += [sys.executable, "-m", "gfp.openvino", builder, role, os.path.abspath(source), shape]
    args += [",".join(map(str, dynamic)), str(cache_dir), str(lock), str(failed)]
    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    )
    try:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            process_group=0,  # not stopped by the terminal's Ctrl-C with the command that started it
        )
    except OSError:
        lock.unlink(missing_ok=True)
        return False
    with contextlib.suppress(OSError):
        lock.write_text(f"{socket.gethostname()} {process.pid}", encoding="utf-8")
    # Collected when it ends: a long-running caller (the app) kept it as a zombie process until it started
    # another one or exited.
    threading.Thread(target=process.wait, name="gfp-convert-reaper", daemon=True).start()
    return True


def conversions_running(cache_dir: str | os.PathLike[str]) -> list[Path]:
    """The locks of the background conversions still running in ``cache_dir`` (not those a killed
    conversion left: :func:`_stale`), for a caller that waits until none runs (a benchmark)."""
    locks = Path(cache_dir) / SUBDIR / "converting"
    try:
        return [lock for lock in sorted(locks.iterdir()) if not _stale(lock)]
    except OSError:  # no conversion was ever started here
        return []


def _stale(lock: Path) -> bool:
    """Whether a conversion lock is left by a process that is gone: one of this machine that no longer
    runs, or any older than :data:`STALE_LOCK_S`."""
    try:
        age = time.time() - lock.stat().st_mtime
        host, _, pid = lock.read_text(encoding="utf-8").partition(" ")
    except (OSError, ValueError):
        return False
    if age > STALE_LOCK_S:
        return True
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's, or being written: its age decides
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return _zombie(int(pid))


def _zombie(pid: int) -> bool:
    """A process that ended and waits for its parent to collect it (Linux; False elsewhere)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _wait_after_failure(failed: Path, cache: Path, size: int) -> bool:
    """Whether a conversion marked failed in ``failed`` is not to be tried again yet: for
    :data:`FAILED_RETRY_S`, but one that failed for want of disk (its marker begins with the disk's free
    bytes then) only until the disk of ``cache`` has ``size`` bytes (the weights: about the converted
    model's size) more free than then, so that freeing space is enough, while a disk as full as it was does
    not start a conversion that fails again in every new process."""
    try:
        if time.time() - failed.stat().st_mtime >= FAILED_RETRY_S:
            return False
        first = failed.read_text(encoding="utf-8").partition("\n")[0].split()
    except (OSError, ValueError):
        return False
    if len(first) != 2 or first[0] != _FREE or not first[1].isdigit():
        return True
    try:
        return shutil.disk_usage(cache).free < int(first[1]) + size
    except OSError:
        return True


_FREE = "free"
"""How a failed marker's first line begins when the conversion failed for want of disk (then its bytes)."""
_SAID: set[str] = set()
"""The cache folders :func:`_unusable` has warned about in this process."""
_SAID_LOCK = threading.Lock()


def _unusable(cache_dir: str | os.PathLike[str], err: OSError) -> None:
    """Warn, once per process and folder, that nothing can be converted into the cache ``cache_dir``: each
    network not converted yet then runs in PyTorch, slower, which nothing else would say."""
    folder = os.path.abspath(cache_dir)
    with _SAID_LOCK:
        if folder in _SAID:
            return
        _SAID.add(folder)
    why = err.strerror or type(err).__name__
    warnings.warn(
        f"the model cache {folder} cannot be written ({why}), so OpenVINO cannot convert the networks and "
        "they run in PyTorch, slower: make it a writable folder, or point GFP_CACHE_DIR at another one",
        stacklevel=3,
    )


STALE_LOCK_S = 30 * 60
"""A conversion lock older than this is from a process that did not finish: convert again."""
FAILED_RETRY_S = 24 * 3600
"""A conversion that failed is tried again after this long (one that could not be saved, sooner: once the
disk has room, see :func:`_wait_after_failure`)."""


class Switching(nn.Module):
    """A PyTorch network used until its OpenVINO conversion (made by another process) is ready, then that.

    ``find()`` returns the converted network or None; it is asked at most every :data:`RECHECK_S` seconds,
    so a long-running app moves to the converted network without a restart.
    """

    def __init__(self, fallback: Callable[[Tensor], Any], find: Callable[[], OpenVINONetwork | None]) -> None:
        super().__init__()
        self.fallback = fallback
        self.find = find
        self.converted: OpenVINONetwork | None = None
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def forward(self, x: Tensor) -> Any:
        if self.converted is None and time.monotonic() - self._checked >= RECHECK_S:
            with self._lock:
                if self.converted is None:
                    self._checked = time.monotonic()
                    with contextlib.suppress(Exception):  # not ready, or unreadable: keep PyTorch
                        self.converted = self.find()
        return self.fallback(x) if self.converted is None else self.converted(x)


RECHECK_S = 2.0


def _convert_main(argv: list[str]) -> int:
    """Entry of the background conversion process (:func:`convert_in_background`)."""
    builder, role, source, shape, dynamic, cache, lock, failed = argv
    with contextlib.suppress(OSError):
        os.nice(19)
    try:
        module_name, function = builder.split(":")
        build = getattr(importlib.import_module(module_name), function)
        example = torch.zeros(*map(int, shape.split("x")))
        dims = [int(d) for d in dynamic.split(",") if d]
        # The lock is named by the file (and code) as the caller read it: a conversion of what is there now
        # would never be found by that caller, which would start this process again and again.
        if _memo(Path(cache) / SUBDIR, source, role, example, dims).name != Path(lock).name:
            raise RuntimeError("the weights (or gfp, or a library) changed after the caller read them")
        net = compile_network(
            lambda: build(role, source), example, dims, cache_dir=cache, source=source, role=role
        )
        if net.folder is None:  # converted for nothing: each process would start this again
            raise OSError(f"the converted model could not be saved under {cache} (full or not writable)")
    except Exception as err:  # remembered, so later runs do not pay for the same failure again
        text = f"{type(err).__name__}: {err}"[:2000]
        if isinstance(err, OSError):  # not saved (a full disk): tried again once the disk has room
            with contextlib.suppress(OSError):
                text = f"{_FREE} {shutil.disk_usage(cache).free}\n{text}"
        with contextlib.suppress(OSError):
            Path(failed).parent.mkdir(parents=True, exist_ok=True)
            Path(failed).write_text(text, encoding="utf-8")
        raise
    finally:
        Path(lock).unlink(missing_ok=True)
    return 0


_CONVERT_LOCK = threading.Lock()
"""``torch.export`` is not thread-safe: two conversions at once failed in its fake-tensor tracing."""


def _convert(net: nn.Module, example: Tensor, dynamic: Sequence[int]) -> Any:
    """``torch.export`` (symbolic sizes in the ``dynamic`` dimensions), then ``openvino.convert_model``; one
    conversion at a time in a process."""
    openvino = _openvino()
    shape = {d: torch.export.Dim.AUTO for d in dynamic}
    # An enclosing autocast would be recorded into the graph as casts: precision is OpenVINO's to choose.
    with _CONVERT_LOCK, torch.no_grad(), torch.autocast("cpu", enabled=False):
        program = torch.export.export(net.eval(), (example,), dynamic_shapes=(shape,))
        return openvino.convert_model(program)  # it re-traces the program: also without autocast


def _save(model: Any, folder: Path) -> bool:
    """Write the IR into ``folder`` atomically (a temporary folder renamed into place); whether ``folder``
    now holds it. A cache that cannot be written only costs the next process a conversion.

    The temporary folder names its process (a file like a conversion lock), so that the next save removes
    one left by a process killed while saving (the next process converts that network again): a model's
    size of disk each, never used."""
    openvino = _openvino()
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(folder.parent)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
        # mkdtemp makes it private (0700): the entry gets the cache folder's permissions instead, so that
        # the other users of a shared cache can read it (they could not, and ran PyTorch for good)
        tmp.chmod(folder.parent.stat().st_mode & 0o777)
        (tmp / _OWNER).write_text(f"{socket.gethostname()} {os.getpid()}", encoding="utf-8")
    except OSError:
        return False
    try:
        openvino.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        (tmp / _OWNER).unlink()
        os.replace(tmp, folder)
    except (OSError, RuntimeError):  # OpenVINO raises RuntimeError where it cannot write (a full disk)
        pass  # another process saved the same model first, or the disk is full
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with contextlib.suppress(OSError):
        return (folder / "model.xml").is_file()
    return False


_OWNER = "owner"
"""The file in a temporary folder of :func:`_save` that names the process writing it."""


def _remove_abandoned(cache: Path) -> None:
    """Remove the temporary folders of :func:`_save` in ``cache`` whose process is gone (see :func:`_stale`;
    one without its owner file yet, when older than :data:`STALE_LOCK_S`)."""
    for tmp in cache.glob(".tmp-*"):
        with contextlib.suppress(OSError):
            owner = tmp / _OWNER
            if _stale(owner) or (not owner.exists() and time.time() - tmp.stat().st_mtime > STALE_LOCK_S):
                shutil.rmtree(tmp, ignore_errors=True)


def _fixed_ir(folder: Path, shape: tuple[int, ...]) -> Path | None:
    """An IR beside ``folder``'s model.xml whose input is fixed to ``shape``, sharing its weights (a link to
    model.bin), written once; None where it cannot be (not one input of that rank, no links, read-only).

    OpenVINO caches the compilation of a model given by path (see :meth:`OpenVINONetwork._compile`); the
    shape must be in the file, since a reshaped model object is not cached that way. Only the input's
    declared shape changes (OpenVINO infers the rest when reading), so the weights file can be shared. The
    name carries the model files' sizes and times: an entry converted again gets new compilations.
    """
    xml, weights = folder / "model.xml", folder / "model.bin"
    try:
        stats = [(st.st_size, st.st_mtime_ns) for st in (xml.stat(), weights.stat())]
        tag = "x".join(map(str, shape)) + "-" + hashlib.sha256(repr(stats).encode()).hexdigest()[:8]
        fixed = folder / f"model-{tag}.xml"
        if fixed.is_file() and _whole(fixed):
            return fixed
        tree = ElementTree.parse(xml)
        inputs = [layer for layer in tree.iter("layer") if layer.get("type") == "Parameter"]
        data = inputs[0].find("data") if len(inputs) == 1 else None
        dims = inputs[0].findall("output/port/dim") if len(inputs) == 1 else []
        if data is None or len(dims) != len(shape):
            return None
        data.set("shape", ",".join(map(str, shape)))
        for dim, size in zip(dims, shape, strict=True):
            dim.text = str(size)
        with atomic_path(fixed.with_suffix(".bin")) as tmp:
            tmp.unlink()  # the link takes the temporary file's place
            _link(weights, tmp)
        with atomic_path(fixed) as tmp:  # last: a fixed IR on disk always has its weights
            tree.write(tmp, encoding="utf-8", xml_declaration=True)
        return fixed
    except (OSError, ElementTree.ParseError):
        return None


def _whole(xml: Path) -> bool:
    """Whether the IR file ``xml`` looks whole: its XML declaration first, its closing ``</net>`` last. A
    damaged one is written anew rather than compiled by path, where OpenVINO's other frontends printed
    their parse errors (see :func:`_read_ir`)."""
    with xml.open("rb") as file:
        head = file.read(5)
        file.seek(max(0, file.seek(0, os.SEEK_END) - 64))
        return head == b"<?xml" and file.read().rstrip().endswith(b"</net>")


def _link(target: Path, link: Path) -> None:
    """``link`` naming ``target``'s file: a relative symbolic link, else a hard link."""
    try:
        os.symlink(target.name, link)
    except OSError:
        os.link(target, link)


_CORE: Any = None
_CORE_LOCK = threading.Lock()


def _core() -> Any:
    """The process's one ``openvino.Core`` (it holds the CPU plugin; making one per model is wasteful)."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            _CORE = _openvino().Core()
        return _CORE


def _openvino() -> ModuleType:
    """The ``openvino`` module, imported with its usage statistics off.

    OpenVINO reports to Google Analytics when it is imported and on every conversion, unless the user opted
    out with its ``opt_in_out`` tool. Where its telemetry package cannot be imported it uses a no-op
    stand-in (``openvino.tools.ovc.telemetry_stub``), so before OpenVINO is first imported the package is
    marked as unavailable in ``sys.modules``. A process that imported either package before us is left as
    it is.
    """
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]  (None: cannot import)
    import openvino

    return openvino


if __name__ == "__main__":
    sys.exit(_convert_main(sys.argv[1:]))
