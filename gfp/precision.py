"""bfloat16 on the CPU: whether this CPU runs it natively, the autocast context, a generator forward in it.

On CPUs with AVX512-BF16 or AMX, oneDNN runs bf16 convolutions and matmuls at about twice the float32
rate (issue 9 measured 362 vs 175 GFLOP/s on a 2-core AVX512-BF16 machine), and the generator's output
stays close to float32 (tests/test_precision.py states the margin). Elsewhere bf16 is emulated through
float32 conversions: slower than float32 and less precise, so float32 is the right choice there.

This module only answers and computes; which precision a network runs in is decided by the caller
(:class:`gfp.pipeline.Restorer`, once).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
from torch import Tensor, nn

CPUINFO = Path("/proc/cpuinfo")
# x86 flags (as Linux names them) of instructions that compute in bfloat16.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU feature flags Linux lists in ``/proc/cpuinfo`` (empty where that file cannot be read)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX) and PyTorch uses AVX-512 here.

    Needs both: the flags in ``/proc/cpuinfo`` (Linux; other systems answer False) and PyTorch's CPU
    capability ``AVX512*`` (``torch.backends.cpu.get_cpu_capability()``; it is lower when the build or
    ``ATEN_CPU_CAPABILITY`` restricts it). Cached: the answer cannot change while the process runs.
    """
    if not NATIVE_BF16_FLAGS & cpu_flags():
        return False
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def bf16_autocast(enabled: bool = True, device_type: str = "cpu") -> contextlib.AbstractContextManager[None]:
    """bfloat16 autocast on ``device_type`` when ``enabled``, else a context that does nothing."""
    return torch.autocast(device_type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def generator_forward(generator: nn.Module, x: Tensor, bf16: bool = False) -> Tensor:
    """Restored faces for ``x`` (B, 3, S, S, RGB in [-1, 1]) as float32, in bf16 autocast when ``bf16``.

    Under ``torch.autocast(device, dtype=torch.bfloat16)`` the convolutions and linear layers run in
    bf16; where their results meet float32 parameters (demodulation, noise, biases, SFT) the arithmetic
    is float32, and nothing overflows (bf16 has float32's range). The output is cast back to float32.
    The generator stays the float32 network: autocast converts the weights per call.
    """
    with torch.inference_mode(), bf16_autocast(bf16, x.device.type):
        image, _ = generator(x, return_rgb=False)
    return image.float()
