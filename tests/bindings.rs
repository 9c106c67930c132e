//! The committed Rust mirror of `kernels/params.h` (src/cuda/params_bindings.rs) is what
//! bindgen makes of the header today: `scripts/gen_bindings.sh --check` regenerates and
//! compares it.

use std::path::Path;
use std::process::Command;

/// Where `scripts/gen_bindings.sh` finds libclang, if anywhere.
fn libclang_available(root: &Path) -> bool {
    std::env::var_os("LIBCLANG_PATH").is_some_and(|p| !p.is_empty())
        || root
            .join(".toolchain/py/clang/native/libclang.so")
            .is_file()
        || [
            "/usr/lib",
            "/usr/lib64",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/llvm",
        ]
        .iter()
        .any(|d| {
            std::fs::read_dir(d).is_ok_and(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("libclang"))
            })
        })
}

#[test]
fn committed_bindings_match_params_h() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !libclang_available(root) {
        eprintln!(
            "SKIP: committed_bindings_match_params_h: no libclang (run scripts/setup.sh, or set LIBCLANG_PATH)"
        );
        return;
    }
    let out = Command::new("bash")
        .arg(root.join("scripts/gen_bindings.sh"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
