#!/usr/bin/env bash
# Installs what building warpnorm needs on a machine without CUDA: NVRTC 12.2 and the CUDA
# headers (NVIDIA's cu12 PyPI wheels; CUDA 12.2's PTX loads on every driver from r535 on)
# and libclang (for scripts/gen_bindings.sh only), into the project-local .toolchain/
# folder. Idempotent: does nothing when they are already there.
# build.rs finds .toolchain/ by itself; a system CUDA toolkit (CUDA_HOME) works too.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLCHAIN=.toolchain/py
PINS=(nvidia-cuda-nvrtc-cu12==12.2.140 nvidia-cuda-runtime-cu12==12.2.140 libclang==18.1.1)
STAMP=.toolchain/installed

if [[ -f $STAMP && "$(cat "$STAMP")" == "${PINS[*]}" ]] \
    && [[ -f $TOOLCHAIN/nvidia/cuda_runtime/include/cuda_bf16.h ]] \
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
