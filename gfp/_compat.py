"""Make basicsr (and so realesrgan/facexlib users of it) importable on current torchvision.

basicsr 1.4.2 imports ``torchvision.transforms.functional_tensor.rgb_to_grayscale``; torchvision
removed that private module in 0.17. BasicSR master switched to the public
``torchvision.transforms.functional`` but never released it, so we provide an alias module exposing the
same function under the old name. Importing this module first (``gfp/__init__.py`` does) installs the
alias; it is only made when something imports the old name, so ``import gfp`` does not import torchvision
(a large part of a process start, README "Speed"; gfp's own networks do not need it). Never patch basicsr's
files on disk.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

_LEGACY = "torchvision.transforms.functional_tensor"


class _LegacyModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the removed module after every other finder has not (so an old torchvision's own module
    wins) and makes it from ``torchvision.transforms.functional``."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(fullname, self) if fullname == _LEGACY else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # the default module

    def exec_module(self, module: types.ModuleType) -> None:
        from torchvision.transforms import functional

        module.rgb_to_grayscale = functional.rgb_to_grayscale


def install() -> None:
    """Let the removed torchvision module be imported under its old name (idempotent)."""
    if not any(isinstance(finder, _LegacyModule) for finder in sys.meta_path):
        sys.meta_path.append(_LegacyModule())


install()
