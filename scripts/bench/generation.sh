#!/usr/bin/env bash
# Greedy generation tokens/s of `emo` and of Hugging Face transformers on the same model, threads and
# machine, forced length, in one run; prints a Markdown table with the ratio (docs/performance.md).
#   scripts/bench/generation.sh [MODEL_ALIAS] [THREADS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MODEL="${1:-smollm2-135m}"
THREADS="${2:-2}"
"$ROOT/scripts/setup.sh" --test
cd "$ROOT"
cargo build --release --quiet -p emo-cli
EMO="$ROOT/target/release/emo"
GGUF=$("$EMO" resolve "$MODEL")
echo "| batch | emo tokens/s | HF tokens/s | ratio |"
echo "|---|---|---|---|"
for B in 1 16; do
  ours=$("$EMO" bench --model "$MODEL" --device cpu --threads "$THREADS" --batch "$B" --tokens 64 --new-tokens 64 --reps 3)
  hf=$("$ROOT/.venv/bin/python" "$ROOT/scripts/bench/hf_generate.py" "$GGUF" --batch "$B" --tokens 64 --new-tokens 64 --threads "$THREADS" 2>/dev/null)
  "$ROOT/.venv/bin/python" - "$B" "$ours" "$hf" <<'PY'
import json, sys
b, ours, hf = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
o, h = ours["generate_tokens_per_s"], hf["generate_tokens_per_s"]
print(f"| {b} | {o:.1f} | {h:.1f} | {o / h:.2f}x |")
PY
done
