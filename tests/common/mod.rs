//! Helpers shared by the GPU test files.
#![allow(dead_code)]

use std::sync::Arc;

use warpnorm::cuda::CudaBackend;
use warpnorm::rng::Rng;
use warpnorm::{DType, NormConfig, Tensor};

/// The first GPU, or `None` after printing `SKIP: <reason>` (no driver, no device).
pub fn gpu_or_skip(test: &str) -> Option<Arc<CudaBackend>> {
    match CudaBackend::new(0) {
        Ok(be) => Some(be),
        Err(e) => {
            skip(&format!("{test}: {e}"));
            None
        }
    }
}

/// Prints `SKIP: <reason>` straight to stderr, past the test harness' output capture, so
/// that a skipped GPU test is visible in every log.
pub fn skip(reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIP: {reason}");
}

/// Fresh random values (different every run unless WARPNORM_TEST_SEED is set), with an
/// offset so that centring matters, rounded to `dtype`.
pub fn random_tensor(shape: &[usize], dtype: DType, offset: f64, spread: f64, salt: u64) -> Tensor {
    let mut rng = Rng::new(seed() ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    Tensor::from_fn(shape.to_vec(), dtype, |_| offset + spread * rng.normal()).unwrap()
}

/// The run's seed: printed so a failure can be replayed with WARPNORM_TEST_SEED.
pub fn seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        let s = std::env::var("WARPNORM_TEST_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        println!("test seed: WARPNORM_TEST_SEED={s}");
        s
    })
}

/// Largest error of `got` against `want`, in units of the allowed error
/// `rel * |want| + abs`; infinite when a value is NaN or inf where `want` is finite.
pub fn error_ratio(got: &[f64], want: &[f64], rel: f64, abs: f64) -> (f64, usize) {
    assert_eq!(got.len(), want.len());
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ratio = if !g.is_finite() {
            f64::INFINITY
        } else {
            (g - w).abs() / (rel * w.abs() + abs)
        };
        // A NaN ratio is always the worst.
        if ratio.is_nan() || ratio > worst.0 {
            worst = (ratio, i);
        }
    }
    worst
}

/// Tolerance of a result rounded to `dtype` from an f32 computation over rows of `cols`
/// whose statistics have condition number `kappa` (see [`condition`]): one rounding of the
/// output (an ulp is at most 2u relative) plus f32 error, which grows slowly with the row
/// length for tree-shaped sums and linearly with the conditioning.
pub fn tolerance_kappa(dtype: DType, scale: f64, cols: usize, kappa: f64) -> (f64, f64) {
    let f32_error = 4e-6 * (1.0 + (cols as f64).log2() / 4.0) * kappa.max(1.0);
    (
        2.0 * dtype.unit_roundoff() + f32_error,
        f32_error * scale.max(1.0),
    )
}

/// [`tolerance_kappa`] for well-conditioned rows.
pub fn tolerance(dtype: DType, scale: f64, cols: usize) -> (f64, f64) {
    tolerance_kappa(dtype, scale, cols, 1.0)
}

/// How much f32 rounding of a row's statistics is amplified: 1 + |mean| * rstd (squared
/// for the fast-variance form E[x^2] - E[x]^2, which cancels when the mean dominates).
/// Rows of a few elements that happen to be nearly equal are the ill-conditioned cases.
pub fn condition(mean: &[f64], rstd: &[f64], fast_variance: bool) -> f64 {
    mean.iter()
        .zip(rstd)
        .map(|(m, r)| {
            let k = 1.0 + (m * r).abs();
            if fast_variance {
                k * k
            } else {
                k
            }
        })
        .fold(1.0, f64::max)
}

pub fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// The kernel variants every kernel test runs, and the config of each.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Variant {
    LayerNorm,
    FastVariance,
    NoScale,
    NoBias,
    NoParams,
    RmsNorm,
    RmsScaling,
    Masked,
}

pub const VARIANTS: [Variant; 8] = [
    Variant::LayerNorm,
    Variant::FastVariance,
    Variant::NoScale,
    Variant::NoBias,
    Variant::NoParams,
    Variant::RmsNorm,
    Variant::RmsScaling,
    Variant::Masked,
];

pub fn config(v: Variant, p: DType, o: DType) -> NormConfig {
    let flax = NormConfig::flax()
        .use_fast_variance(false)
        .epsilon(1e-5)
        .dtype(o)
        .with_param_dtype(p);
    match v {
        Variant::LayerNorm | Variant::Masked => flax,
        Variant::FastVariance => flax.use_fast_variance(true),
        Variant::NoScale => flax.use_scale(false),
        Variant::NoBias => flax.use_bias(false),
        Variant::NoParams => flax.use_scale(false).use_bias(false),
        Variant::RmsNorm => NormConfig::flax_rms()
            .epsilon(1e-5)
            .dtype(o)
            .with_param_dtype(p),
        Variant::RmsScaling => NormConfig::keras()
            .rms_scaling(true)
            .epsilon(1e-5)
            .dtype(o)
            .with_param_dtype(p),
    }
}
