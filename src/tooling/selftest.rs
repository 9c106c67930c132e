//! The self-test behind `warpnorm check`: the kernel matrix's variants on a GPU (or on the
//! kernels' CPU emulation) against the f64 reference, on fresh random inputs, summarised
//! as the largest error per case.

use super::kernel_matrix::{self, Case};
pub use super::kernel_matrix::{Dtypes, Kernels, Variant};
use crate::DType;

/// Elements per case: enough rows for several per CTA when rows are short.
const ELEMENTS: usize = 1 << 16;

/// The input shape a case of `variant` at `cols` has.
pub fn shape(variant: Variant, cols: usize) -> Vec<usize> {
    variant.shape(kernel_matrix::rows_for(cols, ELEMENTS), cols)
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
    /// Largest error over the outputs, in units of its tolerance (<= 1 passes).
    pub worst_ratio: f64,
    /// Which output that was, and its absolute error there.
    pub worst_output: &'static str,
    pub max_abs_error: f64,
    /// Set when the run itself failed (an error from the device).
    pub error: Option<String>,
    /// Set when nothing was run: the API cannot express this combination (e.g. keras has
    /// no dtype policy with f16 variables and f32 outputs).
    pub skipped: Option<String>,
}

impl CheckResult {
    pub fn passed(&self) -> bool {
        self.error.is_none() && (self.skipped.is_some() || self.worst_ratio <= 1.0)
    }
}

/// Runs one case of `variant` on `kernels` and compares it with the reference.
pub fn check(
    kernels: &Kernels,
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
    let rows = kernel_matrix::rows_for(cols, ELEMENTS);
    let compared = Case::of(variant, d, rows, cols, seed).and_then(|case| {
        let want = case.reference()?;
        let got = kernels.run(&case, None)?;
        Ok(kernel_matrix::compare(&case, &want, &got))
    });
    match compared {
        Ok(deviations) => {
            for dev in deviations {
                if dev.ratio.is_nan() || dev.ratio > result.worst_ratio {
                    result.worst_ratio = dev.ratio;
                    result.worst_output = dev.output;
                    result.max_abs_error = dev.abs_error();
                }
            }
        }
        Err(e) => result.error = Some(e.to_string()),
    }
    result
}

#[cfg(all(test, feature = "emulator"))]
mod tests {
    use super::*;

    #[test]
    fn every_variant_passes_on_the_emulation_and_is_not_exact() {
        let d = Dtypes {
            x: DType::BF16,
            param: DType::F32,
            out: DType::BF16,
        };
        for v in Variant::ALL {
            let r = check(&Kernels::Emulator, v, d, 96, 1);
            assert!(r.passed() && r.skipped.is_none(), "{r:?}");
            assert!(r.worst_ratio > 0.0, "{r:?}");
        }
    }

    #[test]
    fn keras_rounding_through_16_bit_x_is_checked_not_skipped() {
        let d = Dtypes {
            x: DType::F16,
            param: DType::F32,
            out: DType::F32,
        };
        let r = check(&Kernels::Emulator, Variant::RmsScaling, d, 96, 1);
        assert!(r.passed() && r.skipped.is_none(), "{r:?}");
        assert!(r.worst_ratio > 0.0, "{r:?}");
    }
}
