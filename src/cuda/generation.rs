//! Which generation of the kernels a call runs, so that one GPU run can time today's
//! kernels (v1) against their successors (v2) side by side until measurements decide
//! which paths to keep (docs/TUNING.md, T9 onwards).

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use crate::{Error, Result};

/// The environment variable that sets the default generation: `v1` or `v2`.
pub const KERNELS_ENV: &str = "WARPNORM_KERNELS";

/// A generation of the kernels. v2 differs from v1 in: dscale and dbias summed by one
/// finalize launch that spreads the partial rows over 16 warps per 32 columns
/// (`kernels/finalize_v2.cuh`), a forward grid of whole waves sized from the chosen
/// kernel's occupancy, a forward CTA kernel with several loads of x in flight per thread,
/// and a backward for rows past the register tiers that reads x and
/// dy once, the row stashed in shared memory by one CTA or, on sm_90, split over a
/// thread-block cluster (`kernels/bwd_v2_stash.cuh`, `kernels/bwd_v2_cluster.cuh`).
/// Everything else is shared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KernelGeneration {
    /// Today's kernels: the default until a GPU run says otherwise.
    #[default]
    V1,
    V2,
}

impl KernelGeneration {
    pub const ALL: [KernelGeneration; 2] = [KernelGeneration::V1, KernelGeneration::V2];

    /// The generation `WARPNORM_KERNELS` names (read once per process), v1 when it is unset.
    pub fn from_env() -> Result<Self> {
        static FROM_ENV: OnceLock<std::result::Result<KernelGeneration, String>> = OnceLock::new();
        FROM_ENV
            .get_or_init(|| match std::env::var(KERNELS_ENV) {
                Ok(v) => v.parse().map_err(|e: Error| e.to_string()),
                Err(std::env::VarError::NotPresent) => Ok(Self::default()),
                Err(std::env::VarError::NotUnicode(v)) => {
                    Err(format!("{KERNELS_ENV}={v:?}: expected v1 or v2"))
                }
            })
            .clone()
            .map_err(Error::InvalidConfig)
    }

    pub const fn name(self) -> &'static str {
        match self {
            KernelGeneration::V1 => "v1",
            KernelGeneration::V2 => "v2",
        }
    }
}

impl FromStr for KernelGeneration {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "v1" => Ok(KernelGeneration::V1),
            "v2" => Ok(KernelGeneration::V2),
            other => Err(Error::InvalidConfig(format!(
                "kernel generation `{other}`: expected v1 or v2 (as in {KERNELS_ENV})"
            ))),
        }
    }
}

impl fmt::Display for KernelGeneration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_refused() {
        for g in KernelGeneration::ALL {
            assert_eq!(g.name().parse::<KernelGeneration>().unwrap(), g);
        }
        let err = "v3".parse::<KernelGeneration>().unwrap_err().to_string();
        assert!(err.contains("v3") && err.contains("v1 or v2"), "{err}");
    }
}
