#!/usr/bin/env bash
# One-time set-up on a fresh machine: a venv in .venv with the package installed editable.
# torch 2.13.0 first: on a machine without a GPU it resolves to a CPU build (a bare `torch`
# requirement would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "setup: $*" >&2; }  # pip -q is silent for minutes on a fresh machine
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@" 2> >(grep -v "WARNING: Location" >&2); }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  say "installing torch 2.13.0 (a download of minutes on a fresh machine)"
  pip install -q torch==2.13.0
fi
say "installing tilert-compiler with its dependencies (tilelang, transformers, ...)"
pip install -q -e '.[gpu,serve,dev]'
say "done"
