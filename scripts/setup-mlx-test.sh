#!/usr/bin/env bash
# The mlx engine's test environment, idempotent:
#   - `pensieve setup mlx`: a venv under $PENSIEVE_DATA_DIR with pinned mlx, mlx-cpu, mlx-lm,
#     mlx-vlm, Pillow and gguf (the product's own setup command, so CI exercises it), plus
#     pytest for the worker's and converter's tests;
#   - SmolLM2-135M converted from its GGUF into an MLX folder (python/pensieve_mlx/convert.py,
#     quantisation kept) under $PENSIEVE_TEST_MLX_MODELS, redone when the converter changes;
#   - a random-weight LLaVA with SmolLM2's tokenizer (scripts/make-test-mlx-vlm.py), for the
#     image path, redone when its script changes.
# Needs PENSIEVE_BIN (built) and PENSIEVE_TEST_MODELS (scripts/fetch-test-models.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${PENSIEVE_BIN:?}" "${PENSIEVE_TEST_MODELS:?}"
export PENSIEVE_DATA_DIR="${PENSIEVE_DATA_DIR:-$HOME/.cache/pensieve/data}"
MLX_MODELS="${PENSIEVE_TEST_MLX_MODELS:-$PENSIEVE_TEST_MODELS/mlx}"
PYTHON="$PENSIEVE_DATA_DIR/mlx-venv/bin/python"

log() { printf '[setup-mlx-test] %s\n' "$*" >&2; }

if "$PYTHON" -c "import mlx.core, mlx_lm, mlx_vlm, PIL, gguf, pytest" 2>/dev/null; then
    log "mlx venv: ok ($PYTHON)"
else
    log "mlx venv: pensieve setup mlx"
    "$PENSIEVE_BIN" setup mlx >&2
    "$PYTHON" -m pip install --quiet --disable-pip-version-check "pytest==9.2.0" >&2
fi

GGUF="$PENSIEVE_TEST_MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT="$MLX_MODELS/SmolLM2-135M-Instruct.Q4_1"
stamp="$(sha256sum "$ROOT/python/pensieve_mlx/convert.py" | cut -c1-16)"
if [[ -f "$OUT/config.json" && "$(cat "$OUT/.converter" 2>/dev/null)" == "$stamp" ]]; then
    log "MLX SmolLM2: ok ($OUT)"
else
    log "MLX SmolLM2: converting $GGUF"
    rm -rf "$OUT"
    mkdir -p "$MLX_MODELS"
    PYTHONPATH="$ROOT/python" "$PYTHON" -m pensieve_mlx.convert "$GGUF" "$OUT" >&2
    printf '%s' "$stamp" >"$OUT/.converter"
fi

VLM="$MLX_MODELS/llava-smollm2-random"
stamp="$(sha256sum "$ROOT/scripts/make-test-mlx-vlm.py" | cut -c1-16)"
if [[ -f "$VLM/config.json" && "$(cat "$VLM/.maker" 2>/dev/null)" == "$stamp" ]]; then
    log "MLX LLaVA (random weights): ok ($VLM)"
else
    log "MLX LLaVA (random weights): making $VLM"
    rm -rf "$VLM"
    "$PYTHON" "$ROOT/scripts/make-test-mlx-vlm.py" --tokenizer-from "$OUT" --out "$VLM" >&2
    printf '%s' "$stamp" >"$VLM/.maker"
fi
