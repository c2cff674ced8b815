#!/usr/bin/env bash
# What building Pensieve needs on this machine, installed when missing: a C++ compiler, cmake
# and libclang (llama.cpp and its Rust bindings), and Rust itself. Both of the README's
# commands run it first (scripts/serve.sh, scripts/test.sh); every step is skipped when what
# it makes is already there.
#
#   Debian/Ubuntu: the packages from apt (with sudo when not root).
#   macOS:         the Xcode command line tools give clang and libclang; cmake from Homebrew.
#   Rust:          rustup's stable toolchain when no cargo is on PATH (PENSIEVE_NO_RUSTUP=1:
#                  say so and stop instead).
#
# usage: scripts/setup.sh [EXTRA_APT_PACKAGE...]   (the test setup adds a headless Chromium)
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

setup_apt() {
    local missing=() pkg
    for pkg in build-essential cmake clang libclang-dev curl ca-certificates "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "system packages: ok"
        return 0
    fi
    log "system packages: installing ${missing[*]}"
    local sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null || die "installing ${missing[*]} needs root (no sudo here)"
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}

setup_macos() {
    xcode-select -p >/dev/null 2>&1 ||
        die "the Xcode command line tools are missing: run \`xcode-select --install\`, then this again"
    if ! command -v cmake >/dev/null; then
        command -v brew >/dev/null || die "cmake is missing: install it (https://cmake.org or \`brew install cmake\`)"
        log "cmake: installing with Homebrew"
        brew install cmake
    fi
    log "build tools: ok"
}

setup_rust() {
    # rustup installs into ~/.cargo/bin, which a fresh shell may not have on PATH yet.
    [[ -x "$HOME/.cargo/bin/cargo" ]] && export PATH="$HOME/.cargo/bin:$PATH"
    if command -v cargo >/dev/null; then
        log "rust: ok ($(cargo --version))"
        return 0
    fi
    [[ "${PENSIEVE_NO_RUSTUP:-0}" == 1 ]] &&
        die "cargo is not on PATH: install Rust (https://rustup.rs), then run this again"
    log "rust: installing the stable toolchain with rustup (https://rustup.rs)"
    # The script sh.rustup.rs redirects to, from the Rust project's own host (a network that
    # lets only the package registries through reaches this one, not the short name).
    curl --proto '=https' --tlsv1.2 -sSf https://static.rust-lang.org/rustup/rustup-init.sh |
        sh -s -- -y --profile minimal --component rustfmt,clippy >&2
    export PATH="$HOME/.cargo/bin:$PATH"
    log "rust: ok ($(cargo --version))"
}

case "$(uname -s)" in
    Linux)
        command -v apt-get >/dev/null ||
            die "no apt-get: install a C++ compiler, cmake and libclang with your package manager"
        setup_apt "$@"
        ;;
    Darwin) setup_macos ;;
    *) die "unsupported system $(uname -s): install a C++ compiler, cmake and libclang by hand" ;;
esac
setup_rust
