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
    if compgen -G "$G/llama/llama-cuda.tar.xz.part*" >/dev/null; then
        cat "$G"/llama/llama-cuda.tar.xz.part* | xz -dc | tar -x -C "$W"
    else
        # No earlier build came: build llama.cpp's libraries and llama-server with CUDA (about
        # 4 min on 16 cores, while the model's parts arrive), and bring them back in parts.
        mkdir -p "$W/src" "$W/lib" "$W/parts" && tar -xJf "$G/llama/llama-src.tar.xz" -C "$W/src"
        S=$W/src/llama.cpp
        cmake -S "$S" -B "$S/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
            -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_NCCL=OFF -DLLAMA_CURL=OFF \
            -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
            -DLLAMA_BUILD_NUMBER=11434 >"$W/cmake.log" 2>&1 &&
            ninja -C "$S/build" llama-server llama-bench >"$W/ninja.log" 2>&1 ||
            { tail -30 "$W/cmake.log" "$W/ninja.log"; echo "llama.cpp build failed"; touch "$W/DONE"; exit 1; }
        cp -a "$S"/build/bin/*.so* "$W/lib/" && cp "$S"/build/bin/llama-{server,bench} "$W/bin/"
        tar -C "$W" -cf - lib bin/llama-server bin/llama-bench | xz -T0 -6 >"$W/llama-cuda.tar.xz"
        split -b 15M -d -a 1 "$W/llama-cuda.tar.xz" "$W/parts/llama-cuda.tar.xz.part"
    fi
    want=$(cat "$G/base/model.parts")
    for _ in $(seq 1 600); do
        [[ $(compgen -G "$G/q*/model.part[0-9]*" | wc -l) -ge $want ]] && break
        sleep 2
    done
    cat $(ls "$G"/q*/model.part[0-9]* | sort -V) >"$W/models/Qwen2.5-Coder-0.5B-Instruct.gguf"
    (cd "$W/models" && sha256sum -c "$G/base/model.sha256") || { echo "model damaged"; touch "$W/DONE"; exit 1; }
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    LD_LIBRARY_PATH=$W/lib "$W/bin/pensieve" --version
    # Per request, what speculation drafted and the step costs it weighed (debug lines).
    PENSIEVE_LOG=${PENSIEVE_LOG:-info,pensieve_engine::scheduler=debug} \
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
    [[ -d $W/parts ]] && cp -r "$W/parts" "$OUT/llama-parts"
fi
exit 0
