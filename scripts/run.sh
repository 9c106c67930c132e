#!/usr/bin/env bash
# The main job: installs the build toolchain if missing, builds the `warpnorm` command and
# runs it. With no arguments: `warpnorm demo` (a realistic batch through LayerNorm, on the
# GPU when there is one), then `warpnorm verify tests/fixtures` (every flax / keras anchor
# fixture through the CPU reference and, when a GPU is present, the CUDA kernels).
# With arguments: `warpnorm ARGS...` (e.g. `bash scripts/run.sh info`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --quiet --release --features cli,nccl --bin warpnorm
if [[ $# -gt 0 ]]; then
    exec target/release/warpnorm "$@"
fi
target/release/warpnorm demo
echo
target/release/warpnorm verify tests/fixtures | grep -E '^(no GPU|backend:|[0-9]+ passed)'
