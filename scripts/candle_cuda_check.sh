#!/usr/bin/env bash
# Type-checks the CUDA half of warpnorm's candle integration (the `candle-cuda` feature)
# against candle's real CUDA API, on a machine without the CUDA toolkit:
#
#     cargo clippy --features candle-cuda,emulator,cli,nccl --all-targets -- -D warnings
#
# (the features of scripts/test.sh, with `candle-cuda` for `candle`).
#
# Why a check and not a build: candle-core's `cuda` feature pulls candle-kernels, whose
# build script compiles all of candle's own kernels with nvcc: 11 PTX modules and a static
# library of GGUF / MoE kernels (15 files to SASS). With NVIDIA's pip nvcc (13.0.88, one
# architecture, sm_80) that measured about 16 CPU-minutes: the ten `mmq_instance_*.cu`
# take 65-90 s each (two measured), `mmvq_gguf.cu` 61 s, `moe_wmma_gguf.cu` 50 s, `quantized.cu` 49 s (its
# build runs one nvcc at a time on 2 cores unless CUDAFORGE_THREADS says otherwise). That is
# more than CI can spend on kernels it can never run (CI has no GPU), and linking the
# binaries would also need the CUDA driver, cuBLAS and cuRAND libraries.
#
# So candle-kernels' build script is given a stand-in `nvcc` (written below) that compiles
# nothing: it writes valid but empty PTX modules, empty objects and an empty static library.
# Only `cargo clippy` runs with it, in a target folder of its own that nothing else reads.
# BINARIES BUILT THAT WAY HOLD NONE OF CANDLE'S KERNELS: NEVER RUN OR SHIP THEM. With a
# CUDA toolkit, build `--features candle-cuda` as usual (real nvcc, CUDA_COMPUTE_CAP).
set -euo pipefail
cd "$(dirname "$0")/.."

# Absolute: build scripts run in their own crate's folder.
target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
check_dir=$target/candle-cuda-check
stand_in=$check_dir/stand-in-nvcc/nvcc
mkdir -p "$(dirname "$stand_in")"
cat > "$stand_in" <<'EOF'
#!/usr/bin/env bash
# A stand-in for nvcc that compiles nothing (written by scripts/candle_cuda_check.sh for a
# type-check only): PTX modules are valid but empty, objects and libraries empty.
set -euo pipefail
out= out_dir= mode= sources=()
while (($#)); do
    case $1 in
        --version) echo "stand-in nvcc for a type-check: compiles nothing"; exit 0 ;;
        --ptx) mode=ptx ;;
        -c) mode=obj ;;
        --lib) mode=lib ;;
        -o) out=$2; shift ;;
        --output-directory) out_dir=$2; shift ;;
        *.cu) sources+=("$1") ;;
    esac
    shift
done
case $mode in
    ptx)
        for src in "${sources[@]}"; do
            name=$(basename "$src" .cu)
            printf '// %s: stand-in, no kernels\n.version 7.0\n.target sm_80\n.address_size 64\n' \
                "$name" > "${out_dir:-.}/$name.ptx"
        done ;;
    obj) : > "$out" ;;
    lib) printf '!<arch>\n' > "$out" ;;
    *) echo "stand-in nvcc: unsupported call: $*" >&2; exit 1 ;;
esac
EOF
chmod +x "$stand_in"

echo "candle-cuda: type-check only (clippy against candle's CUDA API). candle's own kernels are" \
    "not compiled (about 16 CPU-minutes of nvcc, and CI has no GPU to run them): a stand-in nvcc" \
    "writes empty PTX, so nothing built in ${check_dir#"$PWD"/} may be run or shipped (see $0)"
# warpnorm's kernels come from the main build's cache (no second NVRTC compile).
NVCC=$stand_in CUDA_COMPUTE_CAP=80 CARGO_TARGET_DIR=$check_dir \
    WARPNORM_KERNEL_CACHE=${WARPNORM_KERNEL_CACHE:-$target/warpnorm-kernels} \
    cargo clippy --features candle-cuda,emulator,cli,nccl --all-targets "$@" -- -D warnings
