//! The `warpnorm` binary: `verify` on the fixtures, a malformed file, a missing path; `info`,
//! `check`, `bench`, `demo`, help, bad arguments and colours, all without a GPU.

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

// ---------------------------------------------------------------------------------------
// The newcomer's commands: info, check, bench, demo; help, bad arguments, colours.

/// Runs warpnorm with colour variables cleared (the test runner's environment must not
/// decide the outcome) plus `env`.
fn warpnorm_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warpnorm"));
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR")
        .env_remove("CLICOLOR_FORCE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the warpnorm binary runs")
}

fn has_gpu() -> bool {
    warpnorm::cuda::device_count().is_ok()
}

fn json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", text(out)))
}

#[test]
fn every_subcommand_has_help_with_examples() {
    for sub in ["info", "check", "bench", "demo", "verify"] {
        let out = warpnorm_env(&[sub, "--help"], &[]);
        let s = text(&out);
        assert!(out.status.success(), "{sub}: {s}");
        assert!(s.contains("Examples:"), "{sub}: {s}");
        assert!(s.contains(&format!("warpnorm {sub}")), "{sub}: {s}");
    }
    let out = warpnorm_env(&["--help"], &[]);
    let s = text(&out);
    for sub in ["info", "check", "bench", "demo", "verify"] {
        assert!(s.contains(sub), "{s}");
    }
}

#[test]
fn info_lists_kernels_and_devices_or_says_there_is_no_gpu() {
    let out = warpnorm_env(&["info"], &[]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(s.contains(env!("CARGO_PKG_VERSION")), "{s}");
    assert!(
        s.contains("sm_80") && s.contains("CUBIN") && s.contains("PTX"),
        "{s}"
    );
    assert!(s.contains("NCCL:"), "{s}");
    let gpu_lines: Vec<&str> = s.lines().filter(|l| l.starts_with("GPU")).collect();
    assert_eq!(gpu_lines.len(), 1, "{s}");
    if has_gpu() {
        assert!(
            s.contains("cuda:0") && s.contains("compute capability"),
            "{s}"
        );
    } else {
        assert!(gpu_lines[0].starts_with("GPU: none ("), "{s}");
        assert!(!s.contains("cuda:0 "), "{s}");
    }
}

#[test]
fn info_json_has_the_same_facts() {
    let out = warpnorm_env(&["info", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let v = json(&out);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let kernels = v["kernels"].as_array().expect("a kernels array");
    assert!(kernels
        .iter()
        .any(|k| k["arch"] == "sm_90" && k["kind"] == "CUBIN" && k["kernels"].as_u64() > Some(0)));
    assert!(v["nccl"]["available"].is_boolean());
    if has_gpu() {
        assert!(!v["gpus"].as_array().unwrap().is_empty(), "{v}");
    } else {
        assert!(
            v["no_gpu"].is_string() && v["gpus"] == serde_json::json!([]),
            "{v}"
        );
    }
}

#[test]
fn check_on_the_cpu_prints_passing_json_records() {
    let out = warpnorm_env(&["check", "--device", "cpu", "--quick", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let v = json(&out);
    let results = v["results"].as_array().expect("a results array");
    assert!(!results.is_empty());
    assert_eq!(v["failed"], 0, "{v}");
    let passed = v["passed"].as_u64().unwrap() as usize;
    let skipped = v["skipped"].as_u64().unwrap() as usize;
    assert_eq!(passed + skipped, results.len());
    assert!(passed > results.len() / 2);
    for r in results {
        for key in [
            "variant",
            "x",
            "param",
            "out",
            "cols",
            "worst_ratio",
            "max_abs_error",
        ] {
            assert!(r.get(key).is_some(), "missing {key}: {r}");
        }
        assert!(r["status"] == "pass" || r["status"] == "skip", "{r}");
        assert_eq!(r["passed"], r["status"] == "pass", "{r}");
    }
    // Every variant ran, at the quick lengths only.
    for variant in warpnorm::selftest::Variant::ALL {
        assert!(results.iter().any(|r| r["variant"] == variant.name()));
    }
    assert!(results.iter().all(|r| r["cols"] == 7 || r["cols"] == 768));
    // The seed is printed and takes effect.
    let seed = v["seed"].as_u64().unwrap();
    let again = warpnorm_env(
        &[
            "check",
            "--device",
            "cpu",
            "--json",
            "--cols",
            "5",
            "--seed",
            &seed.to_string(),
        ],
        &[],
    );
    assert_eq!(json(&again)["seed"].as_u64(), Some(seed));
}

#[test]
fn check_without_json_prints_a_table_and_a_summary() {
    let out = warpnorm_env(&["check", "--device", "cpu", "--cols", "3"], &[]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("against itself"), "{s}");
    assert!(s.contains("seed "), "{s}");
    for variant in warpnorm::selftest::Variant::ALL {
        assert!(s.lines().any(|l| l.starts_with(variant.name())), "{s}");
    }
    let last = s.lines().last().unwrap_or_default();
    assert!(last.contains(" passed, 0 failed"), "{last}");
}

#[test]
fn bench_on_the_cpu_prints_json_records_and_plots_them() {
    let dir = temp_dir("cli_bench");
    let args = [
        "bench", "--device", "cpu", "--json", "--cols", "128", "--bytes", "1MiB",
    ];
    let out = warpnorm_env(&args, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let v = json(&out);
    let records = v.as_array().expect("an array of records");
    // f32, f16, bf16 x fwd, fwd_bwd.
    assert_eq!(records.len(), 6, "{v}");
    for r in records {
        for key in warpnorm::bench::RECORD_FIELDS {
            assert!(r.get(key).is_some(), "missing {key}: {r}");
        }
        assert_eq!(r["cols"], 128);
        assert!(r["ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["gbps"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(
            r["rows"].as_u64().unwrap()
                * 128
                * r["dtype"]
                    .as_str()
                    .map_or(0, |d| if d == "f32" { 4 } else { 2 }),
            1 << 20
        );
    }
    assert!(records
        .iter()
        .any(|r| r["pass"] == "fwd_bwd" && r["dtype"] == "bf16"));

    // The records read back (`--from`) and make a chart with one line per dtype and pass.
    let saved = dir.join("records.json");
    std::fs::write(&saved, &out.stdout).unwrap();
    let svg = dir.join("from.svg");
    let out = warpnorm_env(
        &[
            "bench",
            "--from",
            saved.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg"), "{chart}");
    assert_eq!(chart.matches("<polyline").count(), 6);
    assert!(text(&out).contains("fwd_bwd"));
}

#[test]
fn bench_times_rms_norm_with_its_own_byte_count() {
    let run = |norm: &str| {
        let args = [
            "bench", "--device", "cpu", "--json", "--dtype", "bf16", "--cols", "256", "--bytes",
            "64KiB", "--pass", "fwd", "--norm", norm,
        ];
        let out = warpnorm_env(&args, &[]);
        assert!(out.status.success(), "{}", text(&out));
        json(&out)[0].clone()
    };
    let (ln, rms) = (run("layer_norm"), run("rms"));
    assert_eq!(
        (ln["norm"].as_str(), rms["norm"].as_str()),
        (Some("layer_norm"), Some("rms_norm"))
    );
    // No bias read, and one f32 statistic per row instead of two (128 rows).
    let saved = ln["bytes"].as_u64().unwrap() - rms["bytes"].as_u64().unwrap();
    assert_eq!(saved, 256 * 2 + 128 * 4);
}

#[test]
fn bench_plot_writes_an_svg() {
    let dir = temp_dir("cli_plot");
    let svg = dir.join("out.svg");
    let out = warpnorm_env(
        &[
            "bench",
            "--device",
            "cpu",
            "--dtype",
            "bf16",
            "--cols",
            "64,256",
            "--bytes",
            "64KiB",
            "--pass",
            "fwd",
            "--plot",
            svg.to_str().unwrap(),
        ],
        &[],
    );
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("host clock"), "{s}");
    assert!(s.contains("GB/s"), "{s}");
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
    assert!(chart.contains("bf16 fwd"), "{chart}");
}

#[test]
fn demo_runs_on_the_cpu() {
    let out = warpnorm_env(&["demo", "--device", "cpu"], &[]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    for want in [
        "smaller batch",
        "massive activation",
        "constant",
        "y std",
        "gradients:",
        "PASS",
    ] {
        assert!(s.contains(want), "missing {want}: {s}");
    }
}

#[test]
fn bad_arguments_fail_and_name_the_value() {
    let cases: [&[&str]; 11] = [
        &["bench", "--dtype", "f64"],
        &["bench", "--norm", "group_norm"],
        &["bench", "--dtype", "bf16,int8"],
        &["bench", "--cols", "0"],
        &["bench", "--cols", "128,abc"],
        &["bench", "--bytes", "lots"],
        &["check", "--device", "tpu:0"],
        &["demo", "--device", "cuda:x"],
        &["bench", "--device", "tpu:0"],
        &["verify", "--device", "cuda:x", "tests/fixtures"],
        &["demo", "--hidden", "0"],
    ];
    for args in cases {
        let out = warpnorm_env(args, &[]);
        let s = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded: {s}");
        let bad = args[args.len() - 1 - usize::from(args[0] == "verify")];
        let named = bad.rsplit(',').next().unwrap_or(bad);
        assert!(
            s.contains(named),
            "{args:?}: the message does not name `{named}`: {s}"
        );
        assert!(!s.contains("panicked"), "{s}");
    }
}

#[test]
fn a_gpu_that_is_not_there_is_an_error_not_a_panic() {
    for sub in ["check", "demo", "bench"] {
        let out = warpnorm_env(&[sub, "--device", "cuda:99"], &[]);
        let s = text(&out);
        assert!(!out.status.success(), "{sub}: {s}");
        assert!(s.contains("error:"), "{sub}: {s}");
        assert!(!s.contains("panicked"), "{sub}: {s}");
    }
}

#[test]
fn no_colour_escapes_unless_a_terminal_or_forced() {
    let esc = |out: &Output| out.stdout.contains(&0x1b) || out.stderr.contains(&0x1b);
    for args in [
        &["info"][..],
        &["check", "--device", "cpu", "--cols", "3"],
        &[
            "bench", "--device", "cpu", "--cols", "32", "--bytes", "4KiB", "--dtype", "f32",
        ],
        &["check", "--device", "tpu:0"],
    ] {
        assert!(!esc(&warpnorm_env(args, &[])), "{args:?}");
    }
    // Forced colours show (so the check above means something), and NO_COLOR wins.
    assert!(esc(&warpnorm_env(&["info"], &[("CLICOLOR_FORCE", "1")])));
    assert!(!esc(&warpnorm_env(
        &["info"],
        &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")]
    )));
}
