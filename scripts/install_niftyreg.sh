#!/usr/bin/env bash
# Install the NiftyReg command-line tools (reg_aladin, reg_resample, reg_transform,
# reg_f3d, ...) into a Python environment, reproducibly and with a wheel cache.
#
# Usage: scripts/install_niftyreg.sh [PYTHON]
#
#   PYTHON  interpreter of the target environment (default: <repo>/.venv/bin/python).
#
# NiftyReg is only published on PyPI as an sdist (niftyreg==1.5.70rc1, scikit-build +
# CMake). Its binaries are installed inside the package: site-packages/niftyreg/bin/
# (exposed as `niftyreg.bin_path`); nothing is put on the environment's bin/ except
# the `niftyreg` launcher script.
#
# Steps:
#   1. fast path: the pinned niftyreg is already installed and reg_aladin runs -> exit 0;
#   2. a cached wheel in $CACHE/wheels fits this interpreter -> pip install it (seconds);
#   3. otherwise build the wheel from the sdist (~3-5 min on 2 cores) into the cache,
#      then install it.
#
# Cache: ${REMIND2REG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/remind2reg}/wheels
# Needs for a build: a C++ compiler (g++), network access to PyPI (sdist + the build
# requirements: setuptools, scikit-build, setuptools_scm, cmake, ninja wheels, pinned in
# build-constraints.txt at the repository root).
# Set NIFTYREG_FORCE_BUILD=1 to ignore the installed package and the cache and rebuild.
set -euo pipefail

NIFTYREG_VERSION="1.5.70rc1"

REPO_ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
PYTHON="${1:-$REPO_ROOT/.venv/bin/python}"
CACHE_DIR="${REMIND2REG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/remind2reg}"
WHEEL_DIR="$CACHE_DIR/wheels"
# Build requirements (and their dependencies) pinned to the versions that built this sdist;
# shared with the Dockerfile's build stage, applied to pip's isolated build environment
# through PIP_CONSTRAINT.
BUILD_CONSTRAINTS="$REPO_ROOT/build-constraints.txt"

log() { printf '[install_niftyreg] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

if [[ "$PYTHON" != */* ]]; then
    PYTHON="$(command -v -- "$PYTHON")" || die "python interpreter '${1:-}' not found on PATH"
fi
[[ -x "$PYTHON" ]] || die "python interpreter '$PYTHON' not found (create the venv first, e.g. 'python3 -m venv .venv')"

# Prints the niftyreg binary folder if the pinned version is installed, else fails.
installed_bin_dir() {
    "$PYTHON" - "$NIFTYREG_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version

if version("niftyreg") != sys.argv[1]:
    sys.exit(1)
import niftyreg

print(niftyreg.bin_path)
EOF
}

# Succeeds if reg_aladin in the given folder runs (`-v` prints the version, exit 0).
aladin_runs() {
    [[ -x "$1/reg_aladin" ]] && "$1/reg_aladin" -v >/dev/null 2>&1
}

pip_install_cached() {
    # --no-index: only our cache; pip picks the wheel whose tags fit this interpreter.
    "$PYTHON" -m pip install --quiet --no-index --no-deps --force-reinstall \
        --find-links "$WHEEL_DIR" "niftyreg==$NIFTYREG_VERSION"
}

# 1. Fast path.
if [[ "${NIFTYREG_FORCE_BUILD:-0}" != "1" ]] && BIN_DIR="$(installed_bin_dir)" && aladin_runs "$BIN_DIR"; then
    log "niftyreg $NIFTYREG_VERSION already installed; binaries in $BIN_DIR"
    exit 0
fi

"$PYTHON" -m pip --version >/dev/null 2>&1 || die "'$PYTHON -m pip' does not work; install pip in that environment"
mkdir -p "$WHEEL_DIR"

# 2. Cached wheel.
installed=0
if [[ "${NIFTYREG_FORCE_BUILD:-0}" != "1" ]] && compgen -G "$WHEEL_DIR/niftyreg-$NIFTYREG_VERSION-*.whl" >/dev/null; then
    log "installing cached wheel from $WHEEL_DIR"
    # Quiet: "no matching wheel" (e.g. only wheels for other Python versions) is expected.
    if pip_install_cached 2>/dev/null; then
        installed=1
    else
        log "no cached wheel fits $PYTHON; building one"
    fi
fi

# 3. Build from the sdist.
if [[ "$installed" == "0" ]]; then
    command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 ||
        die "no C++ compiler found (Debian/Ubuntu: apt-get install g++)"
    TMP_DIR="$(mktemp -d "${TMPDIR:-/tmp}/niftyreg-build.XXXXXX")"
    trap 'rm -rf -- "$TMP_DIR"' EXIT
    [[ -f "$BUILD_CONSTRAINTS" ]] || die "$BUILD_CONSTRAINTS not found"
    BUILD_LOG="$CACHE_DIR/build-niftyreg-$NIFTYREG_VERSION.log"
    log "building niftyreg $NIFTYREG_VERSION from the sdist (takes ~3-5 minutes) ..."
    start=$SECONDS
    # CMAKE_POLICY_VERSION_MINIMUM: the sdist's CMakeLists asks for CMake 3.2, which
    # CMake >= 4 refuses without it. PIP_CONSTRAINT reaches the isolated build env.
    CMAKE_POLICY_VERSION_MINIMUM=3.5 \
        PIP_CONSTRAINT="$BUILD_CONSTRAINTS" \
        "$PYTHON" -m pip wheel --no-deps --no-cache-dir \
        "niftyreg==$NIFTYREG_VERSION" -w "$TMP_DIR/wheel" >"$BUILD_LOG" 2>&1 || {
        tail -n 60 "$BUILD_LOG" >&2
        die "building niftyreg failed (last 60 lines above; full log: $BUILD_LOG)"
    }
    shopt -s nullglob
    wheels=("$TMP_DIR"/wheel/niftyreg-*.whl)
    shopt -u nullglob
    ((${#wheels[@]})) || die "pip wheel produced no niftyreg wheel (log: $BUILD_LOG)"
    # Copy next to the cache, then rename (atomic within one file system), so a concurrent
    # run never sees half a wheel.
    for whl in "${wheels[@]}"; do
        name="$(basename -- "$whl")"
        cp -f -- "$whl" "$WHEEL_DIR/.$name.partial"
        mv -f -- "$WHEEL_DIR/.$name.partial" "$WHEEL_DIR/$name"
        log "built $name in $((SECONDS - start)) s; cached in $WHEEL_DIR"
    done
    pip_install_cached || die "installing the freshly built wheel failed"
fi

# 4. Verify.
BIN_DIR="$(installed_bin_dir)" || die "niftyreg $NIFTYREG_VERSION is not importable from $PYTHON after install"
aladin_runs "$BIN_DIR" || die "$BIN_DIR/reg_aladin does not run"
log "reg_aladin $("$BIN_DIR/reg_aladin" -v 2>&1 | tail -n 1) OK"
log "NiftyReg binaries in $BIN_DIR:"
(cd "$BIN_DIR" && ls reg_*) | tr '\n' ' ' >&2
echo >&2
