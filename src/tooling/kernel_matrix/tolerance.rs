//! The tolerance model: how far a kernel's result may be from the f64 reference.
//!
//! A result rounded to `dtype` from an f32 computation over `n` terms is off by one
//! rounding of the output (an ulp is at most 2u relative) plus the f32 error of the
//! computation, which grows slowly with `n` for tree-shaped sums and linearly with the
//! conditioning of the row's statistics ([`condition`]).

use crate::DType;

/// `(rel, abs)`: the allowed error of a value `w` is `rel * |w| + abs`, for a result in
/// `dtype` whose largest reference magnitude is `scale`, computed over `n` terms from
/// statistics with condition number `kappa`.
pub fn tolerance_kappa(dtype: DType, scale: f64, n: usize, kappa: f64) -> (f64, f64) {
    let f32_error = 4e-6 * (1.0 + (n.max(1) as f64).log2() / 4.0) * kappa.max(1.0);
    (
        2.0 * dtype.unit_roundoff() + f32_error,
        f32_error * scale.max(1.0),
    )
}

/// [`tolerance_kappa`] for well-conditioned rows.
pub fn tolerance(dtype: DType, scale: f64, n: usize) -> (f64, f64) {
    tolerance_kappa(dtype, scale, n, 1.0)
}

/// How much f32 rounding of a row's statistics is amplified: 1 + |mean| * rstd (squared
/// for the fast-variance form E[x^2] - E[x]^2, which cancels when the mean dominates).
/// Rows of a few elements that happen to be nearly equal are the ill-conditioned ones.
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

/// The largest error of `got` against `want` in units of the allowed error
/// `rel * |want| + abs`, and where it is. Infinite where `got` is NaN or infinite and
/// `want` is finite, and when the lengths differ; a NaN ratio is always the worst.
pub fn error_ratio(got: &[f64], want: &[f64], rel: f64, abs: f64) -> (f64, usize) {
    error_ratio_each(got, want, rel, |_| abs)
}

/// [`error_ratio`] with an absolute allowance per element, `abs(i)`.
pub fn error_ratio_each(
    got: &[f64],
    want: &[f64],
    rel: f64,
    abs: impl Fn(usize) -> f64,
) -> (f64, usize) {
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ratio = if g.is_finite() || !w.is_finite() {
            (g - w).abs() / (rel * w.abs() + abs(i))
        } else {
            f64::INFINITY
        };
        if ratio.is_nan() || ratio > worst.0 {
            worst = (ratio, i);
        }
    }
    if got.len() != want.len() {
        worst.0 = f64::INFINITY;
    }
    worst
}

/// The largest magnitude in `v` (0 for an empty slice).
pub fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_inf_and_large_errors_fail() {
        let (rel, abs) = tolerance(DType::BF16, 1.0, 8);
        assert!(error_ratio(&[f64::NAN], &[1.0], rel, abs).0.is_infinite());
        assert!(error_ratio(&[f64::NAN], &[f64::NAN], rel, abs).0.is_nan());
        assert!(error_ratio(&[f64::INFINITY], &[1.0], rel, abs)
            .0
            .is_infinite());
        assert!(error_ratio(&[1.0], &[1.0, 2.0], rel, abs).0.is_infinite());
        assert!(error_ratio(&[1.1], &[1.0], rel, abs).0 > 1.0);
        assert!(error_ratio(&[1.0 + 1e-3], &[1.0], rel, abs).0 <= 1.0);
        assert_eq!(error_ratio(&[0.5, 3.0], &[0.5, 2.0], rel, abs).1, 1);
    }

    #[test]
    fn ill_conditioned_rows_widen_the_f32_part_only() {
        let (rel1, abs1) = tolerance(DType::F32, 1.0, 64);
        let (rel4, abs4) = tolerance_kappa(DType::F32, 1.0, 64, 4.0);
        let f32_part = rel1 - 2.0 * DType::F32.unit_roundoff();
        assert!((rel4 - rel1 - 3.0 * f32_part).abs() < 1e-18);
        assert!((abs4 - 4.0 * abs1).abs() < 1e-18);
        assert_eq!(condition(&[2.0], &[1.0], false), 3.0);
        assert_eq!(condition(&[2.0], &[1.0], true), 9.0);
    }
}
