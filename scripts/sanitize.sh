#!/usr/bin/env bash
# Runs the GPU test binaries under compute-sanitizer's memcheck, racecheck, synccheck and
# initcheck. Usage: scripts/sanitize.sh BIN_DIR [LOG_DIR]
# WARPNORM_QUICK=1 trims the row-length matrix (the sanitizer slows kernels 10-100x).
set -uo pipefail
bin_dir=${1:?usage: scripts/sanitize.sh BIN_DIR [LOG_DIR]}
log_dir=${2:-sanitizer-logs}
mkdir -p "$log_dir"
export WARPNORM_QUICK=${WARPNORM_QUICK:-1}
status=0
for tool in memcheck racecheck synccheck initcheck; do
    for bin in "$bin_dir"/test-gpu_kernels "$bin_dir"/test-layer "$bin_dir"/test-sharded; do
        [[ -x $bin ]] || continue
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
