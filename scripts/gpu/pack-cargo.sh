#!/usr/bin/env bash
# Packs what the GPU machine needs to run the README's own CUDA build, `cargo build --release
# --features cuda`, into .gpu/rust*/ (git-ignored): that machine has nvcc, cmake, gcc and
# libclang but no Rust toolchain and no registry.
#
#   - the toolchain this machine builds with, cut to what `cargo build` runs: cargo, rustc, its
#     driver and LLVM, the standard library and the linker wrapper (no docs, clippy, rustfmt);
#   - the registry's downloaded crates and index, so that `cargo build --offline --locked`
#     resolves Cargo.lock there exactly as here.
#
# Both go as one tar.xz in parts of at most 60 MB, one a folder, one folder a call (a call
# carries 64 MiB with the working tree); scripts/gpu/cargo-build.sh puts them together there.
#
# usage: scripts/gpu/pack-cargo.sh      -> .gpu/rust0, .gpu/rust1, ...
# env:   CARGO_HOME (default ~/.cargo), GPU_CACHE (default /root/.cache/pensieve/gpu)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE="${GPU_CACHE:-/root/.cache/pensieve/gpu}"
HOME_CARGO="${CARGO_HOME:-$HOME/.cargo}"
SYSROOT="$(rustc --print sysroot)"
HOST="$(rustc -vV | awk '/^host:/ {print $2}')"
TAR="$CACHE/rust-$(rustc --version | awk '{print $2}')-$HOST.tar.xz"

grep -qx '/.gpu/' "$ROOT/.git/info/exclude" 2>/dev/null || grep -qx '/.gpu/' "$ROOT/.gitignore" \
    || { echo "error: .gpu/ must be git-ignored" >&2; exit 1; }
mkdir -p "$CACHE"
# Everything Cargo.lock names must be in the registry's cache, or the offline build fails there.
(cd "$ROOT" && cargo fetch --locked --target "$HOST" >/dev/null)

if [[ ! -f "$TAR" ]]; then
    echo "== $(rustc --version), $HOST: toolchain and registry"
    stage=$(mktemp -d)
    mkdir -p "$stage/rust/bin" "$stage/rust/lib/rustlib/$HOST" "$stage/cargo-home/registry"
    cp "$SYSROOT/bin/cargo" "$SYSROOT/bin/rustc" "$stage/rust/bin/"
    cp -a "$SYSROOT"/lib/librustc_driver-*.so "$SYSROOT"/lib/libLLVM* "$stage/rust/lib/"
    cp -a "$SYSROOT/lib/rustlib/$HOST/lib" "$SYSROOT/lib/rustlib/$HOST/bin" "$stage/rust/lib/rustlib/$HOST/"
    cp -a "$HOME_CARGO/registry/cache" "$HOME_CARGO/registry/index" "$stage/cargo-home/registry/"
    du -sh "$stage/rust" "$stage/cargo-home"
    tar -C "$stage" -cf - rust cargo-home | xz -T0 -6 >"$TAR.tmp"
    mv "$TAR.tmp" "$TAR"
    rm -rf "$stage"
fi

rm -rf "$ROOT"/.gpu/rust[0-9]*
split -b 60M -d -a 1 "$TAR" "$ROOT/.gpu/rust.part"
n=0
for part in "$ROOT"/.gpu/rust.part*; do
    mkdir -p "$ROOT/.gpu/rust$n" && mv "$part" "$ROOT/.gpu/rust$n/"
    n=$((n + 1))
done
sha256sum "$TAR" | awk '{print $1}' >"$ROOT/.gpu/rust0/rust.sha256"
echo "$n" >"$ROOT/.gpu/rust0/rust.parts"
du -sh "$ROOT"/.gpu/rust[0-9]*
echo "carry: one .gpu/rustN a call, then run scripts/gpu/cargo-build.sh there"
