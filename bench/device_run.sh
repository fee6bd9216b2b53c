#!/usr/bin/env bash
# The GPU measurements still owed (issue 20's sampled rate, issue 21's FP8 prefill and the
# tensor-core FP8 GEMV; bench/NOTES.md items 143 and 145 predict each), prepared on this
# machine and run on the device in as few calls as the 10-minute limit allows.
#
#   bench/device_run.sh build         # here: artifacts in .art/run, main's wheel in .whl
#   # then, with the device tool, carry [".art/run", ".whl"] and run one stage a call:
#   bench/device_run.sh run rates     # greedy vs sampled tokens/s, three bundled models
#   bench/device_run.sh run tests     # pytest -m gpu (the FP8 mma builds among them)
#   bench/device_run.sh run mma       # FP8 decode, FFMA vs mma GEMVs, three models
#   bench/device_run.sh run prefill   # FP8 vs bf16 prefill, llama-3.2-1b
#
# The device has no tilelang and no network: everything is compiled here. Results (JSON)
# land in $OUT; the lines to copy into bench/NOTES.md start with RESULT or VARIANT.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS="llama-3.2-1b qwen3-0.6b qwen3-8b"

build() {
  rm -rf .art/run .whl
  mkdir -p .art/run
  local c=".venv/bin/tilert-compile"
  for m in $MODELS; do
    echo "building $m (bf16, FP8 FFMA, FP8 mma)" >&2
    $c "$m" -o ".art/run/$m" --no-run -q --prefill-chunk 0
    $c "$m" -o ".art/run/$m-fp8" --no-run -q --prefill-chunk 0 --quantize fp8
    $c "$m" -o ".art/run/$m-fp8-mma" --no-run -q --prefill-chunk 0 --quantize fp8 --fp8-gemv mma
  done
  echo "building the prefill pair and the GPU tests' artifacts" >&2
  $c llama-3.2-1b -o .art/run/pre-bf16 --no-run -q --max-seq-len 8192
  $c llama-3.2-1b -o .art/run/pre-fp8 --no-run -q --max-seq-len 8192 --quantize fp8
  .venv/bin/python tests/gpu_artifacts.py .art/run/gpu-tests
  .venv/bin/python -m pip wheel -q --no-deps -w .whl .
  du -sh .art/run .whl >&2
}

run() {
  local out="${OUT:-/tmp/out}"
  mkdir -p "$out" /tmp/m
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/m .whl/*.whl 2>&1 | tail -2
  export PYTHONPATH=/tmp/m PYTHONUNBUFFERED=1 TILERT_COMMIT="${TILERT_COMMIT:-}"
  local art="$PWD/.art/run"
  case "$1" in
  rates)
    for m in $MODELS; do
      (cd bench && timeout 150 python3 generate.py "$art/$m" --new 256 --rates-only \
        --out "$out/rates-$m.json" 2>&1 | grep -E "RESULT|Error" || true)
    done ;;
  tests)
    TILERT_GPU_ARTIFACTS="$art/gpu-tests" timeout 540 python3 -m pytest -m gpu tests/ -q \
      -p no:cacheprovider 2>&1 | tail -15 ;;
  mma)
    for m in $MODELS; do
      # (variants.py takes builds of one config: bf16 against FP8 is bench/decode.py's)
      (cd bench && timeout 300 python3 variants.py "$art/$m-fp8" "$art/$m-fp8-mma" \
        --pos 512 --rounds 3 --out "$out/mma-$m.json" 2>&1 | grep -E "VARIANT|Error" || true)
    done ;;
  prefill)
    (cd bench && timeout 500 python3 prefill.py "$art/pre-fp8" --against "$art/pre-bf16" \
      --prompts 512 --steps 8 --time 512,4096 --iters 5 --out "$out/prefill-fp8.json" 2>&1 |
      tail -12) ;;
  *) echo "run what? rates, tests, mma or prefill" >&2; exit 2 ;;
  esac
}

case "${1:-}" in
build) build ;;
run) run "${2:-}" ;;
*) echo "usage: bench/device_run.sh build | run {rates,tests,mma,prefill}" >&2; exit 2 ;;
esac
