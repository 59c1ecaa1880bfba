"""ONNX export of a GFPGAN generator: ``python -m gfp.onnx MODEL OUT.onnx`` (= ``gfp export-onnx``).

The graph maps ``input`` (float32, N×3×S×S, RGB in [-1, 1], S = the model's out_size, 512 for the
released models) to ``output`` (same shape and range): the restored faces, with the checkpoint's stored
noise (deterministic, like our PyTorch default). The batch is fixed (``--batch-size``, default 1) or
dynamic (``--dynamic-batch``). Opset :data:`OPSET` (18: ONNX Runtime 1.14+, TensorRT 8.6+) or above. The
modulated convolutions are exported in their shared-weight form (:func:`gfp.archs.set_modulation_mode`
"shared"): plain convolutions whose weights do not depend on the input, which a dynamic batch needs and
inference engines fold best. Export uses PyTorch's exporter (``torch.onnx.export(dynamo=True)``), which
needs the ``onnx`` and ``onnxscript`` packages; the weights are stored inside the one ``.onnx`` file.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from gfp.archs import FacesOnly
from gfp.atomic import make_folder
from gfp.loading import WeightsError, load_generator
from gfp.messages import first_line

OPSET = 18
EXPORT_PACKAGES = ("onnx", "onnxscript")


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
) -> Path:
    """Write ``generator`` (a GFPGAN generator of ``out_size`` px) to ``path`` as ONNX; returns the path.

    Exports a float32 CPU copy in shared-weight modulation mode; ``generator`` itself is not changed.
    ``dynamic_batch`` makes the batch dimension symbolic (``batch``), else it is ``batch_size``.
    Raises ``RuntimeError`` naming the packages when the exporter's dependencies are missing.
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
    make_folder(path.parent)
    with torch.no_grad():
        torch.onnx.export(
            net,
            (example * 2 - 1,),
            path,
            input_names=["input"],
            output_names=["output"],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=shapes,
            external_data=False,
            verbose=False,
        )
    return path


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
    exporter fails)."""
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
        generator, config = load_generator(args.model, weights_dir=args.weights_dir)
    except WeightsError as err:  # whole: where it looked and how to provide the weights
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"{prog}: error: {first_line(err)}", file=sys.stderr)
        return 2
    try:
        path = export_onnx(
            generator, args.output, config.out_size, args.batch_size, args.dynamic_batch, args.opset
        )
    except OSError as err:
        print(f"{prog}: error: cannot write {args.output}: {err.strerror or err}", file=sys.stderr)
        return 2
    except Exception as err:  # the exporter's own failures: one line, not its traceback
        print(f"{prog}: error: export failed: {first_line(err)}", file=sys.stderr)
        return 1
    batch = "dynamic" if args.dynamic_batch else str(args.batch_size)
    size = config.out_size
    print(f"wrote {path} (opset {args.opset}, input N×3×{size}×{size} with N = {batch}, {config.arch} arch)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
