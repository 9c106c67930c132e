//! The `warpnorm` command's machinery (feature `cli`): benchmarks, the kernels' self-test,
//! fixture verification, plots and tables.
//!
//! Not part of the library's API and not covered by semver: it is public (and hidden from
//! the docs) only because the command (`src/bin/warpnorm`) and the test suites are separate
//! crates that use it. A library user needs none of it.

pub mod bench;
pub mod fixture;
pub mod kernel_matrix;
pub mod plot;
pub mod selftest;
pub mod table;
pub mod verify;
