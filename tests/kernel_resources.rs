//! The ptxas resource report of every embedded CUBIN: no kernel spills registers on the
//! architectures warpnorm ships machine code for (a spill turns a register access into a
//! local-memory round trip inside the hottest loop).

use warpnorm::cuda::kernels::{ImageKind, IMAGES, RESOURCE_REPORT};

/// (section "source arch", kernel, the ptxas lines about it).
fn kernels_in_report() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut current: Option<(String, String)> = None;
    for line in RESOURCE_REPORT.lines() {
        if let Some(s) = line.strip_prefix("## ") {
            if let Some((name, lines)) = current.take() {
                out.push((section.clone(), name, lines));
            }
            section = s.to_string();
            continue;
        }
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            if let Some((name, lines)) = current.take() {
                out.push((section.clone(), name, lines));
            }
            current = Some((
                rest.split('\'').next().unwrap_or("").to_string(),
                String::new(),
            ));
        } else if let Some((_, lines)) = current.as_mut() {
            lines.push_str(line);
            lines.push('\n');
        }
    }
    if let Some((name, lines)) = current {
        out.push((section, name, lines));
    }
    out
}

#[test]
fn the_report_covers_every_kernel_of_every_cubin() {
    for image in IMAGES.iter().filter(|i| i.kind == ImageKind::Cubin) {
        let section = format!("{}.cu {}", image.source, image.arch);
        let reported: Vec<_> = kernels_in_report()
            .into_iter()
            .filter(|(s, _, _)| *s == section)
            .map(|(_, k, _)| k)
            .collect();
        assert!(!reported.is_empty(), "no resource report for {section}");
        for (expr, lowered) in image.names {
            assert!(
                reported.iter().any(|k| k == lowered),
                "{section}: no ptxas report for {expr}"
            );
        }
    }
}

#[test]
fn no_kernel_spills_registers_on_sm_80_or_sm_90() {
    let mut spills = Vec::new();
    let mut checked = 0;
    for (section, kernel, lines) in kernels_in_report() {
        if !(section.ends_with("sm_80") || section.ends_with("sm_90")) {
            continue;
        }
        checked += 1;
        let clean = lines.contains("0 bytes spill stores, 0 bytes spill loads");
        if !clean {
            let detail = lines
                .lines()
                .find(|l| l.contains("spill"))
                .unwrap_or("no spill line");
            spills.push(format!("{section} {kernel}: {}", detail.trim()));
        }
    }
    assert!(
        checked > 100,
        "only {checked} kernels in the resource report"
    );
    assert!(
        spills.is_empty(),
        "{} kernels spill:\n{}",
        spills.len(),
        spills.join("\n")
    );
}

/// Kernels v2's stash backward (`layer_norm_bwd_stash` with and without prefetch,
/// `layer_norm_bwd_cluster`, a trap on sm_80, and `layer_norm_bwd_split`): built for every
/// x dtype and architecture,
/// within the 64 registers of a 1024-thread CTA, no spills. Prints their ptxas lines
/// (docs/TUNING.md, T15, T17) with `--nocapture`.
#[test]
fn v2_stash_kernels_are_built_within_their_register_budget() {
    let mut found = 0;
    for (section, kernel, lines) in kernels_in_report() {
        let v2 = [
            "layer_norm_bwd_stash",
            "layer_norm_bwd_cluster",
            "layer_norm_bwd_split",
        ];
        if !v2.iter().any(|k| kernel.contains(k)) || section.ends_with("compute_80") {
            continue;
        }
        found += 1;
        let registers: u32 = lines
            .split("Used ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{section} {kernel}: no register count in\n{lines}"));
        println!("{section} {kernel}: {}", lines.replace('\n', " | "));
        assert!(registers <= 64, "{section} {kernel}: {registers} registers");
        assert!(
            lines.contains("0 bytes spill stores, 0 bytes spill loads"),
            "{section} {kernel}: {lines}"
        );
    }
    // Four kernels (the stash with and without prefetch) for three x dtypes on sm_80 and
    // sm_90.
    assert_eq!(found, 24, "v2 stash kernels in the resource report");
}
