#!/usr/bin/env bash
# Builds, from this checkout, everything scripts/gpu_checks.sh needs on a GPU machine that has
# no Rust toolchain and no network, into .device/ (git-ignored):
#
#   .device/bundle.tar.xz  bin/warpnorm and the release GPU test binaries bin/test-gpu_kernels,
#                          bin/test-layer, bin/test-sharded
#   .device/wheels/        Liger-Kernel's pip wheel (a bench contender; not on the GPU machine)
#   .device/COMMIT         the commit built (with -dirty when the checkout had changes)
#
#   bash scripts/gpu_bundle.sh [CARGO_ARGS...]     e.g. --features emulator
#
# CARGO_ARGS go to both cargo commands. Fails when .device/ would exceed 48 MiB. On the GPU
# machine, in a copy of this checkout with .device/ beside it:
#   bash scripts/gpu_checks.sh smoke full
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

LIGER=liger-kernel==0.8.5
MAX_BYTES=$((48 << 20))
TESTS=(gpu_kernels layer sharded)

stage=.device/stage
rm -rf .device && mkdir -p "$stage/bin" .device/wheels
cargo build --release --features cli,nccl --bin warpnorm "$@"
cp target/release/warpnorm "$stage/bin/"
test_args=()
for t in "${TESTS[@]}"; do test_args+=(--test "$t"); done
# The executables' paths, from cargo's JSON messages.
cargo test --release --features cli,nccl --no-run "${test_args[@]}" --message-format=json "$@" \
    | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["profile"]["test"]:
        print(msg["target"]["name"] + "\t" + msg["executable"])
' | while IFS=$'\t' read -r name exe; do
        cp "$exe" "$stage/bin/test-$name"
    done
for t in "${TESTS[@]}"; do
    [[ -x $stage/bin/test-$t ]] || { echo "gpu_bundle: cargo built no test binary $t" >&2; exit 1; }
done
# Each binary embeds every kernel image; their debug info is not needed on the GPU machine.
strip --strip-debug "$stage"/bin/*
tar -C "$stage" -cJf .device/bundle.tar.xz bin
rm -rf "$stage"

python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d .device/wheels "$LIGER"

commit=$(git rev-parse HEAD)
[[ -z $(git status --porcelain --untracked-files=no) ]] || commit+="-dirty"
echo "$commit" >.device/COMMIT

size=$(du -sb .device | cut -f1)
ls -la .device .device/wheels
echo "bundle: $size bytes ($((size >> 20)) MiB) in .device/ for commit $commit"
if ((size > MAX_BYTES)); then
    echo "gpu_bundle: .device/ is over the 48 MiB the GPU machine's copy allows" >&2
    exit 1
fi
