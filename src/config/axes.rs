//! Axis arguments and their resolution against a tensor's rank.
//!
//! flax and keras disagree on the details: flax wraps negative axes and silently
//! merges duplicates (`_canonicalize_axes` builds a set); keras sorts the list and
//! lets the backend reject duplicates (`jnp.mean(axis=(1, 1))` raises). Both end
//! up with ascending axes, which is also the order of the parameter's dimensions.

use std::collections::BTreeSet;

use crate::{Error, Result};

/// Axes resolved against a concrete input shape: ascending, non-negative, unique.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Axes {
    /// Axes the statistics are computed over.
    pub reduction: Vec<usize>,
    /// Axes the scale and bias vary along (broadcast over all others).
    pub features: Vec<usize>,
    /// Sizes of the input at the feature axes, in axis order: the shape of scale/bias.
    pub param_shape: Vec<usize>,
}

impl Axes {
    /// Number of independent statistics ("rows"): the product of the non-reduced sizes.
    pub fn rows(&self, x_shape: &[usize]) -> usize {
        (0..x_shape.len())
            .filter(|a| !self.reduction.contains(a))
            .map(|a| x_shape[a])
            .product()
    }

    /// Number of elements each statistic is computed from.
    pub fn row_len(&self, x_shape: &[usize]) -> usize {
        self.reduction.iter().map(|&a| x_shape[a]).product()
    }
}

/// Anything that names one axis or several: `-1`, `[-2, -1]`, `vec![0, 2]`.
pub trait IntoAxes {
    /// The axes as signed indices (negative counts from the end).
    fn into_axes(self) -> Vec<i64>;
}

impl IntoAxes for i64 {
    fn into_axes(self) -> Vec<i64> {
        vec![self]
    }
}

impl IntoAxes for i32 {
    fn into_axes(self) -> Vec<i64> {
        vec![self.into()]
    }
}

impl<T: Into<i64>, const N: usize> IntoAxes for [T; N] {
    fn into_axes(self) -> Vec<i64> {
        self.into_iter().map(Into::into).collect()
    }
}

impl<T: Into<i64>> IntoAxes for Vec<T> {
    fn into_axes(self) -> Vec<i64> {
        self.into_iter().map(Into::into).collect()
    }
}

impl<T: Into<i64> + Copy> IntoAxes for &[T] {
    fn into_axes(self) -> Vec<i64> {
        self.iter().map(|&a| a.into()).collect()
    }
}

/// `axis` as an index into a shape of `rank`, or [`Error::AxisOutOfRange`].
pub(crate) fn wrap(axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if (-r..r).contains(&axis) {
        Ok(axis.rem_euclid(r) as usize)
    } else {
        Err(Error::AxisOutOfRange { axis, rank })
    }
}

/// flax's rule: wrap, then deduplicate into ascending order.
pub(crate) fn canonical_flax(axes: &[i64], rank: usize) -> Result<Vec<usize>> {
    let set = axes
        .iter()
        .map(|&a| wrap(a, rank))
        .collect::<Result<BTreeSet<usize>>>()?;
    Ok(set.into_iter().collect())
}

/// keras' rule: wrap, reject an axis named twice (also as `-1` and `rank-1`), sort.
pub(crate) fn canonical_keras(axes: &[i64], rank: usize) -> Result<Vec<usize>> {
    let mut seen = BTreeSet::new();
    for &a in axes {
        if !seen.insert(wrap(a, rank)?) {
            return Err(Error::DuplicateAxis {
                axis: a,
                option: "axis",
            });
        }
    }
    Ok(seen.into_iter().collect())
}

/// Rejects a literal duplicate before the rank is known (keras' `[1, 1]`).
pub(crate) fn reject_literal_duplicates(axes: &[i64], option: &'static str) -> Result<()> {
    let mut seen = BTreeSet::new();
    match axes.iter().find(|&&a| !seen.insert(a)) {
        Some(&axis) => Err(Error::DuplicateAxis { axis, option }),
        None => Ok(()),
    }
}
