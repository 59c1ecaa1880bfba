"""gfp: an open implementation of GFPGAN blind face restoration.

The compatibility shim runs first so that basicsr/realesrgan import on current torchvision.
"""

from gfp import _compat  # noqa: F401  (must run before anything imports basicsr)

__version__ = "0.1.0"
