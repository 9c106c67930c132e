#!/usr/bin/env bash
# On a GPU machine, after unpacking .device/bundle.tar.xz (scripts/gpu_bundle.sh) into
# .device/: records the machine, runs the GPU test suite, compute-sanitizer and the
# benchmark comparison, and writes everything under OUT (default ./gpu-results).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
bins=.device/bin
[[ -d $bins ]] || tar -C .device -xJf .device/bundle.tar.xz
mkdir -p "$out"
{
    date -u +"date: %Y-%m-%dT%H:%M:%SZ"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    nvcc --version | tail -n 2
    compute-sanitizer --version | head -n 1
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt"

# libnccl.so for cudarc's loader (the wheel ships only libnccl.so.2).
nccl=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(nvidia.nccl.__path__[0], "lib"))' 2>/dev/null)
if [[ -n $nccl ]]; then
    mkdir -p /tmp/nccl-link && ln -sf "$nccl/libnccl.so.2" /tmp/nccl-link/libnccl.so
    export LD_LIBRARY_PATH=/tmp/nccl-link:${LD_LIBRARY_PATH:-}
fi

status=0
for bin in "$bins"/test-*; do
    name=$(basename "$bin")
    "$bin" --test-threads=1 >"$out/$name.log" 2>&1 || status=1
    echo "$name: $(grep -E '^test result' "$out/$name.log" | tail -n 1) $(grep -c '^SKIP' "$out/$name.log") skips"
done
"$bins/warpnorm" verify tests/fixtures >"$out/verify.log" 2>&1 || status=1
tail -n 1 "$out/verify.log"
bash scripts/sanitize.sh "$bins" "$out/sanitizer" | tee "$out/sanitizer-summary.txt" || status=1
if [[ -f bench/compare.py ]]; then
    python3 bench/compare.py --warpnorm "$bins/warpnorm" --out "$out/bench" >"$out/bench.log" 2>&1 || status=1
    tail -n 5 "$out/bench.log"
fi
exit $status
