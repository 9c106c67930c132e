#!/usr/bin/env bash
# Runs GPU test binaries under compute-sanitizer's memcheck, racecheck, synccheck and
# initcheck, on the quick matrix (WARPNORM_QUICK=1: the sanitizer slows kernels 10-100x).
#
#   bash scripts/sanitize.sh [--tool TOOL]... BIN [LOG_DIR]
#
# BIN is a test binary, or a folder holding test-gpu_kernels, test-layer and test-sharded (the
# layout of scripts/gpu_bundle.sh). --tool picks tools (default: all four). One log per tool
# and binary goes to LOG_DIR (default sanitizer-logs); one line per run is printed. Exits
# non-zero when any run reports an error or fails.
set -uo pipefail
tools=()
while [[ ${1:-} == --tool ]]; do
    case ${2:-} in
        memcheck | racecheck | synccheck | initcheck) tools+=("$2") ;;
        *) echo "sanitize: --tool takes memcheck, racecheck, synccheck or initcheck" >&2; exit 2 ;;
    esac
    shift 2
done
((${#tools[@]})) || tools=(memcheck racecheck synccheck initcheck)
target=${1:?usage: scripts/sanitize.sh [--tool TOOL]... BIN [LOG_DIR]}
log_dir=${2:-sanitizer-logs}
if [[ -d $target ]]; then
    bins=("$target"/test-gpu_kernels "$target"/test-layer "$target"/test-sharded)
else
    bins=("$target")
fi
mkdir -p "$log_dir"
export WARPNORM_QUICK=${WARPNORM_QUICK:-1}
status=0
for tool in "${tools[@]}"; do
    for bin in "${bins[@]}"; do
        [[ -x $bin ]] || { echo "$tool $bin: not an executable"; status=1; continue; }
        log="$log_dir/$tool-$(basename "$bin").log"
        # The >2^31-element test needs ~17 GB and hours under the sanitizer: skipped here.
        compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 20 \
            "$bin" --test-threads=1 --skip over_2_pow_31 >"$log" 2>&1
        rc=$?
        summary=$(grep -E "ERROR SUMMARY|test result" "$log" | tr '\n' ' ')
        echo "$tool $(basename "$bin"): exit $rc: $summary"
        [[ $rc -eq 0 ]] || status=1
    done
done
exit $status
