#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite (this is what CI runs: .ci/run calls it).
# Real offline data (detector weights, photos) is used from ../shared/data when it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
if [ -z "${GFP_TEST_DATA:-}" ] && [ -d ../shared/data ]; then
  export GFP_TEST_DATA="$(cd ../shared/data && pwd)"
fi
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m pytest -q "$@"
