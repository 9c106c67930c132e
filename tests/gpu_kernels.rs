//! The CUDA kernels against the f64 reference: every dtype combination x every variant x
//! row lengths from 1 to 2^20, plus layouts, isolation, determinism, large tensors and
//! argument errors. Each test prints `SKIP: <reason>` and passes without a GPU.

mod common;

use std::sync::Arc;

use common::{
    condition, config, error_ratio, gpu_or_skip, max_abs, random_tensor, tolerance,
    tolerance_kappa, Variant, VARIANTS,
};
use cudarc::driver::{CudaSlice, CudaStream};
use half::{bf16, f16};
use warpnorm::cuda::{CudaBackend, Dtypes};
use warpnorm::ops::{self, Backward, Forward, Layout, NormSpec, Stats};
use warpnorm::reference::{self, Params};
use warpnorm::{DType, Element, Error, NormConfig, Tensor};

const LENGTHS: [usize; 23] = [
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
    1 << 20,
];

/// Host inputs of one case and the reference results.
struct Problem {
    cfg: NormConfig,
    rows: usize,
    cols: usize,
    x: Tensor,
    scale: Option<Tensor>,
    bias: Option<Tensor>,
    mask: Option<Vec<bool>>,
    dy: Tensor,
    fwd: reference::Forward,
    grads: reference::Grads,
}

impl Problem {
    fn new(
        cfg: NormConfig,
        rows: usize,
        cols: usize,
        x_dtype: DType,
        masked: bool,
        salt: u64,
    ) -> Problem {
        let p = cfg.param_dtype();
        let x = random_tensor(&[rows, cols], x_dtype, 2.0, 1.5, salt);
        let scale = cfg
            .has_scale()
            .then(|| random_tensor(&[cols], p, 1.0, 0.5, salt + 1));
        let bias = cfg
            .has_bias()
            .then(|| random_tensor(&[cols], p, 0.0, 0.5, salt + 2));
        let dy = random_tensor(&[rows, cols], cfg.output_dtype(x_dtype), 0.0, 1.0, salt + 3);
        // About 70% of the elements selected, and never an empty row.
        let mask = masked.then(|| {
            let coin = random_tensor(&[rows, cols], DType::F32, 0.0, 1.0, salt + 4);
            coin.data()
                .iter()
                .enumerate()
                .map(|(i, &c)| i % cols == 0 || c > -0.5)
                .collect::<Vec<bool>>()
        });
        let params = Params::new(scale.as_ref(), bias.as_ref());
        let fwd = reference::forward(&cfg, &x, params, mask.as_deref()).unwrap();
        let grads = reference::backward(&cfg, &x, params, mask.as_deref(), &dy).unwrap();
        Problem {
            cfg,
            rows,
            cols,
            x,
            scale,
            bias,
            mask,
            dy,
            fwd,
            grads,
        }
    }
}

fn upload<T: Element>(s: &Arc<CudaStream>, t: &Tensor) -> CudaSlice<T> {
    s.clone_htod(&t.data().iter().map(|&v| T::from_f64(v)).collect::<Vec<T>>())
        .unwrap()
}

/// A buffer filled with NaN: any element a kernel forgets to write stays NaN and fails.
fn poisoned<T: Element>(s: &Arc<CudaStream>, n: usize) -> CudaSlice<T> {
    s.clone_htod(&vec![T::from_f64(f64::NAN); n]).unwrap()
}

fn download<T: Element>(s: &Arc<CudaStream>, b: &CudaSlice<T>) -> Vec<f64> {
    s.clone_dtoh(b)
        .unwrap()
        .iter()
        .map(|v| v.to_f64())
        .collect()
}

/// Device results of one forward + backward.
struct Outputs {
    y: Vec<f64>,
    mean: Vec<f64>,
    rstd: Vec<f64>,
    dx: Vec<f64>,
    dscale: Option<Vec<f64>>,
    dbias: Option<Vec<f64>>,
}

fn run_device<T: Element, P: Element, O: Element>(
    be: &CudaBackend,
    pb: &Problem,
    layout: Layout,
) -> Outputs {
    let s = be.stream();
    let spec = NormSpec::from_config(&pb.cfg);
    let n = pb.rows * pb.cols;
    let x = upload::<T>(s, &pb.x);
    let scale = pb.scale.as_ref().map(|t| upload::<P>(s, t));
    let bias = pb.bias.as_ref().map(|t| upload::<P>(s, t));
    let mask = pb.mask.as_ref().map(|m| {
        s.clone_htod(&m.iter().map(|&b| b as u8).collect::<Vec<u8>>())
            .unwrap()
    });
    let dy = upload::<O>(s, &pb.dy);
    let rows = layout.num_rows();
    let (mut y, mut mean, mut rstd) = (
        poisoned::<O>(s, n),
        poisoned::<f32>(s, rows),
        poisoned::<f32>(s, rows),
    );
    ops::forward::<T, P, O>(
        be,
        s,
        &spec,
        layout,
        Forward {
            x: &x,
            scale: scale.as_ref().map(|b| b as _),
            bias: bias.as_ref().map(|b| b as _),
            mask: mask.as_ref().map(|b| b as _),
            y: &mut y,
            stats: Some(Stats {
                mean: &mut mean,
                rstd: &mut rstd,
            }),
        },
    )
    .unwrap();
    let mut dx = poisoned::<T>(s, n);
    let mut dscale = scale.as_ref().map(|_| poisoned::<P>(s, pb.cols));
    let mut dbias = bias.as_ref().map(|_| poisoned::<P>(s, pb.cols));
    let mut workspace = poisoned::<f32>(s, ops::backward_workspace_len(be, &layout));
    ops::backward::<T, P, O>(
        be,
        s,
        &spec,
        layout,
        Backward {
            x: &x,
            dy: &dy,
            scale: scale.as_ref().map(|b| b as _),
            mask: mask.as_ref().map(|b| b as _),
            mean: &mean,
            rstd: &rstd,
            dx: &mut dx,
            dscale: dscale.as_mut().map(|b| b as _),
            dbias: dbias.as_mut().map(|b| b as _),
            workspace: &mut workspace,
        },
    )
    .unwrap();
    Outputs {
        y: download(s, &y),
        mean: download(s, &mean),
        rstd: download(s, &rstd),
        dx: download(s, &dx),
        dscale: dscale.as_ref().map(|b| download(s, b)),
        dbias: dbias.as_ref().map(|b| download(s, b)),
    }
}

/// Compares device results with the reference; returns a description of each failure.
fn check(pb: &Problem, out: &Outputs, o: DType, t: DType, p: DType) -> Vec<String> {
    let mut failures = Vec::new();
    let kappa = condition(&pb.fwd.mean, &pb.fwd.rstd, pb.cfg.fast_variance());
    let mut expect = |name: &str, got: &[f64], want: &[f64], dtype: DType, scale: f64| {
        let (rel, abs) = tolerance_kappa(dtype, scale, pb.cols, kappa);
        let (ratio, at) = error_ratio(got, want, rel, abs);
        if ratio.is_nan() || ratio > 1.0 {
            failures.push(format!(
                "{name}: error {ratio:.2}x the tolerance at {at} (got {}, want {})",
                got[at], want[at]
            ));
        }
    };
    // keras rounds y through x's dtype first (see tests/emulated_kernels.rs).
    let y_dtype = pb.cfg.coarsest_y_dtype(t);
    expect(
        "y",
        &out.y,
        pb.fwd.y.data(),
        y_dtype,
        max_abs(pb.fwd.y.data()),
    );
    expect(
        "mean",
        &out.mean,
        &pb.fwd.mean,
        DType::F32,
        max_abs(&pb.fwd.mean),
    );
    expect(
        "rstd",
        &out.rstd,
        &pb.fwd.rstd,
        DType::F32,
        max_abs(&pb.fwd.rstd),
    );
    // dx is a difference of terms as large as rstd * |dy * scale|: scale its absolute
    // tolerance by the largest reference value.
    expect(
        "dx",
        &out.dx,
        pb.grads.dx.data(),
        t,
        max_abs(pb.grads.dx.data()),
    );
    for (name, got, want) in [
        ("dscale", &out.dscale, &pb.grads.dscale),
        ("dbias", &out.dbias, &pb.grads.dbias),
    ] {
        match (got, want) {
            (Some(g), Some(w)) => expect(
                name,
                g,
                w.data(),
                p,
                max_abs(w.data()) * (pb.rows as f64).sqrt(),
            ),
            (None, None) => {}
            _ => expect(name, &[f64::NAN], &[0.0], p, 1.0), // present on one side only
        }
    }
    failures
}

/// Runs `$f::<T, P, O>` for every dtype combination the kernels are compiled for.
macro_rules! for_each_combo {
    ($f:ident($($arg:expr),*)) => {{
        let mut all = Vec::new();
        for d in Dtypes::compiled() {
            let failures: warpnorm::Result<Vec<String>> =
                warpnorm::with_kernel_dtypes!(d, <T, P, O> => Ok($f::<T, P, O>($($arg),*)));
            all.extend(failures.unwrap());
        }
        all
    }};
}

fn rows_for(cols: usize) -> usize {
    // Odd counts leave partial CTAs; about 2^16 elements a case keeps the f64 reference quick.
    ((1usize << 16) / cols).clamp(3, 67) | 1
}

fn matrix_for<T: Element, P: Element, O: Element>(
    be: &CudaBackend,
    lengths: &[usize],
) -> Vec<String> {
    let mut failures = Vec::new();
    for &cols in lengths {
        for (vi, &variant) in VARIANTS.iter().enumerate() {
            let cfg = config(variant, P::DTYPE, O::DTYPE);
            if cfg.validate().is_err() {
                continue; // e.g. keras has no policy with f16 variables and f32 outputs
            }
            let salt = (cols * 31 + vi) as u64;
            let pb = Problem::new(
                cfg,
                rows_for(cols),
                cols,
                T::DTYPE,
                variant == Variant::Masked,
                salt,
            );
            let out = run_device::<T, P, O>(be, &pb, Layout::rows(pb.rows, cols));
            for f in check(&pb, &out, O::DTYPE, T::DTYPE, P::DTYPE) {
                failures.push(format!(
                    "x {} params {} y {} {variant:?} shape {}x{cols}: {f}",
                    T::DTYPE,
                    P::DTYPE,
                    O::DTYPE,
                    pb.rows
                ));
            }
        }
    }
    failures
}

fn assert_no_failures(failures: Vec<String>) {
    for f in &failures {
        println!("FAIL {f}");
    }
    assert!(
        failures.is_empty(),
        "{} failing cases (listed above)",
        failures.len()
    );
}

#[test]
fn every_dtype_variant_and_length_matches_the_reference() {
    let Some(be) = gpu_or_skip("kernel matrix") else {
        return;
    };
    // WARPNORM_QUICK (set by scripts/sanitize.sh and the smoke stage of
    // scripts/gpu_checks.sh) keeps one length per tier.
    let quick = [1, 33, 1000, 1025, 8192, 70_000];
    let lengths: &[usize] = if std::env::var_os("WARPNORM_QUICK").is_some() {
        &quick
    } else {
        &LENGTHS
    };
    assert_no_failures(for_each_combo!(matrix_for(&be, lengths)));
}

/// x, y, dx starting one element past a 16-byte boundary: the scalar path.
fn unaligned_for<T: Element, P: Element, O: Element>(be: &CudaBackend) -> Vec<String> {
    let s = be.stream();
    let mut failures = Vec::new();
    for cols in [8usize, 768, 1000, 4096, 70_000] {
        let rows = rows_for(cols);
        let cfg = config(Variant::LayerNorm, P::DTYPE, O::DTYPE);
        let pb = Problem::new(cfg, rows, cols, T::DTYPE, false, cols as u64);
        let n = rows * cols;
        let mut x_host = vec![0.0];
        x_host.extend_from_slice(pb.x.data());
        let x_buf = upload::<T>(s, &Tensor::new([n + 1], T::DTYPE, x_host).unwrap());
        let scale = upload::<P>(s, pb.scale.as_ref().unwrap());
        let bias = upload::<P>(s, pb.bias.as_ref().unwrap());
        let mut y_buf = poisoned::<O>(s, n + 1);
        let (mut mean, mut rstd) = (poisoned::<f32>(s, rows), poisoned::<f32>(s, rows));
        let x = x_buf.slice(1..);
        let mut y = y_buf.slice_mut(1..);
        ops::forward::<T, P, O>(
            be,
            s,
            &NormSpec::from_config(&pb.cfg),
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
        let y_all = download(s, &y_buf);
        if !y_all[0].is_nan() {
            failures.push(format!("D={cols}: wrote before the start of y"));
        }
        let (rel, abs) = tolerance(O::DTYPE, max_abs(pb.fwd.y.data()), cols);
        let (ratio, at) = error_ratio(&y_all[1..], pb.fwd.y.data(), rel, abs);
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
    assert_no_failures(for_each_combo!(unaligned_for(&be)));
}

#[test]
fn padded_row_strides_leave_the_padding_untouched() {
    let Some(be) = gpu_or_skip("row strides") else {
        return;
    };
    let s = be.stream();
    let (rows, cols) = (37, 1024);
    for (x_stride, y_stride) in [(1024 + 8, 1024 + 3), (1024 + 1, 2048)] {
        let cfg = config(Variant::LayerNorm, DType::F32, DType::BF16);
        let pb = Problem::new(cfg, rows, cols, DType::BF16, false, 7);
        // Scatter the rows into padded buffers (padding is NaN in both).
        let mut x_host = vec![f64::NAN; rows * x_stride];
        for r in 0..rows {
            x_host[r * x_stride..r * x_stride + cols]
                .copy_from_slice(&pb.x.data()[r * cols..(r + 1) * cols]);
        }
        let x = upload::<bf16>(
            s,
            &Tensor::new([rows * x_stride], DType::BF16, x_host).unwrap(),
        );
        let scale = upload::<f32>(s, pb.scale.as_ref().unwrap());
        let bias = upload::<f32>(s, pb.bias.as_ref().unwrap());
        let mut y = poisoned::<bf16>(s, rows * y_stride);
        let layout = Layout::Rows {
            rows,
            cols,
            x_stride,
            y_stride,
        };
        ops::forward::<bf16, f32, bf16>(
            &be,
            s,
            &NormSpec::from_config(&pb.cfg),
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
        let y_all = download(s, &y);
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
        let (rel, abs) = tolerance(DType::BF16, max_abs(pb.fwd.y.data()), cols);
        let (ratio, at) = error_ratio(&y_rows, pb.fwd.y.data(), rel, abs);
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
    for (outer, c, inner) in [(3usize, 64usize, 50usize), (2, 7, 1000), (5, 256, 33)] {
        for variant in [
            Variant::LayerNorm,
            Variant::FastVariance,
            Variant::RmsNorm,
            Variant::RmsScaling,
        ] {
            let cfg = config(variant, DType::F32, DType::F32)
                .reduction_axes(1)
                .feature_axes(1);
            let cfg = if variant == Variant::RmsScaling {
                NormConfig::keras().rms_scaling(true).epsilon(1e-5).axis(1)
            } else {
                cfg
            };
            let shape = [outer, c, inner];
            let x = random_tensor(&shape, DType::F32, 2.0, 1.5, 11);
            let scale = cfg
                .has_scale()
                .then(|| random_tensor(&[c], DType::F32, 1.0, 0.5, 12));
            let bias = cfg
                .has_bias()
                .then(|| random_tensor(&[c], DType::F32, 0.0, 0.5, 13));
            let dy = random_tensor(&shape, DType::F32, 0.0, 1.0, 14);
            let params = Params::new(scale.as_ref(), bias.as_ref());
            let fwd = reference::forward(&cfg, &x, params, None).unwrap();
            let grads = reference::backward(&cfg, &x, params, None, &dy).unwrap();
            let pb = Problem {
                cfg,
                rows: outer * inner,
                cols: c,
                x,
                scale,
                bias,
                mask: None,
                dy,
                fwd,
                grads,
            };
            let out = run_device::<f32, f32, f32>(
                &be,
                &pb,
                Layout::ChannelsFirst {
                    outer,
                    cols: c,
                    inner,
                },
            );
            let failures = check(&pb, &out, DType::F32, DType::F32, DType::F32);
            assert!(
                failures.is_empty(),
                "[{outer},{c},{inner}] {variant:?}: {failures:?}"
            );
        }
    }
}

#[test]
fn a_nan_or_inf_row_leaves_the_other_rows_exact() {
    let Some(be) = gpu_or_skip("NaN isolation") else {
        return;
    };
    for cols in [33usize, 1024, 16384, 70_000] {
        let rows = 9;
        let cfg = config(Variant::LayerNorm, DType::F32, DType::F32);
        let clean = Problem::new(cfg.clone(), rows, cols, DType::F32, false, 5);
        let mut data = clean.x.data().to_vec();
        data[2 * cols + cols / 2] = f64::NAN;
        data[5 * cols] = f64::INFINITY;
        let mut pb = Problem::new(cfg, rows, cols, DType::F32, false, 5);
        pb.x = Tensor::new([rows, cols], DType::F32, data).unwrap();
        let out = run_device::<f32, f32, f32>(&be, &pb, Layout::rows(rows, cols));
        for r in (0..rows).filter(|r| *r != 2 && *r != 5) {
            let span = r * cols..(r + 1) * cols;
            let (rel, abs) = tolerance(DType::F32, max_abs(clean.fwd.y.data()), cols);
            let (ratio, _) = error_ratio(
                &out.y[span.clone()],
                &clean.fwd.y.data()[span.clone()],
                rel,
                abs,
            );
            assert!(
                ratio <= 1.0,
                "D={cols} row {r}: y disturbed by another row ({ratio:.2}x)"
            );
            let (rel, abs) = tolerance(DType::F32, max_abs(clean.grads.dx.data()), cols);
            let (ratio, _) = error_ratio(
                &out.dx[span.clone()],
                &clean.grads.dx.data()[span],
                rel,
                abs,
            );
            assert!(
                ratio <= 1.0,
                "D={cols} row {r}: dx disturbed by another row ({ratio:.2}x)"
            );
        }
    }
}

#[test]
fn two_runs_are_bitwise_identical() {
    let Some(be) = gpu_or_skip("determinism") else {
        return;
    };
    for cols in [32usize, 1024, 8192, 70_000] {
        let cfg = config(Variant::LayerNorm, DType::F32, DType::BF16);
        let pb = Problem::new(
            cfg,
            2001.min((1 << 22) / cols).max(3),
            cols,
            DType::BF16,
            false,
            3,
        );
        let layout = Layout::rows(pb.rows, cols);
        let a = run_device::<bf16, f32, bf16>(&be, &pb, layout);
        let b = run_device::<bf16, f32, bf16>(&be, &pb, layout);
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
    let mut y = poisoned::<bf16>(s, n);
    let (mut mean, mut rstd) = (poisoned::<f32>(s, rows), poisoned::<f32>(s, rows));
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
    let mut dx = poisoned::<bf16>(s, n);
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
    let mut y = poisoned::<f32>(s, rows * cols);
    let untouched = |y: &CudaSlice<f32>| download(s, y).iter().all(|v| v.is_nan());

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
    let mut dx = poisoned::<f32>(s, rows * cols);
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
