#!/usr/bin/env bash
# The one command that runs every test, on a fresh machine too:
#   1. scripts/setup-test-env.sh --lint, then cargo fmt --check, cargo clippy, ruff check and
#      ruff format --check, then the unit tests (stops here if any fails; no model needed yet),
#      then every fuzz target for 30 s (scripts/fuzz.sh)
#   2. scripts/setup-test-env.sh  (Claude Code, the test models)
#   3. cargo test --release --workspace
#   4. cargo build --release       (the pensieve binary)
#   5. the mlx engine: scripts/setup-mlx-test.sh (`pensieve setup mlx`, SmolLM2 converted to
#      MLX), the worker's and converter's tests (python/tests), and the Anthropic suite, the
#      chat template override and speculation on `--engine mlx`
#   6. a 3-minute soak (bench/soak.py) against that binary
#   7. the end-to-end pytest suite in tests/e2e against that binary
# Exits non-zero if any step fails. The last line printed is pytest's summary.
#
# Extra arguments go to pytest, e.g.  scripts/test.sh -m "not claude_code" -x
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pensieve-target}"
export PENSIEVE_TEST_MODELS="${PENSIEVE_TEST_MODELS:-$HOME/.cache/pensieve/test-models}"
export PENSIEVE_VENV="${PENSIEVE_VENV:-$HOME/.cache/pensieve/venv}"
export PENSIEVE_NPM_PREFIX="${PENSIEVE_NPM_PREFIX:-$HOME/.cache/pensieve/npm}"
export PENSIEVE_BIN="${PENSIEVE_BIN:-$CARGO_TARGET_DIR/release/pensieve}"
export PYTHONDONTWRITEBYTECODE=1
export PENSIEVE_DATA_DIR="${PENSIEVE_DATA_DIR:-$HOME/.cache/pensieve/data}"
export PENSIEVE_MLX_PYTHON="${PENSIEVE_MLX_PYTHON:-$PENSIEVE_DATA_DIR/mlx-venv/bin/python}"
export PENSIEVE_TEST_MLX_MODELS="${PENSIEVE_TEST_MLX_MODELS:-$PENSIEVE_TEST_MODELS/mlx}"
export PENSIEVE_MLX_TEST_MODEL="$PENSIEVE_TEST_MLX_MODELS/SmolLM2-135M-Instruct.Q4_1"

# Each step with the minutes since the start, so a log says where CI's time goes.
step() { printf '\n==> [%d min] %s\n' $((SECONDS / 60)) "$*" >&2; }
failed=()

# Tier 1, in minutes and before any model is fetched: the lints and the tests that need no
# model. Clippy checks in the release profile, so llama.cpp's build script output serves all.
step "setting up the lint tier (system packages, Python venv)"
if ! bash scripts/setup-test-env.sh --lint; then
    echo "setup-test-env.sh --lint failed" >&2
    exit 1
fi
# Where scripts/setup.sh's rustup puts cargo, for a shell started before it did.
[[ -x "$HOME/.cargo/bin/cargo" ]] && export PATH="$HOME/.cargo/bin:$PATH"

step "cargo fmt --check; cargo clippy --release --all-targets -D warnings; ruff check; ruff format --check"
if ! cargo fmt --all --check || ! cargo clippy --release --workspace --all-targets -- -D warnings \
    || ! "$PENSIEVE_VENV/bin/ruff" check . || ! "$PENSIEVE_VENV/bin/ruff" format --check .; then
    echo "lint failed" >&2
    exit 1
fi

step "cargo test --release --workspace --lib --bins (unit tests)"
if ! cargo test --release --workspace --lib --bins; then
    echo "unit tests failed" >&2
    exit 1
fi

# Still no model: every fuzz target for a short run from the committed corpus (its own
# target directory: the instrumented build must not replace the main one's artifacts).
step "fuzz: each target ${FUZZ_SECONDS:-30} s (scripts/fuzz.sh)"
if ! CARGO_TARGET_DIR="$HOME/.cache/pensieve-fuzz-target" FUZZ_SECONDS="${FUZZ_SECONDS:-30}" bash scripts/fuzz.sh; then
    failed+=("fuzz")
fi

# Tier 2: the models, Claude Code and a browser, then every test that uses them.
step "setting up the test environment"
if ! bash scripts/setup-test-env.sh; then
    echo "setup-test-env.sh failed" >&2
    exit 1
fi

# Again with the models there: the unit tests that read one ran without it above.
step "cargo test --release --workspace"
if ! cargo test --release --workspace; then
    failed+=("cargo test")
fi

step "cargo build --release"
if ! cargo build --release -p pensieve; then
    failed+=("cargo build")
fi

step "mlx engine: environment, worker and converter tests, the Anthropic suite, chat template override, speculation and images on --engine mlx"
if ! bash scripts/setup-mlx-test.sh; then
    failed+=("mlx setup")
else
    # A skipped test here would hide a missing piece of the setup: count it as a failure.
    if ! "$PENSIEVE_MLX_PYTHON" -m pytest python/tests -q -rs -p no:cacheprovider | tee /tmp/pensieve-python-tests.log \
        || grep -q " skipped" /tmp/pensieve-python-tests.log; then
        failed+=("python tests")
    fi
    if ! PENSIEVE_TEST_ENGINE=mlx "$PENSIEVE_VENV/bin/python" -m pytest tests/e2e/test_anthropic_sdk.py -q; then
        failed+=("anthropic suite on --engine mlx")
    fi
    if ! PENSIEVE_TEST_ENGINE=mlx "$PENSIEVE_VENV/bin/python" -m pytest tests/e2e/test_chat_template.py -q; then
        failed+=("chat template override on --engine mlx")
    fi
    if ! PENSIEVE_TEST_ENGINE=mlx "$PENSIEVE_VENV/bin/python" -m pytest tests/e2e/test_speculative.py -q -k mlx; then
        failed+=("speculation on --engine mlx")
    fi
    if ! PENSIEVE_TEST_ENGINE=mlx "$PENSIEVE_VENV/bin/python" -m pytest tests/e2e/test_mlx_vision.py -q; then
        failed+=("images on --engine mlx")
    fi
fi

step "soak: 3 minutes of mixed traffic above capacity (bench/soak.py)"
if ! "$PENSIEVE_VENV/bin/python" bench/soak.py --bin "$PENSIEVE_BIN" \
    --model "$PENSIEVE_TEST_MODELS/SmolLM2-135M-Instruct.Q4_1.gguf" \
    --duration 180 --warmup 60 --max-rss-growth 0.15 --out /tmp/pensieve-soak.json >/tmp/pensieve-soak.log 2>&1; then
    failed+=("soak")
fi
tail -n 2 /tmp/pensieve-soak.log >&2

step "end-to-end tests (PENSIEVE_BIN=$PENSIEVE_BIN)"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FAILED before the end-to-end tests: ${failed[*]}" >&2
fi
# Nothing is printed after pytest: its summary line is the last line of the run (after the
# slowest tests, which say where CI's time goes).
"$PENSIEVE_VENV/bin/python" -m pytest tests/e2e -v --durations=15 "$@"
pytest_rc=$?
if [[ $pytest_rc -ne 0 || ${#failed[@]} -gt 0 ]]; then
    exit 1
fi
exit 0
