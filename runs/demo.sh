#!/usr/bin/env bash
# The demo model's whole recipe: data -> pre-training stages 1-3 -> SFT -> evaluation -> shipped copy.
# Outputs (checkpoints, metrics, evaluation tables) under out/demo (gitignored); extra flags are passed
# on, e.g. `bash runs/demo.sh --seed 1 --out-dir out/demo-seed1 --no-ship` for the reproducibility run.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python recipes/demo.py --config configs/demo.toml "$@"
