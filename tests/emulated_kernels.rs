//! The CUDA kernels, run by the CPU emulation (feature `emulator`), against the f64
//! reference: the kernel matrix (`tooling::kernel_matrix`, also run on a GPU by
//! tests/gpu_kernels.rs) over every tier of the row-length selection, every variant and
//! dtype combination, and both kernel generations; then the scalar path, strided layouts,
//! row isolation and determinism.
#![cfg(feature = "emulator")]

mod common;

use common::{assert_no_failures, assert_none, seed};
use half::bf16;
use warpnorm::cuda::emulator::{self, EmulatedDevice, HostForward};
use warpnorm::ops::{KernelGeneration, Layout, NormSpec};
use warpnorm::tooling::kernel_matrix::tolerance::{error_ratio, max_abs, tolerance};
use warpnorm::tooling::kernel_matrix::{self, Case, Dtypes, Findings, Kernels, Outputs, Variant};
use warpnorm::{DType, Element, NormConfig, Tensor};

/// One length per tier boundary of the selection (sub-warp, warp, CTA registers, CTA
/// with a shared-memory cache, uncached), plus odd lengths that force the scalar path.
const LENGTHS: [usize; 18] = [
    1, 2, 7, 31, 33, 128, 255, 768, 1000, 1025, 2048, 4096, 5120, 8191, 8192, 12288, 16384, 40960,
];

/// One length per kernel of the selection: register tiers (sub-warp, warp, CTA), both CTA
/// kernels with and without their shared-memory cache, and the scalar path.
const KERNEL_LENGTHS: [usize; 6] = [64, 1000, 4096, 12288, 40960, 1025];

/// Elements per case: the emulation runs every CUDA thread as a host thread.
const ELEMENTS: usize = 1 << 13;

fn dtypes<T: Element, P: Element, O: Element>() -> Dtypes {
    Dtypes::of::<T, P, O>()
}

/// Every variant at every length in `lengths`, in the dtypes `d`, by the kernels of
/// `generation`.
fn matrix(d: Dtypes, lengths: &[usize], generation: KernelGeneration) -> Findings {
    let kernels = Kernels::Emulator;
    kernel_matrix::matrix(&kernels, d, lengths, ELEMENTS, Some(generation), seed())
}

#[test]
fn f32_every_variant_and_tier() {
    let d = dtypes::<f32, f32, f32>();
    assert_no_failures(matrix(d, &LENGTHS, KernelGeneration::V1));
}

#[test]
fn bf16_with_f32_params_every_variant_and_tier() {
    let d = dtypes::<bf16, f32, bf16>();
    assert_no_failures(matrix(d, &LENGTHS, KernelGeneration::V1));
}

#[test]
fn f16_with_f32_output_every_variant_and_tier() {
    let d = dtypes::<half::f16, half::f16, f32>();
    assert_no_failures(matrix(d, &LENGTHS, KernelGeneration::V1));
}

/// Parameters and outputs are each x's dtype or f32, a branch inside each kernel: every
/// combination on every kernel.
#[test]
fn every_dtype_combination_on_every_kernel() {
    let mut findings = Findings::default();
    for d in Dtypes::compiled() {
        findings.extend(matrix(d, &KERNEL_LENGTHS, KernelGeneration::V1));
    }
    assert_no_failures(findings);
}

/// Kernels v2 (the one-launch finalize, the forward grid of whole waves) against the
/// reference on every kernel and variant.
#[test]
fn v2_every_variant_on_every_kernel() {
    let mut findings = Findings::default();
    for d in [
        dtypes::<f32, f32, f32>(),
        dtypes::<bf16, f32, bf16>(),
        dtypes::<half::f16, half::f16, f32>(),
    ] {
        findings.extend(matrix(d, &KERNEL_LENGTHS, KernelGeneration::V2));
    }
    assert_no_failures(findings);
}

/// A case of `cfg` on an f32 [rows, cols] x.
fn f32_case(cfg: NormConfig, rows: usize, cols: usize, masked: bool, salt: u64) -> Case {
    let layout = Layout::rows(rows, cols);
    Case::random(
        cfg,
        &[rows, cols],
        layout,
        DType::F32,
        masked,
        seed() ^ salt,
    )
    .unwrap()
}

fn emulate(case: &Case) -> Outputs {
    Kernels::Emulator
        .run(case, Some(KernelGeneration::V1))
        .unwrap()
}

/// Kernels v2's long-row backward, x and dy read once: every variant, with the row stashed
/// by one CTA (f32: just past the register tiers, where one thread has a second vector;
/// 16-bit: the longest the emulated device's shared memory holds) and split over a
/// cluster of two CTAs. (v2_every_variant_on_every_kernel reaches them too, at 12288 and
/// 40960.) The launches prove the paths.
#[test]
fn v2_long_row_backward_every_variant() {
    use half::{bf16 as B, f16 as H};
    const F32_LENGTHS: [usize; 2] = [4100, 16384];
    const HALF_LENGTHS: [usize; 2] = [14400, 24576];
    let v2 = KernelGeneration::V2;
    let (findings, launches) = emulator::traffic(|| {
        let mut findings = matrix(dtypes::<f32, f32, f32>(), &F32_LENGTHS, v2);
        findings.extend(matrix(dtypes::<B, f32, B>(), &HALF_LENGTHS, v2));
        findings.extend(matrix(dtypes::<H, H, f32>(), &HALF_LENGTHS, v2));
        findings
    });
    for x in ["float", "__nv_bfloat16", "__half"] {
        let ran = |kernel: &str| {
            let name = format!("{kernel}<{x}, ");
            launches.iter().filter(|l| l.kernel.contains(&name)).count()
        };
        let backwards = ran("layer_norm_bwd_stash") + ran("layer_norm_bwd_cluster");
        let all = launches
            .iter()
            .filter(|l| l.kernel.contains("_bwd") && l.kernel.contains(&format!("<{x}, ")))
            .count();
        assert!(
            ran("layer_norm_bwd_stash") > 0
                && ran("layer_norm_bwd_cluster") > 0
                && backwards == all,
            "{x}: {backwards} of {all} backwards on the long-row kernels, both used"
        );
    }
    assert_no_failures(findings);
}

/// Kernels v2 on the rows of v1's CTA register tiers: stashed twice over by a CTA of the
/// tier's threads, the next row copied in asynchronously while one is reduced. Nine rows
/// on the emulated grid of four CTAs, so that every CTA prefetches; every variant in three
/// dtype combinations, and the launches prove the path. (The emulation lands an
/// asynchronous copy only at the wait that covers it: a read before would find NaN.)
#[test]
fn v2_register_tier_rows_take_the_prefetching_stash() {
    use half::f16;
    let cases: [(Dtypes, &[usize]); 3] = [
        (dtypes::<f32, f32, f32>(), &[1000, 4096]),
        (dtypes::<bf16, f32, bf16>(), &[2048, 8192]),
        (dtypes::<f16, f16, f32>(), &[4096]),
    ];
    let mut failures = Vec::new();
    let ((), launches) = emulator::traffic(|| {
        for (d, lengths) in cases {
            for &cols in lengths {
                for variant in Variant::ALL {
                    if variant.config(d.param, d.out).validate().is_err() {
                        continue;
                    }
                    let case = Case::of(variant, d, 9, cols, seed() ^ cols as u64).unwrap();
                    let v2 = Some(KernelGeneration::V2);
                    let found = kernel_matrix::failures(&Kernels::Emulator, &case, v2).unwrap();
                    let label = format!("{variant:?} x {} cols {cols}", d.x);
                    failures.extend(found.iter().map(|f| format!("{label}: {f}")));
                }
            }
        }
    });
    let backwards: Vec<&str> = launches
        .iter()
        .map(|l| l.kernel.as_str())
        // (The channels-first variant's rows are strided: its own kernel.)
        .filter(|k| k.contains("_bwd") && !k.contains("strided"))
        .collect();
    assert!(
        !backwards.is_empty()
            && backwards
                .iter()
                .all(|k| k.contains("layer_norm_bwd_stash<") && k.ends_with(", true>")),
        "{backwards:?}"
    );
    assert_none(failures);
}

/// Kernels v2's long-row backward on a device without thread-block clusters (an A100's
/// limits): rows past one CTA's stash split over a group of CTAs whose row sums meet in
/// global memory, launched cooperatively (f32: groups of 2 and 5; 16-bit: 3 and 4), never
/// clusters. Every variant; the launches prove the path, and a second run gives the same
/// bits.
#[test]
fn v2_long_row_backward_over_groups_without_clusters() {
    use half::{bf16 as B, f16 as H};
    const F32_LENGTHS: [usize; 2] = [12288, 40960];
    const HALF_LENGTHS: [usize; 2] = [24576, 40960];
    let v2 = KernelGeneration::V2;
    let ampere = |run: &dyn Fn() -> Findings| {
        emulator::on_device(EmulatedDevice::Ampere, || emulator::traffic(run))
    };
    let every_dtype = || {
        let mut findings = matrix(dtypes::<f32, f32, f32>(), &F32_LENGTHS, v2);
        findings.extend(matrix(dtypes::<B, f32, B>(), &HALF_LENGTHS, v2));
        findings.extend(matrix(dtypes::<H, H, f32>(), &HALF_LENGTHS, v2));
        findings
    };
    let (findings, launches) = ampere(&every_dtype);
    for x in ["float", "__nv_bfloat16", "__half"] {
        let ran = |kernel: &str| {
            let name = format!("{kernel}<{x}, ");
            launches.iter().filter(|l| l.kernel.contains(&name)).count()
        };
        let backwards = launches
            .iter()
            .filter(|l| l.kernel.contains("_bwd") && l.kernel.contains(&format!("<{x}, ")))
            .count();
        // Variants without parameter gradients stash less per column: one CTA holds
        // their rows.
        let (split, stash) = (ran("layer_norm_bwd_split"), ran("layer_norm_bwd_stash"));
        assert!(
            split > stash && split + stash == backwards,
            "{x}: of {backwards} backwards, {split} split over groups, {stash} stashed"
        );
        let groups: Vec<u32> = launches.iter().map(|l| l.group).collect();
        assert!(
            groups.iter().all(|&g| g == 1 || (2..=5).contains(&g)),
            "{groups:?}"
        );
    }
    assert_no_failures(findings);
    // Deterministic: the same case, run twice, gives the same bits.
    let case = f32_case(NormConfig::flax(), 3, 40960, true, 40960);
    let run = || {
        emulator::on_device(EmulatedDevice::Ampere, || {
            Kernels::Emulator.run(&case, Some(v2)).unwrap()
        })
    };
    assert_same_bits(&run(), &run());
}

#[test]
fn channels_first_matches_the_reference() {
    let mut failures = Vec::new();
    for (outer, c, inner) in [(3usize, 64usize, 50usize), (2, 7, 70), (2, 300, 33)] {
        for v in [
            Variant::LayerNorm,
            Variant::FastVariance,
            Variant::RmsNorm,
            Variant::NoBias,
        ] {
            let cfg = v
                .config(DType::F32, DType::F32)
                .reduction_axes(1)
                .feature_axes(1);
            let layout = Layout::ChannelsFirst {
                outer,
                cols: c,
                inner,
            };
            let shape = [outer, c, inner];
            let case = Case::random(cfg, &shape, layout, DType::F32, false, seed() ^ c as u64);
            let generation = Some(KernelGeneration::V1);
            let found = kernel_matrix::failures(&Kernels::Emulator, &case.unwrap(), generation);
            failures.extend(
                found
                    .unwrap()
                    .iter()
                    .map(|f| format!("{shape:?} {v:?}: {f}")),
            );
        }
    }
    assert_none(failures);
}

fn host<T: Element>(t: &Tensor) -> Vec<T> {
    t.data().iter().map(|&v| T::from_f64(v)).collect()
}

#[test]
fn unaligned_slices_and_padded_strides_use_the_scalar_path() {
    let mut failures = Vec::new();
    for cols in [768usize, 4096, 40960] {
        let rows = 5;
        let d = dtypes::<bf16, f32, bf16>();
        let case = Case::of(Variant::LayerNorm, d, rows, cols, seed() ^ 77).unwrap();
        let want = case.reference().unwrap().fwd.y;
        let spec = NormSpec::from_config(&case.cfg);
        let scale: Vec<f32> = host(case.scale.as_ref().unwrap());
        let bias: Vec<f32> = host(case.bias.as_ref().unwrap());
        // x one element past an aligned start; y rows padded by 3 (NaN) elements.
        let y_stride = cols + 3;
        let mut x: Vec<bf16> = vec![bf16::ZERO];
        x.extend(host::<bf16>(&case.x));
        let mut y = vec![bf16::NAN; rows * y_stride];
        let layout = Layout::Rows {
            rows,
            cols,
            x_stride: cols,
            y_stride,
        };
        emulator::forward::<bf16, f32, bf16>(
            &spec,
            layout,
            HostForward {
                x: &x[1..],
                scale: Some(&scale),
                bias: Some(&bias),
                mask: None,
                y: &mut y,
                stats: None,
            },
        )
        .unwrap();
        let y: Vec<f64> = y.iter().map(|v| v.to_f64()).collect();
        let mut rows_only = Vec::new();
        for r in 0..rows {
            rows_only.extend_from_slice(&y[r * y_stride..r * y_stride + cols]);
            if !y[r * y_stride + cols..(r + 1) * y_stride]
                .iter()
                .all(|v| v.is_nan())
            {
                failures.push(format!("D={cols} row {r}: padding written"));
            }
        }
        let (rel, abs) = tolerance(DType::BF16, max_abs(want.data()), cols);
        let (ratio, at) = error_ratio(&rows_only, want.data(), rel, abs);
        if ratio.is_nan() || ratio > 1.0 {
            failures.push(format!("D={cols}: y {ratio:.2}x the tolerance at {at}"));
        }
    }
    assert_none(failures);
}

/// RMSNorm over one element: dx = rstd g (1 - xhat^2) is far smaller than its two terms
/// when x^2 is large against eps, and the kernel's f32 rounding of those terms is what its
/// dx error scales with. The matrix judges each element of dx by its own terms' magnitude
/// (a tolerance from dx's largest value failed about 3 % of seeds here): the kernels pass
/// on 200 seeds, and a dx of 0 where the terms cancel most is still caught.
#[test]
fn one_element_rmsnorm_rows_are_judged_by_the_magnitude_of_dx_terms() {
    let d = dtypes::<f32, f32, f32>();
    let mut cancelling = 0;
    for seed in 0..200 {
        let case = Case::of(Variant::RmsNorm, d, 67, 1, seed).unwrap();
        let want = case.reference().unwrap();
        let mut out = Kernels::Emulator
            .run(&case, Some(KernelGeneration::V1))
            .unwrap();
        let deviations = kernel_matrix::compare(&case, &want, &out);
        assert!(
            deviations.iter().all(|d| d.passed()),
            "seed {seed}: {deviations:?}"
        );
        // Of the elements with a dx of some size, the one whose terms cancel most.
        let dx = want.grads.dx.data();
        let magnitude = &want.grads.dx_magnitude;
        assert!(
            magnitude.iter().zip(dx).all(|(m, w)| *m >= w.abs()),
            "seed {seed}"
        );
        let (at, cancelled) = (0..dx.len())
            .filter(|&i| dx[i].abs() > 1e-4)
            .map(|i| (i, magnitude[i] / dx[i].abs()))
            .fold((0, 0.0), |best, e| if e.1 > best.1 { e } else { best });
        if cancelled > 100.0 {
            cancelling += 1;
            out.dx[at] = 0.0;
            let caught = kernel_matrix::compare(&case, &want, &out);
            assert!(
                caught.iter().any(|d| !d.passed()),
                "seed {seed}: a dx of 0 at {at} passed"
            );
        }
    }
    assert!(
        cancelling > 20,
        "only {cancelling} seeds with terms cancelling 100-fold"
    );
}

#[test]
fn a_nan_row_leaves_the_other_rows_exact() {
    for cols in [33usize, 1024, 16384, 40960] {
        let rows = 7;
        let cfg = Variant::LayerNorm.config(DType::F32, DType::F32);
        let clean = f32_case(cfg, rows, cols, false, 5);
        let want = clean.reference().unwrap().fwd.y;
        let mut data = clean.x.data().to_vec();
        data[2 * cols + cols / 2] = f64::NAN;
        data[4 * cols] = f64::INFINITY;
        let out = emulate(&clean.with_x(data).unwrap());
        for r in [0, 1, 3, 5, 6] {
            let span = r * cols..(r + 1) * cols;
            let (rel, abs) = tolerance(DType::F32, max_abs(want.data()), cols);
            let (ratio, _) = error_ratio(&out.y[span.clone()], &want.data()[span], rel, abs);
            assert!(
                ratio <= 1.0,
                "D={cols} row {r}: disturbed by another row's NaN ({ratio:.2}x)"
            );
        }
    }
}

#[test]
fn nan_padding_outside_the_mask_stays_out_of_the_statistics() {
    let configs = [
        NormConfig::flax(),
        NormConfig::flax().use_fast_variance(false),
        NormConfig::flax_rms(),
    ];
    for cfg in configs {
        // Sub-warp groups (16), scalar loads and both CTA kernels (1025), register tiers
        // with a warp and with a CTA per row (1000, 6000), the forward CTA kernel (8200).
        for cols in [16usize, 1000, 1025, 6000, 8200] {
            let rows = 5;
            let clean = f32_case(cfg.clone(), rows, cols, true, 9);
            let mask = clean.mask.clone().unwrap();
            // Every other element the mask leaves out becomes NaN.
            let nan_at: Vec<bool> = mask
                .iter()
                .scan(false, |odd, &m| {
                    *odd ^= !m;
                    Some(!m && *odd)
                })
                .collect();
            let data = clean.x.data().iter().zip(&nan_at);
            let data = data.map(|(&x, &n)| if n { f64::NAN } else { x }).collect();
            let padded = clean.clone().with_x(data).unwrap();
            let (a, b) = (emulate(&clean), emulate(&padded));
            let label = format!("{:?} fast={} D={cols}", cfg.kind(), cfg.fast_variance());
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a.mean), bits(&b.mean), "{label}: mean");
            assert_eq!(bits(&a.rstd), bits(&b.rstd), "{label}: rstd");
            for (i, (&m, &n)) in mask.iter().zip(&nan_at).enumerate() {
                if m {
                    assert_eq!(a.y[i].to_bits(), b.y[i].to_bits(), "{label}: y[{i}]");
                } else if n {
                    // As JAX: zero cotangent of mean(where=mask) times 2 (x - mean) = NaN.
                    assert!(b.dx[i].is_nan(), "{label}: dx[{i}] = {}", b.dx[i]);
                } else {
                    // Outside the statistics only y itself depends on x: dx = rstd * dy * scale.
                    assert!(b.dx[i].is_finite(), "{label}: dx[{i}] = {}", b.dx[i]);
                    assert_eq!(a.dx[i].to_bits(), b.dx[i].to_bits(), "{label}: dx[{i}]");
                }
            }
        }
    }
}

#[test]
fn nan_rows_and_rows_with_nothing_selected_are_nan_as_in_flax() {
    // fmaxf(NaN, 0) = 0 would make rstd 1/sqrt(eps): RMSNorm would then scale the row's
    // other elements instead of making the row NaN, and an empty row would get a gradient.
    for cfg in [NormConfig::flax_rms(), NormConfig::flax()] {
        for cols in [64usize, 1025, 8200] {
            let rows = 3;
            let case = f32_case(cfg.clone(), rows, cols, true, 4);
            let mut data = case.x.data().to_vec();
            data[cols + 3] = f64::NAN; // row 1 holds a NaN (selected: column 0..3 of row 1)
            let mut case = case.with_x(data).unwrap();
            let mut mask = case.mask.clone().unwrap();
            mask[cols + 3] = true;
            mask[2 * cols..].iter_mut().for_each(|m| *m = false); // row 2: nothing selected
            case.mask = Some(mask);
            let out = emulate(&case);
            let label = format!("{:?} D={cols}", cfg.kind());
            for row in [1, 2] {
                assert!(out.rstd[row].is_nan(), "{label}: rstd of row {row}");
                let span = row * cols..(row + 1) * cols;
                assert!(
                    out.y[span.clone()].iter().all(|v| v.is_nan()),
                    "{label}: y of row {row}"
                );
                assert!(
                    out.dx[span].iter().all(|v| v.is_nan()),
                    "{label}: dx of row {row}"
                );
            }
            assert!(
                out.y[..cols].iter().all(|v| v.is_finite()),
                "{label}: row 0"
            );
        }
    }
}

/// v2's forward CTA kernel keeps several loads in flight, but each thread sums its columns
/// in v1's order: the same bits (rows past the register tiers, with and without the row
/// cache, with a mask and the sum-of-squares form).
#[test]
fn v2_forward_cta_loads_in_flight_change_no_bit() {
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for d in [dtypes::<f32, f32, f32>(), dtypes::<bf16, f32, bf16>()] {
        for cols in [12288usize, 40960] {
            for variant in [Variant::LayerNorm, Variant::Masked, Variant::RmsNorm] {
                let case = Case::of(variant, d, 3, cols, seed() ^ cols as u64).unwrap();
                let [v1, v2] =
                    KernelGeneration::ALL.map(|g| Kernels::Emulator.run(&case, Some(g)).unwrap());
                let what = format!("{variant:?} x {} cols {cols}", d.x);
                assert_eq!(bits(&v1.y), bits(&v2.y), "y of {what}");
                assert_eq!(bits(&v1.mean), bits(&v2.mean), "mean of {what}");
                assert_eq!(bits(&v1.rstd), bits(&v2.rstd), "rstd of {what}");
            }
        }
    }
}

#[test]
fn two_runs_are_bitwise_identical() {
    for cols in [32usize, 1024, 12288] {
        let d = dtypes::<bf16, f32, bf16>();
        let case = Case::of(Variant::LayerNorm, d, 9, cols, seed() ^ 9).unwrap();
        for generation in KernelGeneration::ALL {
            let run = || Kernels::Emulator.run(&case, Some(generation)).unwrap();
            assert_same_bits(&run(), &run());
        }
    }
}

/// Two runs' outputs, bit for bit.
fn assert_same_bits(a: &Outputs, b: &Outputs) {
    let bits = |v: Option<&Vec<f64>>| v.map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    for (what, a, b) in [
        ("y", Some(&a.y), Some(&b.y)),
        ("dx", Some(&a.dx), Some(&b.dx)),
        ("dscale", a.dscale.as_ref(), b.dscale.as_ref()),
        ("dbias", a.dbias.as_ref(), b.dbias.as_ref()),
    ] {
        assert_eq!(bits(a), bits(b), "{what}");
    }
}
