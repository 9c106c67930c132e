//! `scripts/gpu_checks.sh`, the staged GPU verification, checked where no GPU is: the dry run
//! of every stage runs the same steps on this build's debug binaries and writes one summary
//! and one archive of the promised shape; a stage whose every step hangs still ends within
//! its budget. Both need bash, python3, tar and timeout; without them they say SKIP.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The steps of each stage, as the summary names them.
const STAGES: [(&str, &[&str]); 3] = [
    (
        "smoke",
        &[
            "info",
            "check-quick",
            "tests-gpu_kernels",
            "tests-gpu_kernels-v2",
            "tests-layer",
            "tests-sharded",
            "verify",
            "bench-short",
        ],
    ),
    (
        "full",
        &[
            "tests-gpu_kernels",
            "tests-gpu_kernels-v2",
            "tests-over_2_pow_31",
            "tests-layer",
            "tests-sharded",
            "sanitize-memcheck",
            "sanitize-racecheck",
            "sanitize-synccheck",
            "sanitize-initcheck",
            "sanitize-racecheck-v2",
        ],
    ),
    (
        "bench",
        &["liger-install", "bench-ln", "bench-rms", "bench-ln-f32"],
    ),
];
/// Steps that need a tool only a GPU machine has: a dry run lists them.
const LISTED: [&str; 6] = [
    "sanitize-memcheck",
    "sanitize-racecheck",
    "sanitize-synccheck",
    "sanitize-initcheck",
    "sanitize-racecheck-v2",
    "liger-install",
];
/// What a lent GPU machine brings back.
const MAX_FILES: usize = 8;
const MAX_FILE_BYTES: u64 = 16 << 20;
/// The GPU test targets the stages run.
const GPU_TESTS: [&str; 3] = ["gpu_kernels", "layer", "sharded"];

fn tools_or_skip(test: &str) -> bool {
    for tool in ["bash", "python3", "tar", "timeout"] {
        let found = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            eprintln!("SKIP: {test}: {tool} is not installed");
            return false;
        }
    }
    true
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn gpu_checks(args: &[&str]) -> Output {
    Command::new("bash")
        .arg("scripts/gpu_checks.sh")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("OUT")
        .output()
        .expect("bash starts")
}

/// Cargo's profile folder of this build (target/debug): the warpnorm binary and, under
/// deps/, the test binaries the stages run.
fn profile_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_warpnorm"));
    bin.parent()
        .expect("the binary sits in a folder")
        .to_path_buf()
}

/// Builds the GPU test binaries when this test runs without them (alone, say), with this
/// build's features so that cargo reuses the library.
fn ensure_test_binaries(profile: &Path) {
    let deps = std::fs::read_dir(profile.join("deps"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let missing = GPU_TESTS.iter().any(|t| {
        !deps.iter().any(|f| {
            f.strip_prefix(&format!("{t}-"))
                .is_some_and(|h| !h.contains('.'))
        })
    });
    if !missing {
        return;
    }
    let mut cargo = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    cargo
        .args(["test", "--no-run", "--quiet"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    for t in GPU_TESTS {
        cargo.args(["--test", t]);
    }
    if cfg!(feature = "emulator") {
        cargo.args(["--features", "emulator"]);
    }
    let out = cargo.output().expect("cargo starts");
    assert!(out.status.success(), "{}", text(&out));
}

/// The files of `dir`, with their sizes, after checking there are no folders.
fn files_in(dir: &Path) -> Vec<(String, u64)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            assert!(meta.is_file(), "{:?} is not a plain file", e.path());
            (e.file_name().into_string().unwrap(), meta.len())
        })
        .collect()
}

/// The status a summary gives `stage/step`, from its line `  stage/step  STATUS  ...`.
fn status_of(summary: &str, stage: &str, step: &str) -> Option<&'static str> {
    let key = format!("{stage}/{step} ");
    let line = summary.lines().find(|l| l.trim_start().starts_with(&key))?;
    let rest = line.trim_start()[key.len()..].trim_start();
    ["passed", "failed", "timed out", "not run", "listed"]
        .into_iter()
        .find(|s| rest.starts_with(s))
}

fn archive_names(archive: &Path) -> BTreeSet<String> {
    let out = Command::new("tar")
        .arg("-tzf")
        .arg(archive)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_start_matches("./").to_string())
        .collect()
}

#[test]
fn the_dry_run_of_every_stage_writes_the_summary_and_one_archive() {
    let test = "the_dry_run_of_every_stage_writes_the_summary_and_one_archive";
    if !tools_or_skip(test) {
        return;
    }
    let profile = profile_dir();
    ensure_test_binaries(&profile);
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpu_checks_dry_run");
    let _ = std::fs::remove_dir_all(&out_dir);
    let started = Instant::now();
    let out = gpu_checks(&[
        "--dry-run",
        "--bins",
        profile.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "smoke",
        "full",
        "bench",
    ]);
    eprintln!(
        "dry run of smoke full bench: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let log = text(&out);
    assert!(out.status.success(), "{log}");

    // What comes back: the summary and one archive, within a lent machine's limits.
    let files = files_in(&out_dir);
    let names: BTreeSet<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["summary.txt", "results.tar.gz"]),
        "{files:?}"
    );
    assert!(files.len() <= MAX_FILES);
    for (name, size) in &files {
        assert!(*size > 0 && *size <= MAX_FILE_BYTES, "{name}: {size} bytes");
    }

    let summary = std::fs::read_to_string(out_dir.join("summary.txt")).unwrap();
    eprintln!("{summary}");
    for field in [
        "date: ", "commit: ", "host: ", "gpu: ", "driver: ", "stages: ",
    ] {
        assert!(
            summary.lines().any(|l| l.starts_with(field)),
            "no `{field}` line"
        );
    }
    assert!(summary.contains("mode: dry run"), "a dry run says so");
    for (stage, steps) in STAGES {
        // Each stage names its time against its budget, and kept to it.
        let line = summary
            .lines()
            .find(|l| l.starts_with(&format!("stage {stage}: ")))
            .unwrap_or_else(|| panic!("no time for stage {stage}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let (took, budget): (u64, u64) = (words[2].parse().unwrap(), words[6].parse().unwrap());
        assert!(took <= budget, "{line}");
        for step in steps {
            let want = if LISTED.contains(step) {
                "listed"
            } else {
                "passed"
            };
            assert_eq!(
                status_of(&summary, stage, step),
                Some(want),
                "{stage}/{step} in\n{summary}"
            );
        }
    }
    // The GPU tests ran and said why they did nothing.
    let gpu_tests = summary
        .lines()
        .find(|l| l.trim_start().starts_with("smoke/tests-gpu_kernels "))
        .unwrap();
    assert!(
        gpu_tests.contains(" passed, 0 failed") && gpu_tests.contains("SKIP lines"),
        "{gpu_tests}"
    );
    // The bench table, from compare.py's synthetic numbers, Liger among the contenders.
    assert!(summary.contains("bench/bench-rms: rms_norm, GB/s (SYNTHETIC"));
    assert!(summary.contains("liger") && summary.contains("wn %copy"));
    assert!(
        summary
            .lines()
            .any(|l| l.split_whitespace().take(3).eq(["bf16", "fwd", "1024"])),
        "no bf16 fwd D=1024 row in\n{summary}"
    );

    let archive = archive_names(&out_dir.join("results.tar.gz"));
    for name in [
        "summary.txt",
        "machine.txt",
        "steps.tsv",
        "smoke-tests-gpu_kernels.log",
        "full-tests-over_2_pow_31.log",
        "bench-bench-ln/results.json",
        "bench-bench-ln/report.md",
    ] {
        assert!(archive.contains(name), "{name} not in {archive:?}");
    }
}

#[test]
fn a_stage_whose_steps_all_hang_ends_within_its_budget() {
    let test = "a_stage_whose_steps_all_hang_ends_within_its_budget";
    if !tools_or_skip(test) {
        return;
    }
    // Binaries that never finish.
    let bins = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpu_checks_hanging_bins");
    let _ = std::fs::remove_dir_all(&bins);
    std::fs::create_dir_all(&bins).unwrap();
    for name in ["warpnorm", "test-gpu_kernels", "test-layer", "test-sharded"] {
        let path = bins.join(name);
        std::fs::write(&path, "#!/bin/sh\nexec sleep 1000\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpu_checks_hanging");
    let _ = std::fs::remove_dir_all(&out_dir);
    let budget = 15;
    let started = Instant::now();
    let out = gpu_checks(&[
        "--bins",
        bins.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--time-budget",
        &budget.to_string(),
        "smoke",
    ]);
    let took = started.elapsed();
    let log = text(&out);
    assert!(!out.status.success(), "hung steps are failures\n{log}");
    // The stage's budget, plus the summary and the archive.
    assert!(
        took < Duration::from_secs(budget + 10),
        "took {took:?}\n{log}"
    );
    let summary = std::fs::read_to_string(out_dir.join("summary.txt")).unwrap();
    let (_, steps) = STAGES[0];
    for step in steps {
        let status = status_of(&summary, "smoke", step);
        assert!(
            matches!(status, Some("timed out" | "not run")),
            "smoke/{step}: {status:?}\n{summary}"
        );
    }
    assert_eq!(
        status_of(&summary, "smoke", "bench-short"),
        Some("timed out")
    );
    assert!(summary.contains("first failures:"), "{summary}");
}
