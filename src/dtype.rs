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
            DType::F16 => f16::from_f64(v).to_f64(),
            DType::BF16 => bf16::from_f64(v).to_f64(),
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

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    fn from_f64(v: f64) -> Self {
        f16::from_f64(v)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    fn from_f64(v: f64) -> Self {
        bf16::from_f64(v)
    }
}
