#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite (this is what CI runs: .ci/run calls it).
# Real offline data (detector weights, photos) is used from ../shared/data when it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# The browser test (tests/test_app_browser.py) drives Debian's chromium through Playwright; Playwright's
# own browser download needs more than a package registry. Without chromium that test skips.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "could not install chromium: the browser test will skip"
fi
if [ -z "${GFP_TEST_DATA:-}" ] && [ -d ../shared/data ]; then
  export GFP_TEST_DATA="$(cd ../shared/data && pwd)"
fi
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m pytest -q "$@"
