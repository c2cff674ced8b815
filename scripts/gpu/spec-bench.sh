#!/usr/bin/env bash
# bench/speculative.py on the GPU machine: Pensieve (CUDA, dynamic-link build) with and without
# n-gram speculation against llama-server (CUDA) without it and with each n-gram --spec-type, on
# Qwen2.5-Coder-0.5B, edit-heavy turns and plain chat. scripts/gpu/pack-spec.sh packs its inputs.
#
# usage (each call, on the GPU machine): scripts/gpu/spec-bench.sh WAIT_SECONDS
#   The first call (carrying .gpu/base and .gpu/llama) starts the run detached; it waits for the
#   model's parts (.gpu/q0 ... one a call), then benchmarks; each call says how far it got, and
#   the last one brings the results back in $OUT.
# env:   SPEC_ROUNDS (default 3), SPEC_MAX_TOKENS (default 512), SPEC_TIMEOUT (default 900 s)
set -u
W=${GPU_WORK:-/tmp/ps}
G=$(pwd)/.gpu
mkdir -p "$W"
if [[ ${1:-} == run ]]; then
    exec >"$W/run.log" 2>&1
    set -x
    mkdir -p "$W/bin" "$W/models"
    xz -dc "$G/base/pensieve.xz" >"$W/bin/pensieve" && chmod +x "$W/bin/pensieve"
    cat "$G"/llama/llama-cuda.tar.xz.part* | xz -dc | tar -x -C "$W"
    want=$(cat "$G/base/model.parts")
    for _ in $(seq 1 600); do
        [[ $(compgen -G "$G/q*/model.part[0-9]*" | wc -l) -ge $want ]] && break
        sleep 2
    done
    cat $(ls "$G"/q*/model.part[0-9]* | sort -V) >"$W/models/Qwen2.5-Coder-0.5B-Instruct.gguf"
    (cd "$W/models" && sha256sum -c "$G/base/model.sha256") || { echo "model damaged"; touch "$W/DONE"; exit 1; }
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    LD_LIBRARY_PATH=$W/lib "$W/bin/pensieve" --version
    LD_LIBRARY_PATH=$W/lib timeout "${SPEC_TIMEOUT:-900}" python3 bench/speculative.py \
        --model "$W/models/Qwen2.5-Coder-0.5B-Instruct.gguf" --pensieve-bin "$W/bin/pensieve" \
        --llama-bin "$W/bin/llama-server" --llama-args "-ngl 99" --threads 8 \
        --rounds "${SPEC_ROUNDS:-3}" --max-tokens "${SPEC_MAX_TOKENS:-512}" \
        --json "$W/spec.json" --log-dir "$W/logs" >"$W/spec.txt" 2>&1
    echo "bench rc=$?"
    touch "$W/DONE"
    exit 0
fi
if [[ ! -f $W/started && -f $G/base/pensieve.xz ]]; then
    touch "$W/started"
    setsid nohup bash "$0" run </dev/null >/dev/null 2>&1 &
fi
end=$(($(date +%s) + ${1:-0}))
while [[ $(date +%s) -lt $end && ! -f $W/DONE ]]; do sleep 2; done
echo "parts here: $(compgen -G "$G/q*/model.part[0-9]*" | wc -l) of $(cat "$G/base/model.parts" 2>/dev/null)"
tail -4 "$W/run.log" 2>/dev/null
tail -25 "$W/spec.txt" 2>/dev/null
if [[ -n ${OUT:-} && -f $W/DONE ]]; then
    cp "$W/spec.txt" "$W/run.log" "$OUT/" 2>/dev/null
    [[ -f $W/spec.json ]] && xz -c "$W/spec.json" >"$OUT/spec.json.xz"
    tar -C "$W" -czf "$OUT/logs.tgz" logs 2>/dev/null
fi
exit 0
