"""Building a network without drawing its random initial weights, for networks about to be given weights.

Random initialisation costs more than the rest of loading (README, "Speed"), and it is thrown away.
Building on the meta device avoids it too, but the first meta-device ``normal_`` or division imports
``torch._dynamo``, slower than the initialisation it saves. Inside :func:`unfilled` networks are built on
their usual device with their random fills skipped: the tensors are allocated and left as they are
(memory that is never touched is never paged in) until weights replace them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

_FILLS = frozenset(
    {
        Tensor.normal_,
        Tensor.uniform_,
        Tensor.random_,
        Tensor.bernoulli_,
        Tensor.exponential_,
        Tensor.geometric_,
        Tensor.log_normal_,
        Tensor.cauchy_,
        nn.init.normal_,
        nn.init.uniform_,
        nn.init.trunc_normal_,
        nn.init.kaiming_normal_,
        nn.init.kaiming_uniform_,
        nn.init.xavier_normal_,
        nn.init.xavier_uniform_,
        nn.init.orthogonal_,
        nn.init.sparse_,
    }
)
"""In-place random fills (tensor methods and ``nn.init`` functions): skipped, the tensor returned as is."""

_FACTORIES: dict[Callable[..., Tensor], Callable[..., Tensor]] = {
    torch.randn: torch.empty,
    torch.rand: torch.empty,
    torch.randn_like: torch.empty_like,
    torch.rand_like: torch.empty_like,
}
"""Random factories and the uninitialised ones that stand in for them."""


class _Unfilled(TorchFunctionMode):
    """Skips random fills; every other operation runs as usual."""

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func in _FILLS:
            return args[0] if args else kwargs["tensor"]
        if func in _FACTORIES:
            kwargs.pop("generator", None)
            return _FACTORIES[func](*args, **kwargs)
        return func(*args, **kwargs)


@contextmanager
def unfilled() -> Iterator[None]:
    """Within (in this thread only): networks are built with their random initialisation skipped; their
    tensors hold whatever memory they were given until the caller loads weights into them."""
    with _Unfilled():
        yield
