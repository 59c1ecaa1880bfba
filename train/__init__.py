"""Training GFPGAN generators: data + degradations, discriminators, losses, loop, export and publishing.

Entry points: ``python -m train {prepare,train,export,publish}`` (see ``train/README.md``).
"""

import gfp  # noqa: F401  (installs the torchvision shim before anything imports basicsr)
