#!/usr/bin/env bash
# Quickstart: set up (first time only), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -f scripts/install_browser.sh ]; then bash scripts/install_browser.sh || echo "browser install failed: the web-page test will skip and say why"; fi
exec .venv/bin/python -m pytest "$@"
