//! The mathematics of one row, in f64, for every kind and both variance forms.
//!
//! Everything is written with per-element weights `w_i >= 0` summing to 1, the
//! weight each element has in the mean. That one form covers
//! * a plain row: `w_i = 1/n`;
//! * flax's `mask`: `w_i = m_i / sum(m)` (`mean(..., where=mask)`);
//! * sharded rows under `lax.pmean` over `k` ranks: `w_i = m_i / (k * n_r)`, where
//!   `n_r` is the (selected) count on element i's rank, because flax averages the
//!   per-rank means.
//!
//! Forward (c: the centre subtracted in y; v: the centre of the variance):
//! ```text
//!   mu   = sum_i w_i x_i
//!   var  = sum_i w_i (x_i - mu)^2                 LayerNorm, exact; RmsScaling
//!        = max(0, sum_i w_i x_i^2 - mu^2)         LayerNorm, fast variance
//!        = sum_i w_i x_i^2                        RmsNorm (mu := 0)
//!   rstd = 1 / sqrt(var + eps)
//!   c    = mu (LayerNorm) or 0 (RmsNorm, RmsScaling);   v = mu (0 for RmsNorm)
//!   xhat_i = (x_i - c) * rstd;   y_i = xhat_i * g_i + b_i
//! ```
//! Backward, with `gy_i = dy_i * g_i`, `A = sum_i gy_i`, `B = sum_i gy_i * xhat_i`:
//! ```text
//!   dL/dx_j = gy_j rstd - rstd (dc/dx_j) A + (drstd/dx_j) sum_i gy_i (x_i - c)
//!   dc/dx_j = w_j (LayerNorm) or 0;   sum_i gy_i (x_i - c) = B / rstd
//!   drstd/dx_j = -1/2 rstd^3 dvar/dx_j;   dvar/dx_j = 2 f w_j (x_j - v)
//! ```
//! (`dvar/dx_j` is the same for the exact and the fast form because the weights sum
//! to 1; `f` is 1, except for the fast form's clamp: 0 when `E[x^2] - mu^2 < 0`,
//! 1/2 when it is exactly 0, as JAX differentiates `maximum` at a tie), so
//! ```text
//!   dx_j = rstd * (gy_j - [LayerNorm] w_j A - f w_j (x_j - v) rstd B)
//!   dscale_p += dy_i xhat_i,   dbias_p += dy_i     over elements i with parameter p
//! ```
//! For LayerNorm `(x_j - v) rstd = xhat_j`, giving the familiar
//! `rstd (gy_j - w_j (A + xhat_j B))`. Elements a mask leaves out have `w_j = 0`:
//! their gradient flows through y only (0 through the statistics, NaN where x itself is
//! not finite, as in JAX), and their values (NaN padding included) never reach the
//! statistics.

use crate::config::NormKind;

/// `w * v`, except that an element of weight 0 (left out by a mask) adds an exact 0 even
/// when `v` is NaN or infinite, as flax's `mean(where=mask)` does.
pub(crate) fn weighted(w: f64, v: f64) -> f64 {
    if w == 0.0 {
        0.0
    } else {
        w * v
    }
}

/// flax's fast variance `max(0, raw)` for `raw = E[x^2] - E[x]^2`, and d var / d raw: 1
/// above 0, 1/2 at 0 (JAX's rule for `maximum` at a tie), 0 below. A NaN stays NaN
/// (`raw.max(0.0)` would turn it into 0).
pub(crate) fn fast_variance(raw: f64) -> (f64, f64) {
    let clamp = if raw > 0.0 {
        1.0
    } else if raw == 0.0 {
        0.5
    } else {
        0.0
    };
    (if raw < 0.0 { 0.0 } else { raw }, clamp)
}

/// The statistics' share of an element's gradient: `w * term` where the element has a
/// weight; else 0, or NaN when the element itself (`centred`: its `x - mean`) is not finite,
/// because JAX multiplies the zero cotangent of `mean(where=mask)` by `2 (x - mean)` there.
pub(crate) fn stats_grad(w: f64, term: f64, centred: f64) -> f64 {
    if w == 0.0 {
        0.0 * centred
    } else {
        w * term
    }
}

/// The statistics of one row.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowStats {
    /// Centre of the variance: the (weighted) mean; 0 for RmsNorm.
    pub mean: f64,
    /// Centre subtracted in y: `mean` for LayerNorm, 0 for RmsNorm and RmsScaling.
    pub centre: f64,
    pub rstd: f64,
    /// d var / d (raw variance): 1, or the fast form's clamp factor.
    pub clamp: f64,
}

impl RowStats {
    /// Statistics of elements `x` with weights `w`.
    pub fn new(kind: NormKind, fast: bool, eps: f64, x: &[f64], w: &[f64]) -> RowStats {
        let wsum = |f: &dyn Fn(f64) -> f64| -> f64 {
            x.iter().zip(w).map(|(&x, &w)| weighted(w, f(x))).sum()
        };
        let (mean, var, clamp) = match kind {
            NormKind::RmsNorm => (0.0, wsum(&|x| x * x), 1.0),
            NormKind::LayerNorm if fast => {
                let mu = wsum(&|x| x);
                let (var, clamp) = fast_variance(wsum(&|x| x * x) - mu * mu);
                (mu, var, clamp)
            }
            NormKind::LayerNorm | NormKind::RmsScaling => {
                let mu = wsum(&|x| x);
                (mu, wsum(&|x| (x - mu) * (x - mu)), 1.0)
            }
        };
        let centre = if kind == NormKind::LayerNorm {
            mean
        } else {
            0.0
        };
        RowStats {
            mean,
            centre,
            rstd: 1.0 / (var + eps).sqrt(),
            clamp,
        }
    }

    /// The normalized value of `x` (before scale and bias).
    pub fn xhat(&self, x: f64) -> f64 {
        (x - self.centre) * self.rstd
    }

    /// `dL/dx` for every element, given `gy_i = dy_i * g_i` (see the module docs), with
    /// the magnitude of its terms. The gradient through the statistics is
    /// `w_i (mean term + variance term)`, the mean term (the sum of gy, LayerNorm only)
    /// the same for the whole row.
    pub fn dx(&self, kind: NormKind, x: &[f64], w: &[f64], gy: &[f64]) -> Vec<Dx> {
        let a: f64 = gy.iter().sum();
        let b: f64 = gy.iter().zip(x).map(|(&g, &x)| g * self.xhat(x)).sum();
        let mean_term = if kind == NormKind::LayerNorm { a } else { 0.0 };
        x.iter()
            .zip(w)
            .zip(gy)
            .map(|((&x, &w), &g)| {
                let var_term = self.clamp * (x - self.mean) * self.rstd * b;
                Dx {
                    value: self.rstd * (g - stats_grad(w, mean_term + var_term, x - self.mean)),
                    magnitude: self.rstd * (g.abs() + w.abs() * (mean_term.abs() + var_term.abs())),
                }
            })
            .collect()
    }
}

/// One element's `dL/dx`, and how large its terms are before they cancel:
/// `rstd (|g_i| + w_i (|mean term| + |variance term|))`. A kernel's f32 rounding error
/// scales with the magnitude, not with `dL/dx` itself: with one element, RMSNorm's `dL/dx`
/// is `rstd g (1 - xhat^2)`, much smaller than its terms when `x^2` is much larger than eps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dx {
    pub value: f64,
    pub magnitude: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_element_rmsnorm_dx_is_far_smaller_than_its_terms() {
        // x^2 = 4e-2 against eps 1e-5: 1 - xhat^2 = eps / (x^2 + eps), about 2.5e-4.
        let (x, w, gy) = ([0.2], [1.0], [0.7]);
        let st = RowStats::new(NormKind::RmsNorm, false, 1e-5, &x, &w);
        let xhat = st.xhat(x[0]);
        let Dx {
            value: dx,
            magnitude,
        } = st.dx(NormKind::RmsNorm, &x, &w, &gy)[0];
        assert!((dx - st.rstd * gy[0] * (1.0 - xhat * xhat)).abs() < 1e-12 * magnitude);
        assert!((magnitude - st.rstd * gy[0] * (1.0 + xhat * xhat)).abs() < 1e-12 * magnitude);
        assert!(magnitude > 4000.0 * dx.abs(), "{magnitude} against {dx}");
    }

    #[test]
    fn dx_magnitude_bounds_dx_and_a_masked_out_element_is_its_own_term() {
        let x = [0.3, -1.2, 2.5, 0.1, -0.4];
        let w = [0.25, 0.25, 0.25, 0.0, 0.25];
        let gy = [0.5, -0.3, 1.1, 0.8, -0.9];
        for kind in [NormKind::LayerNorm, NormKind::RmsNorm, NormKind::RmsScaling] {
            let st = RowStats::new(kind, false, 1e-5, &x, &w);
            let dx = st.dx(kind, &x, &w, &gy);
            for (i, d) in dx.iter().enumerate() {
                assert!(d.magnitude >= d.value.abs(), "{kind:?} {i}");
            }
            // Outside the mask only the element's own term is left.
            assert!((dx[3].magnitude - st.rstd * gy[3].abs()).abs() < 1e-15);
        }
    }
}
