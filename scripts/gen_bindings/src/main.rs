//! Prints the Rust mirror of `kernels/params.h` (the path given as the only argument): the
//! parameter structs the kernels take by value, their constants, `WarpnormKind`,
//! `WarpnormShardStats` and `WarpnormDtype`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(header) = std::env::args().nth(1) else {
        eprintln!("usage: warpnorm-gen-bindings <kernels/params.h>");
        return ExitCode::FAILURE;
    };
    let bindings = bindgen::Builder::default()
        .header(header)
        .allowlist_type("Warpnorm.*")
        .allowlist_var("WARPNORM_.*")
        .rustified_enum("WarpnormKind")
        .rustified_enum("WarpnormShardStats")
        .rustified_enum("WarpnormDtype")
        .derive_default(true)
        .derive_debug(true)
        .derive_copy(true)
        .layout_tests(true)
        .generate();
    match bindings {
        Ok(b) => {
            print!("{b}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bindgen could not process the header: {e}");
            ExitCode::FAILURE
        }
    }
}
