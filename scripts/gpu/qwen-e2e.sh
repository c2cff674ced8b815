#!/usr/bin/env bash
# The end-to-end suites with both test models (SmolLM2 and Qwen2.5-Coder-0.5B, which the
# tool tests use) against the dynamic-link build on the GPU machine. The models (590 MB) come
# in parts of one call each: scripts/gpu/pack-qwen.sh packs them here into .gpu/q*/.
#
# usage (each call, on the GPU machine): scripts/gpu/qwen-e2e.sh WAIT_SECONDS
#   The first call (carrying .gpu/base and .gpu/llama from scripts/gpu/pack.sh) starts the run
#   detached; it waits for the parts (.gpu/q0 ... one a call), then runs the suites; each call
#   reports how far it got. `run` does the work in the foreground.
set -u
W=${GPU_WORK:-/tmp/pq}
G=$(pwd)/.gpu
mkdir -p "$W"
if [[ ${1:-} == run ]]; then
    exec >"$W/run.log" 2>&1
    xz -dc "$G/base/pensieve.xz" >"$W/pensieve" && chmod +x "$W/pensieve"
    cat "$G"/llama/llama-cuda.tar.xz.part* | xz -dc | tar -x -C "$W"
    # q0 (which says how many parts there are) may itself come with a later call.
    for _ in $(seq 1 200); do
        want=$(cat "$G/q0/parts" 2>/dev/null || echo 999)
        [[ $(compgen -G "$G/q*/models.part[0-9]*" | wc -l) -ge $want ]] && break
        sleep 2
    done
    cat $(ls "$G"/q*/models.part[0-9]* | sort -V) | tar -x -C "$W"
    (cd "$W/models" && sha256sum -c "$G/q0/models.sha256") || { echo "models damaged"; touch "$W/DONE"; exit 1; }
    mkdir -p "$W/site" && python3 -m pip install -q --no-index --no-deps --no-compile --target "$W/site" "$W"/whl/*.whl
    cd tests/e2e && LD_LIBRARY_PATH=$W/lib PYTHONPATH=$W/site PENSIEVE_BIN=$W/pensieve \
        PENSIEVE_TEST_MODELS=$W/models timeout 400 python3 -m pytest test_anthropic_sdk.py \
        test_openai_sdk.py test_tools.py -v --junitxml="$W/e2e.xml" >"$W/e2e.txt" 2>&1
    echo "e2e rc=$?"
    touch "$W/DONE"
    exit 0
fi
if [[ ! -f $W/started && -f $G/base/pensieve.xz ]]; then
    touch "$W/started"
    setsid nohup bash "$0" run </dev/null >/dev/null 2>&1 &
fi
end=$(($(date +%s) + ${1:-0}))
while [[ $(date +%s) -lt $end && ! -f $W/DONE ]]; do sleep 2; done
tail -3 "$W/run.log" 2>/dev/null
grep -E "PASSED|FAILED|ERROR" "$W/e2e.txt" 2>/dev/null | grep -c PASSED
grep -E "FAILED|ERROR|passed|failed" "$W/e2e.txt" 2>/dev/null | tail -12
[[ -n ${OUT:-} && -f $W/DONE ]] && cp "$W/e2e.txt" "$W/run.log" "$OUT/" 2>/dev/null
exit 0
