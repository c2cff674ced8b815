#!/usr/bin/env bash
# The command of each `run` on the GPU machine: starts scripts/gpu/pipeline.sh detached on the
# first call (it runs on between calls while the machine stays warm), waits up to WAIT seconds
# or until it is done, prints how far it got, and puts the logs, the results and up to six
# parts of the CUDA llama.cpp build (each once) into $OUT to come back.
#
# usage: scripts/gpu/call.sh WAIT_SECONDS
set -u
WAIT=${1:-0}
W=${GPU_WORK:-/tmp/pv}
mkdir -p "$W"
# The pipeline starts once .gpu/base is there (an earlier call may carry only .gpu/llama).
if [[ ! -f "$W/started" && -f .gpu/base/pensieve.xz ]]; then
    touch "$W/started"
    setsid nohup bash scripts/gpu/pipeline.sh </dev/null >/dev/null 2>&1 &
    sleep 2
fi
end=$(($(date +%s) + WAIT))
while [[ $(date +%s) -lt $end && ! -f "$W/DONE" ]]; do sleep 3; done
echo "== stages"
cat "$W/logs/stages.txt" 2>/dev/null
echo "== pipeline.log (tail)"
tail -15 "$W/logs/pipeline.log" 2>/dev/null
[[ -n "${OUT:-}" ]] || exit 0
tar -C "$W" -czf "$OUT/logs.tgz" --exclude='*.part*' logs results 2>/dev/null
n=0
for f in "$W"/results/llama-cuda.tar.xz.part*; do
    [[ -f "$f" && "$f" != *.sent && ! -f "$f.sent" && $n -lt 6 ]] || continue
    cp "$f" "$OUT/" && touch "$f.sent" && n=$((n + 1))
done
ls -la "$OUT"
