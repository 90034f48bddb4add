#!/usr/bin/env bash
# Python hooks against TransformerLens and nnsight (scripts/bench/python_hooks.py): sets up once a bench venv
# in .cache/bench-venv that sees the project venv's packages (torch, transformers, emotion_circuits) and adds
# transformer-lens and nnsight, pinned, so the project's venv stays as setup.sh made it.
#
#   scripts/bench/python_hooks.sh [--reps N] [--tokens 1,64] [--threads K] [--json OUT]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
"$ROOT/scripts/setup.sh" --test
BENCH="$ROOT/.cache/bench-venv"
if [ ! -x "$BENCH/bin/python" ]; then
  "$ROOT/.venv/bin/python" -m venv "$BENCH"
fi
site=$("$BENCH/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
main_site=$("$ROOT/.venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# .pth files are read only in site folders, so the package's source folder is named here too.
printf '%s\n%s\n' "$main_site" "$ROOT/crates/emo-py/python" > "$site/emo-venv.pth"
"$BENCH/bin/python" -c "import transformer_lens, nnsight" 2>/dev/null ||
  "$BENCH/bin/python" -m pip install --progress-bar on transformer-lens==4.3.0 nnsight==0.8.1
cd "$ROOT"
exec "$BENCH/bin/python" scripts/bench/python_hooks.py "$@"
