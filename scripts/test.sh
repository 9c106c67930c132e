#!/usr/bin/env bash
# The test command: installs the build toolchain if missing (scripts/setup.sh), then runs
# the whole test suite. GPU tests print `SKIP: <reason>` and pass on a machine without one;
# the `emulator` feature runs the CUDA kernels themselves on the CPU (tests/emulated_kernels.rs),
# the `candle` feature the candle integration (tests/candle.rs and examples/candle_train.rs;
# its CUDA half is type-checked only, by scripts/candle_cuda_check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --features emulator,cli,nccl,candle --all-targets "$@"
cargo test --features emulator,cli,nccl,candle --doc
# A small candle model trained with warpnorm's norms, then with candle-nn's: prints their first
# and last losses and fails unless each loss halves.
cargo run --features emulator,cli,nccl,candle --example candle_train -- --steps 100 --batch 64 \
    --compare-candle-nn
# The CUDA half of the candle integration (`candle-cuda`), type-checked against candle's CUDA
# API: compiling candle's own kernels with nvcc does not fit CI (the script says why).
bash scripts/candle_cuda_check.sh
