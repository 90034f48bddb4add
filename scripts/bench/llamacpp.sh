#!/usr/bin/env bash
# Greedy generation speed of `emo` against llama.cpp (the xllamacpp wheel from PyPI) on the same GGUF files,
# thread count and machine, interleaved model by model; prints a Markdown table of tokens/s, ratios and peak
# RSS (docs/performance.md). Generation is forced to its length (EOS ignored), prefill included.
#
#   scripts/bench/llamacpp.sh [MODELS...]
#
# MODELS: offline aliases, .gguf paths, or `llama3b` (a Llama-3.2-3B-shaped GGUF with random Q4_0 weights,
# written on first use with the gguf package). Default: smollm2-135m qwen2.5-coder-0.5b, plus
# qwen2.5-coder-1.5b when it is installed, plus llama3b.
# Environment: THREADS (2), BATCHES ("1 16"), TOKENS (64), NEW_TOKENS (64),
# EMO_CONFIGS ("f32:dequantized bf16:dequantized bf16:packed"; dtype:weights pairs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
THREADS="${THREADS:-2}"
BATCHES="${BATCHES:-1 16}"
TOKENS="${TOKENS:-64}"
NEW_TOKENS="${NEW_TOKENS:-64}"
EMO_CONFIGS="${EMO_CONFIGS:-f32:dequantized bf16:dequantized bf16:packed}"
XLLAMACPP=xllamacpp==2026.10.11549
"$ROOT/scripts/setup.sh" --test
PY="$ROOT/.venv/bin/python"
"$PY" -c "import xllamacpp" 2>/dev/null || "$PY" -m pip install --quiet "$XLLAMACPP"
cd "$ROOT"
cargo build --release --quiet -p emo-cli
EMO="$ROOT/target/release/emo"

LLAMA3B="$ROOT/.cache/bench/llama3b-shaped.Q4_0.gguf"
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  models=(smollm2-135m qwen2.5-coder-0.5b)
  "$EMO" resolve qwen2.5-coder-1.5b >/dev/null 2>&1 && models+=(qwen2.5-coder-1.5b)
  models+=(llama3b)
fi

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $THREADS threads, $(date -u +%F)"
echo
echo "| model | batch | engine | dtype / weights | tokens/s | vs llama.cpp | prefill tokens/s | peak RSS MB |"
echo "|---|---:|---|---|---:|---:|---:|---:|"
for m in "${models[@]}"; do
  if [ "$m" = llama3b ]; then
    if [ ! -f "$LLAMA3B" ]; then
      mkdir -p "$(dirname "$LLAMA3B")"
      "$PY" scripts/bench/make_llama3b_gguf.py "$("$EMO" resolve smollm2-135m)" "$LLAMA3B.part"
      mv "$LLAMA3B.part" "$LLAMA3B"
    fi
    gguf="$LLAMA3B"
  else
    gguf=$("$EMO" resolve "$m")
  fi
  for b in $BATCHES; do
    ref=$("$PY" scripts/bench/llamacpp.py "$gguf" --threads "$THREADS" --batch "$b" --tokens "$TOKENS" --new-tokens "$NEW_TOKENS" 2>/dev/null)
    rows=("$ref")
    for c in $EMO_CONFIGS; do
      rows+=("$("$EMO" bench --model "$gguf" --device cpu --threads "$THREADS" --batch "$b" --tokens "$TOKENS" \
        --new-tokens "$NEW_TOKENS" --reps 3 --dtype "${c%%:*}" --weights "${c##*:}" 2>/dev/null)")
    done
    "$PY" - "$m" "$b" "${rows[@]}" <<'PY'
import json, sys
m, b, ref = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
ours = [json.loads(x) for x in sys.argv[4:]]
base = ref["generate_tokens_per_s"]
print(f"| {m} | {b} | llama.cpp | Q4 (file) | {base:.1f} | 1.00x | {ref['prefill_tokens_per_s']:.0f} | {ref['peak_rss_mb']:.0f} |")
for o in ours:
    # emo bench times one full-prompt forward: its prefill rate is batch x tokens / that time.
    prefill = o["batch"] * o["tokens"] / (o["forward_ms"] / 1e3)
    t = o["generate_tokens_per_s"]
    print(f"| {m} | {b} | emo | {o['dtype']} / {o['weights']} | {t:.1f} | {t / base:.2f}x | {prefill:.0f} | {o['peak_rss_mb']:.0f} |")
PY
  done
done
