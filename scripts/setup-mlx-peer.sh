#!/usr/bin/env bash
# Set up mlx_lm.server (the MLX peer of the benchmarks) outside the repo: a venv with mlx,
# mlx-cpu, mlx-lm and gguf from PyPI, and an MLX model folder converted from a GGUF file
# (python/pensieve_mlx/convert.py: quantised weights kept, config.json, tokenizer rebuilt from the GGUF
# vocabulary and merges). For benchmarks only (bench/agent_replay.py --peers mlx), not for CI.
#
# Idempotent: an existing venv or model folder is kept (FORCE=1 redoes both).
#
# Environment:
#   PEERS_DIR    where to install                 (default: /root/.cache/pensieve/peers)
#   MODEL        GGUF to convert                  (default: the cached Qwen2.5-Coder-0.5B-Instruct)
#   DTYPE        float32 | float16 (scales and norms; default: float32: on an x86 CPU MLX decodes
#                float32 about 3x faster than float16 and prefills at the same rate)
#   MLX_VERSION / MLX_LM_VERSION                  (default: 0.32.4 / 0.32.2)
#   FORCE=1      recreate the venv and the model folder
#
# The last line printed is the model folder, to pass as --mlx-model.
set -euo pipefail

PEERS_DIR="${PEERS_DIR:-/root/.cache/pensieve/peers}"
MODEL="${MODEL:-/root/.cache/pensieve/test-models/Qwen2.5-Coder-0.5B-Instruct.gguf}"
DTYPE="${DTYPE:-float32}"
MLX_VERSION="${MLX_VERSION:-0.32.4}"
MLX_LM_VERSION="${MLX_LM_VERSION:-0.32.2}"
VENV="$PEERS_DIR/mlx-venv"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME="$(basename "$MODEL" .gguf)"
OUT="$PEERS_DIR/mlx-models/$NAME-$DTYPE"

if [[ ! -f "$MODEL" ]]; then
    echo "error: $MODEL not found (scripts/fetch-test-models.sh)" >&2
    exit 1
fi

if [[ "${FORCE:-0}" == "1" ]]; then
    rm -rf "$VENV" "$OUT"
fi

if [[ ! -x "$VENV/bin/mlx_lm.server" ]]; then
    echo "== creating $VENV (mlx $MLX_VERSION, mlx-cpu, mlx-lm $MLX_LM_VERSION, gguf)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip >&2
    # mlx-cpu: the CPU backend for Linux (the mlx wheel alone has no backend there)
    "$VENV/bin/pip" install -q "mlx==$MLX_VERSION" "mlx-cpu==$MLX_VERSION" \
        "mlx-lm==$MLX_LM_VERSION" "gguf==0.19.0" >&2
fi
"$VENV/bin/python" -c "import mlx.core as mx; print('mlx', mx.__version__, mx.default_device())" >&2

if [[ ! -f "$OUT/model.safetensors" ]]; then
    echo "== converting $MODEL -> $OUT ($DTYPE)" >&2
    PYTHONPATH="$HERE/python" nice -n 5 "$VENV/bin/python" -m pensieve_mlx.convert --dtype "$DTYPE" \
        "$MODEL" "$OUT" >&2
fi
echo "mlx_lm.server: $VENV/bin/mlx_lm.server --model $OUT" >&2
echo "$OUT"
