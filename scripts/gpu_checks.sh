#!/usr/bin/env bash
# GPU verification in stages that each fit a short lease on a GPU machine.
#
#   bash scripts/gpu_checks.sh [--dry-run] [--bins DIR] [--out DIR] [--time-budget SECONDS]
#                              [--steps NAME,...] STAGE...
#
# STAGE is one or more of
#   smoke  (180 s)  warpnorm info, check --quick, the GPU test binaries on the quick matrix,
#                   verify tests/fixtures, a short bf16 bench against the copy and PyTorch eager
#   full   (240 s)  the full GPU test matrix, the > 2^31-element test, the layer and sharded
#                   tests (NCCL at world size 1), compute-sanitizer memcheck, racecheck,
#                   synccheck and initcheck over the quick matrix
#   bench  (300 s)  bench/compare.py for LayerNorm and RMSNorm in bf16 and f16 (LayerNorm f32
#                   with what is left) against every contender, Liger-Kernel included
#
# Every step runs under its own `timeout`, sized as a share of its stage's budget, and never
# past what is left of it: a stage ends within its budget even when every step hangs. A step
# that fails or times out is recorded and the stage goes on. --time-budget sets the budget of
# every stage named; --steps runs only the named steps (to split a stage over two calls).
#
# Results: DIR/summary.txt (machine, driver, commit, date; per step its status, time, counts
# and first failure messages; the bench table) and DIR/results.tar.gz (every log and the
# bench reports). DIR is --out, else $OUT, else gpu-results.
#
# Binaries come from --bins DIR: the bundle's layout (DIR/warpnorm, DIR/test-NAME), or a
# cargo profile folder such as target/debug (DIR/warpnorm, DIR/deps/NAME-HASH). The default
# is .device/bin, unpacked from scripts/gpu_bundle.sh's .device/bundle.tar.xz when needed.
#
# --dry-run, for a machine without a GPU: the same steps and the same summary and archive;
# the GPU tests print their SKIP lines, `check` runs one row length, the bench uses
# compare.py's synthetic numbers, and the steps that need a GPU tool (compute-sanitizer, the
# Liger wheel) are listed, not run.
set -uo pipefail
caller=$PWD
cd "$(dirname "$0")/.."

usage() {
    sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

# A path given on the command line, relative to where the script was started.
from_caller() { [[ $1 == /* ]] && echo "$1" || echo "$caller/$1"; }

declare -A BUDGET=([smoke]=180 [full]=240 [bench]=300)
dry=0 bins=.device/bin out=${OUT:-gpu-results} budget_override="" only_steps="" stages=()
while (($#)); do
    case $1 in
        --dry-run) dry=1 ;;
        --bins | --out | --time-budget | --steps)
            [[ $# -ge 2 ]] || { echo "gpu_checks: $1 needs a value" >&2; exit 2; }
            case $1 in
                --bins) bins=$(from_caller "$2") ;;
                --out) out=$(from_caller "$2") ;;
                --time-budget) budget_override=$2 ;;
                --steps) only_steps=$2 ;;
            esac
            shift
            ;;
        -h | --help) usage; exit 0 ;;
        smoke | full | bench) stages+=("$1") ;;
        *) echo "gpu_checks: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if ((${#stages[@]} == 0)); then
    echo "gpu_checks: name at least one stage: smoke, full, bench (see --help)" >&2
    exit 2
fi
if [[ -n $budget_override && ! $budget_override =~ ^[1-9][0-9]{0,4}$ ]]; then
    echo "gpu_checks: --time-budget takes whole seconds, 1 to 99999 (got '$budget_override')" >&2
    exit 2
fi

# Grace between a step's TERM and its KILL, and what a step needs at the least to be started.
KILL_AFTER=5
MIN_STEP=5

work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-checks.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
printf 'stage\tstep\tstatus\tseconds\tlimit\tlog\tcommand\n' >"$work/steps.tsv"

# Binaries -----------------------------------------------------------------------------------

if [[ $bins == .device/bin && ! -d $bins && -f .device/bundle.tar.xz ]]; then
    tar -C .device -xJf .device/bundle.tar.xz
fi

# The path of a binary: warpnorm, or test-NAME for the test target NAME.
bin() {
    local name=$1
    if [[ $name == test-* && ! -e $bins/$name && -d $bins/deps ]]; then
        # A cargo profile folder: the newest build of the target (the suffix is cargo's hash).
        local found
        found=$(find "$bins/deps" -maxdepth 1 -type f -executable \
            -regex ".*/${name#test-}-[0-9a-f]+" -printf '%T@ %p\n' 2>/dev/null \
            | sort -rn | head -n 1 | cut -d' ' -f2-)
        echo "${found:-$bins/$name}"
    else
        echo "$bins/$name"
    fi
}
wn=$(bin warpnorm)

# The machine --------------------------------------------------------------------------------

commit=$(cat .device/COMMIT 2>/dev/null || true)
if [[ -z $commit ]]; then
    commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
    [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]] && commit+="-dirty"
fi
# A tool's answer, or nothing: a broken driver must not stall the run before its budgets.
ask() { timeout 20 "$@" 2>/dev/null; }
mode="GPU run"
((dry)) && mode="dry run (no GPU work: nothing here is a measurement)"
gpu=$(ask nvidia-smi --query-gpu=name,memory.total --format=csv,noheader)
driver=$(ask nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1)
sanitizer=$(ask compute-sanitizer --version | grep -o 'Version [0-9.]*' | head -n 1)
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "mode: $mode"
    echo "stages: ${stages[*]}"
    echo "commit: $commit"
    echo "host: $(hostname 2>/dev/null || echo unknown), $(uname -srm), $(nproc) CPUs"
    echo "gpu: ${gpu:-none (nvidia-smi absent or found no GPU)}"
    echo "driver: ${driver:-none}"
    echo "cuda: $(ask nvcc --version | grep -o 'release [0-9.]*' || echo 'no nvcc')"
    echo "compute-sanitizer: ${sanitizer:-absent}"
    echo "python: $(ask python3 --version || echo absent)"
    echo "binaries: $bins"
} >"$work/machine.txt"

# cudarc opens libnccl.so; NVIDIA's wheel ships only libnccl.so.2.
nccl=$(ask python3 -c 'import nvidia.nccl, os; print(os.path.join(nvidia.nccl.__path__[0], "lib"))')
if [[ -n $nccl && -e $nccl/libnccl.so.2 ]]; then
    mkdir -p "$work/nccl" && ln -sf "$nccl/libnccl.so.2" "$work/nccl/libnccl.so"
    export LD_LIBRARY_PATH=$work/nccl:${LD_LIBRARY_PATH:-}
fi

# Steps --------------------------------------------------------------------------------------

stage="" stage_budget=0 stage_end=0 status=0

wanted() { [[ -z $only_steps || ",$only_steps," == *",$1,"* ]]; }

record() { # NAME STATUS SECONDS LIMIT LOG COMMAND...
    local name=$1 st=$2 secs=$3 limit=$4 log=$5
    shift 5
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$stage" "$name" "$st" "$secs" "$limit" "$log" "$*" \
        >>"$work/steps.tsv"
    printf '%-6s %-24s %-10s %4ss\n' "$stage" "$name" "$st" "$secs"
}

# Seconds a step with SHARE percent of the stage's budget may run: never past the stage's
# end. SHARE 100: whatever is left.
limit_for() {
    local left=$((stage_end - SECONDS - KILL_AFTER)) limit=$((stage_budget * $1 / 100))
    echo $((limit < left ? limit : left))
}

# A step's own files (bench reports, sanitizer logs) go here, into the archive.
files_of() { echo "$work/$stage-$1"; }

# step NAME SHARE [--gpu-tool] COMMAND...: runs COMMAND under `timeout` for limit_for SHARE
# seconds. --gpu-tool: a step that needs a tool only a GPU machine has; a dry run lists it.
step() {
    local name=$1 limit listed=0
    limit=$(limit_for "$2")
    shift 2
    if [[ $1 == --gpu-tool ]]; then
        listed=$dry
        shift
    fi
    wanted "$name" || return 0
    local log=$stage-$name.log
    if ((listed)); then
        record "$name" "listed" 0 "$limit" "" "$@"
    elif ((limit < MIN_STEP)); then
        record "$name" "not run" 0 0 "" "$@"
        status=1
    else
        local t0=$SECONDS rc
        echo "\$ $*" >"$work/$log"
        timeout --kill-after="$KILL_AFTER" "$limit" "$@" >>"$work/$log" 2>&1 </dev/null
        rc=$?
        case $rc in
            0) record "$name" "passed" $((SECONDS - t0)) "$limit" "$log" "$@" ;;
            124 | 137) record "$name" "timed out" $((SECONDS - t0)) "$limit" "$log" "$@" ;;
            *) record "$name" "failed" $((SECONDS - t0)) "$limit" "$log" "$@" ;;
        esac
        ((rc == 0)) || status=1
    fi
}

# bench/compare.py as a step: its own --time-budget (three quarters of the step's) stops it
# starting new shapes early enough to write its report before the step's timeout.
compare() { # NAME SHARE ARGS...
    local name=$1 share=$2 mode
    shift 2
    mode=(--time-budget $(($(limit_for "$share") * 3 / 4 + 1)))
    ((dry)) && mode=(--dry-run)
    step "$name" "$share" python3 bench/compare.py --warpnorm "$wn" --out "$(files_of "$name")" \
        "${mode[@]}" "$@"
}

stage_smoke() {
    step info 5 "$wn" info
    # On the CPU, a dry run's debug binary checks the short row length only: D = 768 takes it
    # most of a minute there.
    local quick=(--quick)
    ((dry)) && quick=(--cols 7)
    step check-quick 15 "$wn" check "${quick[@]}"
    step tests-gpu_kernels 11 env WARPNORM_QUICK=1 "$(bin test-gpu_kernels)" \
        --test-threads=1 --skip over_2_pow_31
    # Kernels v2 (the row stashes, the sm_90 cluster and the cooperative group splits).
    step tests-gpu_kernels-v2 11 env WARPNORM_QUICK=1 WARPNORM_KERNELS=v2 \
        "$(bin test-gpu_kernels)" --test-threads=1 --skip over_2_pow_31
    step tests-layer 7 env WARPNORM_QUICK=1 "$(bin test-layer)" --test-threads=1
    step tests-sharded 7 env WARPNORM_QUICK=1 "$(bin test-sharded)" --test-threads=1
    step verify 9 "$wn" verify tests/fixtures
    compare bench-short 35 --dtypes bf16 --cols 1024,4096,32768 --impls warpnorm,torch,copy
}

stage_full() {
    step tests-gpu_kernels 16 "$(bin test-gpu_kernels)" --test-threads=1 --skip over_2_pow_31
    step tests-gpu_kernels-v2 12 env WARPNORM_KERNELS=v2 "$(bin test-gpu_kernels)" \
        --test-threads=1 --skip over_2_pow_31
    step tests-over_2_pow_31 6 "$(bin test-gpu_kernels)" --test-threads=1 over_2_pow_31
    step tests-layer 6 "$(bin test-layer)" --test-threads=1
    step tests-sharded 6 "$(bin test-sharded)" --test-threads=1
    for tool in memcheck racecheck synccheck initcheck; do
        step "sanitize-$tool" 11 --gpu-tool bash scripts/sanitize.sh --tool "$tool" \
            "$(bin test-gpu_kernels)" "$(files_of "sanitize-$tool")"
    done
    # Kernels v2's shared memory (the stashes, cp.async, distributed shared memory).
    step sanitize-racecheck-v2 10 --gpu-tool env WARPNORM_KERNELS=v2 bash scripts/sanitize.sh \
        --tool racecheck "$(bin test-gpu_kernels)" "$(files_of sanitize-racecheck-v2)"
}

stage_bench() {
    local site=$work/site
    step liger-install 5 --gpu-tool python3 -m pip install --quiet --no-index --no-deps \
        --no-cache-dir --no-compile --target "$site" .device/wheels/liger_kernel-*.whl
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
    local cols=512,1024,2048,4096,8192,16384,32768
    compare bench-ln 45 --norm layer_norm --dtypes bf16,f16 --cols "$cols"
    compare bench-rms 35 --norm rms_norm --dtypes bf16,f16 --cols "$cols"
    compare bench-ln-f32 100 --norm layer_norm --dtypes f32 --cols "$cols"
}

t_all=$SECONDS
for stage in "${stages[@]}"; do
    stage_budget=${budget_override:-${BUDGET[$stage]}}
    stage_end=$((SECONDS + stage_budget))
    t0=$SECONDS
    echo "== $stage (budget ${stage_budget} s)"
    "stage_$stage"
    printf 'stage\t%s\t%s\t%s\n' "$stage" "$stage_budget" $((SECONDS - t0)) >>"$work/stages.tsv"
done

# Results: one summary, one archive ------------------------------------------------------------

# A log over 2 MiB keeps its first and last MiB: enough to read, small enough to bring back.
find "$work" -name '*.log' -size +2M -print0 | while IFS= read -r -d '' f; do
    cut=$(($(stat -c %s "$f") - (2 << 20)))
    { head -c 1M "$f"; printf '\n[... %s bytes cut ...]\n' "$cut"; tail -c 1M "$f"; } >"$f.cut"
    mv "$f.cut" "$f"
done
if ! python3 scripts/gpu_summary.py "$work" $((SECONDS - t_all)) >"$work/summary.txt"; then
    echo "gpu_checks: scripts/gpu_summary.py failed; the logs are in the archive" \
        >>"$work/summary.txt"
fi
tar -C "$work" --exclude=./nccl --exclude=./site -czf "$out/results.tar.gz" .
cp "$work/summary.txt" "$out/summary.txt"
archive=$(stat -c %s "$out/results.tar.gz")
if ((archive > 16 << 20)); then
    echo "WARNING: results.tar.gz is $archive bytes, over the 16 MiB a lent machine returns" \
        | tee -a "$out/summary.txt"
fi
cat "$out/summary.txt"
exit $status
