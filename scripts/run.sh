#!/usr/bin/env bash
# Quickstart: set up (first time only), then run the `minicpmv` CLI with the given arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
exec .venv/bin/minicpmv "$@"
