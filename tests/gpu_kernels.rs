//! The CUDA kernels against the f64 reference: the kernel matrix (`tooling::kernel_matrix`,
//! also run on the CPU emulation by tests/emulated_kernels.rs) over every dtype combination
//! x every variant x row lengths from 1 to 2^20, plus layouts, isolation, determinism,
//! large tensors and argument errors. Each test prints `SKIP: <reason>` and passes without
//! a GPU.

mod common;

use common::{assert_no_failures, assert_none, gpu_or_skip, seed};
use cudarc::driver::CudaSlice;
use half::{bf16, f16};
use warpnorm::cuda::{CudaBackend, Dtypes};
use warpnorm::ops::{self, Backward, Forward, Layout, NormSpec, Stats};
use warpnorm::reference::{self, Params};
use warpnorm::tooling::kernel_matrix::gpu::{download, poisoned, upload};
use warpnorm::tooling::kernel_matrix::tolerance::{error_ratio, max_abs, tolerance};
use warpnorm::tooling::kernel_matrix::{self, Case, Findings, Kernels, Variant};
use warpnorm::{DType, Element, Error, NormConfig, Tensor};

const LENGTHS: [usize; 24] = [
    1,
    2,
    7,
    31,
    32,
    33,
    127,
    128,
    255,
    768,
    1000,
    1024,
    1025,
    2048,
    4096,
    5120,
    8191,
    8192,
    12288,
    16384,
    32768,
    65536,
    131_072,
    1 << 20,
];

/// Elements per case: about 2^16 keeps the f64 reference quick.
const ELEMENTS: usize = 1 << 16;

fn rows_for(cols: usize) -> usize {
    kernel_matrix::rows_for(cols, ELEMENTS)
}

#[test]
fn every_dtype_variant_and_length_matches_the_reference() {
    let Some(be) = gpu_or_skip("kernel matrix") else {
        return;
    };
    // WARPNORM_QUICK (set by scripts/sanitize.sh and the smoke stage of
    // scripts/gpu_checks.sh) keeps one length per tier. With WARPNORM_KERNELS=v2 on an
    // sm_90 device: 1000 (f32) and 8192 (16-bit) take the prefetching stash, 8192 (f32)
    // the stash, 70000 a cluster, 131072 a cooperative group of CTAs (f32, and 16-bit x
    // with f32 parameters or dy; all-16-bit rows fit a cluster of 8).
    let quick = [1, 33, 1000, 1025, 8192, 70_000, 131_072];
    let lengths: &[usize] = if std::env::var_os("WARPNORM_QUICK").is_some() {
        &quick
    } else {
        &LENGTHS
    };
    let kernels = Kernels::Gpu(be);
    let mut findings = Findings::default();
    for d in Dtypes::compiled() {
        findings.extend(kernel_matrix::matrix(
            &kernels,
            d,
            lengths,
            ELEMENTS,
            None,
            seed(),
        ));
    }
    assert_no_failures(findings);
}

/// x, y, dx starting one element past a 16-byte boundary: the scalar path.
fn unaligned_for<T: Element, P: Element, O: Element>(be: &CudaBackend) -> Vec<String> {
    let s = be.stream();
    let d = Dtypes::of::<T, P, O>();
    let mut failures = Vec::new();
    for cols in [8usize, 768, 1000, 4096, 70_000] {
        let rows = rows_for(cols);
        let case = Case::of(Variant::LayerNorm, d, rows, cols, seed() ^ cols as u64).unwrap();
        let want = case.reference().unwrap().fwd.y;
        let n = rows * cols;
        let mut x_host = vec![0.0];
        x_host.extend_from_slice(case.x.data());
        let x_buf = upload::<T>(s, &Tensor::new([n + 1], T::DTYPE, x_host).unwrap()).unwrap();
        let scale = upload::<P>(s, case.scale.as_ref().unwrap()).unwrap();
        let bias = upload::<P>(s, case.bias.as_ref().unwrap()).unwrap();
        let mut y_buf = poisoned::<O>(s, n + 1).unwrap();
        let mut mean = poisoned::<f32>(s, rows).unwrap();
        let mut rstd = poisoned::<f32>(s, rows).unwrap();
        let x = x_buf.slice(1..);
        let mut y = y_buf.slice_mut(1..);
        ops::forward::<T, P, O>(
            be,
            s,
            &NormSpec::from_config(&case.cfg),
            Layout::rows(rows, cols),
            Forward {
                x: &x,
                scale: Some(&scale),
                bias: Some(&bias),
                mask: None,
                y: &mut y,
                stats: Some(Stats {
                    mean: &mut mean,
                    rstd: &mut rstd,
                }),
            },
        )
        .unwrap();
        let y_all = download(s, &y_buf).unwrap();
        if !y_all[0].is_nan() {
            failures.push(format!("D={cols}: wrote before the start of y"));
        }
        let (rel, abs) = tolerance(O::DTYPE, max_abs(want.data()), cols);
        let (ratio, at) = error_ratio(&y_all[1..], want.data(), rel, abs);
        if ratio.is_nan() || ratio > 1.0 {
            failures.push(format!(
                "unaligned {} D={cols}: y error {ratio:.2}x at {at}",
                T::DTYPE
            ));
        }
    }
    failures
}

#[test]
fn unaligned_slices_take_the_scalar_path_correctly() {
    let Some(be) = gpu_or_skip("unaligned slices") else {
        return;
    };
    let mut failures = Vec::new();
    for d in Dtypes::compiled() {
        let found: warpnorm::Result<Vec<String>> =
            warpnorm::with_kernel_dtypes!(d, <T, P, O> => Ok(unaligned_for::<T, P, O>(&be)));
        failures.extend(found.unwrap());
    }
    assert_none(failures);
}

/// A case of `cfg` on a [rows, cols] x in `x`.
fn rows_case(cfg: NormConfig, rows: usize, cols: usize, x: DType, salt: u64) -> Case {
    let layout = Layout::rows(rows, cols);
    Case::random(cfg, &[rows, cols], layout, x, false, seed() ^ salt).unwrap()
}

#[test]
fn padded_row_strides_leave_the_padding_untouched() {
    let Some(be) = gpu_or_skip("row strides") else {
        return;
    };
    let s = be.stream();
    let (rows, cols) = (37, 1024);
    for (x_stride, y_stride) in [(1024 + 8, 1024 + 3), (1024 + 1, 2048)] {
        let cfg = Variant::LayerNorm.config(DType::F32, DType::BF16);
        let case = rows_case(cfg, rows, cols, DType::BF16, 7);
        let want = case.reference().unwrap().fwd.y;
        // Scatter the rows into padded buffers (padding is NaN in both).
        let mut x_host = vec![f64::NAN; rows * x_stride];
        for r in 0..rows {
            x_host[r * x_stride..r * x_stride + cols]
                .copy_from_slice(&case.x.data()[r * cols..(r + 1) * cols]);
        }
        let x_padded = Tensor::new([rows * x_stride], DType::BF16, x_host).unwrap();
        let x = upload::<bf16>(s, &x_padded).unwrap();
        let scale = upload::<f32>(s, case.scale.as_ref().unwrap()).unwrap();
        let bias = upload::<f32>(s, case.bias.as_ref().unwrap()).unwrap();
        let mut y = poisoned::<bf16>(s, rows * y_stride).unwrap();
        let layout = Layout::Rows {
            rows,
            cols,
            x_stride,
            y_stride,
        };
        ops::forward::<bf16, f32, bf16>(
            &be,
            s,
            &NormSpec::from_config(&case.cfg),
            layout,
            Forward {
                x: &x,
                scale: Some(&scale),
                bias: Some(&bias),
                mask: None,
                y: &mut y,
                stats: None,
            },
        )
        .unwrap();
        let y_all = download(s, &y).unwrap();
        let mut y_rows = Vec::new();
        for r in 0..rows {
            y_rows.extend_from_slice(&y_all[r * y_stride..r * y_stride + cols]);
            assert!(
                y_all[r * y_stride + cols..(r + 1) * y_stride]
                    .iter()
                    .all(|v| v.is_nan()),
                "row {r}: the padding of y was written"
            );
        }
        let (rel, abs) = tolerance(DType::BF16, max_abs(want.data()), cols);
        let (ratio, at) = error_ratio(&y_rows, want.data(), rel, abs);
        assert!(
            ratio <= 1.0,
            "strides {x_stride}/{y_stride}: error {ratio:.2}x at {at}"
        );
    }
}

#[test]
fn channels_first_layout_matches_the_reference_without_transpose() {
    let Some(be) = gpu_or_skip("channels-first") else {
        return;
    };
    let kernels = Kernels::Gpu(be);
    for (outer, c, inner) in [(3usize, 64usize, 50usize), (2, 7, 1000), (5, 256, 33)] {
        for variant in [
            Variant::LayerNorm,
            Variant::FastVariance,
            Variant::RmsNorm,
            Variant::RmsScaling,
        ] {
            let cfg = if variant == Variant::RmsScaling {
                NormConfig::keras().rms_scaling(true).epsilon(1e-5).axis(1)
            } else {
                let cfg = variant.config(DType::F32, DType::F32);
                cfg.reduction_axes(1).feature_axes(1)
            };
            let layout = Layout::ChannelsFirst {
                outer,
                cols: c,
                inner,
            };
            let shape = [outer, c, inner];
            let case = Case::random(cfg, &shape, layout, DType::F32, false, seed() ^ 11);
            let failures = kernel_matrix::failures(&kernels, &case.unwrap(), None).unwrap();
            assert!(failures.is_empty(), "{shape:?} {variant:?}: {failures:?}");
        }
    }
}

#[test]
fn a_nan_or_inf_row_leaves_the_other_rows_exact() {
    let Some(be) = gpu_or_skip("NaN isolation") else {
        return;
    };
    let kernels = Kernels::Gpu(be);
    for cols in [33usize, 1024, 16384, 70_000] {
        let rows = 9;
        let cfg = Variant::LayerNorm.config(DType::F32, DType::F32);
        let clean = rows_case(cfg, rows, cols, DType::F32, 5);
        let want = clean.reference().unwrap();
        let mut data = clean.x.data().to_vec();
        data[2 * cols + cols / 2] = f64::NAN;
        data[5 * cols] = f64::INFINITY;
        let out = kernels.run(&clean.with_x(data).unwrap(), None).unwrap();
        for r in (0..rows).filter(|r| *r != 2 && *r != 5) {
            let span = r * cols..(r + 1) * cols;
            for (name, got, want) in [
                ("y", &out.y, want.fwd.y.data()),
                ("dx", &out.dx, want.grads.dx.data()),
            ] {
                let (rel, abs) = tolerance(DType::F32, max_abs(want), cols);
                let (ratio, _) = error_ratio(&got[span.clone()], &want[span.clone()], rel, abs);
                assert!(
                    ratio <= 1.0,
                    "D={cols} row {r}: {name} disturbed by another row ({ratio:.2}x)"
                );
            }
        }
    }
}

#[test]
fn two_runs_are_bitwise_identical() {
    let Some(be) = gpu_or_skip("determinism") else {
        return;
    };
    let kernels = Kernels::Gpu(be);
    for cols in [32usize, 1024, 8192, 70_000] {
        let cfg = Variant::LayerNorm.config(DType::F32, DType::BF16);
        let rows = 2001.min((1 << 22) / cols).max(3);
        let case = rows_case(cfg, rows, cols, DType::BF16, 3);
        let a = kernels.run(&case, None).unwrap();
        let b = kernels.run(&case, None).unwrap();
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.y), bits(&b.y), "D={cols}: y differs between runs");
        assert_eq!(
            bits(&a.dx),
            bits(&b.dx),
            "D={cols}: dx differs between runs"
        );
        assert_eq!(
            bits(a.dscale.as_ref().unwrap()),
            bits(b.dscale.as_ref().unwrap()),
            "D={cols}: dscale"
        );
        assert_eq!(
            bits(a.dbias.as_ref().unwrap()),
            bits(b.dbias.as_ref().unwrap()),
            "D={cols}: dbias"
        );
    }
}

#[test]
fn a_tensor_over_2_pow_31_elements_is_normalised_everywhere() {
    let Some(be) = gpu_or_skip("2^31 elements") else {
        return;
    };
    let (rows, cols) = ((1usize << 21) + 3, 1024usize);
    let n = rows * cols;
    assert!(n > 1 << 31);
    let need = n * (2 + 2 + 2 + 2) + (1 << 30);
    if be.info().total_mem < need {
        common::skip(&format!("2^31 elements: needs {need} bytes of GPU memory"));
        return;
    }
    let s = be.stream();
    // A cheap hash of the index: random-looking, reproducible, fast to make on the host.
    let value = |i: usize| -> f64 {
        let h = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
        2.0 + (h as f64 / (1u64 << 24) as f64 - 0.5) * 3.0
    };
    let x_host: Vec<bf16> = (0..n).map(|i| bf16::from_f64(value(i))).collect();
    let x = s.clone_htod(&x_host).unwrap();
    let dy = s.clone_htod(&x_host).unwrap();
    let cfg = NormConfig::flax()
        .use_fast_variance(false)
        .use_scale(false)
        .use_bias(false);
    let spec = NormSpec::from_config(&cfg);
    let layout = Layout::rows(rows, cols);
    let mut y = poisoned::<bf16>(s, n).unwrap();
    let (mut mean, mut rstd) = (
        poisoned::<f32>(s, rows).unwrap(),
        poisoned::<f32>(s, rows).unwrap(),
    );
    ops::forward::<bf16, bf16, bf16>(
        &be,
        s,
        &spec,
        layout,
        Forward {
            x: &x,
            scale: None,
            bias: None,
            mask: None,
            y: &mut y,
            stats: Some(Stats {
                mean: &mut mean,
                rstd: &mut rstd,
            }),
        },
    )
    .unwrap();
    let mut dx = poisoned::<bf16>(s, n).unwrap();
    let mut ws = s
        .alloc_zeros::<f32>(ops::backward_workspace_len(&be, &layout))
        .unwrap();
    ops::backward::<bf16, bf16, bf16>(
        &be,
        s,
        &spec,
        layout,
        Backward {
            x: &x,
            dy: &dy,
            scale: None,
            mask: None,
            mean: &mean,
            rstd: &rstd,
            dx: &mut dx,
            dscale: None,
            dbias: None,
            workspace: &mut ws,
        },
    )
    .unwrap();
    let y_host = s.clone_dtoh(&y).unwrap();
    let dx_host = s.clone_dtoh(&dx).unwrap();
    for r in [0, rows / 2, rows - 2, rows - 1] {
        let span = r * cols..(r + 1) * cols;
        let xr = Tensor::new(
            [1, cols],
            DType::BF16,
            x_host[span.clone()].iter().map(|v| v.to_f64()).collect(),
        )
        .unwrap();
        let fwd = reference::forward(&cfg, &xr, Params::none(), None).unwrap();
        let grads = reference::backward(&cfg, &xr, Params::none(), None, &xr).unwrap();
        let got: Vec<f64> = y_host[span.clone()].iter().map(|v| v.to_f64()).collect();
        let (rel, abs) = tolerance(DType::BF16, max_abs(fwd.y.data()), cols);
        let (ratio, at) = error_ratio(&got, fwd.y.data(), rel, abs);
        assert!(ratio <= 1.0, "row {r}: y error {ratio:.2}x at {at}");
        let got: Vec<f64> = dx_host[span].iter().map(|v| v.to_f64()).collect();
        let (rel, abs) = tolerance(DType::BF16, max_abs(grads.dx.data()), cols);
        let (ratio, at) = error_ratio(&got, grads.dx.data(), rel, abs);
        assert!(ratio <= 1.0, "row {r}: dx error {ratio:.2}x at {at}");
    }
    assert!(
        y_host.iter().all(|v| v.is_finite()),
        "some element of y was not written"
    );
}

#[test]
fn bad_arguments_are_errors_and_write_nothing() {
    let Some(be) = gpu_or_skip("argument errors") else {
        return;
    };
    let s = be.stream();
    let (rows, cols) = (4, 64);
    let x = s.clone_htod(&vec![1.0f32; rows * cols]).unwrap();
    let short = s.clone_htod(&vec![1.0f32; cols - 1]).unwrap();
    let spec = NormSpec::from_config(&NormConfig::flax());
    let mut y = poisoned::<f32>(s, rows * cols).unwrap();
    let untouched = |y: &CudaSlice<f32>| download(s, y).unwrap().iter().all(|v| v.is_nan());

    // An f32 forward of x into y with the given spec, layout and scale.
    let forward = |spec: &NormSpec,
                   layout: Layout,
                   scale: Option<&CudaSlice<f32>>,
                   y: &mut CudaSlice<f32>| {
        let scale = scale.map(|b| b as _);
        ops::forward::<f32, f32, f32>(
            &be,
            s,
            spec,
            layout,
            Forward {
                x: &x,
                scale,
                bias: None,
                mask: None,
                y,
                stats: None,
            },
        )
    };

    let short_scale = forward(&spec, Layout::rows(rows, cols), Some(&short), &mut y);
    assert!(
        matches!(short_scale, Err(Error::Shape { what: "scale", .. })),
        "{short_scale:?}"
    );
    assert!(untouched(&y));

    let long_rows = forward(&spec, Layout::rows(rows + 1, cols), None, &mut y);
    assert!(
        matches!(long_rows, Err(Error::Shape { what: "x", .. })),
        "{long_rows:?}"
    );

    let bad_eps = NormSpec { eps: 0.0, ..spec };
    let r = forward(&bad_eps, Layout::rows(rows, cols), None, &mut y);
    assert!(matches!(r, Err(Error::InvalidConfig(_))), "{r:?}");

    let x16 = s.clone_htod(&vec![f16::ONE; rows * cols]).unwrap();
    let p16 = s.clone_htod(&vec![bf16::ONE; cols]).unwrap();
    let r = ops::forward::<f16, bf16, f32>(
        &be,
        s,
        &spec,
        Layout::rows(rows, cols),
        Forward {
            x: &x16,
            scale: Some(&p16),
            bias: None,
            mask: None,
            y: &mut y,
            stats: None,
        },
    );
    assert!(matches!(r, Err(Error::Unsupported(_))), "{r:?}");

    let narrow = Layout::Rows {
        rows,
        cols,
        x_stride: cols - 1,
        y_stride: cols,
    };
    let r = forward(&spec, narrow, None, &mut y);
    assert!(
        matches!(r, Err(Error::Shape { what: "layout", .. })),
        "{r:?}"
    );
    assert!(untouched(&y), "a failed call wrote into y");

    // Backward with a workspace one element short.
    let mean = s.clone_htod(&vec![0.0f32; rows]).unwrap();
    let mut dx = poisoned::<f32>(s, rows * cols).unwrap();
    let mut ws = s
        .alloc_zeros::<f32>(ops::backward_workspace_len(&be, &Layout::rows(rows, cols)) - 1)
        .unwrap();
    let r = ops::backward::<f32, f32, f32>(
        &be,
        s,
        &spec,
        Layout::rows(rows, cols),
        Backward {
            x: &x,
            dy: &x,
            scale: None,
            mask: None,
            mean: &mean,
            rstd: &mean,
            dx: &mut dx,
            dscale: None,
            dbias: None,
            workspace: &mut ws,
        },
    );
    assert!(
        matches!(
            r,
            Err(Error::Shape {
                what: "workspace",
                ..
            })
        ),
        "{r:?}"
    );
    assert!(untouched(&dx), "a failed backward wrote into dx");
}
