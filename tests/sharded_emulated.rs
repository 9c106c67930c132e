//! The sharded-normalization kernels on the CPU: `tests/emulated/sharded_kernels.cpp` runs
//! `kernels/sharded.cu` through the emulation in `kernels/emulator/` (one host thread per
//! CUDA thread) for k = 1, 2, 4, 8 ranks and compares with a double-precision reference of
//! the unsharded layer. It needs a C++20 compiler (`$CXX`, else `c++`); without one the
//! test prints `SKIP: <reason>` and passes.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn sharded_kernels_match_the_unsharded_reference_under_emulation() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let out_dir = std::env::temp_dir().join(format!("warpnorm-sharded-emu-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let exe = out_dir.join("sharded_kernels");
    let compiled = Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-pthread"])
        .arg(format!("-I{}", root.join("kernels/emulator").display()))
        .arg(format!("-I{}", root.join("kernels").display()))
        .arg("-o")
        .arg(&exe)
        .arg(root.join("tests/emulated/sharded_kernels.cpp"))
        .output();
    let compiled = match compiled {
        Ok(c) => c,
        Err(e) => {
            common::skip(&format!(
                "sharded kernels under emulation: no C++ compiler `{cxx}`: {e}"
            ));
            return;
        }
    };
    assert!(
        compiled.status.success(),
        "compiling the emulation harness failed:\n{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    std::fs::remove_dir_all(&out_dir).unwrap();
    assert!(
        run.status.success(),
        "the emulated kernels differ from the reference:\n{stdout}"
    );
    // Every case ran: 39 layer cases (9 with a mask, 3 of them NaN-padded) and the element-wise kernels.
    assert_eq!(
        stdout.lines().filter(|l| l.ends_with(": ok")).count(),
        39,
        "{stdout}"
    );
    assert!(stdout.contains("ALL OK (0 mismatches)"), "{stdout}");
}
