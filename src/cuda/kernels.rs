//! The kernel images compiled by build.rs, embedded in the binary.

/// What an embedded image holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// Machine code for exactly one architecture (`sm_XY`).
    Cubin,
    /// PTX, JIT-compiled by the driver for the device at load time.
    Ptx,
}

/// One compiled kernel source for one target.
#[derive(Debug)]
pub struct Image {
    /// The `kernels/` file it came from, without extension.
    pub source: &'static str,
    /// `sm_80`, `sm_90`, ... for CUBIN, `compute_80` for PTX.
    pub arch: &'static str,
    pub kind: ImageKind,
    /// CUBIN bytes, or NUL-terminated PTX text.
    pub data: &'static [u8],
    /// (template name expression, lowered symbol) of every instantiated kernel.
    pub names: &'static [(&'static str, &'static str)],
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// ptxas' resource report (registers, spills, shared memory) of every CUBIN, as printed
/// by NVRTC with `--ptxas-options=--verbose`, one `## <source> <arch>` section each.
pub const RESOURCE_REPORT: &str = include_str!(concat!(env!("OUT_DIR"), "/resource_usage.txt"));
