"""Make basicsr (and so realesrgan/facexlib users of it) importable on current torchvision.

basicsr 1.4.2 imports ``torchvision.transforms.functional_tensor.rgb_to_grayscale``; torchvision
removed that private module in 0.17. BasicSR master switched to the public
``torchvision.transforms.functional`` but never released it, so we register a tiny alias module
exposing the same function before anything imports basicsr. Import this module first
(``gfp/__init__.py`` does), never patch basicsr's files on disk.
"""

from __future__ import annotations

import sys
import types

_LEGACY = "torchvision.transforms.functional_tensor"


def install() -> None:
    """Register the removed torchvision module under its old name (idempotent)."""
    if _LEGACY in sys.modules:
        return
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401  (old torchvision: nothing to do)

        return
    except ImportError:
        pass
    from torchvision.transforms import functional

    shim = types.ModuleType(_LEGACY)
    shim.rgb_to_grayscale = functional.rgb_to_grayscale
    sys.modules[_LEGACY] = shim


install()
