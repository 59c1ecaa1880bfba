"""Where networks run and in which precision: one :class:`Placement`, decided once per model store.

:class:`Placement` is the whole decision (device, float16 or not, bf16 autocast on the CPU, PyTorch or
OpenVINO); :meth:`Placement.for_model` narrows it to what one network runs well in (its registry
``supports.precisions``). Loaders take a placement; nothing else decides device or precision.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import Tensor, nn

from gfp.archs.unfilled import unfilled
from gfp.precision import bf16_autocast, cpu_has_native_bf16


class Supports(Protocol):
    """What :meth:`Placement.for_model` reads of a network's registry ``Supports``: the precisions it is
    measured good in (a protocol, so that where networks run does not depend on the registry)."""

    precisions: tuple[torch.dtype, ...]


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


@dataclass(frozen=True)
class Placement:
    """Where networks run and in what precision: made once (:meth:`decide`), then only narrowed per network.

    ``dtype`` is float16 only on a GPU asked for half precision; ``bf16`` runs networks in bfloat16
    autocast on a CPU; ``backend`` runs the generator and the face parser in PyTorch ("torch") or
    converted for OpenVINO ("openvino", CPU only).
    """

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    bf16: bool = False
    backend: str = "torch"

    @classmethod
    def decide(
        cls,
        device: str | torch.device | None = "auto",
        half: bool = False,
        bf16: bool | None = False,
        backend: str | None = "torch",
    ) -> Placement:
        """The placement for a request: ``device`` by :func:`select_device`, float16 when ``half`` and not on
        a CPU, ``bf16`` on a CPU (None: where it computes bf16 natively, see
        :func:`gfp.precision.cpu_has_native_bf16`), ``backend`` by :func:`decide_backend` (None: env)."""
        if not isinstance(bf16, bool | None):  # bool("no") is True
            raise ValueError(f"bf16 must be True, False or None (where the CPU has it), got {bf16!r}")
        target = select_device(device)
        on_cpu = target.type == "cpu"
        native = on_cpu and (cpu_has_native_bf16() if bf16 is None else bf16)
        return cls(target, decide_precision(target, half), native, decide_backend(target, backend))

    def for_model(self, *supports: Supports) -> Placement:
        """This placement as networks with these registry ``Supports`` get it (run together, e.g. the members
        of a background choice): float16 and bf16 only where every one of them is measured good in it."""
        dtype = self.dtype if all(self.dtype in s.precisions for s in supports) else torch.float32
        bf16 = self.bf16 and all(torch.bfloat16 in s.precisions for s in supports)
        return replace(self, dtype=dtype, bf16=bf16)

    @property
    def half(self) -> bool:
        """Whether networks that run well in float16 run in it."""
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """bf16 autocast on the device when ``bf16``, else a context that does nothing."""
        return bf16_autocast(self.bf16, self.device.type)

    def build(self, make: Callable[[], nn.Module], state_dict: Mapping[str, Tensor]) -> nn.Module:
        """The network ``make()`` builds, holding ``state_dict`` (strict), ready for inference here.

        It is built with its random initialisation skipped (:func:`gfp.archs.unfilled.unfilled`) and takes
        the loaded tensors as they are: random initialisation would cost more than the rest of loading
        (README, "Speed"). A network with tensors the state dict does not give (the v1 layout's resampling
        kernels) is built normally instead, so nothing unfilled is ever used. A state dict that does not
        fit raises :class:`RuntimeError` (the caller names the file).
        """
        with unfilled():
            net = make()
        net.load_state_dict(state_dict, strict=True, assign=True)
        given = {t.untyped_storage().data_ptr() for t in state_dict.values()}
        if any(t.untyped_storage().data_ptr() not in given for t in (*net.parameters(), *net.buffers())):
            net = make()
            net.load_state_dict(state_dict, strict=True)
        return prepare_for_inference(net, self)


def prepare_for_inference(net: nn.Module, placement: Placement | None = None) -> nn.Module:
    """Eval mode, no gradients, on the placement's device in its dtype (None: the CPU in float32)."""
    placement = placement or Placement()
    return net.eval().requires_grad_(False).to(device=placement.device, dtype=placement.dtype)


BACKENDS = ("auto", "torch", "openvino")
BACKEND_ENV = "GFP_BACKEND"


def decide_backend(device: torch.device, requested: str | None = None) -> str:
    """What runs the generator and the face parser: "torch" or "openvino".

    ``requested`` None reads env ``GFP_BACKEND`` (default "auto"). "auto" is OpenVINO on a CPU when the
    ``openvino`` package is installed (it measured faster there: README, "Speed"), else PyTorch.
    "openvino" asked for explicitly must be installed and the device must be the CPU.
    """
    choice = (requested or os.environ.get(BACKEND_ENV) or "auto").strip().lower()
    if choice not in BACKENDS:  # one set in the environment is named: the command line may not show it
        where = "" if requested else f" (env {BACKEND_ENV})"
        raise ValueError(f"unknown backend {choice!r}{where}: use {', '.join(BACKENDS)}")
    if choice == "auto":
        return "openvino" if device.type == "cpu" and openvino_installed() else "torch"
    if choice == "openvino":
        if device.type != "cpu":
            raise ValueError(f"the openvino backend runs on the CPU only, not on {device}")
        if not openvino_installed():
            raise ValueError("the openvino backend needs the openvino package: pip install openvino")
    return choice


def openvino_installed() -> bool:
    """Whether the ``openvino`` package can be imported (without importing it)."""
    return importlib.util.find_spec("openvino") is not None
