#!/usr/bin/env bash
# What capturing costs during elicitation: the same elicitation batches (the paper's prompts, greedy, 100 new
# tokens) with and without the last-prompt-token capture of every layer's resid_mid and resid_post,
# alternated in one run so that drift in the machine's speed hits both alike (docs/performance.md).
#   scripts/bench/elicit.sh [SCENARIOS] [BATCH] [ROUNDS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
N="${1:-2}"
BATCH="${2:-36}"
ROUNDS="${3:-3}"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
cargo build --release --quiet -p emo-cli
EMO="$ROOT/target/release/emo"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
for r in $(seq "$ROUNDS"); do
  for mode in plain capture; do
    flag=""; [ "$mode" = plain ] && flag="--no-capture"
    "$EMO" elicit --out "$TMP/$mode-$r" --limit "$N" --batch "$BATCH" --device cpu --quiet $flag \
      | sed -n "s/^elicit: .* in \([0-9.]*\) s of generation (\([0-9.]*\) prompts\/s, \([0-9.]*\) tokens\/s).*peak RSS \([0-9]*\) MB/$mode \1 \2 \3 \4/p"
  done
done | "$ROOT/.venv/bin/python" -c '
import sys, statistics as st
rows = {}
for line in sys.stdin:
    mode, secs, pps, tps, rss = line.split()
    rows.setdefault(mode, []).append((float(secs), float(pps), float(tps), float(rss)))
print("| | generation s (median) | prompts/s | tokens/s | peak RSS MB |")
print("|---|---:|---:|---:|---:|")
med = {}
for mode in ("plain", "capture"):
    r = rows[mode]
    med[mode] = st.median(x[0] for x in r)
    print(f"| {mode} | {med[mode]:.2f} | {st.median(x[1] for x in r):.3f} | {st.median(x[2] for x in r):.1f} | {max(x[3] for x in r):.0f} |")
ratio, rounds = med["capture"] / med["plain"], len(rows["plain"])
print(f"\ncapture / plain generation time: {ratio:.3f}x over {rounds} rounds")
'
