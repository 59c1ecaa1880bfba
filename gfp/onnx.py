"""ONNX export of a GFPGAN generator: ``python -m gfp.onnx MODEL OUT.onnx`` (= ``gfp export-onnx``).

The graph maps ``input`` (float32, N×3×S×S, RGB in [-1, 1], S = the model's out_size, 512 for the
released models) to ``output`` (same shape and range): the restored faces, with the checkpoint's stored
noise (deterministic, like our PyTorch default). The batch is fixed (``--batch-size``, default 1) or
dynamic (``--dynamic-batch``). Opset :data:`OPSET` (18: ONNX Runtime 1.14+, TensorRT 8.6+) or above. The
modulated convolutions are exported in their shared-weight form (:func:`gfp.archs.set_modulation_mode`
"shared"): plain convolutions whose weights do not depend on the input, which a dynamic batch needs and
inference engines fold best. Export uses PyTorch's exporter (``torch.onnx.export(dynamo=True)``), which
needs the ``onnx`` and ``onnxscript`` packages; the weights are stored inside the one ``.onnx`` file. The file
appears whole or not at all (an earlier one is kept until then), and its metadata say which model, config
and gfp version made it (:func:`export_metadata`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from gfp import __version__
from gfp.archs import FacesOnly, GeneratorConfig
from gfp.atomic import STOP_SIGNALS, atomic_path, remove_abandoned, unwinding_on_termination
from gfp.loading import WeightsError, load_generator
from gfp.messages import first_line

OPSET = 18
EXPORT_PACKAGES = ("onnx", "onnxscript")
_PART = ".part"
"""Suffix of the temporary file an export writes beside its ``.onnx`` until it is whole."""
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
"""Terminal colour codes, which the exporter puts in its error messages."""


def missing_export_packages() -> list[str]:
    """The packages PyTorch's ONNX exporter needs that are not installed."""
    return [name for name in EXPORT_PACKAGES if importlib.util.find_spec(name) is None]


def export_onnx(
    generator: nn.Module,
    path: str | os.PathLike[str],
    out_size: int,
    batch_size: int = 1,
    dynamic_batch: bool = False,
    opset: int = OPSET,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``generator`` (a GFPGAN generator of ``out_size`` px) to ``path`` as ONNX; returns the path.

    Exports a float32 CPU copy in shared-weight modulation mode; ``generator`` itself is not changed.
    ``dynamic_batch`` makes the batch dimension symbolic (``batch``), else it is ``batch_size``.
    ``metadata`` goes into the file's metadata_props (:func:`export_metadata`). ``path`` is written
    atomically: a folder or an unwritable place is an ``OSError`` before the export, and a
    failed or interrupted one leaves an earlier file as it was. Raises ``RuntimeError`` naming the packages
    when the exporter's dependencies are missing.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    missing = missing_export_packages()
    if missing:
        raise RuntimeError(
            f"ONNX export needs the packages {', '.join(missing)}: pip install {' '.join(missing)}"
        )
    check_opset(opset)
    net = FacesOnly(generator).cpu()
    net.training = False  # the wrapper only: the exporter warns about a module in training mode
    # A symbolic batch needs an example above 1 (export specialises sizes 0 and 1).
    example_batch = max(batch_size, 2) if dynamic_batch else batch_size
    example = torch.rand(example_batch, 3, out_size, out_size, generator=torch.Generator().manual_seed(0))
    shapes = {"x": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    path = Path(path)
    remove_abandoned(path, _PART)  # what an export killed outright (out of memory) left
    # The temporary name's ".part" also makes onnx write protobuf whatever OUT is called (it picks the format
    # from the extension: an OUT.json would have been JSON).
    with atomic_path(path, _PART, held=True) as tmp, _interrupts_kept(), torch.no_grad():
        program = torch.onnx.export(
            net,
            (example * 2 - 1,),
            input_names=["input"],
            output_names=["output"],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=shapes,
            verbose=False,
        )
        program.model.metadata_props.update(metadata or {})
        program.save(tmp, external_data=False)
    return path


def export_metadata(model: str, config: GeneratorConfig) -> dict[str, str]:
    """The metadata_props an exported file carries, so that it says what it is among other ``.onnx`` files:
    the model as given, its config (JSON) and the gfp version, with the input convention."""
    return {
        "gfp.model": model,
        "gfp.config": json.dumps(config.to_dict()),
        "gfp.version": __version__,
        "gfp.io": "input and output: float32 N×3×S×S RGB in [-1, 1] (face / 127.5 - 1), output not clamped",
    }


@contextmanager
def _interrupts_kept() -> Iterator[None]:
    """Ctrl-C (or a SIGTERM or SIGHUP that unwinds like it) during the block raises ``KeyboardInterrupt``
    when the block ends, even where PyTorch's exporter swallowed it: an interrupt inside its tracing can
    break a lazy import, which it reports as a failed export, or fails one capture strategy, after which it
    tries the next one and finishes the export the user stopped."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
        yield
        return
    seen: list[int] = []

    def noted(handler: Callable[[int, object], object]) -> Callable[[int, object], None]:
        def on_signal(signum: int, frame: object) -> None:
            seen.append(signum)
            handler(signum, frame)

        return on_signal

    signals = [signal.SIGINT, *STOP_SIGNALS]
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig, handler in previous.items():
        if callable(handler):  # one that raises; the default action ends the process anyway
            signal.signal(sig, noted(handler))
    try:
        yield
    except Exception:
        if seen:
            raise KeyboardInterrupt from None
        raise
    finally:
        for sig, handler in previous.items():
            if callable(handler):
                signal.signal(sig, handler)
    if seen:
        raise KeyboardInterrupt


def check_opset(opset: int) -> None:
    """Raise ``ValueError`` unless PyTorch's exporter writes ``opset`` as asked: from :data:`OPSET` to the
    newest the installed onnx knows (outside it, the exporter falls back to another opset and succeeds)."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not OPSET <= opset <= newest:
        raise ValueError(
            f"opset must be {OPSET} to {newest} (from PyTorch's exporter's own to the newest the installed "
            f"onnx knows), got {opset!r}"
        )


def build_parser(prog: str = "python -m gfp.onnx") -> argparse.ArgumentParser:
    """Arguments of the export command."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Export a GFPGAN generator to ONNX (input/output: N×3×S×S RGB in [-1, 1], float32).",
    )
    p.add_argument("model", help="1, 1.2, 1.3, 1.4, a weights file, a published folder or a Hub repo id")
    p.add_argument("output", help="the .onnx file to write (weights included)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch-size", type=int, default=1, help="fixed batch size (default: %(default)s)")
    batch.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension")
    p.add_argument(
        "--opset",
        type=int,
        default=OPSET,
        help="ONNX opset, %(default)s up to the installed onnx's newest (default: %(default)s)",
    )
    p.add_argument(
        "--weights-dir", default=None, help="folder searched first for weight files (else $GFP_WEIGHTS_DIR)"
    )
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m gfp.onnx") -> int:
    """Run the export command; returns the exit status (2 for bad input and missing weights, 1 when the
    exporter fails, 130 when interrupted: Ctrl-C, SIGTERM, SIGHUP)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    missing = missing_export_packages()
    if missing:
        print(
            f"{prog}: error: ONNX export needs {', '.join(missing)}: pip install {' '.join(missing)}",
            file=sys.stderr,
        )
        return 2
    try:
        check_opset(args.opset)
    except ValueError as err:
        parser.error(f"--{err}")
    try:
        with unwinding_on_termination():  # (python -m gfp.onnx: gfp's CLI is not around it)
            return _export(args, prog)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was written to {args.output}", file=sys.stderr)
        return 130


def _export(args: argparse.Namespace, prog: str) -> int:
    """Load the model and export it: :func:`main` after its checks of the arguments."""
    try:
        generator, config = load_generator(args.model, weights_dir=args.weights_dir)
    except WeightsError as err:  # whole: where it looked and how to provide the weights
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"{prog}: error: {first_line(err)}", file=sys.stderr)
        return 2
    try:
        path = export_onnx(
            generator,
            args.output,
            config.out_size,
            args.batch_size,
            args.dynamic_batch,
            args.opset,
            export_metadata(args.model, config),
        )
    except OSError as err:
        print(f"{prog}: error: cannot write {args.output}: {err.strerror or err}", file=sys.stderr)
        return 2
    except Exception as err:  # the exporter's own failures: one line, not its traceback
        print(f"{prog}: error: export failed: {_ANSI.sub('', first_line(err))}", file=sys.stderr)
        return 1
    batch = "dynamic" if args.dynamic_batch else str(args.batch_size)
    size = config.out_size
    print(f"wrote {path} (opset {args.opset}, input N×3×{size}×{size} with N = {batch}, {config.arch} arch)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
