#!/usr/bin/env bash
# Bounded load test of `emo serve` on loopback (docs/performance.md, "Serving"): the same mixed plain /
# steered / modulated requests one at a time and from N concurrent clients, then N clients with steering on
# every request against none. Every request is forced to exactly T new tokens.
#   scripts/bench/serve.sh [RUN] [N] [T] [REQUESTS]
# RUN is a run folder with directions and circuits (default runs/paper, from `scripts/emo paper`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RUN="${1:-$ROOT/runs/paper}"
N="${2:-16}"
T="${3:-32}"
REQUESTS="${4:-64}"
THREADS="${THREADS:-2}"
CIRCUITS="$RUN/circuits/all"
[ -d "$CIRCUITS" ] || CIRCUITS="$RUN/circuits/accepted"
if [ ! -f "$RUN/directions.safetensors" ] || [ ! -d "$CIRCUITS" ]; then
  echo "serve.sh: $RUN has no directions.safetensors or circuits/: run \`scripts/emo paper\` first" >&2
  exit 2
fi
"$ROOT/scripts/setup.sh"
cd "$ROOT"
cargo build --release --quiet -p emo-cli
PY="$ROOT/.venv/bin/python"
LOAD="$ROOT/scripts/bench/serve_load.py"

log="$(mktemp)"
"$ROOT/target/release/emo" serve --device cpu --threads "$THREADS" --port 0 --max-batch "$N" \
  --directions "run=$RUN" --circuits "run=$CIRCUITS" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 600); do
  grep -q "http://" "$log" && break
  kill -0 $pid 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.1
done
URL=$(grep -o "http://[^ ]*" "$log" | head -1)
echo "emo serve at $URL (max batch $N, $THREADS threads), $T tokens per request" >&2

load() { "$PY" "$LOAD" "$URL" --max-tokens "$T" "$@"; }
load --requests 4 --concurrency 4 >/dev/null # warm-up
one=$(load --requests $((REQUESTS / 4)) --concurrency 1 --mix plain,steer,circuit)
many=$(load --requests "$REQUESTS" --concurrency "$N" --mix plain,steer,circuit)
plain=$(load --requests "$REQUESTS" --concurrency "$N" --mix plain)
steer=$(load --requests "$REQUESTS" --concurrency "$N" --mix steer)
circuit=$(load --requests "$REQUESTS" --concurrency "$N" --mix circuit)
"$PY" - "$one" "$many" "$plain" "$steer" "$circuit" <<'PY'
import json, sys
rows = [json.loads(a) for a in sys.argv[1:]]
names = ["mixed, one at a time", "mixed, concurrent", "plain only, concurrent", "steering on every request, concurrent", "a circuit on every request, concurrent"]
print("| load | clients | requests | tokens/s | p50 s | p95 s | errors |")
print("|---|---:|---:|---:|---:|---:|---|")
for n, r in zip(names, rows):
    print(f"| {n} | {r['concurrency']} | {r['requests']} | {r['tokens_per_s']:.1f} | {r['latency_p50_s']} | {r['latency_p95_s']} | {r['errors'] or 0} |")
one, many, plain, steer, circuit = (r["tokens_per_s"] for r in rows)
print()
print(f"concurrent / one at a time: {many / one:.2f}x (goal 5x); steering on every request / none: {steer / plain:.3f} (goal >= 0.90); circuits / none: {circuit / plain:.3f}")
for n, r in zip(names, rows):
    print(json.dumps({"load": n, **r}), file=sys.stderr)
PY
