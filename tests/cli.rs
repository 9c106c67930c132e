//! The `warpnorm` binary: `verify` on the fixtures (from files and built in), a malformed
//! file, a missing path; `info`, `check`, `bench`, `demo`, help, bad arguments, exit
//! statuses, sizes too large for the machine and colours, all without a GPU.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

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

/// The exit status of a finished process.
fn code(out: &Output) -> i32 {
    out.status.code().expect("an exit status, not a signal")
}

#[cfg(feature = "emulator")]
#[test]
fn check_runs_the_emulated_kernels_and_prints_json_records() {
    let args = [
        "check", "--device", "emulator", "--cols", "7,33", "--seed", "11", "--json",
    ];
    let out = warpnorm_env(&args, &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v = json(&out);
    assert!(v["device"].as_str().unwrap().contains("emulation"), "{v}");
    let results = v["results"].as_array().expect("a results array");
    assert_eq!(v["failed"], 0, "{v}");
    let passed = v["passed"].as_u64().unwrap() as usize;
    let skipped = v["skipped"].as_u64().unwrap() as usize;
    assert_eq!(passed + skipped, results.len());
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
        for key in ["x", "param", "out"] {
            assert!(
                ["f32", "f16", "bf16"].contains(&r[key].as_str().unwrap()),
                "{r}"
            );
        }
    }
    // Every variant ran on each dtype combination the emulation has (unless its API
    // cannot express the combination), at the cols asked.
    for variant in warpnorm::tooling::selftest::Variant::ALL {
        let of: Vec<_> = results
            .iter()
            .filter(|r| r["variant"] == variant.name())
            .collect();
        assert!(of.iter().any(|r| r["status"] == "pass"), "{variant:?}: {v}");
        for (x, p, o) in warpnorm::cuda::tiers::dtype_combos() {
            let combo: Vec<_> = of
                .iter()
                .filter(|r| r["x"] == x && r["param"] == p && r["out"] == o)
                .collect();
            assert_eq!(combo.len(), 2, "{variant:?} {x} {p} {o}: {v}");
            assert!(
                combo.iter().all(|r| r["status"] == "pass"
                    || !r["skipped"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("emulation")),
                "{variant:?} {x} {p} {o}: {v}"
            );
        }
    }
    assert!(results.iter().all(|r| r["cols"] == 7 || r["cols"] == 33));
    // The kernels and the reference are different computations: a check that compared
    // the reference with itself would find every error exactly 0.
    assert!(
        results
            .iter()
            .any(|r| r["status"] == "pass" && r["worst_ratio"].as_f64().unwrap() > 0.0),
        "{v}"
    );
    // The others are skipped, saying why.
    assert!(skipped > 0);
    assert!(results
        .iter()
        .filter(|r| r["status"] == "skip")
        .all(|r| r["skipped"].as_str().is_some_and(|w| !w.is_empty())));
    // A fresh seed is printed, and given back it repeats the run exactly.
    let run = |seed: Option<&str>| {
        let mut args = vec!["check", "--device", "emulator", "--json", "--cols", "5"];
        args.extend(seed.map(|s| ["--seed", s]).into_iter().flatten());
        json(&warpnorm_env(&args, &[]))
    };
    let first = run(None);
    let seed = first["seed"].as_u64().expect("a seed").to_string();
    assert_eq!(run(Some(&seed)), first);
}

#[cfg(feature = "emulator")]
#[test]
fn check_without_a_gpu_checks_the_emulation_and_prints_a_table() {
    if has_gpu() {
        println!("SKIP: a GPU is present, so check runs on it rather than the emulation");
        return;
    }
    let out = warpnorm_env(&["check", "--cols", "3", "--seed", "5"], &[]);
    let s = text(&out);
    assert_eq!(code(&out), 0, "{s}");
    assert!(s.contains("no GPU ("), "{s}");
    assert!(
        s.contains("checking the kernels' CPU emulation against the CPU reference"),
        "{s}"
    );
    assert!(s.contains("seed "), "{s}");
    for variant in warpnorm::tooling::selftest::Variant::ALL {
        assert!(s.lines().any(|l| l.starts_with(variant.name())), "{s}");
    }
    // Every combination the API can express is checked: keras rms_scaling with bf16 x and
    // f32 parameters and output too (it rounds y through bf16).
    assert!(!s.contains("rms-scaling x bf16 p f32 y f32"), "{s}");
    assert!(!s.contains("open discrepancy"), "{s}");
    let last = s.lines().last().unwrap_or_default();
    assert!(last.contains(" passed, 0 failed, "), "{last}");
}

#[cfg(not(feature = "emulator"))]
#[test]
fn check_without_a_gpu_or_the_emulation_has_nothing_to_check() {
    if has_gpu() {
        println!("SKIP: a GPU is present, so check has kernels to check");
        return;
    }
    let out = warpnorm_env(&["check", "--quick"], &[]);
    let s = text(&out);
    assert_eq!(code(&out), 3, "{s}");
    assert!(s.contains("nothing to check on this machine"), "{s}");
    assert!(s.contains("cargo feature `emulator`"), "{s}");
    assert!(!s.contains("PASS") && !s.contains("passed"), "{s}");
}

#[test]
fn check_on_the_cpu_reference_has_nothing_to_check() {
    for args in [
        &["check", "--device", "cpu"][..],
        &["check", "--device", "CPU", "--quick", "--json"],
    ] {
        let out = warpnorm_env(args, &[]);
        let s = text(&out);
        assert_eq!(code(&out), 3, "{args:?}: {s}");
        assert!(s.contains("nothing to check on this machine"), "{s}");
        assert!(!s.contains("PASS") && !s.contains("passed"), "{s}");
        assert!(out.stdout.is_empty(), "{s}");
    }
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
        for key in warpnorm::tooling::bench::RECORD_FIELDS {
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

/// What every demo prints, whatever runs it.
fn assert_demo_story(s: &str) {
    for want in [
        "massive activation",
        "constant",
        "y std",
        "gradients:",
        "x bf16 [",
        "scale/bias f32",
    ] {
        assert!(s.contains(want), "missing {want}: {s}");
    }
    assert!(!s.contains("float32") && !s.contains("(bfloat16)"), "{s}");
}

#[cfg(feature = "emulator")]
#[test]
fn demo_checks_the_emulated_kernels_against_the_reference() {
    let out = warpnorm_env(
        &[
            "demo", "--device", "emulator", "--rows", "16", "--cols", "256",
        ],
        &[],
    );
    let s = text(&out);
    assert_eq!(code(&out), 0, "{s}");
    assert_demo_story(&s);
    let check = s
        .lines()
        .find(|l| l.starts_with("check:"))
        .unwrap_or_default();
    assert!(
        check.contains("the emulated kernels against the f64 CPU reference")
            && check.ends_with("PASS"),
        "{s}"
    );
}

#[test]
fn demo_on_the_cpu_reference_has_nothing_to_check() {
    let out = warpnorm_env(
        &["demo", "--device", "cpu", "--rows", "32", "--cols", "64"],
        &[],
    );
    let s = text(&out);
    assert_eq!(code(&out), 3, "{s}");
    assert_demo_story(&s);
    assert!(s.contains("check: nothing to check on this machine"), "{s}");
    assert!(!s.contains("PASS"), "{s}");
}

#[test]
fn bad_arguments_fail_and_name_the_value() {
    let cases: [&[&str]; 17] = [
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
        &["demo", "--cols", "0"],
        &["bench", "--bytes", "-1"],
        &["bench", "--cols", "-5"],
        &["bench", "--iters", "0"],
        &["check", "--seed", "-1"],
        &["bench", "--pass", "both"],
        &["verify", "--device", "emulator", "tests/fixtures"],
    ];
    for args in cases {
        let out = warpnorm_env(args, &[]);
        let s = text(&out);
        assert_eq!(code(&out), 2, "{args:?}: {s}");
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
    // A device that does not open is a failure to run (1), not a usage error (2).
    for args in [
        &["check", "--device", "cuda:99"][..],
        &["demo", "--device", "cuda:99"],
        &["bench", "--device", "cuda:99"],
        &["verify", "--device", "cuda:99", "--builtin"],
        &["verify", "--device", "cuda:99", "tests/fixtures"],
    ] {
        let out = warpnorm_env(args, &[]);
        let s = text(&out);
        assert_eq!(code(&out), 1, "{args:?}: {s}");
        assert!(s.contains("error:"), "{args:?}: {s}");
        assert!(!s.contains("panicked"), "{args:?}: {s}");
    }
}

#[test]
fn help_documents_the_exit_statuses_and_the_vocabulary() {
    let s = text(&warpnorm_env(&["--help"], &[]));
    for want in [
        "Exit status: 0 done",
        "1 a check failed",
        "2 usage error",
        "3 nothing to check",
        "rows x cols",
        "f32, f16 and bf16",
    ] {
        assert!(s.contains(want), "missing {want}: {s}");
    }
    for sub in ["check", "bench", "demo"] {
        let s = text(&warpnorm_env(&[sub, "--help"], &[]));
        assert!(s.contains("--cols"), "{sub}: {s}");
        for old in ["--tokens", "--hidden", "row length", " D ", "D="] {
            assert!(!s.contains(old), "{sub} still says {old}: {s}");
        }
    }
    let s = text(&warpnorm_env(&["bench", "--help"], &[]));
    assert!(s.contains("fwd_bwd") && !s.contains("both"), "{s}");
}

#[test]
fn devices_parse_in_any_case() {
    assert!(matches!(
        warpnorm::Device::parse("CPU"),
        Ok(warpnorm::Device::Cpu)
    ));
    assert!(matches!(
        warpnorm::Device::parse(" Cpu "),
        Ok(warpnorm::Device::Cpu)
    ));
    let out = warpnorm_env(
        &[
            "verify",
            "--device",
            "CPU",
            "tests/fixtures/flax_ln_d3.json",
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
}

#[test]
fn bench_from_a_file_refuses_what_only_a_measurement_uses() {
    for flag in [["--norm", "rms_norm"], ["--pass", "bwd"], ["--cols", "128"]] {
        let out = warpnorm_env(&["bench", "--from", "records.json", flag[0], flag[1]], &[]);
        let s = text(&out);
        assert_eq!(code(&out), 2, "{flag:?}: {s}");
        assert!(
            s.contains("cannot be used with") && s.contains(flag[0]),
            "{s}"
        );
    }
}

#[test]
fn bench_passes_are_named_as_in_the_records_and_the_chart_follows_the_norm() {
    let dir = temp_dir("cli_bench_vocabulary");
    let svg = dir.join("rms.svg");
    let args = [
        "bench",
        "--device",
        "cpu",
        "--json",
        "--dtype",
        "bf16",
        "--cols",
        "64",
        "--bytes",
        "16KiB",
        "--norm",
        "rms_norm",
        "--pass",
        "bwd,fwd_bwd",
        "--plot",
        svg.to_str().unwrap(),
    ];
    let out = warpnorm_env(&args, &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let passes: Vec<String> = json(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["pass"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(passes, ["bwd", "fwd_bwd"]);
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.contains("RMSNorm throughput"), "{chart}");
    assert!(!chart.contains("LayerNorm"), "{chart}");
    // `all` is the three passes; fwd+bwd is another spelling of fwd_bwd.
    let args = [
        "bench", "--device", "cpu", "--json", "--dtype", "f32", "--cols", "64", "--bytes", "16KiB",
        "--pass", "all",
    ];
    let out = warpnorm_env(&args, &[]);
    let all: Vec<String> = json(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["pass"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(all, ["fwd", "bwd", "fwd_bwd"]);
    let args = [
        "bench", "--device", "cpu", "--json", "--dtype", "f32", "--cols", "64", "--bytes", "16KiB",
        "--pass", "fwd+bwd",
    ];
    assert_eq!(json(&warpnorm_env(&args, &[]))[0]["pass"], "fwd_bwd");
}

#[test]
fn verify_builtin_needs_no_checkout() {
    // Run from a folder with no fixtures in it.
    let dir = temp_dir("cli_builtin");
    let out = Command::new(env!("CARGO_BIN_EXE_warpnorm"))
        .args(["verify", "--builtin", "--device", "cpu"])
        .current_dir(&dir)
        .output()
        .expect("the warpnorm binary runs");
    let s = text(&out);
    assert_eq!(code(&out), 0, "{s}");
    let fixtures = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert!(fixtures > 0);
    assert!(
        s.contains(&format!("{fixtures} passed, 0 failed, 0 skipped")),
        "{s}"
    );
    assert_eq!(
        s.lines().filter(|l| l.starts_with("PASS ")).count(),
        fixtures,
        "{s}"
    );
    assert!(s.contains("(builtin:flax_ln_d3.json)"), "{s}");
    // Dtypes by the names the command takes.
    assert!(s.contains(" y f32 ") && s.contains(" y bf16 "), "{s}");
    for numpy_name in ["float32", "float16", "bfloat16"] {
        assert!(!s.contains(&format!(" {numpy_name} max_err")), "{s}");
    }
    // Paths and --builtin are one or the other.
    let out = warpnorm_env(&["verify", "--builtin", "tests/fixtures"], &[]);
    assert_eq!(code(&out), 2, "{}", text(&out));
}

/// Sizes beyond any machine, each refused as a usage error that says how large the
/// problem was, before anything is allocated.
#[test]
fn sizes_too_large_for_the_machine_are_refused_quickly() {
    let cases: [(&[&str], &str); 6] = [
        (
            &["bench", "--device", "cpu", "--cols", "18446744073709551615"],
            "needs more than 2^64 bytes",
        ),
        (
            &["demo", "--rows", "4294967296", "--cols", "4294967296"],
            "a 4294967296 x 4294967296 batch needs more than 2^64 bytes",
        ),
        (
            &["demo", "--device", "cpu", "--rows", "100000", "--cols", "100000"],
            "a 100000 x 100000 batch needs 596.0 GiB, more than the 4.0 GiB a problem may take on the host",
        ),
        (
            &["check", "--cols", "4294967296"],
            "a case of cols 4294967296 (2 x 4294967296 x 3 elements) needs 1.5 TiB",
        ),
        (
            &["bench", "--device", "cpu", "--bytes", "1024GiB", "--cols", "1024"],
            "a 268435456 x 1024 f32 problem needs 16.0 TiB",
        ),
        (
            &["bench", "--warmup", "18446744073709551615"],
            "`18446744073709551615` is more than 1000000 iterations",
        ),
    ];
    for (args, want) in cases {
        let start = Instant::now();
        let out = warpnorm_env(args, &[]);
        let took = start.elapsed();
        let s = text(&out);
        assert_eq!(code(&out), 2, "{args:?}: {s}");
        assert!(s.contains(want), "{args:?}: want {want}: {s}");
        assert!(!s.contains("panicked"), "{s}");
        assert!(took < Duration::from_secs(1), "{args:?} took {took:?}");
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
