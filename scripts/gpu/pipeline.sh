#!/usr/bin/env bash
# The whole GPU run, on the GPU machine, from the repository root; scripts/gpu/call.sh starts it
# detached so that it runs on between calls. Every stage logs to $W/logs and goes on after a
# failure of the one before where it can; $W/logs/stages.txt says how far it got.
#
#   llama     unpack the CUDA llama.cpp of an earlier run (.gpu/llama/), or build llama.cpp
#             b11434 with CUDA as shared libraries (about 4.5 min on 16 cores) and pack it into
#             $W/results/llama-cuda.tar.xz.part* for call.sh to bring back
#   model     (during the build) the random-weight Qwen2.5-7B-shaped F16 GGUF, written on the
#             GPU; then llama-quantize to Q4_K_M
#   smoke     `pensieve serve` on the 7B model with default flags: the start-up log (device,
#             layers offloaded, VRAM) and one request
#   e2e       the Anthropic, OpenAI and tools suites against this build (SmolLM2, reassembled
#             from the parts that later calls carry); tests that need other models are left out
#   admission (ADMISSION=1: this stage alone, after the build) `pensieve serve` with KV caches
#             too large for the card and one that fits (scripts/gpu/admission.py)
#   verify    (VERIFY_COST=1: this stage alone, after the model) llama-bench passes of 1..9
#             tokens at three context depths: what checking drafted tokens costs
#   greedy    greedy output on the GPU against --gpu-layers 0, same binary, same prompts
#   bench     bench/gpu.py on the 7B model (decode, prefill, 32/64 streams, agent swarm) against
#             llama-server and llama-server --backend-sampling; a step trace of Pensieve at 64
#             streams (scripts/gpu/steps.py); then the same on SmolLM2
set -u
REPO=$(pwd)
G=$REPO/.gpu
W=${GPU_WORK:-/tmp/pv}
L=$W/logs
R=$W/results
mkdir -p "$L" "$R" "$W/bin" "$W/models" "$W/src"
exec >>"$L/pipeline.log" 2>&1
T0=$(date +%s)
stage() { echo "[$(($(date +%s) - T0))s] $*" | tee -a "$L/stages.txt"; }
export LD_LIBRARY_PATH=$W/lib PYTHONUNBUFFERED=1
PY=python3
MODEL7=$W/q7-q4km.gguf
SMOL=$W/models/SmolLM2-135M-Instruct.Q4_1.gguf

# The mlx engine on mlx-cuda (MLX=1). The wheels and the tokenizer arrive in parts, one a call
# (.gpu/mlx*, scripts/gpu/pack-mlx.sh); the wheels go into $W/mlx/site, and a folder shaped like a
# venv gives bench/mlx_engine.py its bin/python (Pensieve's worker) and bin/mlx_lm.server (the
# peer), both the machine's python3 with that site on PYTHONPATH. Then the random-weight 7B-shaped
# MLX model is written on the GPU (scripts/gpu/random_mlx.py).
mlx_prepare() {
    local M=$W/mlx want site
    for _ in $(seq 1 120); do
        want=$(cat "$G/mlx0/parts" 2>/dev/null || echo 99)
        [[ $(compgen -G "$G/mlx*/mlx.part[0-9]" | wc -l) -ge $want ]] && break
        sleep 5
    done
    mkdir -p "$M/venv/bin" "$M/site"
    if ! (cd "$M" && cp "$G"/mlx*/mlx.part* . && sha256sum -c "$G/mlx0/mlx.sha256" &&
        cat mlx.part* | tar -x && rm mlx.part* &&
        $PY -m pip install -q --no-index --no-deps --no-compile --target "$M/site" "$M"/whl/*.whl) \
        >"$L/mlx-prepare.log" 2>&1; then
        stage "mlx: the wheels did not install (logs/mlx-prepare.log)"
        return 1
    fi
    site=$M/site
    # libmlx finds CUDA's libraries at $ORIGIN/../../nvidia: the machine's, beside torch.
    ln -sfn "$($PY -c 'import nvidia; print(list(nvidia.__path__)[0])')" "$site/nvidia"
    printf '#!/bin/sh\nPYTHONPATH=%s exec %s "$@"\n' "$site" "$(command -v $PY)" >"$M/venv/bin/python"
    printf '#!/bin/sh\nPYTHONPATH=%s exec %s -m mlx_lm.server "$@"\n' "$site" "$(command -v $PY)" \
        >"$M/venv/bin/mlx_lm.server"
    chmod +x "$M/venv/bin/python" "$M/venv/bin/mlx_lm.server"
    "$M/venv/bin/python" -c 'import mlx.core as mx, mlx_lm; print("mlx", mx.__version__, mx.default_device())' \
        >>"$L/mlx-prepare.log" 2>&1
    "$M/venv/bin/python" "$REPO/scripts/gpu/random_mlx.py" write "$M/qtok" "$M/q7-mlx" >"$L/mlx-model.log" 2>&1
    stage "mlx: rc=$? $(tail -1 "$L/mlx-prepare.log"); $(tail -1 "$L/mlx-model.log")"
}

# Pensieve's mlx engine against mlx_lm.server on that model, alternating (bench/mlx_engine.py).
mlx_bench() {
    [[ -d $W/mlx/q7-mlx ]] || return 1
    timeout "${MLX_TIMEOUT:-420}" $PY "$REPO/bench/mlx_engine.py" --mlx-model "$W/mlx/q7-mlx" \
        --mlx-venv "$W/mlx/venv" --pensieve-bin "$W/bin/pensieve" --rounds "${MLX_ROUNDS:-3}" \
        --decode-tokens 256 --prefill-words 2000 --wait-idle 0 --json "$R/mlx.json" --log-dir "$L/mlx" \
        >"$L/mlx-bench.log" 2>&1
    stage "mlx bench: rc=$? $(grep -E '^(decode tok/s|cold prefill tok/s)' "$L/mlx-bench.log" | tr -s ' ' | tr '\n' ';')"
}

stage start
{
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
    nvcc --version | tail -2
    nproc
    free -g
    df -h /tmp
    $PY --version
} >"$L/env.txt" 2>&1

xz -dc "$G/base/pensieve.xz" >"$W/bin/pensieve" && chmod +x "$W/bin/pensieve"
tar -xJf "$G/base/llama-src.tar.xz" -C "$W/src"
S=$W/src/llama.cpp
stage unpacked
# With MLX=1 the MLX model is written while the GGUF one is made; the benchmarks wait for both.
if [[ ${MLX:-0} == 1 ]]; then
    mlx_prepare &
    MLX_PREP=$!
fi

build_llama() {
    cmake -S "$S" -B "$S/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
        -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_NCCL=OFF -DLLAMA_CURL=OFF \
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_BUILD_NUMBER=11434 >"$L/cmake.log" 2>&1 || return 1
    ninja -C "$S/build" llama-server llama-bench llama-quantize llama-batched-bench >"$L/ninja.log" 2>&1 || return 1
    mkdir -p "$W/lib"
    cp -a "$S"/build/bin/*.so* "$W/lib/"
    cp "$S"/build/bin/llama-{server,bench,quantize,batched-bench} "$W/bin/"
    tar -C "$W" -cf - lib bin/llama-server bin/llama-bench bin/llama-quantize bin/llama-batched-bench |
        xz -T0 -6 >"$R/llama-cuda.tar.xz"
    split -b 15M -d -a 1 "$R/llama-cuda.tar.xz" "$R/llama-cuda.tar.xz.part"
    rm "$R/llama-cuda.tar.xz"
}

if compgen -G "$G/llama/llama-cuda.tar.xz.part*" >/dev/null; then
    cat "$G"/llama/llama-cuda.tar.xz.part* | xz -dc | tar -x -C "$W" && echo 0 >"$W/build.rc"
    stage "llama: unpacked an earlier CUDA build"
else
    (
        build_llama
        echo $? >"$W/build.rc"
    ) &
    BUILD=$!
    stage "llama: build started"
fi

PYTHONPATH=$S/gguf-py $PY "$REPO/scripts/gpu/random_model.py" write "$G/base/qwen7b-meta.json.xz" "$W/q7-f16.gguf" >"$L/model.log" 2>&1
stage "model: F16 written rc=$?"
[[ -n "${BUILD:-}" ]] && wait "$BUILD"
if [[ "$(cat "$W/build.rc" 2>/dev/null)" != 0 ]]; then
    tail -40 "$L/cmake.log" "$L/ninja.log"
    stage "llama: BUILD FAILED"
    touch "$W/DONE"
    exit 1
fi
stage "llama: ready ($(du -sh "$W/lib" | cut -f1) of libraries)"
{
    ls -la "$W/lib" "$W/bin"
    echo "== pensieve needs"
    cat "$G/base/pensieve.needs"
    echo "== ldd pensieve"
    ldd "$W/bin/pensieve"
} >"$L/libs.txt" 2>&1
grep -q "not found" "$L/libs.txt" && stage "WARNING: pensieve has unresolved libraries (logs/libs.txt)"

# ADMISSION=1: only the start-up checks of scripts/gpu/admission.py, on the F16 model (the
# weights' size does not matter to them), then done.
if [[ ${ADMISSION:-0} == 1 ]]; then
    timeout 480 $PY "$REPO/scripts/gpu/admission.py" "$W/bin/pensieve" "$W/q7-f16.gguf" >"$R/admission.txt" 2>&1
    stage "admission: rc=$? $(tail -1 "$R/admission.txt")"
    stage ALL_DONE
    touch "$W/DONE"
    exit 0
fi

"$W/bin/llama-quantize" "$W/q7-f16.gguf" "$MODEL7" Q4_K_M 16 >"$L/quantize.log" 2>&1
stage "model: Q4_K_M rc=$? $(stat -c %s "$MODEL7" 2>/dev/null) bytes"
rm -f "$W/q7-f16.gguf"

# VERIFY_COST=1: only what a pass of n = 1..9 tokens of one sequence costs on the GPU (what
# checking n - 1 drafted tokens costs: speculative decoding), at 0, 3,000 and 12,000 tokens of
# context, by llama-bench on the 7B model; then done.
if [[ ${VERIFY_COST:-0} == 1 ]]; then
    for depth in 0 3000 12000; do
        "$W/bin/llama-bench" -m "$MODEL7" -ngl 99 -p 1,2,3,4,5,6,7,8,9 -n 0 -d "$depth" -r 10 -o md
    done >"$R/verify-cost.md" 2>"$L/verify-cost.log"
    stage "verify cost: rc=$? $(grep -c '| pp' "$R/verify-cost.md") rows"
    stage ALL_DONE
    touch "$W/DONE"
    exit 0
fi

# The test model arrives in parts, one a call (the wheels may come with one of them).
wait_parts() {
    local parts
    parts=$(cat "$G/base/smollm2.parts")
    for _ in $(seq 1 120); do
        [[ $(compgen -G "$G/part*/smollm2.part*" | wc -l) -ge $parts && -f "$G/${WHEELS_DIR:-base}/wheels.tar" ]] && break
        sleep 5
    done
    cat "$G"/part*/smollm2.part* >"$SMOL"
    (cd "$W/models" && sha256sum -c "$G/base/smollm2.sha256") >"$L/models.txt" 2>&1
    stage "models: $(cat "$L/models.txt")"
}

# The suites against $1 (default: the dynamic-link binary).
run_e2e() {
    local bin=${1:-$W/bin/pensieve}
    mkdir -p /tmp/site && tar -xf "$G/${WHEELS_DIR:-base}/wheels.tar" -C "$W" &&
        $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$W"/whl/*.whl >"$L/pip.log" 2>&1
    (
        cd "$REPO/tests/e2e" &&
            PYTHONPATH=/tmp/site PENSIEVE_BIN=$bin PENSIEVE_TEST_MODELS=$W/models \
                timeout 300 $PY -m pytest test_anthropic_sdk.py test_openai_sdk.py test_tools.py \
                -v -k "not qwen" --junitxml="$R/e2e.xml" \
                --deselect test_tools.py::test_a_tool_call_is_a_tool_use_block \
                --deselect test_tools.py::test_a_streamed_call_arrives_as_input_json_deltas \
                --deselect test_tools.py::test_a_tool_result_continues_the_conversation \
                --deselect test_tools.py::test_without_tools_the_model_just_talks \
                --deselect test_openai_sdk.py::test_a_forced_tool_call_validates \
                --deselect test_openai_sdk.py::test_a_tool_result_continues_the_conversation \
                --deselect test_openai_sdk.py::test_json_schema_output_validates >"$R/e2e.txt" 2>&1
    )
    stage "e2e ($bin): rc=$? $(tail -1 "$R/e2e.txt")"
}

# The README's own `cargo build --release --features cuda`, once the toolchain's parts have
# all arrived (one a call): scripts/gpu/cargo-build.sh, which also serves the 7B model with
# the binary it made. Sets STATIC_BIN when that binary exists.
static_build() {
    local want
    want=$(cat "$G/rust0/rust.parts" 2>/dev/null || echo 99)
    for _ in $(seq 1 120); do
        [[ $(compgen -G "$G/rust*/rust.part[0-9]" | wc -l) -ge $want ]] && break
        sleep 5
    done
    bash "$REPO/scripts/gpu/cargo-build.sh" >"$L/cargo-build.log" 2>&1
    stage "static build: rc=$? $(tr '\n' ' ' <"$W/cargo/stages.txt" | tail -c 600)"
    cp "$W/cargo/build.log" "$W/cargo/smoke.log" "$L/" 2>/dev/null
    [[ -x $W/cargo/target/release/pensieve ]] && STATIC_BIN=$W/cargo/target/release/pensieve
}

# Pensieve alone on WORKLOADS (64 streams where streams), traced step by step; the stage line
# shows the first LINES rows of scripts/gpu/steps.py's table.
step_trace() {
    timeout 200 $PY "$REPO/bench/gpu.py" --model "$MODEL7" --pensieve-bin "$W/bin/pensieve" \
        --llama-server-bin "$W/bin/llama-server" --sides pensieve --workloads "$1" --streams 64 \
        --rounds 1 --pensieve-log info,pensieve_engine::scheduler=trace,pensieve_llama=trace \
        --json "$R/trace-7b.json" --log-dir "$L/trace-7b" >"$L/trace-7b.log" 2>&1
    $PY "$REPO/scripts/gpu/steps.py" "$L/trace-7b/pensieve.log" >"$R/steps-7b.txt" 2>&1
    stage "step trace: $(sed -n "2,$((1 + $2))p" "$R/steps-7b.txt" | tr '\n' ';')"
}

# Each line of the plan file $1 is one bench/gpu.py run on the 7B model: NAME TIMEOUT_S and
# its arguments (blank lines and # comments skipped); llama-bench runs with the first only.
run_plan() {
    local name limit rest first=1
    while read -r -u 3 name limit rest; do
        [[ -z $name || $name == \#* ]] && continue
        eval "local extra=($rest)"
        local anchor=()
        [[ $first == 1 ]] && anchor=(--llama-bench-bin "$W/bin/llama-bench")
        first=0
        timeout "$limit" $PY "$REPO/bench/gpu.py" --model "$MODEL7" --pensieve-bin "$W/bin/pensieve" \
            --llama-server-bin "$W/bin/llama-server" "${anchor[@]}" "${extra[@]}" \
            --json "$R/bench-$name.json" --log-dir "$L/bench-$name" >"$L/bench-$name.log" 2>&1
        stage "bench $name: rc=$?"
        # Runs with a step trace (--pensieve-log ...=trace): where each Pensieve side's steps went.
        for f in "$L/bench-$name"/pensieve*.log; do
            grep -q step_us "$f" 2>/dev/null || continue
            local out=$R/steps-$name-$(basename "$f" .log).txt
            $PY "$REPO/scripts/gpu/steps.py" "$f" >"$out" 2>&1
            stage "  steps $(basename "$f" .log): $(sed -n 2,3p "$out" | tr '\n' ';')"
        done
    done 3<"$1"
}

if [[ -n "${ONLY_BENCH:-}${PLAN:-}" ]]; then
    # A re-run of some workloads only: the runs of the plan file PLAN (scripts/gpu/plans/), or
    # ONLY_BENCH's workloads (e.g. decode,streams,swarm) on the 7B model with BENCH_SIDES
    # (pensieve:NAME sides take their flags from VARIANTS, `NAME=FLAGS;...`);
    # then, with SWARM_TOOL_S, the swarm with that mean tool time between turns (SWARM_TEMPERATURE:
    # the swarm's temperature, default 0; Claude Code sends none, 1.0); with TRACE=1,
    # a step trace of one stream and of 64; with CARGO_BUILD=1, the static cargo build
    # (scripts/gpu/cargo-build.sh); with E2E=1, the end-to-end suites (the test model and
    # the wheels arrive meanwhile) against the static binary when there is one.
    variants=()
    IFS=';' read -ra vs <<<"${VARIANTS:-}"
    for v in "${vs[@]}"; do [[ -n $v ]] && variants+=(--variant "$v"); done
    [[ -n "${MLX_PREP:-}" ]] && wait "$MLX_PREP"
    [[ -n "${PLAN:-}" ]] && run_plan "$REPO/$PLAN"
    [[ ${MLX:-0} == 1 ]] && mlx_bench
    [[ -n "${ONLY_BENCH:-}" ]] && timeout "${BENCH_TIMEOUT:-450}" $PY "$REPO/bench/gpu.py" --model "$MODEL7" --pensieve-bin "$W/bin/pensieve" \
        --llama-server-bin "$W/bin/llama-server" --llama-bench-bin "$W/bin/llama-bench" \
        --sides "${BENCH_SIDES:-pensieve,llama-server,llama-server-bs}" --workloads "$ONLY_BENCH" \
        --streams "${BENCH_STREAMS:-32,64}" --rounds "${BENCH_ROUNDS:-1}" --swarm-turns 3 \
        --reps "${BENCH_REPS:-3}" "${variants[@]}" --swarm-temperature "${SWARM_TEMPERATURE:-0}" \
        --json "$R/bench-7b-only.json" --log-dir "$L/bench-7b-only" >"$L/bench-7b-only.log" 2>&1 &&
        stage "bench 7B $ONLY_BENCH: done"
    if [[ -n "${SWARM_TOOL_S:-}" ]]; then
        timeout 300 $PY "$REPO/bench/gpu.py" --model "$MODEL7" --pensieve-bin "$W/bin/pensieve" \
            --llama-server-bin "$W/bin/llama-server" --sides pensieve,llama-server --workloads swarm \
            --rounds 1 --swarm-turns 3 --swarm-tool-s "$SWARM_TOOL_S" \
            --swarm-temperature "${SWARM_TEMPERATURE:-0}" --json "$R/bench-7b-tools.json" \
            --log-dir "$L/bench-7b-tools" >"$L/bench-7b-tools.log" 2>&1
        stage "bench 7B swarm with tool time: rc=$?"
    fi
    [[ ${TRACE:-0} == 1 ]] && step_trace decode,streams 2
    [[ ${CARGO_BUILD:-0} == 1 ]] && static_build
    if [[ ${E2E:-0} == 1 ]]; then
        wait_parts
        run_e2e "${STATIC_BIN:-}"
    fi
    stage ALL_DONE
    touch "$W/DONE"
    exit 0
fi

# smoke: defaults only, so the log shows what a user gets
"$W/bin/pensieve" serve --model "$MODEL7" --port 7801 >"$L/smoke-serve.log" 2>&1 &
SP=$!
for _ in $(seq 1 180); do
    $PY -c 'import urllib.request as u; u.urlopen("http://127.0.0.1:7801/health", timeout=2)' 2>/dev/null && break
    kill -0 $SP 2>/dev/null || break
    sleep 1
done
$PY - >"$L/smoke-request.txt" 2>&1 <<'EOF'
import json, time, urllib.request as u
body = json.dumps({"model": "m", "prompt": "def fib(n):", "max_tokens": 64, "temperature": 0}).encode()
t = time.time()
r = u.urlopen(u.Request("http://127.0.0.1:7801/v1/completions", body, {"content-type": "application/json"}), timeout=120)
print(round(time.time() - t, 3), "s", json.loads(r.read())["usage"])
print(u.urlopen("http://127.0.0.1:7801/health").read().decode())
EOF
nvidia-smi --query-gpu=memory.used,memory.total --format=csv >>"$L/smoke-request.txt" 2>&1
kill $SP
wait $SP
stage "smoke: $(tail -3 "$L/smoke-request.txt" | head -1)"

wait_parts

$PY "$REPO/scripts/gpu/greedy.py" "$W/bin/pensieve" "$SMOL" "$MODEL7" >"$R/greedy.txt" 2>"$L/greedy.log"
stage "greedy: rc=$? $(tail -1 "$R/greedy.txt")"

run_e2e

timeout 900 $PY "$REPO/bench/gpu.py" --model "$MODEL7" --pensieve-bin "$W/bin/pensieve" \
    --llama-server-bin "$W/bin/llama-server" --llama-bench-bin "$W/bin/llama-bench" \
    --rounds "${BENCH_ROUNDS:-2}" --reps 2 --swarm-turns 3 --json "$R/bench-7b.json" --log-dir "$L/bench-7b" >"$L/bench-7b.log" 2>&1
stage "bench 7B: rc=$?"
step_trace streams 1
[[ ${BENCH_SMOL:-1} == 1 ]] && timeout 150 $PY "$REPO/bench/gpu.py" --model "$SMOL" --pensieve-bin "$W/bin/pensieve" \
    --llama-server-bin "$W/bin/llama-server" --llama-bench-bin "$W/bin/llama-bench" \
    --workloads decode,prefill,streams --rounds 1 --json "$R/bench-smol.json" \
    --log-dir "$L/bench-smol" >"$L/bench-smol.log" 2>&1
stage "bench SmolLM2: rc=$?"
stage ALL_DONE
touch "$W/DONE"
