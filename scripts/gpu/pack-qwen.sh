#!/usr/bin/env bash
# Packs both test models and the tests' wheels for scripts/gpu/qwen-e2e.sh into .gpu/q0, q1, ...
# (58 MB each, one a call). Run after scripts/gpu/pack.sh (which makes the wheels).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
MODELS="${TEST_MODELS:-/root/.cache/pensieve/test-models}"
CACHE="${GPU_CACHE:-/root/.cache/pensieve/gpu}"
rm -rf "$ROOT"/.gpu/q[0-9]*
stage=$(mktemp -d)
mkdir -p "$stage/models"
ln -s "$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODELS/Qwen2.5-Coder-0.5B-Instruct.gguf" "$stage/models/"
(cd "$stage/models" && sha256sum -- *.gguf) >"$stage/models.sha256"
tar -C "$stage" -chf - models -C "$CACHE" whl | split -b 58M -d -a 2 - "$stage/models.part"
n=0
for part in "$stage"/models.part*; do
    mkdir -p "$ROOT/.gpu/q$n" && mv "$part" "$ROOT/.gpu/q$n/"
    n=$((n + 1))
done
cp "$stage/models.sha256" "$ROOT/.gpu/q0/"
echo "$n" >"$ROOT/.gpu/q0/parts"
rm -rf "$stage"
du -sh "$ROOT"/.gpu/q[0-9]* | tr '\n' ' '
echo
