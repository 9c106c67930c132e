#!/usr/bin/env bash
# The test command: installs the build toolchain if missing (scripts/setup.sh), then runs
# the whole test suite. GPU tests print `SKIP: <reason>` and pass on a machine without one;
# the `emulator` feature runs the CUDA kernels themselves on the CPU (tests/emulated_kernels.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --features emulator,cli,nccl --all-targets "$@"
cargo test --features emulator,cli,nccl --doc
