"""bfloat16 on the CPU: whether this CPU runs it natively, and the autocast context.

On CPUs with AVX512-BF16 or AMX, oneDNN runs bf16 convolutions and matmuls faster than float32
(README, "Speed"), and the generator's output stays close to float32 (tests/test_precision.py states the
margin). Elsewhere bf16 is emulated through float32 conversions: slower than float32 and less precise, so
float32 is the right choice there.

This module only answers; which precision a network runs in is decided once, by
:class:`gfp.devices.Placement`.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

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
