#!/usr/bin/env bash
# Packs what the mlx engine needs on the GPU machine (scripts/gpu/pipeline.sh, MLX=1) into
# .gpu/mlx0 and .gpu/mlx1, one a call: the wheels of mlx, mlx-cuda-13 (CUDA 13 libraries of MLX,
# 90 MB) and mlx-lm for the machine's Python 3.12, and the tokenizer of the random-weight 7B model
# (scripts/gpu/random_mlx.py tokenizer, from the Qwen2.5 test model). The machine has the rest of
# their dependencies (transformers, numpy, the nvidia-*-cu13 libraries). Run after pack.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
MODELS="${TEST_MODELS:-/root/.cache/pensieve/test-models}"
CACHE="${GPU_CACHE:-/root/.cache/pensieve}/mlx-cuda"
PY="${TOKENIZER_PYTHON:-python3}" # needs gguf and tokenizers
MLX_VERSION=0.32.4
MLX_LM_VERSION=0.32.2
mkdir -p "$CACHE/whl"
pip download -q --no-deps --only-binary=:all: --platform manylinux_2_35_x86_64 --python-version 3.12 \
    -d "$CACHE/whl" "mlx==$MLX_VERSION" "mlx-cuda-13==$MLX_VERSION" "mlx-lm==$MLX_LM_VERSION"
[[ -f $CACHE/qtok/tokenizer.json ]] ||
    "$PY" "$ROOT/scripts/gpu/random_mlx.py" tokenizer "$MODELS/Qwen2.5-Coder-0.5B-Instruct.gguf" "$CACHE/qtok"
rm -rf "$ROOT"/.gpu/mlx[0-9]*
stage=$(mktemp -d)
tar -C "$CACHE" -cf - whl qtok | split -b 55M -d -a 1 - "$stage/mlx.part"
(cd "$stage" && sha256sum mlx.part*) >"$stage/mlx.sha256"
n=0
for part in "$stage"/mlx.part*; do
    mkdir -p "$ROOT/.gpu/mlx$n" && mv "$part" "$ROOT/.gpu/mlx$n/"
    n=$((n + 1))
done
mv "$stage/mlx.sha256" "$ROOT/.gpu/mlx0/"
echo "$n" >"$ROOT/.gpu/mlx0/parts"
rm -rf "$stage"
du -sh "$ROOT"/.gpu/mlx[0-9]* | tr '\n' ' '
echo
