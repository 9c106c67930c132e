#!/usr/bin/env bash
# The main job: installs the build toolchain if missing, builds the `warpnorm` command and
# runs it (by default `warpnorm verify tests/fixtures`: every flax / keras anchor fixture
# through the CPU reference and, when a GPU is present, the CUDA kernels).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ $# -eq 0 ]]; then
    set -- verify tests/fixtures
fi
cargo run --quiet --release --bin warpnorm -- "$@"
