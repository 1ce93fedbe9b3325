#!/usr/bin/env bash
# Build the HTML API reference with pdoc: `scripts/build_docs.sh [OUT_DIR]` (default: docs/api in the repository root).
# Open OUT_DIR/index.html in a browser. Docstrings are Google style (Args:/Returns:), hence --docformat google.
# Needs the docs extra (`pip install -e ".[docs]"`, included in ".[dev]"). PYTHON picks the interpreter (default
# python). tests/test_docs.py runs this script, so the published reference and the tested one use the same options.
set -euo pipefail
out="${1:-}"
if [ -n "$out" ] && [ "${out#/}" = "$out" ]; then out="$PWD/$out"; fi  # a relative OUT_DIR is relative to the caller
cd "$(dirname "${BASH_SOURCE[0]}")/.."  # document ./mi_toolkit of this checkout, whatever the caller's directory
exec "${PYTHON:-python}" -m pdoc --docformat google --output-directory "${out:-docs/api}" mi_toolkit
