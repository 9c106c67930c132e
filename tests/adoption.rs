//! warpnorm as other projects use it, each check a scratch crate in a fresh temp folder:
//!
//! * beside candle-core 0.11's cudarc features (`dynamic-linking`,
//!   `cuda-version-from-build-system`): the cudarc features do not clash;
//! * packed by `cargo package` and built as a dependency with nothing but NVIDIA's pip
//!   wheels on `PYTHONPATH` (as crates.io users build it), and with nothing at all (one
//!   error that names the `pip install`);
//! * documented as docs.rs does (`DOCS_RS=1 cargo doc`) with no CUDA toolchain and no
//!   libclang.
//!
//! The scratch crates share one target folder (under cargo's test temp dir) so their
//! dependencies compile once.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The variables through which a build could find a CUDA toolchain or pick cudarc's
/// bindings: cleared so that each check sees only what it sets.
const TOOLCHAIN_VARS: &[&str] = &[
    "WARPNORM_CUDA_ROOT",
    "WARPNORM_CUDA_ARCHS",
    "CUDA_HOME",
    "CUDA_PATH",
    "CUDA_ROOT",
    "CUDA_TOOLKIT_ROOT_DIR",
    "CUDARC_CUDA_VERSION",
    "WARPNORM_KERNEL_CACHE",
    "LIBCLANG_PATH",
    "PYTHONPATH",
    "DOCS_RS",
];

fn scratch_target() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("adoption")
}

/// An empty folder of its own for one check.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warpnorm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    dir
}

/// cargo in `dir`, building into the shared scratch target folder, with no toolchain hints.
fn cargo(dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(dir)
        .env("CARGO_TARGET_DIR", scratch_target())
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTDOCFLAGS");
    for var in TOOLCHAIN_VARS {
        cmd.env_remove(var);
    }
    cmd
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A scratch binary crate in `dir` with these `[dependencies]` lines and `main.rs`, locked to
/// this repository's dependency versions.
fn scratch_crate(dir: &Path, dependencies: &str, main: &str) {
    let manifest = format!(
        "[package]\nname = \"scratch\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
         [dependencies]\n{dependencies}\n"
    );
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(dir.join("src/main.rs"), main).unwrap();
    std::fs::copy(Path::new(REPO).join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
}

/// `cargo package` of this repository, unpacked into a fresh folder (once per test run).
fn packaged_crate() -> &'static Path {
    static UNPACKED: OnceLock<PathBuf> = OnceLock::new();
    UNPACKED.get_or_init(|| {
        let target = scratch_target();
        run(cargo(Path::new(REPO)).args(["package", "--no-verify", "--allow-dirty", "--quiet"]));
        let version = env!("CARGO_PKG_VERSION");
        let archive = target.join(format!("package/warpnorm-{version}.crate"));
        let dir = fresh_dir("packaged");
        run(Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(&dir));
        dir.join(format!("warpnorm-{version}"))
    })
}

#[test]
fn builds_beside_candle_cores_cudarc_features() {
    let dir = fresh_dir("with-candle-features");
    // candle-core 0.11's `cuda` feature asks cudarc for exactly these.
    let dependencies = format!(
        "warpnorm = {{ path = {REPO:?}, features = [\"nccl\"] }}\n\
         cudarc = {{ version = \"0.19\", default-features = false, features = [\"std\", \"cublas\", \
         \"cublaslt\", \"curand\", \"driver\", \"nvrtc\", \"f16\", \"f8\", \
         \"cuda-version-from-build-system\", \"dynamic-linking\"] }}"
    );
    let main = "fn main() {\n    \
        let _cublas = cudarc::cublas::CudaBlas::new;\n    \
        let _layer = warpnorm::LayerNorm::new;\n    \
        let _nccl = warpnorm::dist::NcclIds::generate;\n    \
        println!(\"{}\", warpnorm::Device::cpu().describe());\n}\n";
    scratch_crate(&dir, &dependencies, main);
    // candle's build sets the CUDA version this way where there is no nvcc. The kernels
    // do not depend on cudarc's features (the packaged-crate check compiles them), so
    // DOCS_RS skips compiling them again here.
    run(cargo(&dir)
        .args(["check", "--quiet"])
        .env("CUDARC_CUDA_VERSION", "12080")
        .env("DOCS_RS", "1"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn packaged_crate_builds_with_only_the_pip_wheels() {
    let wheels = Path::new(REPO).join(".toolchain/py");
    assert!(
        wheels.join("nvidia/cuda_nvrtc").is_dir(),
        "{} has no NVRTC wheel: run scripts/setup.sh",
        wheels.display()
    );
    let package = packaged_crate();
    assert!(
        !package.join(".toolchain").exists(),
        "the package must not carry a toolchain"
    );
    let dir = fresh_dir("from-crates-io");
    let dependencies = format!(
        "warpnorm = {{ path = {:?} }}",
        package.display().to_string()
    );
    let main = "fn main() {\n    \
        let images = warpnorm::cuda::kernels::IMAGES;\n    \
        println!(\"{} images from NVRTC {:?}\", images.len(), warpnorm::cuda::kernels::NVRTC_VERSION);\n}\n";
    scratch_crate(&dir, &dependencies, main);

    // Nothing to build the kernels with: one error naming the pip install (unless this
    // machine has a toolkit or the wheels where every build finds them).
    let bare = cargo(&dir).args(["build", "--quiet"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&bare.stderr);
    if bare.status.success() {
        eprintln!(
            "SKIP: the no-toolchain error: this machine has a CUDA toolkit or NVRTC wheels in its Python"
        );
    } else {
        assert!(
            stderr.contains(
                "pip install nvidia-cuda-nvrtc-cu12==12.2.140 nvidia-cuda-runtime-cu12==12.2.140"
            ),
            "{stderr}"
        );
    }

    // The wheels (a `pip install --target` folder) on PYTHONPATH: the kernels compile.
    run(cargo(&dir)
        .args(["build", "--quiet"])
        .env("PYTHONPATH", &wheels));
    let out = run(&mut Command::new(scratch_target().join("debug/scratch")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("9 images from NVRTC Some((12, 2))"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn packaged_crate_documents_like_docs_rs_without_a_toolchain() {
    let package = packaged_crate();
    run(cargo(package)
        .args(["doc", "--no-deps", "--lib", "--features", "nccl", "--quiet"])
        .env("DOCS_RS", "1")
        .env("RUSTDOCFLAGS", "-D warnings")
        // Where a toolchain or libclang would be looked for: nowhere.
        .env("WARPNORM_CUDA_ROOT", "/nonexistent")
        .env("LIBCLANG_PATH", "/nonexistent")
        .env("PYTHONPATH", "/nonexistent"));
    let index = scratch_target().join("doc/warpnorm/index.html");
    let html = std::fs::read_to_string(&index).unwrap();
    assert!(html.contains("Configuring CUDA"), "{}", index.display());
}
