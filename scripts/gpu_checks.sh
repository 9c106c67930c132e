#!/usr/bin/env bash
# On a GPU machine, with .device/bundle.tar.xz from scripts/gpu_bundle.sh (unpacked here
# if needed): records the machine, runs the GPU test suite, compute-sanitizer and the
# benchmark comparison, and writes everything under OUT (default ./gpu-results).
# WARPNORM_CHECKS=tests,sanitizer,bench picks steps (the full comparison can take longer
# than one call on a lent machine: run it as its own step, split with WARPNORM_BENCH_ARGS,
# e.g. "--dtypes bf16,f16 --time-budget 480", and join the parts with compare.py --merge).
# WARPNORM_PACK=1 leaves a single results.tar.gz in OUT.
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

steps=${WARPNORM_CHECKS:-tests,sanitizer,bench}
want() { [[ ",$steps," == *",$1,"* ]]; }

status=0
want tests && for bin in "$bins"/test-*; do
    name=$(basename "$bin")
    "$bin" --test-threads=1 >"$out/$name.log" 2>&1 || status=1
    echo "$name: $(grep -E '^test result' "$out/$name.log" | tail -n 1) $(grep -c 'SKIP:' "$out/$name.log") skips"
done
if want tests; then
    "$bins/warpnorm" verify tests/fixtures >"$out/verify.log" 2>&1 || status=1
    "$bins/warpnorm" check --json >"$out/check.json" 2>"$out/check.log" || status=1
    grep -E "^(backend:|[0-9]+ passed)" "$out/verify.log"
fi
if want sanitizer; then
    bash scripts/sanitize.sh "$bins" "$out/sanitizer" | tee "$out/sanitizer-summary.txt" || status=1
fi
if want bench && [[ -f bench/compare.py ]]; then
    # shellcheck disable=SC2086 # WARPNORM_BENCH_ARGS is a list of options
    python3 bench/compare.py --warpnorm "$bins/warpnorm" --out "$out/bench" ${WARPNORM_BENCH_ARGS:-} \
        >"$out/bench.log" 2>&1 || status=1
    tail -n 5 "$out/bench.log"
fi
# WARPNORM_PACK=1: everything in one archive (for transports that return few files).
if [[ ${WARPNORM_PACK:-0} == 1 ]]; then
    tar -C "$out" -czf /tmp/gpu-results.tar.gz . && find "$out" -mindepth 1 -delete
    mv /tmp/gpu-results.tar.gz "$out/results.tar.gz"
fi
exit $status
