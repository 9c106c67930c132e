//! Distributed normalization: which ranks combine statistics, and how.
//!
//! Only the grouping rules live here for now; collective backends plug in beside
//! them.

pub mod groups;

pub use groups::AxisGroups;
