#!/usr/bin/env bash
# Creates .venv (once) and installs minicpmv with its test/serve/train extras.
# torch is installed first, pinned to a CPU build where one is available, so pip never
# resolves a multi-GB CUDA wheel on a CPU-only machine. Re-running is cheap (a stamp file).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.minicpmv-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    .venv/bin/pip install -q torch                 # a GPU machine: the default (CUDA) build
  else
    # CPU-only: the CPU build (this workplace keeps its wheel on disk). Elsewhere, install a
    # CPU build of torch into .venv first, or set TORCH_SPEC to what pip should install.
    .venv/bin/pip install -q "${TORCH_SPEC:-torch==2.13.0}"
  fi
fi
.venv/bin/pip install -q -e ".[dev,serve,train,data]"
echo "$want" > "$stamp"
