//! The kernel test matrix: every variant of the CUDA kernels against the f64 reference, on
//! a GPU or on the kernels' CPU emulation. `tests/gpu_kernels.rs`,
//! `tests/emulated_kernels.rs` and `warpnorm check` all run these cases and judge them by
//! [`compare`] with the one tolerance model of [`tolerance`].

#[cfg(feature = "emulator")]
mod emulated;
pub mod gpu;
pub mod tolerance;

use std::sync::Arc;

pub use crate::cuda::Dtypes;
use crate::cuda::{CudaBackend, KernelGeneration};
use crate::layout::Layout;
use crate::reference::{self, Params};
use crate::rng::Rng;
use crate::{DType, NormConfig, Result, Tensor};
use tolerance::{condition, error_ratio, error_ratio_each, max_abs, tolerance_kappa};

/// One kernel variant: a config family and, for channels-first, a layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    LayerNorm,
    FastVariance,
    NoScale,
    NoBias,
    NoParams,
    RmsNorm,
    RmsScaling,
    Masked,
    ChannelsFirst,
}

impl Variant {
    pub const ALL: [Variant; 9] = [
        Variant::LayerNorm,
        Variant::FastVariance,
        Variant::NoScale,
        Variant::NoBias,
        Variant::NoParams,
        Variant::RmsNorm,
        Variant::RmsScaling,
        Variant::Masked,
        Variant::ChannelsFirst,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::LayerNorm => "layernorm",
            Variant::FastVariance => "fast-variance",
            Variant::NoScale => "no-scale",
            Variant::NoBias => "no-bias",
            Variant::NoParams => "no-params",
            Variant::RmsNorm => "rmsnorm",
            Variant::RmsScaling => "rms-scaling",
            Variant::Masked => "masked",
            Variant::ChannelsFirst => "channels-first",
        }
    }

    /// The variant's config with parameters in `param` and output in `out` (which the
    /// API may not be able to express: see [`NormConfig::validate`]).
    pub fn config(self, param: DType, out: DType) -> NormConfig {
        let flax = NormConfig::flax()
            .epsilon(1e-5)
            .use_fast_variance(false)
            .dtype(out)
            .with_param_dtype(param);
        match self {
            Variant::LayerNorm | Variant::Masked => flax,
            Variant::FastVariance => flax.use_fast_variance(true),
            Variant::NoScale => flax.use_scale(false),
            Variant::NoBias => flax.use_bias(false),
            Variant::NoParams => flax.use_scale(false).use_bias(false),
            Variant::RmsNorm => NormConfig::flax_rms()
                .epsilon(1e-5)
                .dtype(out)
                .with_param_dtype(param),
            Variant::RmsScaling => NormConfig::keras()
                .rms_scaling(true)
                .epsilon(1e-5)
                .dtype(out)
                .with_param_dtype(param),
            Variant::ChannelsFirst => flax.reduction_axes(1).feature_axes(1),
        }
    }

    /// The input shape of `rows` rows of `cols` (channels-first: `[2, cols, rows]`).
    pub fn shape(self, rows: usize, cols: usize) -> Vec<usize> {
        match self {
            Variant::ChannelsFirst => vec![2, cols, rows],
            _ => vec![rows, cols],
        }
    }

    /// How the kernels see [`Variant::shape`].
    pub fn layout(self, rows: usize, cols: usize) -> Layout {
        match self {
            Variant::ChannelsFirst => Layout::ChannelsFirst {
                outer: 2,
                cols,
                inner: rows,
            },
            _ => Layout::rows(rows, cols),
        }
    }
}

/// Rows for a case of `cols`, about `elements` elements in all: odd, so that the last
/// CTA is partial, and at least 3. The f64 reference (and the emulation) cost time per
/// element, so each caller sizes its cases to what it can afford.
pub fn rows_for(cols: usize, elements: usize) -> usize {
    (elements / cols.max(1)).clamp(3, 67) | 1
}

/// The inputs of one forward and backward, host side, in the dtypes they run with.
#[derive(Clone, Debug)]
pub struct Case {
    pub cfg: NormConfig,
    pub layout: Layout,
    pub x: Tensor,
    pub scale: Option<Tensor>,
    pub bias: Option<Tensor>,
    /// flax's mask, one flag per element of x.
    pub mask: Option<Vec<bool>>,
    pub dy: Tensor,
}

impl Case {
    /// `variant` on `rows` x `cols` in the dtypes `d`; an error when the variant's API
    /// cannot express `d` (keras has no policy with f16 variables and f32 outputs).
    pub fn of(variant: Variant, d: Dtypes, rows: usize, cols: usize, seed: u64) -> Result<Case> {
        let cfg = variant.config(d.param, d.out);
        cfg.validate()?;
        Case::random(
            cfg,
            &variant.shape(rows, cols),
            variant.layout(rows, cols),
            d.x,
            variant == Variant::Masked,
            seed,
        )
    }

    /// Random inputs of `shape` (seen by the kernels as `layout`): x offset from zero so
    /// that centring matters, about 70% of a mask selected and never an empty row.
    pub fn random(
        cfg: NormConfig,
        shape: &[usize],
        layout: Layout,
        x_dtype: DType,
        masked: bool,
        seed: u64,
    ) -> Result<Case> {
        // One stream per tensor: x is the same for a seed whatever else the case has.
        let random = |shape: &[usize], dtype: DType, mean: f64, spread: f64, stream: u64| {
            let mut rng = Rng::new(seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            Tensor::from_fn(shape.to_vec(), dtype, |_| rng.normal_with(mean, spread))
        };
        let param_shape = cfg.resolve(shape)?.param_shape;
        let p = cfg.param_dtype();
        let x = random(shape, x_dtype, 2.0, 1.5, 0)?;
        let cols = layout.cols();
        let mask = if masked {
            let coin = random(&[x.numel()], DType::F32, 0.0, 1.0, 4)?;
            let picked = coin.data().iter().enumerate();
            Some(picked.map(|(i, &c)| i % cols == 0 || c > -0.5).collect())
        } else {
            None
        };
        let scale = cfg
            .has_scale()
            .then(|| random(&param_shape, p, 1.0, 0.5, 1));
        let bias = cfg.has_bias().then(|| random(&param_shape, p, 0.0, 0.5, 2));
        Ok(Case {
            scale: scale.transpose()?,
            bias: bias.transpose()?,
            dy: random(shape, cfg.output_dtype(x_dtype), 0.0, 1.0, 3)?,
            mask,
            x,
            layout,
            cfg,
        })
    }

    /// The dtypes the kernels run this case with.
    pub fn dtypes(&self) -> Dtypes {
        let x = self.x.dtype();
        Dtypes {
            x,
            param: self.cfg.param_dtype(),
            out: self.cfg.output_dtype(x),
        }
    }

    /// The same case with other values of x (same shape), e.g. with a NaN planted.
    pub fn with_x(self, data: Vec<f64>) -> Result<Case> {
        let x = Tensor::new(self.x.shape().to_vec(), self.x.dtype(), data)?;
        Ok(Case { x, ..self })
    }

    /// The f64 reference's forward and backward of this case.
    pub fn reference(&self) -> Result<Reference> {
        let p = Params::new(self.scale.as_ref(), self.bias.as_ref());
        let mask = self.mask.as_deref();
        Ok(Reference {
            fwd: reference::forward(&self.cfg, &self.x, p, mask)?,
            grads: reference::backward(&self.cfg, &self.x, p, mask, &self.dy)?,
        })
    }
}

/// What the reference computes for a [`Case`].
#[derive(Clone, Debug)]
pub struct Reference {
    pub fwd: reference::Forward,
    pub grads: reference::Grads,
}

/// The kernels' results of one forward (with statistics) and backward, widened to f64.
/// Every buffer starts as NaN, so an element the kernels forget to write cannot pass.
#[derive(Clone, Debug)]
pub struct Outputs {
    pub y: Vec<f64>,
    pub mean: Vec<f64>,
    pub rstd: Vec<f64>,
    pub dx: Vec<f64>,
    pub dscale: Option<Vec<f64>>,
    pub dbias: Option<Vec<f64>>,
}

/// Where the kernels under test run.
#[derive(Clone, Debug)]
pub enum Kernels {
    /// A GPU, through the checked [`crate::ops`] calls.
    Gpu(Arc<CudaBackend>),
    /// The CUDA kernels compiled for the host (feature `emulator`).
    #[cfg(feature = "emulator")]
    Emulator,
}

impl Kernels {
    /// `cuda:0 (name)`, `the kernels' CPU emulation`.
    pub fn describe(&self) -> String {
        match self {
            Kernels::Gpu(be) => format!("cuda:{} ({})", be.info().ordinal, be.info().name),
            #[cfg(feature = "emulator")]
            Kernels::Emulator => "the kernels' CPU emulation".to_string(),
        }
    }

    /// Forward and backward of `case` in its dtypes, by the kernels of `generation` (the
    /// one `WARPNORM_KERNELS` names when `None`); an error for dtypes the kernels are not
    /// compiled for.
    pub fn run(&self, case: &Case, generation: Option<KernelGeneration>) -> Result<Outputs> {
        let d = case.dtypes();
        match self {
            Kernels::Gpu(be) => {
                crate::with_kernel_dtypes!(d, <T, P, O> => gpu::run::<T, P, O>(be, case, generation))
            }
            #[cfg(feature = "emulator")]
            Kernels::Emulator => {
                crate::with_kernel_dtypes!(d, <T, P, O> => emulated::run::<T, P, O>(case, generation))
            }
        }
    }
}

/// How far one output is from the reference.
#[derive(Clone, Debug)]
pub struct Deviation {
    pub output: &'static str,
    /// The largest error in units of the tolerance (<= 1 passes; NaN and infinity fail).
    pub ratio: f64,
    /// Where it is, and the values there.
    pub at: usize,
    pub got: f64,
    pub want: f64,
}

impl Deviation {
    pub fn passed(&self) -> bool {
        self.ratio <= 1.0
    }

    pub fn abs_error(&self) -> f64 {
        (self.got - self.want).abs()
    }
}

impl std::fmt::Display for Deviation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {:.2}x the tolerance at {} (got {}, want {})",
            self.output, self.ratio, self.at, self.got, self.want
        )
    }
}

/// Every output of `out` against the reference, in the order y, mean, rstd, dx, dscale,
/// dbias. An output present on one side only is an infinite deviation.
pub fn compare(case: &Case, want: &Reference, out: &Outputs) -> Vec<Deviation> {
    let d = case.dtypes();
    let cols = case.layout.cols();
    let rows = case.layout.num_rows();
    let kappa = condition(&want.fwd.mean, &want.fwd.rstd, case.cfg.fast_variance());
    let deviation = |output: &'static str, got: &[f64], want: &[f64], (ratio, at): (f64, usize)| {
        let value = |v: &[f64]| v.get(at).copied().unwrap_or(f64::NAN);
        Deviation {
            output,
            ratio,
            at,
            got: value(got),
            want: value(want),
        }
    };
    // An output's f32 rounding error scales with its largest value...
    let judge = |output: &'static str, got: &[f64], want: &[f64], dtype: DType, n: usize| {
        let (rel, abs) = tolerance_kappa(dtype, max_abs(want), n, kappa);
        deviation(output, got, want, error_ratio(got, want, rel, abs))
    };
    // ...and each element of dx's with the magnitude of its own terms before they cancel.
    let judge_dx = |got: &[f64]| {
        let want_dx = want.grads.dx.data();
        let (rel, f32_error) = tolerance_kappa(d.x, 1.0, cols, kappa);
        let magnitude = &want.grads.dx_magnitude;
        let abs = |i: usize| match magnitude.get(i) {
            Some(m) if m.is_finite() => f32_error * m.max(1.0),
            _ => f32_error,
        };
        deviation("dx", got, want_dx, error_ratio_each(got, want_dx, rel, abs))
    };
    let mut deviations = vec![
        // keras rounds y through x's dtype first: a kernel's f32 value a hair from the
        // reference's can round to the neighbouring value of x's dtype.
        judge(
            "y",
            &out.y,
            want.fwd.y.data(),
            case.cfg.coarsest_y_dtype(d.x),
            cols,
        ),
        judge("mean", &out.mean, &want.fwd.mean, DType::F32, cols),
        judge("rstd", &out.rstd, &want.fwd.rstd, DType::F32, cols),
        judge_dx(&out.dx),
    ];
    // dscale and dbias sum over the rows terms that each carry a row's error: held to the
    // error of the shorter of the two sums, the tighter bound.
    for (output, got, reference) in [
        ("dscale", &out.dscale, &want.grads.dscale),
        ("dbias", &out.dbias, &want.grads.dbias),
    ] {
        match (got, reference) {
            (Some(g), Some(w)) => {
                deviations.push(judge(output, g, w.data(), d.param, rows.min(cols)))
            }
            (None, None) => {}
            _ => deviations.push(judge(output, &[f64::NAN], &[0.0], d.param, 1)),
        }
    }
    deviations
}

/// Runs `case` on `kernels` and describes each output outside its tolerance.
pub fn failures(
    kernels: &Kernels,
    case: &Case,
    generation: Option<KernelGeneration>,
) -> Result<Vec<Deviation>> {
    let want = case.reference()?;
    let out = kernels.run(case, generation)?;
    Ok(compare(case, &want, &out)
        .into_iter()
        .filter(|d| !d.passed())
        .collect())
}

/// What a run of the matrix found: each output outside its tolerance.
#[derive(Clone, Debug, Default)]
pub struct Findings {
    pub failures: Vec<String>,
}

impl Findings {
    pub fn extend(&mut self, other: Findings) {
        self.failures.extend(other.failures);
    }
}

/// Every variant the API can express in the dtypes `d`, at every length of `lengths` with
/// about `elements` elements a case, on `kernels` (by the kernels of `generation`; those
/// `WARPNORM_KERNELS` names when `None`), on inputs drawn from `seed`.
pub fn matrix(
    kernels: &Kernels,
    d: Dtypes,
    lengths: &[usize],
    elements: usize,
    generation: Option<KernelGeneration>,
    seed: u64,
) -> Findings {
    let mut findings = Findings::default();
    for &cols in lengths {
        for (vi, &variant) in Variant::ALL.iter().enumerate() {
            if variant.config(d.param, d.out).validate().is_err() {
                continue; // e.g. keras has no policy with f16 variables and f32 outputs
            }
            let rows = rows_for(cols, elements);
            let case_seed = seed ^ ((cols * 31 + vi) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let label = format!(
                "x {} params {} y {} {variant:?} rows {rows} cols {cols}",
                d.x, d.param, d.out
            );
            let found = Case::of(variant, d, rows, cols, case_seed)
                .and_then(|case| failures(kernels, &case, generation));
            let found: Vec<String> = match found {
                Ok(found) => found.iter().map(|f| format!("{label}: {f}")).collect(),
                Err(e) => vec![format!("{label}: {e}")],
            };
            findings.failures.extend(found);
        }
    }
    findings
}
