#!/usr/bin/env bash
# Idempotent setup of everything the test suite needs on a fresh machine:
#   - what the build needs (scripts/setup.sh: cmake, clang, libclang-dev, Rust), and a
#     headless Chromium (tests/e2e/test_browser.py)
#   - a Python venv with the official clients and pytest
#       ${PENSIEVE_VENV:-$HOME/.cache/pensieve/venv}
#   - Claude Code, OpenAI's Codex CLI and the TypeScript SDKs from the npm registry
#       ${PENSIEVE_NPM_PREFIX:-$HOME/.cache/pensieve/npm}/node_modules/.bin/{claude,codex}
#       ${PENSIEVE_NPM_PREFIX:-$HOME/.cache/pensieve/npm}/node_modules/{@anthropic-ai/sdk,openai}
#   - the GGUF test models (scripts/fetch-test-models.sh), and the tiny random-weight
#     model with gpt-oss's tokenizer and template (scripts/make-harmony-test-model.py)
#
# Every step is skipped when what it makes is already there.
#
#   setup-test-env.sh --lint   only what the lints and the model-free tests need: the system
#                              packages and the venv (which holds ruff)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PENSIEVE_VENV:-$HOME/.cache/pensieve/venv}"
NPM_PREFIX="${PENSIEVE_NPM_PREFIX:-$HOME/.cache/pensieve/npm}"
PYTHON="${PYTHON:-python3}"

# Pinned versions (verified together on Python 3.11 / Node 20).
PY_REQUIREMENTS=(
    "anthropic==2.14.0"
    "openai==3.57.0"
    "pytest==9.2.0"
    "httpx==0.28.1"
    "jsonschema==4.26.0"
    # Drives Claude Code from Python (tests/e2e/test_claude_code.py).
    "claude-agent-sdk==0.2.190"
    # The official Hub client: checks that tests/e2e/hub_server.py speaks the Hub's protocol.
    "huggingface_hub==2.4.0"
    # llama.cpp's GGUF writer and its arrays: scripts/make-harmony-test-model.py.
    "gguf==0.19.0"
    "numpy==2.4.6"
    # The Python lints (ruff.toml), run before any model is fetched.
    "ruff==0.17.6"
)
CLAUDE_CODE_VERSION="2.1.328"
CODEX_VERSION="0.171.0"
# The clients of tests/e2e/test_clients.py, as npm package@version: the TypeScript SDKs,
# opencode and Qwen Code.
NPM_PACKAGES=("@anthropic-ai/sdk@1.17.0" "openai@7.60.0" "opencode-ai@1.18.33" "@qwen-code/qwen-code@0.24.4")

log() { printf '[setup-test-env] %s\n' "$*" >&2; }
die() { printf '[setup-test-env] ERROR: %s\n' "$*" >&2; exit 1; }

# --- system packages ---------------------------------------------------------
# The build's own (scripts/setup.sh), and chromium-headless-shell: a real browser for
# tests/e2e/test_browser.py.
setup_apt() {
    bash "$ROOT/scripts/setup.sh" chromium-headless-shell
}

# --- python venv -------------------------------------------------------------
setup_venv() {
    local stamp="$VENV/.pensieve-requirements"
    local want
    want="$(printf '%s\n' "${PY_REQUIREMENTS[@]}")"
    if [[ -x "$VENV/bin/python" && -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$want" ]] \
        && "$VENV/bin/python" -c "import anthropic, openai, pytest, httpx, jsonschema, huggingface_hub, gguf, numpy, claude_agent_sdk" 2>/dev/null \
        && "$VENV/bin/ruff" --version >/dev/null 2>&1; then
        log "python venv: ok ($VENV)"
        return 0
    fi
    log "python venv: creating $VENV"
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
    if [[ ! -x "$VENV/bin/python" ]]; then
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_REQUIREMENTS[@]}"
    "$VENV/bin/python" -c "import anthropic, openai, pytest, httpx, jsonschema, huggingface_hub, gguf, numpy, claude_agent_sdk" \
        || die "venv packages do not import"
    printf '%s' "$want" >"$stamp"
    log "python venv: ok ($("$VENV/bin/python" -c 'import anthropic, openai, pytest; print("anthropic", anthropic.__version__, "openai", openai.__version__, "pytest", pytest.__version__)'))"
}

# --- Claude Code -------------------------------------------------------------
claude_version_ok() {
    local out
    out="$("$NPM_PREFIX/node_modules/.bin/claude" --version 2>/dev/null)" || return 1
    [[ "$out" == "$CLAUDE_CODE_VERSION"* ]]
}

setup_claude_code() {
    if claude_version_ok; then
        log "claude code: ok ($CLAUDE_CODE_VERSION)"
        return 0
    fi
    command -v npm >/dev/null || die "npm not found (Claude Code is installed from the npm registry)"
    log "claude code: installing @anthropic-ai/claude-code@$CLAUDE_CODE_VERSION into $NPM_PREFIX"
    mkdir -p "$NPM_PREFIX"
    # The package's own postinstall copies the native binary (from its platform
    # package, an optional dependency) over bin/claude.exe; it needs no network.
    npm install --prefix "$NPM_PREFIX" --no-audit --no-fund --save-exact \
        "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" >&2
    if ! claude_version_ok; then
        # Some npm configurations skip install scripts: run it by hand.
        log "claude code: running its postinstall step by hand"
        (cd "$NPM_PREFIX/node_modules/@anthropic-ai/claude-code" && node install.cjs) >&2 || true
    fi
    claude_version_ok || die "claude --version does not run ($NPM_PREFIX/node_modules/.bin/claude)"
    log "claude code: ok ($("$NPM_PREFIX/node_modules/.bin/claude" --version))"
}

# --- Codex CLI -----------------------------------------------------------------
codex_version_ok() {
    local out
    out="$("$NPM_PREFIX/node_modules/.bin/codex" --version 2>/dev/null)" || return 1
    [[ "$out" == "codex-cli $CODEX_VERSION" ]]
}

setup_codex() {
    if codex_version_ok; then
        log "codex: ok ($CODEX_VERSION)"
        return 0
    fi
    log "codex: installing @openai/codex@$CODEX_VERSION into $NPM_PREFIX"
    # The native binary comes in a platform package, an optional dependency.
    npm install --prefix "$NPM_PREFIX" --no-audit --no-fund --save-exact \
        "@openai/codex@$CODEX_VERSION" >&2
    codex_version_ok || die "codex --version does not run ($NPM_PREFIX/node_modules/.bin/codex)"
    log "codex: ok ($("$NPM_PREFIX/node_modules/.bin/codex" --version))"
}

# --- npm packages (the TypeScript SDKs, opencode, Qwen Code) -------------------
setup_npm_packages() {
    local spec name version missing=()
    for spec in "${NPM_PACKAGES[@]}"; do
        name="${spec%@*}"
        version="${spec##*@}"
        if [[ "$(node -p "require('$NPM_PREFIX/node_modules/$name/package.json').version" 2>/dev/null)" != "$version" ]]; then
            missing+=("$spec")
        fi
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "npm packages: ok (${NPM_PACKAGES[*]})"
        return 0
    fi
    log "npm packages: installing ${missing[*]} into $NPM_PREFIX"
    npm install --prefix "$NPM_PREFIX" --no-audit --no-fund --save-exact "${missing[@]}" >&2
}

setup_apt
setup_venv
if [[ "${1:-}" == "--lint" ]]; then
    log "done (lint tier)"
    exit 0
fi
setup_claude_code
setup_codex
setup_npm_packages
bash "$ROOT/scripts/fetch-test-models.sh"
"$VENV/bin/python" "$ROOT/scripts/make-harmony-test-model.py"
log "done"
