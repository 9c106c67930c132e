#!/usr/bin/env bash
# The test command: installs the build toolchain if missing (scripts/setup.sh), then runs
# the whole test suite. GPU tests print `SKIP: <reason>` and pass on a machine without one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --all-targets "$@"
cargo test --doc
