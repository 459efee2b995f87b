#!/usr/bin/env bash
# Build llama.cpp's `llama-server` (the OpenAI-compatible serving engine with parallel slots and
# continuous batching) from the llama.cpp sources inside the llama-cpp-python sdist, the same
# llama.cpp version as the in-process back end. The fleet tests and bench/bench_fleet.py start
# it on loopback. Built once and cached, keyed by the version:
#   ~/.cache/smolfusion_ros/test-assets/llama-server-<version>/bin/llama-server
# (SMOLFUSION_TEST_ASSETS overrides the cache directory, as for test/tiny_vlm.py).
# Prints the binary's path on stdout; everything else goes to stderr.
# About 10 minutes on 2 cores the first time (only the server target, 2 jobs); then instant.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${SMOLFUSION_TEST_ASSETS:-${XDG_CACHE_HOME:-$HOME/.cache}/smolfusion_ros/test-assets}"
TARGET="$CACHE/llama-server-$VERSION"
BIN="$TARGET/bin/llama-server"
JOBS="${LLAMA_SERVER_JOBS:-2}"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi

log() { printf '[build_llama_server] %s\n' "$*" >&2; }

mkdir -p "$TARGET"
# Two test runs (or a test and the benchmark) must not build into the same tree at once.
exec 9>"$TARGET/.lock"
flock 9

if [ -x "$BIN" ] && [ -f "$TARGET/.complete" ] && [ "$(cat "$TARGET/.complete")" = "$VERSION" ]; then
  echo "$BIN"
  exit 0
fi

for tool in cmake make cc c++; do
  command -v "$tool" >/dev/null 2>&1 || { log "missing build tool: $tool"; exit 1; }
done

SDIST="$TARGET/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
  log "fetching the llama-cpp-python==$VERSION source distribution from PyPI"
  "$PY" -m pip download --quiet --no-deps --no-binary :all: \
    "llama-cpp-python==$VERSION" -d "$TARGET" >&2
fi

SRC="$TARGET/src"
rm -rf "$SRC" "$TARGET/build"
mkdir -p "$SRC"
log "extracting llama.cpp from the sdist"
tar -xzf "$SDIST" -C "$SRC" --strip-components=3 "llama_cpp_python-$VERSION/vendor/llama.cpp"

# Only what the server needs: no tests, examples, libcurl (models come from local files) or
# shared libraries (one self-contained binary in the cache).
log "configuring (cmake), then building the llama-server target with $JOBS jobs"
cmake -S "$SRC" -B "$TARGET/build" \
  -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF >"$TARGET/cmake.log" 2>&1 || { tail -30 "$TARGET/cmake.log" >&2; exit 1; }
cmake --build "$TARGET/build" --target llama-server -j "$JOBS" >"$TARGET/build.log" 2>&1 \
  || { tail -40 "$TARGET/build.log" >&2; exit 1; }

mkdir -p "$TARGET/bin"
cp "$TARGET/build/bin/llama-server" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
"$BIN" --version >&2 2>&1 || true
# The sources and objects (hundreds of MB) are not needed once the binary is cached.
rm -rf "$SRC" "$TARGET/build" "$SDIST"
echo "$VERSION" >"$TARGET/.complete"
echo "$BIN"
