#!/usr/bin/env bash
# Packs what scripts/gpu/spec-bench.sh needs on the GPU machine into .gpu/ (git-ignored): Pensieve
# linked dynamically against libllama (built here, where cargo is), the CUDA llama.cpp build of an
# earlier run (its libraries and llama-server), and Qwen2.5-Coder-0.5B in parts of one call each
# (a call carries at most 64 MiB).
#
# usage: scripts/gpu/pack-spec.sh
#   then carry .gpu/base and .gpu/llama with the first call, .gpu/q0 ... one a call after it.
# env:   DYN_TARGET_DIR   cargo's target dir for the dynamic build (default
#                         /root/.cache/pensieve-dyn-target, apart from the static one)
#        GPU_LLAMA_PARTS  llama-cuda.tar.xz.part* of an earlier run (default
#                         /root/.cache/pensieve/gpu/llama-parts)
#        TEST_MODELS      (default /root/.cache/pensieve/test-models)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TARGET="${DYN_TARGET_DIR:-/root/.cache/pensieve-dyn-target}"
PARTS_DIR="${GPU_LLAMA_PARTS:-/root/.cache/pensieve/gpu/llama-parts}"
MODELS="${TEST_MODELS:-/root/.cache/pensieve/test-models}"
MODEL=Qwen2.5-Coder-0.5B-Instruct.gguf
GPU="$ROOT/.gpu"

grep -qx '/.gpu/' "$ROOT/.gitignore" || { echo "error: .gpu/ must be git-ignored" >&2; exit 1; }
compgen -G "$PARTS_DIR/llama-cuda.tar.xz.part*" >/dev/null ||
    { echo "error: no CUDA llama.cpp parts in $PARTS_DIR (scripts/gpu/pipeline.sh makes them)" >&2; exit 1; }
rm -rf "$GPU" && mkdir -p "$GPU/base" "$GPU/llama"

echo "== pensieve, linked dynamically against libllama"
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --release --features dynamic-link -p pensieve)
strip -o "$GPU/base/pensieve" "$TARGET/release/pensieve"
xz -T0 -6 "$GPU/base/pensieve"
cp "$PARTS_DIR"/llama-cuda.tar.xz.part* "$GPU/llama/"

echo "== $MODEL in parts"
(cd "$MODELS" && sha256sum "$MODEL") >"$GPU/base/model.sha256"
stage=$(mktemp -d)
split -b 58M -d -a 2 "$MODELS/$MODEL" "$stage/model.part"
n=0
for part in "$stage"/model.part*; do
    mkdir -p "$GPU/q$n" && mv "$part" "$GPU/q$n/"
    n=$((n + 1))
done
echo "$n" >"$GPU/base/model.parts"
rm -rf "$stage"
du -sh "$GPU"/*/ | tr '\n' ' '
echo
echo "carry: .gpu/base and .gpu/llama first, then .gpu/q0 ... .gpu/q$((n - 1)), one a call"
