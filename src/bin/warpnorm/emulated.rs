//! The kernels' CPU emulation, where this build has it (cargo feature `emulator`): what
//! `check` and `demo` run on a machine without a GPU.

use warpnorm::tooling::selftest::Kernels;

/// Whether this build has the emulation.
pub const BUILT: bool = cfg!(feature = "emulator");

/// The emulation as a self-test subject, when built in.
pub fn subject() -> Option<Kernels> {
    #[cfg(feature = "emulator")]
    return Some(Kernels::Emulator);
    #[cfg(not(feature = "emulator"))]
    None
}
