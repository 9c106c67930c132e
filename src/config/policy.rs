//! keras dtype policies: the `dtype` argument of a keras layer.
//!
//! A keras policy names two dtypes: the *compute* dtype (inputs are computed and
//! outputs returned in it) and the *variable* dtype (gamma and beta are stored in
//! it). Only five names exist for the dtypes warpnorm supports, so the policy is a
//! closed enum and an impossible pair (compute f32, variables f16) cannot be named.

use crate::{DType, Error, Result};

/// A keras `DTypePolicy` for the float types warpnorm supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DTypePolicy {
    /// `"float32"`: compute and variables in f32 (keras' default).
    Float32,
    /// `"float16"`: compute and variables in f16.
    Float16,
    /// `"bfloat16"`: compute and variables in bf16.
    BFloat16,
    /// `"mixed_float16"`: compute in f16, variables in f32.
    MixedFloat16,
    /// `"mixed_bfloat16"`: compute in bf16, variables in f32.
    MixedBFloat16,
}

impl DTypePolicy {
    /// The dtype the layer returns its output in.
    pub fn compute(self) -> DType {
        match self {
            DTypePolicy::Float32 => DType::F32,
            DTypePolicy::Float16 | DTypePolicy::MixedFloat16 => DType::F16,
            DTypePolicy::BFloat16 | DTypePolicy::MixedBFloat16 => DType::BF16,
        }
    }

    /// The dtype gamma and beta are stored in.
    pub fn variable(self) -> DType {
        match self {
            DTypePolicy::Float16 => DType::F16,
            DTypePolicy::BFloat16 => DType::BF16,
            _ => DType::F32,
        }
    }

    /// keras' name for the policy.
    pub fn name(self) -> &'static str {
        match self {
            DTypePolicy::Float32 => "float32",
            DTypePolicy::Float16 => "float16",
            DTypePolicy::BFloat16 => "bfloat16",
            DTypePolicy::MixedFloat16 => "mixed_float16",
            DTypePolicy::MixedBFloat16 => "mixed_bfloat16",
        }
    }

    /// The policy with this compute and variable dtype, if keras has one.
    pub fn from_dtypes(compute: DType, variable: DType) -> Option<DTypePolicy> {
        match (compute, variable) {
            (DType::F32, DType::F32) => Some(DTypePolicy::Float32),
            (DType::F16, DType::F16) => Some(DTypePolicy::Float16),
            (DType::BF16, DType::BF16) => Some(DTypePolicy::BFloat16),
            (DType::F16, DType::F32) => Some(DTypePolicy::MixedFloat16),
            (DType::BF16, DType::F32) => Some(DTypePolicy::MixedBFloat16),
            _ => None,
        }
    }

    /// Parses a policy name as keras' `DTypePolicy(name)` does (plain dtype names
    /// also accept warpnorm's short forms such as `bf16`).
    pub fn parse(name: &str) -> Result<DTypePolicy> {
        match name {
            "mixed_float16" => Ok(DTypePolicy::MixedFloat16),
            "mixed_bfloat16" => Ok(DTypePolicy::MixedBFloat16),
            _ => DType::parse(name)
                .and_then(|d| DTypePolicy::from_dtypes(d, d))
                .ok_or_else(|| {
                    Error::InvalidConfig(format!(
                        "unknown keras dtype policy `{name}` (expected float32, float16, \
                         bfloat16, mixed_float16 or mixed_bfloat16)"
                    ))
                }),
        }
    }
}

impl std::fmt::Display for DTypePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DTypePolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<DTypePolicy> {
        DTypePolicy::parse(s)
    }
}
