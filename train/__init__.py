"""Training GFPGAN generators: data + degradations, discriminators, losses, loop, export and publishing.

Entry points: ``python -m train {prepare,components,crop,train,export,publish,evaluate}`` (see
``train/README.md``). Importing the package registers the training networks in gfp's model registry
(:mod:`train.models`).
"""

import gfp  # noqa: F401  (installs the torchvision shim before anything imports basicsr)
from train import models  # noqa: F401  (registers ArcFace, MobileFaceNet and VGG19 in gfp.registry)
