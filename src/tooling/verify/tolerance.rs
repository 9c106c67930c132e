//! Tolerances: when a backend's output matches a fixture's.
//!
//! The frameworks compute in f32 and round to the output dtype; the reference
//! computes in f64 and rounds the same way. An output element passes when
//! `|got - want| <= rtol * |want| + atol`, with `u` the unit roundoff of the
//! coarsest dtype the framework rounds that output to, `u32 = 2^-24`, `S` the
//! largest `|want|` in the tensor and `c >= 1` the conditioning of the fixture's
//! rows (below):
//!
//! * `rtol = 4 u + 16 u32`. Both sides round once to the output dtype; two nearly
//!   equal values can land on neighbouring representable numbers (1 ulp = 2u), and
//!   keras rounds twice (to x's dtype, then to its compute dtype), hence 4u. The
//!   coarsest dtype is x's when keras' intermediate rounding is coarser than the
//!   output (f16 x under a float32 policy gives f32 y holding f16 values).
//! * `atol = (16 + 16 c) u32 * S`, plus `4 u * S` for dx in a dtype coarser than f32.
//!   Means, variances and gradient sums in f32 carry errors of a few u32 relative to
//!   the magnitudes summed, which show at the scale of the whole tensor (a dx
//!   element that cancels to near zero still carries the error of its terms). The
//!   cancellation in `x - mean` amplifies the error of the mean by
//!   `kappa = rms(x) / sqrt(var + eps)`, and the one-pass `E[x^2] - E[x]^2` amplifies
//!   it by `kappa^2`: `c` is `kappa^2` for flax's fast variance, `kappa` for the
//!   exact form, 1 for RMSNorm, taken as the worst row. For dx, JAX's VJP rounds
//!   each partial cotangent (through the statistics, and directly through y) to
//!   x's dtype and adds them in that dtype, so a dx that cancels carries roughly
//!   one rounding of its terms: `4 u * S`.
//!
//! The constants are a few times the largest errors observed against the
//! committed fixtures (see the tests), so they absorb other inputs of the same
//! kind without hiding a wrong formula: an epsilon off by 10x or an uncentred
//! variance fails by orders of magnitude.
//!
//! A NaN never passes (on either side); infinities pass only when equal.

use super::Outputs;
use crate::reference::{self, Params};
use crate::tooling::fixture::{Fixture, RankInputs};
use crate::{DType, Result, Tensor};

/// Per-element tolerance for one output tensor (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
}

/// f32's unit roundoff: the precision the frameworks compute in.
const U32: f64 = 5.960_464_477_539_063e-8;

/// How an output was produced, for choosing its tolerance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rounding {
    /// The coarsest dtype the framework rounded the output to.
    pub dtype: DType,
    /// Whether the framework adds separately rounded partial results in `dtype`
    /// (JAX's dx for x coarser than f32).
    pub partial_sums: bool,
}

impl Tolerance {
    /// The tolerance for an output rounded as `rounding`, from rows of conditioning
    /// `cond` (see the module docs), whose expected values are `want`.
    pub fn new(rounding: Rounding, cond: f64, want: &[f64]) -> Tolerance {
        let scale = want
            .iter()
            .filter(|v| v.is_finite())
            .fold(0.0f64, |m, v| m.max(v.abs()));
        let u = rounding.dtype.unit_roundoff();
        let partial = if rounding.partial_sums && rounding.dtype != DType::F32 {
            4.0 * u
        } else {
            0.0
        };
        Tolerance {
            rtol: 4.0 * u + 16.0 * U32,
            atol: ((16.0 + 16.0 * cond.max(1.0)) * U32 + partial) * scale,
        }
    }

    /// `|got - want| / allowed`: <= 1 passes; infinite for NaN or unequal infinities.
    pub fn ratio(&self, got: f64, want: f64) -> f64 {
        if got.is_nan() || want.is_nan() {
            return f64::INFINITY;
        }
        if got == want {
            return 0.0;
        }
        let err = (got - want).abs();
        if !err.is_finite() {
            return f64::INFINITY;
        }
        let allowed = self.rtol * want.abs() + self.atol;
        if allowed == 0.0 {
            f64::INFINITY
        } else {
            err / allowed
        }
    }
}

/// How one output compared.
#[derive(Clone, Debug)]
pub struct OutputCheck {
    /// `y`, `dx`, `dscale` or `dbias`.
    pub name: &'static str,
    pub dtype: DType,
    /// Largest `|got - want|` (NaN if any element is NaN on either side).
    pub max_abs_err: f64,
    /// Largest error divided by its allowed error (<= 1 passes).
    pub worst_ratio: f64,
    /// Flat index of the worst element.
    pub worst_index: usize,
    pub tolerance: Tolerance,
    /// Set when the output is missing, extra, or of the wrong shape or dtype.
    pub problem: Option<String>,
}

impl OutputCheck {
    pub fn passed(&self) -> bool {
        self.problem.is_none() && self.worst_ratio <= 1.0
    }
}

/// Compares one output against the fixture's expected tensor.
pub fn compare(
    name: &'static str,
    got: Option<&Tensor>,
    want: Option<&Tensor>,
    rounding: Rounding,
    cond: f64,
) -> Option<OutputCheck> {
    let problem = |dtype: DType, msg: String| OutputCheck {
        name,
        dtype,
        max_abs_err: f64::NAN,
        worst_ratio: f64::INFINITY,
        worst_index: 0,
        tolerance: Tolerance {
            rtol: 0.0,
            atol: 0.0,
        },
        problem: Some(msg),
    };
    let (got, want) = match (got, want) {
        (None, None) => return None,
        (Some(g), None) => {
            return Some(problem(g.dtype(), "produced but not in the fixture".into()))
        }
        (None, Some(w)) => {
            return Some(problem(w.dtype(), "in the fixture but not produced".into()))
        }
        (Some(g), Some(w)) => (g, w),
    };
    if got.shape() != want.shape() || got.dtype() != want.dtype() {
        return Some(problem(
            want.dtype(),
            format!(
                "got {:?} {}, expected {:?} {}",
                got.shape(),
                got.dtype(),
                want.shape(),
                want.dtype()
            ),
        ));
    }
    let tolerance = Tolerance::new(rounding, cond, want.data());
    let mut check = OutputCheck {
        name,
        dtype: want.dtype(),
        max_abs_err: 0.0,
        worst_ratio: 0.0,
        worst_index: 0,
        tolerance,
        problem: None,
    };
    for (i, (&g, &w)) in got.data().iter().zip(want.data()).enumerate() {
        // NaN is sticky here (f64::max would drop it); equal infinities differ by 0.
        let err = if g == w { 0.0 } else { (g - w).abs() };
        if err.is_nan() || check.max_abs_err.is_nan() {
            check.max_abs_err = f64::NAN;
        } else {
            check.max_abs_err = check.max_abs_err.max(err);
        }
        let r = tolerance.ratio(g, w);
        if r > check.worst_ratio {
            check.worst_ratio = r;
            check.worst_index = i;
        }
    }
    Some(check)
}

/// Compares every output a fixture records.
pub fn check_outputs(fx: &Fixture, out: &Outputs) -> Result<Vec<OutputCheck>> {
    let cfg = &fx.config;
    let x_dtype = fx.x.dtype();
    let y_round = cfg.coarsest_y_dtype(x_dtype);
    let plain = |dtype| Rounding {
        dtype,
        partial_sums: false,
    };
    let dx_round = Rounding {
        dtype: x_dtype,
        partial_sums: true,
    };
    let p_round = plain(cfg.param_dtype());
    let cond = condition(fx)?;
    let b = fx.backward.as_ref();
    Ok([
        compare("y", Some(&out.y), Some(&fx.y), plain(y_round), cond),
        compare("dx", out.dx.as_ref(), b.map(|b| &b.dx), dx_round, cond),
        compare(
            "dscale",
            out.dscale.as_ref(),
            b.and_then(|b| b.dscale.as_ref()),
            p_round,
            cond,
        ),
        compare(
            "dbias",
            out.dbias.as_ref(),
            b.and_then(|b| b.dbias.as_ref()),
            p_round,
            cond,
        ),
    ]
    .into_iter()
    .flatten()
    .collect())
}

/// The worst row's error amplification in f32 (see the module docs): with
/// `kappa^2 = E[x^2] / (var + eps) = 1 + (mean * rstd)^2`, `kappa^2` for the fast
/// variance, `kappa` for the exact one (1 for RMSNorm, whose mean is 0).
pub fn condition(fx: &Fixture) -> Result<f64> {
    let cfg = &fx.config;
    let ranks = fx.ranks()?;
    let params: Vec<Params> = ranks.iter().map(RankInputs::params).collect();
    let stats: Vec<(Vec<f64>, Vec<f64>)> = match fx.world {
        None => {
            let f = reference::forward(cfg, &ranks[0].x, params[0], ranks[0].mask.as_deref())?;
            vec![(f.mean, f.rstd)]
        }
        Some(world) => {
            let xs: Vec<Tensor> = ranks.iter().map(|r| r.x.clone()).collect();
            let masks: Option<Vec<Vec<bool>>> = ranks.iter().map(|r| r.mask.clone()).collect();
            let groups = cfg.groups_for(world)?;
            reference::sharded_forward(cfg, &xs, &params, masks.as_deref(), &groups)?
                .into_iter()
                .map(|f| (f.mean, f.rstd))
                .collect()
        }
    };
    let kappa2 = stats
        .iter()
        .flat_map(|(m, r)| m.iter().zip(r).map(|(m, r)| 1.0 + (m * r).powi(2)))
        .filter(|k| k.is_finite())
        .fold(1.0f64, f64::max);
    let fast = cfg.fast_variance() && cfg.kind() == crate::NormKind::LayerNorm;
    Ok(if fast { kappa2 } else { kappa2.sqrt() })
}
