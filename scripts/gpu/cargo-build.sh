#!/usr/bin/env bash
# On the GPU machine, from the repository root: the README's own CUDA build, `cargo build
# --release --features cuda`, with the toolchain and registry that scripts/gpu/pack-cargo.sh
# packed (.gpu/rust*/, carried one a call). Then, if an earlier pipeline run left the
# random-weight 7B model in $GPU_WORK, the binary it made serves it for one request.
#
# usage: scripts/gpu/cargo-build.sh     (logs in $GPU_WORK/cargo, a copy in $OUT when set)
# env:   GPU_WORK (default /tmp/pv), CUDA_ARCH (default 90, the H200)
set -u
W=${GPU_WORK:-/tmp/pv}
C=$W/cargo
mkdir -p "$C"
LOG=$C/build.log
T0=$(date +%s)
say() { echo "[$(($(date +%s) - T0))s] $*" | tee -a "$C/stages.txt"; }
finish() {
    [[ -n "${OUT:-}" ]] && tar -C "$W" -czf "$OUT/cargo-logs.tgz" cargo/stages.txt cargo/build.log cargo/smoke.log 2>/dev/null
    exit "$1"
}

if [[ ! -x "$C/rust/bin/cargo" ]]; then
    cat .gpu/rust[0-9]*/rust.part[0-9] >"$C/rust.tar.xz"
    if [[ "$(sha256sum "$C/rust.tar.xz" | awk '{print $1}')" != "$(cat .gpu/rust0/rust.sha256)" ]]; then
        say "toolchain: parts missing or damaged ($(ls .gpu/rust[0-9]*/rust.part[0-9] | wc -l) here)"
        finish 1
    fi
    tar -xJf "$C/rust.tar.xz" -C "$C" && rm "$C/rust.tar.xz"
fi
export PATH=$C/rust/bin:$PATH CARGO_HOME=$C/cargo-home CARGO_TARGET_DIR=$C/target
export LIBCLANG_PATH=${LIBCLANG_PATH:-/usr/lib/llvm-16/lib}
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda} CMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90}
export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
# bindgen needs the compiler's own headers (stddef.h); libclang without them borrows gcc's.
if ! compgen -G "$LIBCLANG_PATH/clang/*/include/stddef.h" >/dev/null; then
    export BINDGEN_EXTRA_CLANG_ARGS="-I$(dirname "$(gcc -print-file-name=include/stddef.h)")"
fi
say "toolchain: $(cargo --version), $(rustc --version); cmake $(cmake --version | head -1); $(nvcc --version | tail -1)"

cargo build --release --offline --locked --features cuda -p pensieve >"$LOG" 2>&1
rc=$?
say "cargo build --release --features cuda: rc=$rc"
if [[ $rc != 0 ]]; then
    tail -30 "$LOG"
    finish 1
fi
BIN=$CARGO_TARGET_DIR/release/pensieve
say "binary: $(stat -c %s "$BIN") bytes; links: $(ldd "$BIN" | awk '/cuda|cublas|ggml|llama/ {print $1}' | tr '\n' ' ')"

MODEL=$W/q7-q4km.gguf
if [[ ! -f "$MODEL" ]]; then
    say "smoke: skipped (no $MODEL: run scripts/gpu/pipeline.sh first)"
    finish 0
fi
"$BIN" serve --model "$MODEL" --port 7802 >"$C/smoke.log" 2>&1 &
SP=$!
for _ in $(seq 1 180); do
    python3 -c 'import urllib.request as u; u.urlopen("http://127.0.0.1:7802/health", timeout=2)' 2>/dev/null && break
    kill -0 $SP 2>/dev/null || break
    sleep 1
done
python3 - >>"$C/smoke.log" 2>&1 <<'EOF2'
import json, urllib.request as u
body = json.dumps({"model": "m", "prompt": "def fib(n):", "max_tokens": 32, "temperature": 0}).encode()
r = u.urlopen(u.Request("http://127.0.0.1:7802/v1/completions", body, {"content-type": "application/json"}), timeout=120)
print("smoke usage:", json.loads(r.read())["usage"])
print("smoke health:", u.urlopen("http://127.0.0.1:7802/health").read().decode())
EOF2
kill $SP
wait $SP 2>/dev/null
say "smoke: $(grep -o 'model loaded on [^=]*' "$C/smoke.log" | head -1)"
say "$(grep '^smoke' "$C/smoke.log" | tr '\n' ' ')"
finish 0
