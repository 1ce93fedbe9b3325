#!/usr/bin/env bash
# One-step set-up, meant to be sourced: `source scripts/setup.sh` (running it with `bash` also works, but then the
# virtual environment it made is not entered in your shell: `source .venv/bin/activate` does that).
#
# - Uses the active virtual environment ($VIRTUAL_ENV) when there is one; otherwise makes `.venv` in the repository
#   root (or reuses it) and enters it. Never installs into the system Python, so PEP 668 machines work as written.
# - Installs PyTorch first (`torch==2.13.0`, the CPU wheel where the machine provides it), so pip never resolves a
#   multi-GB CUDA build on a CPU-only box, then mi_toolkit in editable mode with its test extras.
# Variables: PYTHON (interpreter that makes the venv, default python3), MI_TOOLKIT_EXTRAS (default "dev").

_mt_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${VIRTUAL_ENV:-}" ]; then
    if [ ! -x "$_mt_root/.venv/bin/python" ]; then
        echo "setup: making a virtual environment in $_mt_root/.venv" >&2
        "${PYTHON:-python3}" -m venv "$_mt_root/.venv" || return 1 2>/dev/null || exit 1
    fi
    # shellcheck disable=SC1091
    . "$_mt_root/.venv/bin/activate"
fi
# The installs run in a subshell, so `set -e` never leaks into a shell that sourced this file.
(
    set -euo pipefail
    cd "$_mt_root"
    python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
    python -m pip install --quiet --disable-pip-version-check -e ".[${MI_TOOLKIT_EXTRAS:-dev}]"
) || { echo "setup: installation failed" >&2; return 1 2>/dev/null || exit 1; }
echo "setup: mi_toolkit installed in $VIRTUAL_ENV (enter it later with: source $VIRTUAL_ENV/bin/activate)" >&2
unset _mt_root
