#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ (libFuzzer through libfuzzer-sys, on stable Rust: no
# cargo-fuzz, no nightly) and runs each for FUZZ_SECONDS (default 30), starting from the
# corpus committed in fuzz/corpus/<target>. A crash, a run over 1 s or past 2 GiB of memory
# fails the script; its input is left in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh                    # every target, 30 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh tool_calls gguf
#   FUZZ_RUNS=1000000 scripts/fuzz.sh  # a number of executions instead of a time
#   FUZZ_MERGE=1 scripts/fuzz.sh       # then fold what was found into fuzz/corpus (minimized)
#
# New inputs go to a scratch corpus, so a run leaves the committed corpus as it is.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

seconds=${FUZZ_SECONDS:-30}
runs=${FUZZ_RUNS:-}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(anthropic_request openai_request sse_encoders tool_calls gguf chat_template disk_cache image)
fi

# cargo-fuzz's instrumentation without its nightly-only sanitizer: coverage counters and
# comparison tracing for libFuzzer, debug assertions and overflow checks so that they
# count as crashes. An explicit --target keeps these flags off build scripts and proc macros.
host=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks \
-Cforce-frame-pointers=yes ${FUZZ_EXTRA_RUSTFLAGS:-}"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
cargo build --release --locked --target "$host" "${bins[@]}"

# Inputs longer than this are cut: big enough for real requests, templates and GGUF
# headers, small enough to keep every run fast.
max_len() {
    case $1 in
        anthropic_request | openai_request) echo 65536 ;;
        chat_template) echo 32768 ;;
        gguf | disk_cache | image) echo 8192 ;;
        *) echo 4096 ;;
    esac
}

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t" "$scratch/$t"
    limit=(-max_total_time="$seconds")
    [ -n "$runs" ] && limit=(-runs="$runs")
    log="$scratch/$t.log"
    set +e
    "$CARGO_TARGET_DIR/$host/release/$t" "$scratch/$t" "corpus/$t" \
        "${limit[@]}" -timeout=1 -rss_limit_mb=2048 -max_len="$(max_len "$t")" \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ "$rc" -ne 0 ]; then
        tail -n 40 "$log"
        echo "fuzz $t: FAILED (exit $rc) after ${execs:-?} executions; input in fuzz/artifacts/$t/"
        failed+=("$t")
    else
        echo "fuzz $t: ${execs:-?} executions, no crash, timeout or out-of-memory"
        if [ -n "${FUZZ_MERGE:-}" ]; then
            mkdir -p "$scratch/$t.merged"
            "$CARGO_TARGET_DIR/$host/release/$t" -merge=1 -max_len="$(max_len "$t")" \
                "$scratch/$t.merged" "corpus/$t" "$scratch/$t" >/dev/null 2>&1
            rm -rf "corpus/$t" && mv "$scratch/$t.merged" "corpus/$t"
        fi
    fi
done
if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzz: failed: ${failed[*]}"
    exit 1
fi
