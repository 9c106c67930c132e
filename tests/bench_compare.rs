//! `bench/compare.py`, the GPU comparison script, checked where no GPU is: its dry run
//! (report, targets, plot and merge from synthetic numbers) and its reading of the records
//! the real `warpnorm bench --json` prints. Both need `python3`; without it they say SKIP.

use std::path::Path;
use std::process::{Command, Output};

fn python3_or_skip(test: &str) -> bool {
    let found = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIP: {test}: python3 is not installed");
    }
    found
}

fn python(args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or_default())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn dry_run_renders_the_report_with_targets_and_merges_runs() {
    if !python3_or_skip("dry_run_renders_the_report_with_targets_and_merges_runs") {
        return;
    }
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("compare_dry_run");
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = python(
        &[
            "bench/compare.py",
            "--dry-run",
            "--dtypes",
            "bf16,f32",
            "--cols",
            "256,1024,65536",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let report = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(
        report.contains("SYNTHETIC"),
        "a dry run says it measured nothing"
    );
    assert!(report.contains("## Targets") && report.contains("backward >= 85%"));
    // Every dtype x pass table, the backward alone included.
    for table in [
        "## bf16, fwd",
        "## bf16, fwd_bwd",
        "## bf16, bwd",
        "## f32, fwd_bwd",
    ] {
        assert!(report.contains(table), "no table {table}");
    }
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(results["synthetic"], true);
    assert!(text(&out).contains("merged 2 runs"), "{}", text(&out));
}

#[test]
fn dry_run_of_rms_norm_has_no_triton_anchor() {
    if !python3_or_skip("dry_run_of_rms_norm_has_no_triton_anchor") {
        return;
    }
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("compare_dry_run_rms");
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = python(
        &[
            "bench/compare.py",
            "--dry-run",
            "--norm",
            "rms_norm",
            "--dtypes",
            "bf16",
            "--cols",
            "1024",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let report = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(report.starts_with("# RMSNorm bandwidth"), "{report}");
    assert!(report.contains("F.rms_norm") && !report.contains("Triton GB/s"));
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("results.json")).unwrap())
            .unwrap();
    let records = results["records"].as_array().unwrap();
    assert!(!records.is_empty() && records.iter().all(|r| r["norm"] == "rms_norm"));
}

#[test]
fn it_reads_the_records_warpnorm_bench_prints() {
    if !python3_or_skip("it_reads_the_records_warpnorm_bench_prints") {
        return;
    }
    let cli = Command::new(env!("CARGO_BIN_EXE_warpnorm"))
        .args([
            "bench", "--device", "cpu", "--json", "--dtype", "bf16", "--cols", "128,256",
            "--bytes", "64KiB", "--pass", "all",
        ])
        .output()
        .unwrap();
    assert!(cli.status.success(), "{}", text(&cli));
    // The CPU records carry impl "cpu_reference"; read as the GPU's would be.
    let json = String::from_utf8(cli.stdout)
        .unwrap()
        .replace("\"cpu_reference\"", "\"warpnorm\"");
    let script = "import json, sys\n\
                  sys.path.insert(0, 'bench')\n\
                  import compare\n\
                  recs, notes = compare.parse_warpnorm_output(sys.stdin.read(), ['fwd', 'fwd_bwd'])\n\
                  print(json.dumps({'records': recs, 'notes': notes}))";
    let out = python(&["-c", script], Some(json.as_bytes()));
    assert!(out.status.success(), "{}", text(&out));
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let records = parsed["records"].as_array().unwrap();
    // 2 row lengths x (fwd, bwd, fwd_bwd): the backward alone is kept for the targets.
    assert_eq!(records.len(), 6, "{parsed}");
    for r in records {
        assert_eq!(r["dtype"], "bf16");
        assert!(r["gbps"].as_f64().is_some_and(|g| g > 0.0), "{r}");
    }
    // The script counts bytes as the CLI does: no disagreement noted.
    assert_eq!(parsed["notes"].as_array().unwrap().len(), 0, "{parsed}");
}
