//! The dtype combinations the kernels are compiled for, as [`DType`]s.
//!
//! The list itself is `tiers::dtype_combos` (the build script compiles exactly those
//! instantiations); everything on the Rust side that asks "do the kernels take x, parameters
//! and output in these dtypes" (the checked ops, the layers' choice between the kernels and
//! the reference, the self-test and the test matrices) asks [`Dtypes`], which reads it.

use super::tiers;
use crate::{DType, Element, Error, Result};

/// The x, parameter and output dtypes of one kernel instantiation (y and dy have the
/// output dtype, dx has x's, dscale and dbias the parameters').
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dtypes {
    pub x: DType,
    pub param: DType,
    pub out: DType,
}

impl Dtypes {
    /// The dtypes of the element types `T` (x), `P` (parameters) and `O` (output).
    pub fn of<T: Element, P: Element, O: Element>() -> Dtypes {
        Dtypes {
            x: T::DTYPE,
            param: P::DTYPE,
            out: O::DTYPE,
        }
    }

    /// Every combination the kernels are compiled for, in `tiers::dtype_combos` order.
    pub fn compiled() -> Vec<Dtypes> {
        tiers::dtype_combos()
            .into_iter()
            .map(|(x, p, o)| Dtypes::from_short_names(x, p, o))
            .collect()
    }

    /// `tiers`' names are the short names of [`DType`]; a typo there fails every test.
    fn from_short_names(x: &str, p: &str, o: &str) -> Dtypes {
        let d = |s: &str| DType::parse(s).unwrap_or_else(|| panic!("tiers.rs names dtype `{s}`"));
        Dtypes {
            x: d(x),
            param: d(p),
            out: d(o),
        }
    }

    /// Whether the kernels are compiled for this combination.
    pub fn is_compiled(self) -> bool {
        Dtypes::compiled().contains(&self)
    }

    /// Errors unless the kernels are compiled for this combination, naming the rule.
    pub fn check_compiled(self) -> Result<()> {
        if self.is_compiled() {
            Ok(())
        } else {
            Err(self.not_compiled())
        }
    }

    /// The error for a combination the kernels are not compiled for.
    #[doc(hidden)]
    pub fn not_compiled(self) -> Error {
        Error::Unsupported(self.why_not_compiled())
    }

    /// What the kernels take, for a combination they are not compiled for.
    pub(crate) fn why_not_compiled(self) -> String {
        let Dtypes { x, param, out } = self;
        format!(
            "x {x} with parameters {param} and output {out}: the kernels take parameters and output in x's \
             dtype or float32"
        )
    }

    /// The short names `tiers`' kernel names are built from: `(x, param, out)`.
    pub(crate) fn short_names(self) -> (&'static str, &'static str, &'static str) {
        (
            self.x.short_name(),
            self.param.short_name(),
            self.out.short_name(),
        )
    }

    /// `x f32 p f32 y f32`: how the self-test and the command name a combination.
    pub fn label(self) -> String {
        format!(
            "x {} p {} y {}",
            self.x.short_name(),
            self.param.short_name(),
            self.out.short_name()
        )
    }
}

/// Runs `$body` with the type aliases `$t`, `$p`, `$o` bound to the element types of the
/// [`Dtypes`] `$d`, for every combination the kernels are compiled for; any other
/// combination evaluates to [`Dtypes::not_compiled`]'s error (converted with `Into`).
///
/// The one place where the compiled combinations become Rust types; a unit test checks
/// that its arms are exactly [`Dtypes::compiled`].
#[doc(hidden)]
#[macro_export]
macro_rules! with_kernel_dtypes {
    ($d:expr, <$t:ident, $p:ident, $o:ident> => $body:expr) => {{
        let d: $crate::cuda::Dtypes = $d;
        match (d.x, d.param, d.out) {
            ($crate::DType::F32, $crate::DType::F32, $crate::DType::F32) => {
                $crate::with_kernel_dtypes!(@bind f32, f32, f32, $t, $p, $o, $body)
            }
            ($crate::DType::F16, $crate::DType::F16, $crate::DType::F16) => {
                $crate::with_kernel_dtypes!(@bind $crate::dtype::f16, $crate::dtype::f16, $crate::dtype::f16, $t, $p, $o, $body)
            }
            ($crate::DType::F16, $crate::DType::F16, $crate::DType::F32) => {
                $crate::with_kernel_dtypes!(@bind $crate::dtype::f16, $crate::dtype::f16, f32, $t, $p, $o, $body)
            }
            ($crate::DType::F16, $crate::DType::F32, $crate::DType::F16) => {
                $crate::with_kernel_dtypes!(@bind $crate::dtype::f16, f32, $crate::dtype::f16, $t, $p, $o, $body)
            }
            ($crate::DType::F16, $crate::DType::F32, $crate::DType::F32) => {
                $crate::with_kernel_dtypes!(@bind $crate::dtype::f16, f32, f32, $t, $p, $o, $body)
            }
            ($crate::DType::BF16, $crate::DType::BF16, $crate::DType::BF16) => {
                $crate::with_kernel_dtypes!(@bind $crate::dtype::bf16, $crate::dtype::bf16, $crate::dtype::bf16, $t, $p, $o, $body)
            }
            ($crate::DType::BF16, $crate::DType::BF16, $crate::DType::F32) => {
                $crate::with_kernel_dtypes!(@bind $crate::dtype::bf16, $crate::dtype::bf16, f32, $t, $p, $o, $body)
            }
            ($crate::DType::BF16, $crate::DType::F32, $crate::DType::BF16) => {
                $crate::with_kernel_dtypes!(@bind $crate::dtype::bf16, f32, $crate::dtype::bf16, $t, $p, $o, $body)
            }
            ($crate::DType::BF16, $crate::DType::F32, $crate::DType::F32) => {
                $crate::with_kernel_dtypes!(@bind $crate::dtype::bf16, f32, f32, $t, $p, $o, $body)
            }
            _ => Err(d.not_compiled().into()),
        }
    }};
    (@bind $x:ty, $pa:ty, $ou:ty, $t:ident, $p:ident, $o:ident, $body:expr) => {{
        type $t = $x;
        type $p = $pa;
        type $o = $ou;
        $body
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_typed_dispatch_covers_exactly_the_compiled_combinations() {
        let all = [DType::F32, DType::F16, DType::BF16];
        let compiled = Dtypes::compiled();
        for x in all {
            for param in all {
                for out in all {
                    let d = Dtypes { x, param, out };
                    let typed: Result<Dtypes> =
                        crate::with_kernel_dtypes!(d, <T, P, O> => Ok(Dtypes::of::<T, P, O>()));
                    match typed {
                        Ok(t) => {
                            assert_eq!(t, d);
                            assert!(compiled.contains(&d), "{d:?}");
                        }
                        Err(e) => {
                            assert!(!compiled.contains(&d), "{d:?}");
                            assert!(e.to_string().contains("x's dtype or float32"), "{e}");
                        }
                    }
                }
            }
        }
        assert_eq!(compiled.len(), 9);
    }
}
