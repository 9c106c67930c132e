#!/usr/bin/env bash
# The main job: installs the build toolchain if missing, builds the `warpnorm` command with
# the CPU emulation of the kernels (cargo feature `emulator`) and runs it. With no
# arguments: `warpnorm demo` (a realistic batch through LayerNorm, on the GPU when there is
# one, else on the kernels' CPU emulation, checked against the f64 reference), then
# `warpnorm verify --builtin` (every flax / keras anchor fixture through the CPU reference
# and, when a GPU is present, the CUDA kernels).
# With arguments: `warpnorm ARGS...` (e.g. `bash scripts/run.sh check --quick`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --quiet --release --features cli,nccl,emulator --bin warpnorm
if [[ $# -gt 0 ]]; then
    exec target/release/warpnorm "$@"
fi
target/release/warpnorm demo
echo
target/release/warpnorm verify --builtin | grep -E '^(no GPU|backend:|[0-9]+ passed)'
