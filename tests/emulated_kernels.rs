//! The CUDA kernels, run by the CPU emulation (feature `emulator`), against the f64
//! reference: every tier of the row-length selection, every variant, the scalar path,
//! strided and channels-first layouts, row isolation and determinism. The same checks as
//! tests/gpu_kernels.rs, on the machines that have no GPU.
#![cfg(feature = "emulator")]

mod common;

use common::{
    condition, config, error_ratio, max_abs, random_tensor, tolerance, tolerance_kappa, Variant,
    VARIANTS,
};
use half::{bf16, f16};
use warpnorm::cuda::emulator::{self, HostBackward, HostForward};
use warpnorm::ops::{KernelGeneration, Layout, NormSpec};
use warpnorm::reference::{self, Params};
use warpnorm::{DType, Element, NormConfig, Tensor};

/// One length per tier boundary of the selection (sub-warp, warp, CTA registers, CTA
/// with a shared-memory cache, uncached), plus odd lengths that force the scalar path.
const LENGTHS: [usize; 18] = [
    1, 2, 7, 31, 33, 128, 255, 768, 1000, 1025, 2048, 4096, 5120, 8191, 8192, 12288, 16384, 40960,
];

fn host<T: Element>(t: &Tensor) -> Vec<T> {
    t.data().iter().map(|&v| T::from_f64(v)).collect()
}

fn wide<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

fn nan<T: Element>(n: usize) -> Vec<T> {
    vec![T::from_f64(f64::NAN); n]
}

/// Results of an emulated forward + backward.
struct Outputs {
    y: Vec<f64>,
    mean: Vec<f64>,
    rstd: Vec<f64>,
    dx: Vec<f64>,
    dscale: Option<Vec<f64>>,
    dbias: Option<Vec<f64>>,
}

struct Case {
    cfg: NormConfig,
    shape: Vec<usize>,
    layout: Layout,
    x: Tensor,
    scale: Option<Tensor>,
    bias: Option<Tensor>,
    mask: Option<Vec<bool>>,
    dy: Tensor,
}

impl Case {
    fn new(
        cfg: NormConfig,
        shape: &[usize],
        layout: Layout,
        x: DType,
        masked: bool,
        salt: u64,
    ) -> Case {
        let param_shape = cfg.resolve(shape).unwrap().param_shape;
        let p = cfg.param_dtype();
        let n: usize = shape.iter().product();
        let cols = layout.cols();
        Case {
            scale: cfg
                .has_scale()
                .then(|| random_tensor(&param_shape, p, 1.0, 0.5, salt + 1)),
            bias: cfg
                .has_bias()
                .then(|| random_tensor(&param_shape, p, 0.0, 0.5, salt + 2)),
            dy: random_tensor(shape, cfg.output_dtype(x), 0.0, 1.0, salt + 3),
            mask: masked.then(|| {
                let coin = random_tensor(&[n], DType::F32, 0.0, 1.0, salt + 4);
                (0..n)
                    .map(|i| i % cols == 0 || coin.data()[i] > -0.5)
                    .collect()
            }),
            x: random_tensor(shape, x, 2.0, 1.5, salt),
            cfg,
            shape: shape.to_vec(),
            layout,
        }
    }

    fn reference(&self) -> (reference::Forward, reference::Grads) {
        let p = Params::new(self.scale.as_ref(), self.bias.as_ref());
        let m = self.mask.as_deref();
        (
            reference::forward(&self.cfg, &self.x, p, m).unwrap(),
            reference::backward(&self.cfg, &self.x, p, m, &self.dy).unwrap(),
        )
    }

    fn emulate<T: Element, P: Element, O: Element>(&self) -> Outputs {
        self.emulate_with::<T, P, O>(KernelGeneration::V1)
    }

    fn emulate_with<T: Element, P: Element, O: Element>(
        &self,
        generation: KernelGeneration,
    ) -> Outputs {
        let spec = NormSpec::from_config(&self.cfg).with_kernels(generation);
        let (rows, n) = (self.layout.num_rows(), self.x.numel());
        let x: Vec<T> = host(&self.x);
        let scale: Option<Vec<P>> = self.scale.as_ref().map(host);
        let bias: Option<Vec<P>> = self.bias.as_ref().map(host);
        let mask: Option<Vec<u8>> = self
            .mask
            .as_ref()
            .map(|m| m.iter().map(|&b| b as u8).collect());
        let (mut y, mut mean, mut rstd) = (nan::<O>(n), nan::<f32>(rows), nan::<f32>(rows));
        emulator::forward::<T, P, O>(
            &spec,
            self.layout,
            HostForward {
                x: &x,
                scale: scale.as_deref(),
                bias: bias.as_deref(),
                mask: mask.as_deref(),
                y: &mut y,
                stats: Some((&mut mean, &mut rstd)),
            },
        )
        .unwrap();
        let dy: Vec<O> = host(&self.dy);
        let mut dx = nan::<T>(n);
        let mut dscale = scale.as_ref().map(|s| nan::<P>(s.len()));
        let mut dbias = bias.as_ref().map(|b| nan::<P>(b.len()));
        let mut ws = nan::<f32>(emulator::backward_workspace_len(&self.layout));
        emulator::backward::<T, P, O>(
            &spec,
            self.layout,
            HostBackward {
                x: &x,
                dy: &dy,
                scale: scale.as_deref(),
                mask: mask.as_deref(),
                mean: &mean,
                rstd: &rstd,
                dx: &mut dx,
                dscale: dscale.as_deref_mut(),
                dbias: dbias.as_deref_mut(),
                workspace: &mut ws,
            },
        )
        .unwrap();
        Outputs {
            y: wide(&y),
            mean: wide(&mean),
            rstd: wide(&rstd),
            dx: wide(&dx),
            dscale: dscale.as_deref().map(wide),
            dbias: dbias.as_deref().map(wide),
        }
    }

    /// Every output against the reference; a description of each failure.
    fn check(&self, out: &Outputs, x: DType, p: DType, o: DType) -> Vec<String> {
        let (fwd, grads) = self.reference();
        let cols = self.layout.cols();
        let rows = self.layout.num_rows();
        let kappa = condition(&fwd.mean, &fwd.rstd, self.cfg.fast_variance());
        let mut failures = Vec::new();
        let mut expect = |name: &str, got: &[f64], want: &[f64], dtype: DType, n: usize| {
            let (rel, abs) = tolerance_kappa(dtype, max_abs(want), n, kappa);
            let (ratio, at) = error_ratio(got, want, rel, abs);
            if ratio.is_nan() || ratio > 1.0 {
                failures.push(format!(
                    "{name}: {ratio:.2}x the tolerance at {at} (got {}, want {})",
                    got[at], want[at]
                ));
            }
        };
        // keras rounds y through x's dtype first: a kernel's f32 value a hair from the
        // reference's can round to the neighbouring value of x's dtype.
        let y_dtype = self.cfg.coarsest_y_dtype(x);
        debug_assert!(y_dtype == o || y_dtype == x);
        expect("y", &out.y, fwd.y.data(), y_dtype, cols);
        expect("mean", &out.mean, &fwd.mean, DType::F32, cols);
        expect("rstd", &out.rstd, &fwd.rstd, DType::F32, cols);
        expect("dx", &out.dx, grads.dx.data(), x, cols);
        for (name, got, want) in [
            ("dscale", &out.dscale, &grads.dscale),
            ("dbias", &out.dbias, &grads.dbias),
        ] {
            match (got, want) {
                (Some(g), Some(w)) => expect(name, g, w.data(), p, rows),
                (None, None) => {}
                _ => expect(name, &[f64::NAN], &[0.0], p, 1),
            }
        }
        failures
            .into_iter()
            .map(|f| format!("{:?} {:?}: {f}", self.shape, self.layout))
            .collect()
    }
}

fn rows_for(cols: usize) -> usize {
    ((1usize << 13) / cols).clamp(3, 33) | 1
}

fn matrix<T: Element, P: Element, O: Element>() -> Vec<String> {
    matrix_on::<T, P, O>(&LENGTHS, KernelGeneration::V1)
}

fn matrix_on<T: Element, P: Element, O: Element>(
    lengths: &[usize],
    generation: KernelGeneration,
) -> Vec<String> {
    assert!(emulator::supports::<T, P, O>());
    let mut failures = Vec::new();
    for &cols in lengths {
        for (vi, &v) in VARIANTS.iter().enumerate() {
            let rows = rows_for(cols);
            let cfg = config(v, P::DTYPE, O::DTYPE);
            if cfg.validate().is_err() {
                continue; // e.g. keras has no policy with f16 variables and f32 outputs
            }
            let case = Case::new(
                cfg,
                &[rows, cols],
                Layout::rows(rows, cols),
                T::DTYPE,
                v == Variant::Masked,
                (cols * 8 + vi) as u64,
            );
            let out = case.emulate_with::<T, P, O>(generation);
            for f in case.check(&out, T::DTYPE, P::DTYPE, O::DTYPE) {
                failures.push(format!(
                    "{generation} {} {} {} {v:?}: {f}",
                    T::DTYPE,
                    P::DTYPE,
                    O::DTYPE
                ));
            }
        }
    }
    failures
}

fn assert_none(failures: Vec<String>) {
    for f in &failures {
        eprintln!("FAIL {f}");
    }
    assert!(
        failures.is_empty(),
        "{} failures (listed above)",
        failures.len()
    );
}

#[test]
fn f32_every_variant_and_tier() {
    assert_none(matrix::<f32, f32, f32>());
}

#[test]
fn bf16_with_f32_params_every_variant_and_tier() {
    assert_none(matrix::<bf16, f32, bf16>());
}

#[test]
fn f16_with_f32_output_every_variant_and_tier() {
    assert_none(matrix::<f16, f16, f32>());
}

/// One length per kernel of the selection: register tiers (sub-warp, warp, CTA), both CTA
/// kernels with and without their shared-memory cache, and the scalar path.
const KERNEL_LENGTHS: [usize; 6] = [64, 1000, 4096, 12288, 40960, 1025];

/// Parameters and outputs are each x's dtype or f32, a branch inside each kernel: every
/// combination on every kernel. keras `rms_scaling` with 16-bit x and f32 parameters and
/// output checks the rounding of y (and dy) through x's dtype, which keras applies and the
/// kernels reproduce (`NormSpec::round_output_to_x`).
#[test]
fn every_dtype_combination_on_every_kernel() {
    use half::{bf16 as B, f16 as H};
    let mut failures = Vec::new();
    failures.extend(matrix_on::<H, H, H>(&KERNEL_LENGTHS, KernelGeneration::V1));
    failures.extend(matrix_on::<H, f32, H>(
        &KERNEL_LENGTHS,
        KernelGeneration::V1,
    ));
    failures.extend(matrix_on::<H, f32, f32>(
        &KERNEL_LENGTHS,
        KernelGeneration::V1,
    ));
    failures.extend(matrix_on::<B, B, B>(&KERNEL_LENGTHS, KernelGeneration::V1));
    failures.extend(matrix_on::<B, B, f32>(
        &KERNEL_LENGTHS,
        KernelGeneration::V1,
    ));
    failures.extend(matrix_on::<B, f32, f32>(
        &KERNEL_LENGTHS,
        KernelGeneration::V1,
    ));
    assert_none(failures);
}

/// Kernels v2 (the one-launch finalize, the forward grid of whole waves) against the
/// reference on every kernel and variant.
#[test]
fn v2_every_variant_on_every_kernel() {
    let mut failures = matrix_on::<f32, f32, f32>(&KERNEL_LENGTHS, KernelGeneration::V2);
    failures.extend(matrix_on::<bf16, f32, bf16>(
        &KERNEL_LENGTHS,
        KernelGeneration::V2,
    ));
    failures.extend(matrix_on::<f16, f16, f32>(
        &KERNEL_LENGTHS,
        KernelGeneration::V2,
    ));
    assert_none(failures);
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
            let cfg = config(v, DType::F32, DType::F32)
                .reduction_axes(1)
                .feature_axes(1);
            let layout = Layout::ChannelsFirst {
                outer,
                cols: c,
                inner,
            };
            let case = Case::new(cfg, &[outer, c, inner], layout, DType::F32, false, c as u64);
            let out = case.emulate::<f32, f32, f32>();
            failures.extend(case.check(&out, DType::F32, DType::F32, DType::F32));
        }
    }
    assert_none(failures);
}

#[test]
fn unaligned_slices_and_padded_strides_use_the_scalar_path() {
    let mut failures = Vec::new();
    for cols in [768usize, 4096, 40960] {
        let rows = 5;
        let cfg = config(Variant::LayerNorm, DType::F32, DType::BF16);
        let case = Case::new(
            cfg,
            &[rows, cols],
            Layout::rows(rows, cols),
            DType::BF16,
            false,
            77,
        );
        let (fwd, _) = case.reference();
        let spec = NormSpec::from_config(&case.cfg);
        let scale: Vec<f32> = host(case.scale.as_ref().unwrap());
        let bias: Vec<f32> = host(case.bias.as_ref().unwrap());
        // x one element past an aligned start; y rows padded by 3 (NaN) elements.
        let y_stride = cols + 3;
        let mut x: Vec<bf16> = vec![bf16::ZERO];
        x.extend(host::<bf16>(&case.x));
        let mut y = nan::<bf16>(rows * y_stride);
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
        let y = wide(&y);
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
        let (rel, abs) = tolerance(DType::BF16, max_abs(fwd.y.data()), cols);
        let (ratio, at) = error_ratio(&rows_only, fwd.y.data(), rel, abs);
        if ratio.is_nan() || ratio > 1.0 {
            failures.push(format!("D={cols}: y {ratio:.2}x the tolerance at {at}"));
        }
    }
    assert_none(failures);
}

#[test]
fn a_nan_row_leaves_the_other_rows_exact() {
    for cols in [33usize, 1024, 16384, 40960] {
        let rows = 7;
        let cfg = config(Variant::LayerNorm, DType::F32, DType::F32);
        let clean = Case::new(
            cfg.clone(),
            &[rows, cols],
            Layout::rows(rows, cols),
            DType::F32,
            false,
            5,
        );
        let (fwd, _) = clean.reference();
        let mut dirty = Case::new(
            cfg,
            &[rows, cols],
            Layout::rows(rows, cols),
            DType::F32,
            false,
            5,
        );
        let mut data = clean.x.data().to_vec();
        data[2 * cols + cols / 2] = f64::NAN;
        data[4 * cols] = f64::INFINITY;
        dirty.x = Tensor::new([rows, cols], DType::F32, data).unwrap();
        let out = dirty.emulate::<f32, f32, f32>();
        for r in [0, 1, 3, 5, 6] {
            let span = r * cols..(r + 1) * cols;
            let (rel, abs) = tolerance(DType::F32, max_abs(fwd.y.data()), cols);
            let (ratio, _) = error_ratio(&out.y[span.clone()], &fwd.y.data()[span], rel, abs);
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
            let layout = Layout::rows(rows, cols);
            let clean = Case::new(cfg.clone(), &[rows, cols], layout, DType::F32, true, 9);
            let mask = clean.mask.clone().unwrap();
            // Every other element the mask leaves out becomes NaN.
            let nan_at: Vec<bool> = mask
                .iter()
                .scan(false, |odd, &m| {
                    *odd ^= !m;
                    Some(!m && *odd)
                })
                .collect();
            let mut padded = Case::new(cfg.clone(), &[rows, cols], layout, DType::F32, true, 9);
            let data = clean.x.data().iter().zip(&nan_at);
            let data = data.map(|(&x, &n)| if n { f64::NAN } else { x }).collect();
            padded.x = Tensor::new([rows, cols], DType::F32, data).unwrap();
            let (a, b) = (
                clean.emulate::<f32, f32, f32>(),
                padded.emulate::<f32, f32, f32>(),
            );
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
            let layout = Layout::rows(rows, cols);
            let mut case = Case::new(cfg.clone(), &[rows, cols], layout, DType::F32, true, 4);
            let mut data = case.x.data().to_vec();
            data[cols + 3] = f64::NAN; // row 1 holds a NaN (selected: column 0..3 of row 1)
            case.x = Tensor::new([rows, cols], DType::F32, data).unwrap();
            let mut mask = case.mask.clone().unwrap();
            mask[cols + 3] = true;
            mask[2 * cols..].iter_mut().for_each(|m| *m = false); // row 2: nothing selected
            case.mask = Some(mask);
            let out = case.emulate::<f32, f32, f32>();
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

#[test]
fn two_runs_are_bitwise_identical() {
    for cols in [32usize, 1024, 12288] {
        let rows = 9;
        let cfg = config(Variant::LayerNorm, DType::F32, DType::BF16);
        let case = Case::new(
            cfg,
            &[rows, cols],
            Layout::rows(rows, cols),
            DType::BF16,
            false,
            9,
        );
        for generation in KernelGeneration::ALL {
            let a = case.emulate_with::<bf16, f32, bf16>(generation);
            let b = case.emulate_with::<bf16, f32, bf16>(generation);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a.y), bits(&b.y));
            assert_eq!(bits(&a.dx), bits(&b.dx));
            assert_eq!(
                bits(a.dscale.as_ref().unwrap()),
                bits(b.dscale.as_ref().unwrap())
            );
            assert_eq!(
                bits(a.dbias.as_ref().unwrap()),
                bits(b.dbias.as_ref().unwrap())
            );
        }
    }
}
