#!/usr/bin/env bash
# Install the project into the active Python (3.11; use a venv if you like).
#   bash scripts/setup.sh        runtime only (app, CLI)
#   bash scripts/setup.sh dev    plus tests, lint, training extras and the official oracle
# torch goes first so basicsr's sdist can build against it without build isolation (otherwise pip
# downloads a second full torch into an isolated build environment just to run basicsr's setup.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
req=requirements.txt
[ "${1:-}" = dev ] && req=requirements-dev.txt
$PY -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
$PY -m pip install -q --disable-pip-version-check wheel setuptools
$PY -m pip install -q --disable-pip-version-check --no-build-isolation -r "$req"
# The package itself (console script `gfp`), editable so the checkout stays the source of truth.
$PY -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
