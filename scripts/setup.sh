#!/usr/bin/env bash
# One-step set-up: PyTorch first (the CPU wheel where the machine provides it), then mi_toolkit with its test extras.
# Installing torch explicitly first keeps pip from resolving a multi-GB CUDA build on CPU-only machines.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
