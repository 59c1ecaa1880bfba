"""The OpenVINO backend: networks compiled by OpenVINO for the CPU, used in place of their PyTorch modules.

Optional (``pip install openvino``); the PyTorch path stays the reference. On a 2-core AVX512-BF16 CPU
OpenVINO ran the GFPGAN v1.4 generator in 0.95-1.0 s per face where PyTorch's bf16 autocast took 1.79 s,
and the face parser in 1.13-1.18 s where PyTorch took 2.04 s (it fuses the elementwise work around the
convolutions into them). The realesr-general-x4v3 background stays in PyTorch: a whole photo's tiles took
6.5 s (5.7 s when converted through TorchScript) against 6.0 s.

A network is converted once, through ``torch.export`` and ``openvino.convert_model`` (about 10 s for a
full-size generator on 2 cores), and the converted model (OpenVINO IR, float32 weights) is kept under
``<cache>/openvino/<fingerprint>/``. The fingerprint hashes the module's structure, its weights (remembered
per weight file, by its path, size and modification time), the input layout and the OpenVINO and PyTorch
versions, so changed weights or a new release convert again and never reuse a stale model. Loading a
cached model takes well under a second. Precision is chosen when compiling: bf16 where the caller says the
network runs well in it on a bf16 CPU, else float32. OpenVINO is imported with its usage statistics (sent
by default on import and on each conversion) turned off: see :func:`_openvino`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

# Bump when the conversion or a converted network's forward changes (the fingerprint sees only structure and
# weights): older cached models are then not reused.
FORMAT = 2
SUBDIR = "openvino"
MAX_SHAPES = 2
"""Input shapes an :class:`OpenVINONetwork` compiles for exactly; others share one compilation."""


def installed() -> bool:
    """Whether the ``openvino`` package can be imported."""
    return importlib.util.find_spec("openvino") is not None


class OpenVINONetwork(nn.Module):
    """A converted network with one float32 NCHW input and one output, called like its PyTorch module.

    It is compiled for the exact shape of each input it sees, for the first :data:`MAX_SHAPES` shapes:
    OpenVINO plans a fixed shape better (a v1.4 face in 0.95 s, the first in 1.0 s, against 0.97 s and
    1.3 s compiled for any batch). Further shapes share one compilation for any shape, so memory stays
    bounded when batch sizes vary. Thread-safe: each call borrows an inference request from a pool, so
    calls never share buffers. It has no parameters; moving it to a device or dtype does nothing, and it
    always runs on the CPU.
    """

    def __init__(self, model: Any, config: dict[str, Any], name: str) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.name = name
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
        it beside other work (two compilations in parallel threads took 0.56 s instead of 0.95 s)."""
        key, request = self._borrow(tuple(shape))
        with self._lock:
            self._idle[key].append(request)

    def _borrow(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...] | None, Any]:
        """(compilation key, an idle inference request of it), compiling for ``shape`` on first use."""
        with self._lock:
            exact = shape in self._compiled or len(self._compiled.keys() - {None}) < MAX_SHAPES
            key = shape if exact else None
            if key not in self._compiled:
                model = self.model
                if key is not None:
                    model = self.model.clone()
                    model.reshape(list(key))
                self._compiled[key] = _core().compile_model(model, "CPU", self.config)
                self._idle[key] = []
            idle = self._idle[key]
            return key, idle.pop() if idle else self._compiled[key].create_infer_request()

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


def _cached_fingerprint(
    net: nn.Module, example: Tensor, dynamic: Sequence[int], cache: Path, source: str | os.PathLike[str]
) -> str:
    """:func:`fingerprint`, remembered in ``cache`` for the weight file (or published folder) ``source``
    that ``net`` was loaded from unchanged, by the path, size and modification time of each of its files.

    Hashing a generator's and a parser's 430 MB took 0.33 s of every new process; a rewritten file gets a
    new modification time, so it is hashed again. Models stay named by their weights, so copies of the
    same weights at other paths share one converted model.
    """
    path = os.path.abspath(source)
    files = sorted(e.path for e in os.scandir(path) if e.is_file()) if os.path.isdir(path) else [path]
    h = _header(net, example, dynamic)
    h.update(repr([(f, st.st_size, st.st_mtime_ns) for f in files for st in [os.stat(f)]]).encode())
    memo = cache / "files" / h.hexdigest()[:32]
    try:
        remembered = memo.read_text(encoding="ascii").strip()
        if len(remembered) == 32 and all(c in "0123456789abcdef" for c in remembered):
            return remembered
    except (OSError, ValueError):
        pass  # not remembered yet, or unreadable: hash the weights
    digest = fingerprint(net, example, dynamic)
    tmp = memo.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(digest, encoding="ascii")
        os.replace(tmp, memo)
    except OSError:  # an unwritable cache: hashed again next time
        tmp.unlink(missing_ok=True)
    return digest


def compile_network(
    net: nn.Module,
    example: Tensor,
    dynamic: Sequence[int] = (0,),
    *,
    bf16: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    name: str = "",
    source: str | os.PathLike[str] | None = None,
) -> OpenVINONetwork:
    """``net`` (float32, CPU, eval; called with one tensor) converted for OpenVINO on the CPU.

    ``example`` is an input of the right layout; the dimensions listed in ``dynamic`` may vary between
    calls (give the example a size above 1 in each). ``bf16`` computes in bfloat16 (only where the CPU does
    natively; the caller decides), else float32. ``cache_dir`` keeps converted models (None: convert every
    time), named by :func:`fingerprint`; ``source``, the weight file or published folder ``net`` was
    loaded from unchanged, lets a new process skip hashing the weights (see :func:`_cached_fingerprint`).
    ``threads`` defaults to PyTorch's intra-op thread count, so both backends use the same cores.
    Compiling happens on the first call of each input shape (see :class:`OpenVINONetwork`).
    """
    model = None
    folder = None
    if cache_dir is not None:
        cache = Path(cache_dir) / SUBDIR
        if source is None:
            entry = fingerprint(net, example, dynamic)
        else:
            entry = _cached_fingerprint(net, example, dynamic, cache, source)
        folder = cache / entry
        if (folder / "model.xml").is_file():
            try:
                model = _core().read_model(str(folder / "model.xml"))
            except RuntimeError:  # a damaged entry (OpenVINO raises RuntimeError): convert again, replace it
                shutil.rmtree(folder, ignore_errors=True)
    if model is None:
        model = _convert(net, example, dynamic)
        if folder is not None:
            _save(model, folder)
    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
        "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
        "PERFORMANCE_HINT": "LATENCY",
    }
    return OpenVINONetwork(model, config, name or type(net).__name__)


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


def _save(model: Any, folder: Path) -> None:
    """Write the IR into ``folder`` atomically (a temporary folder renamed into place); a cache that cannot
    be written only costs the next process a conversion."""
    openvino = _openvino()
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    except OSError:
        return
    try:
        openvino.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        os.replace(tmp, folder)
    except OSError:
        pass  # another process saved the same model first, or the disk is full
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
