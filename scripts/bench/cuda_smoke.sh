#!/usr/bin/env bash
# CUDA smoke test, in two halves because GPU machines here have PyTorch but no network:
#   scripts/bench/cuda_smoke.sh prepare   (here) strips `emo` and writes a tiny GGUF into .cache/device/
#   scripts/bench/cuda_smoke.sh run OUT   (on the GPU machine, with .cache/device carried) compares CPU and
#                                         CUDA greedy tokens, runs bf16/f16 and `emo bench` on CUDA.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEV="$ROOT/.cache/device"
case "${1:-}" in
  prepare)
    "$ROOT/scripts/setup.sh" --test
    cd "$ROOT" && cargo build --release --quiet -p emo-cli
    mkdir -p "$DEV"
    strip -o "$DEV/emo" "$ROOT/target/release/emo"
    "$ROOT/.venv/bin/python" "$ROOT/scripts/bench/make_tiny_gguf.py" "$("$ROOT/target/release/emo" resolve smollm2-135m)" "$DEV/tiny.gguf"
    ;;
  run)
    OUT="${2:?output folder}"
    # The GPU machine's own PyTorch 2.11 provides libtorch.
    LD_LIBRARY_PATH="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib"
    export LD_LIBRARY_PATH
    E="$DEV/emo"; M="$DEV/tiny.gguf"
    set -- "Hello there" "A longer prompt about the weather today"
    "$E" generate --device cpu --json --max-new-tokens 16 --model "$M" "$@" > "$OUT/cpu.jsonl"
    "$E" generate --device cuda --json --max-new-tokens 16 --model "$M" "$@" > "$OUT/cuda.jsonl"
    "$E" generate --device cuda --dtype bf16 --json --max-new-tokens 16 --model "$M" "$@" > "$OUT/cuda_bf16.jsonl"
    "$E" generate --device cuda --dtype f16 --json --max-new-tokens 16 --model "$M" "$@" > "$OUT/cuda_f16.jsonl"
    for h in none capture edit; do
      "$E" bench --device cuda --model "$M" --batch 16 --tokens 64 --new-tokens 32 --hooks "$h" --reps 20
    done > "$OUT/bench.jsonl"
    cmp "$OUT/cpu.jsonl" "$OUT/cuda.jsonl" && echo "CPU and CUDA greedy tokens identical"
    ;;
  *) echo "usage: $0 prepare | run OUT" >&2; exit 2 ;;
esac
