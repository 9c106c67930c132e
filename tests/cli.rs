//! The `warpnorm` binary: `verify` on the fixtures, a malformed file, a missing path.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn warpnorm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warpnorm"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the warpnorm binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A fresh folder under the target directory, unique to this test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn verify_passes_on_the_fixtures() {
    let out = warpnorm(&["verify", "tests/fixtures"]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    let summary = s.lines().last().unwrap_or_default();
    assert!(summary.contains(" passed, 0 failed"), "{summary}");
    let passed: usize = summary.split_whitespace().next().unwrap().parse().unwrap();
    assert!(passed > 0);
    assert_eq!(s.lines().filter(|l| l.starts_with("PASS ")).count(), passed);
}

#[test]
fn verify_fails_on_a_malformed_file_and_names_it() {
    let dir = temp_dir("cli_malformed");
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flax_ln_d3.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(good).unwrap()).unwrap();
    v["x"]["data"].as_array_mut().unwrap().pop();
    let bad = dir.join("truncated.json");
    std::fs::write(&bad, v.to_string()).unwrap();

    let out = warpnorm(&["verify", bad.to_str().unwrap()]);
    let s = text(&out);
    assert!(!out.status.success(), "{s}");
    assert!(s.contains("truncated.json"), "{s}");
    assert!(
        s.contains("field `x.data`: expected 15 numbers for shape [5, 3], got 14"),
        "{s}"
    );
    assert!(s.contains("0 passed, 1 failed"), "{s}");

    // In a folder next to good fixtures, the run still fails.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flax_ln_d7.json"),
        dir.join("good.json"),
    )
    .unwrap();
    let out = warpnorm(&["verify", dir.to_str().unwrap()]);
    let s = text(&out);
    assert!(!out.status.success(), "{s}");
    assert!(s.contains("1 passed, 1 failed"), "{s}");
}

#[test]
fn verify_fails_on_a_missing_path() {
    let out = warpnorm(&["verify", "tests/no_such_folder"]);
    let s = text(&out);
    assert!(!out.status.success(), "{s}");
    assert!(s.contains("tests/no_such_folder"), "{s}");
}

#[test]
fn verify_fails_on_an_empty_folder() {
    let dir = temp_dir("cli_empty");
    let out = warpnorm(&["verify", dir.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no fixture files"));
}

#[test]
fn verify_needs_a_path() {
    let out = warpnorm(&["verify"]);
    assert!(!out.status.success());
}
