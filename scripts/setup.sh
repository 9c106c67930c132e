#!/usr/bin/env bash
# Installs what building warpnorm needs on a machine without CUDA: NVRTC 13.0 and the CUDA
# headers (NVIDIA's PyPI wheels) and libclang (for bindgen), into the project-local
# .toolchain/ folder. Idempotent: does nothing when they are already there.
# build.rs finds .toolchain/ by itself; a system CUDA toolkit (CUDA_HOME) works too.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLCHAIN=.toolchain/py
PINS=(nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 libclang==18.1.1)
STAMP=.toolchain/installed

if [[ -f $STAMP && "$(cat "$STAMP")" == "${PINS[*]}" ]] \
    && [[ -f $TOOLCHAIN/nvidia/cu13/include/cuda_bf16.h ]] \
    && [[ -f $TOOLCHAIN/clang/native/libclang.so ]]; then
    exit 0
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found: install Rust from https://rustup.rs first" >&2
    exit 1
fi
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    echo "setup: $PYTHON with pip is needed to fetch NVRTC and libclang wheels" >&2
    exit 1
fi

echo "setup: installing ${PINS[*]} into $TOOLCHAIN" >&2
rm -rf "$TOOLCHAIN"
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$TOOLCHAIN" "${PINS[@]}"
echo "${PINS[*]}" > "$STAMP"
