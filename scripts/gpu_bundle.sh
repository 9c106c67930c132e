#!/usr/bin/env bash
# Builds everything a GPU machine without a Rust toolchain needs and packs it into
# .device/bundle.tar.xz: the release test binaries, the warpnorm CLI, the criterion bench,
# the fixtures and the scripts that run them (scripts/gpu_checks.sh, scripts/sanitize.sh).
# Copy the bundle over, unpack it in a checkout and run `bash scripts/gpu_checks.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

stage=.device/stage
rm -rf .device && mkdir -p "$stage/bin"
cargo build --release --features cli,nccl --bin warpnorm
cp target/release/warpnorm "$stage/bin/"
# Test and bench executables, located through cargo's JSON messages.
cargo test --release --features cli,nccl --no-run --all-targets --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    exe = msg.get("executable")
    # Only what needs a GPU: every binary embeds all kernel images (~45 MB before xz).
    wanted = {("test", "gpu_kernels"), ("test", "layer"), ("test", "sharded"), ("bench", "layernorm")}
    if msg.get("reason") == "compiler-artifact" and exe and msg["profile"]["test"]:
        kind, name = msg["target"]["kind"][0], msg["target"]["name"]
        if (kind, name) in wanted:
            print(f"{kind}\t{name}\t{exe}")
' | while IFS=$'\t' read -r kind name exe; do
        cp "$exe" "$stage/bin/${kind}-${name}"
    done
strip --strip-debug "$stage"/bin/* 2>/dev/null || true
tar -C "$stage" -cJf .device/bundle.tar.xz bin
rm -rf "$stage"
ls -la .device
