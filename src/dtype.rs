//! Element types the kernels support, and rounding to them.

pub use half::{bf16, f16};
use serde::{Deserialize, Serialize};

/// Floating-point element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    #[serde(rename = "float32", alias = "f32")]
    F32,
    #[serde(rename = "float16", alias = "f16")]
    F16,
    #[serde(rename = "bfloat16", alias = "bf16")]
    BF16,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The name numpy / JAX use (`float32`, `float16`, `bfloat16`).
    pub const fn numpy_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }

    /// The short name the kernels' instantiations and the command line use (`f32`, `f16`,
    /// `bf16`).
    pub const fn short_name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// Parses `float32|f32`, `float16|f16|half`, `bfloat16|bf16`.
    pub fn parse(name: &str) -> Option<DType> {
        match name.to_ascii_lowercase().as_str() {
            "float32" | "f32" | "fp32" => Some(DType::F32),
            "float16" | "f16" | "fp16" | "half" => Some(DType::F16),
            "bfloat16" | "bf16" => Some(DType::BF16),
            _ => None,
        }
    }

    /// JAX's type promotion for floating types: the wider wins; f16 with bf16 gives f32.
    pub fn promote(self, other: DType) -> DType {
        match (self, other) {
            (a, b) if a == b => a,
            _ => DType::F32,
        }
    }

    /// Rounds `v` to this dtype (round-to-nearest-even) and returns it as f64.
    pub fn round(self, v: f64) -> f64 {
        match self {
            DType::F32 => v as f32 as f64,
            // 11 significand bits, smallest normal 2^-14, largest finite 65504.
            DType::F16 => round_nearest_even(v, 11, -14, 65504.0),
            // 8 significand bits, f32's exponent range.
            DType::BF16 => round_nearest_even(v, 8, -126, 3.389_531_389_251_535_5e38),
        }
    }

    /// Unit roundoff (half the machine epsilon) of this dtype.
    pub const fn unit_roundoff(self) -> f64 {
        match self {
            DType::F32 => 5.960_464_477_539_063e-8, // 2^-24
            DType::F16 => 4.882_812_5e-4,           // 2^-11
            DType::BF16 => 3.906_25e-3,             // 2^-8
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.numpy_name())
    }
}

impl std::str::FromStr for DType {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        DType::parse(s).ok_or_else(|| {
            crate::Error::InvalidConfig(format!(
                "unknown dtype `{s}` (expected float32, float16 or bfloat16)"
            ))
        })
    }
}

/// A host element type warpnorm moves to and from the device.
pub trait Element:
    Copy
    + Default
    + Send
    + Sync
    + cudarc::driver::DeviceRepr
    + cudarc::driver::ValidAsZeroBits
    + 'static
{
    /// The [`DType`] tag of this type.
    const DTYPE: DType;
    /// Widens to f64 exactly.
    fn to_f64(self) -> f64;
    /// Rounds from f64 (nearest-even).
    fn from_f64(v: f64) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

// half's own `from_f64` is not used to round: it drops the low 32 bits of the f64
// significand before rounding, so a value just above a tie rounds down (the f32 value
// 1.2226566 gives bf16 1.21875, not 1.2265625) and the result can differ from the
// kernels' `__float2bfloat16_rn`. Once rounded, the value is exact in the narrow type and
// half converts it exactly.
impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    fn from_f64(v: f64) -> Self {
        f16::from_f64(DType::F16.round(v))
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    fn from_f64(v: f64) -> Self {
        bf16::from_f64(DType::BF16.round(v))
    }
}

/// `v` rounded to the nearest value (ties to even) of a binary format with `precision`
/// significand bits, smallest normal exponent `min_exp` (gradual underflow below it) and
/// largest finite value `max` (beyond which it rounds to infinity). Every step is exact in
/// f64: scaling by a power of two, rounding to an integer, scaling back.
fn round_nearest_even(v: f64, precision: i32, min_exp: i32, max: f64) -> f64 {
    if !v.is_finite() || v == 0.0 {
        return v;
    }
    // The binade of v (f64 subnormals are far below every 16-bit format's range).
    let exp = ((v.to_bits() >> 52) & 0x7ff) as i32 - 1023;
    let ulp_exp = exp.max(min_exp) - (precision - 1);
    let ulp = f64::from_bits(((ulp_exp + 1023) as u64) << 52);
    let r = (v / ulp).round_ties_even() * ulp;
    if r.abs() > max {
        f64::INFINITY.copysign(v)
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f32 values are exact in f64, so rounding one to a 16-bit type is a single rounding
    /// that half's f32 conversions (which see every bit) perform correctly.
    fn f32_samples() -> impl Iterator<Item = f32> {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let random = std::iter::from_fn(move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            Some(f32::from_bits(state as u32))
        });
        let edges = [
            1.222_656_6_f32, // just above a bf16 tie: half's from_f64 rounds it down
            65504.0,
            65519.99,
            65520.0,
            6.0e-8,
            2.9802322e-8,
            3.389_531_4e38,
            f32::MAX,
            f32::MIN_POSITIVE,
            1.0e-45,
        ];
        edges
            .into_iter()
            .flat_map(|v| [v, -v])
            .chain(random.filter(|v| v.is_finite()).take(200_000))
    }

    #[test]
    fn rounding_to_16_bit_types_matches_a_single_rounding_from_f32() {
        for v in f32_samples() {
            let wide = v as f64;
            for (dtype, want) in [
                (DType::BF16, bf16::from_f32(v).to_f64()),
                (DType::F16, f16::from_f32(v).to_f64()),
            ] {
                let got = dtype.round(wide);
                assert!(got == want, "{dtype:?} {v:e}: {got:e}, want {want:e}");
            }
            assert_eq!(
                <bf16 as Element>::from_f64(wide).to_bits(),
                bf16::from_f32(v).to_bits()
            );
            assert_eq!(
                <f16 as Element>::from_f64(wide).to_bits(),
                f16::from_f32(v).to_bits()
            );
        }
    }

    #[test]
    fn the_value_half_rounds_wrongly_rounds_up() {
        let v = 1.222_656_6_f32 as f64;
        assert_eq!(DType::BF16.round(v), 1.226_562_5);
        assert_eq!(DType::BF16.round(-v), -1.226_562_5);
    }

    #[test]
    fn nan_infinity_and_signed_zero_pass_through() {
        for d in [DType::F16, DType::BF16] {
            assert!(d.round(f64::NAN).is_nan());
            assert_eq!(d.round(f64::INFINITY), f64::INFINITY);
            assert_eq!(d.round(-0.0).to_bits(), (-0.0f64).to_bits());
            assert_eq!(d.round(1e300), f64::INFINITY);
            assert_eq!(d.round(-1e300), f64::NEG_INFINITY);
        }
    }
}
