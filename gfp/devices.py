"""Where networks run and in which precision: decided once (per :class:`gfp.pipeline.Restorer`) here."""

from __future__ import annotations

import os

import torch
from torch import nn


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


def decide_precision(device: torch.device, requested: bool | torch.dtype = False) -> torch.dtype:
    """The dtype networks run in on ``device``: float16 when half precision is requested (``True`` or
    ``torch.float16``) and the device is not the CPU, where float16 is slow and inaccurate; else float32."""
    if requested not in (True, False, torch.float16, torch.float32):
        raise ValueError(f"unsupported precision {requested!r}: use float32 or float16 (half)")
    half = requested is True or requested == torch.float16
    return torch.float16 if half and device.type != "cpu" else torch.float32


def prepare_for_inference(
    net: nn.Module,
    device: str | torch.device | None = None,
    half: bool = False,
    *,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Eval mode, no gradients, on ``device`` (see :func:`select_device`), in ``dtype`` (default: what
    :func:`decide_precision` gives for ``half``)."""
    target = select_device(device)
    dtype = decide_precision(target, half) if dtype is None else dtype
    return net.eval().requires_grad_(False).to(device=target, dtype=dtype)


BACKENDS = ("auto", "torch", "openvino")
BACKEND_ENV = "GFP_BACKEND"


def decide_backend(device: torch.device, requested: str | None = None) -> str:
    """What runs the generator and the face parser: "torch" or "openvino".

    ``requested`` None reads env ``GFP_BACKEND`` (default "auto"). "auto" is OpenVINO on a CPU when the
    ``openvino`` package is installed (it measured faster there, see :mod:`gfp.openvino`), else PyTorch.
    "openvino" asked for explicitly must be installed and the device must be the CPU.
    """
    from gfp import openvino

    choice = (requested or os.environ.get(BACKEND_ENV) or "auto").strip().lower()
    if choice not in BACKENDS:
        raise ValueError(f"unknown backend {choice!r}: use {', '.join(BACKENDS)}")
    if choice == "auto":
        return "openvino" if device.type == "cpu" and openvino.installed() else "torch"
    if choice == "openvino":
        if device.type != "cpu":
            raise ValueError(f"the openvino backend runs on the CPU only, not on {device}")
        if not openvino.installed():
            raise ValueError("the openvino backend needs the openvino package: pip install openvino")
    return choice
