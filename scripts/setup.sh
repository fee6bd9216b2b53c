#!/usr/bin/env bash
# One-time set-up on a fresh machine: a venv in .venv with the package installed editable.
# torch 2.13.0 first: on a machine without a GPU it resolves to a CPU build (a bare `torch`
# requirement would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@" 2> >(grep -v "WARNING: Location" >&2); }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  pip install -q torch==2.13.0
fi
pip install -q -e '.[gpu,serve,dev]'
