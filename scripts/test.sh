#!/usr/bin/env bash
# The test command: installs the build toolchain if missing (scripts/setup.sh), then runs
# the whole test suite. GPU tests print `SKIP: <reason>` and pass on a machine without one;
# the `emulator` feature runs the CUDA kernels themselves on the CPU (tests/emulated_kernels.rs),
# the `candle` feature the candle integration (tests/candle.rs and examples/candle_train.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --features emulator,cli,nccl,candle --all-targets "$@"
cargo test --features emulator,cli,nccl,candle --doc
# A small candle model trained with warpnorm's norms: prints its first and last loss and fails
# unless the loss halves.
cargo run --features emulator,cli,nccl,candle --example candle_train -- --steps 100 --batch 64

