//! Where each element of a row lives, in the input and in the parameters.
//!
//! A "row" is one set of elements that share statistics: fix the coordinates of the
//! non-reduced axes, vary the reduced ones. Any element's flat index splits into a
//! part from the row's coordinates and a part from its position within the row, and
//! so does its parameter index (feature axes may be reduced or not), so four offset
//! tables describe any axis configuration without transposing anything.

use std::mem::size_of;

use crate::config::Axes;
use crate::limits::{check_host_alloc, checked_product};
use crate::tensor::strides;
use crate::Result;

/// Offsets of rows and of positions within a row, in the input and in the parameters.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// Flat input offset of each row's first element (row-major over non-reduced axes).
    pub row_base: Vec<usize>,
    /// Parameter offset contributed by each row's coordinates (feature axes not reduced).
    pub row_param: Vec<usize>,
    /// Flat input offset of each position within a row (row-major over reduced axes).
    pub inner: Vec<usize>,
    /// Parameter offset contributed by each position (feature axes that are reduced).
    pub inner_param: Vec<usize>,
}

impl Layout {
    /// The tables for `x_shape`; an error, before anything is allocated, when they would
    /// not fit in host memory (an empty x can still have absurdly many rows, or an
    /// absurdly long row: `[0, 2^40]`).
    pub fn new(x_shape: &[usize], axes: &Axes) -> Result<Layout> {
        let rank = x_shape.len();
        let x_strides = strides(x_shape);
        let p_strides_dense = strides(&axes.param_shape);
        let mut p_strides = vec![0; rank];
        for (i, &a) in axes.features.iter().enumerate() {
            p_strides[a] = p_strides_dense[i];
        }
        let kept: Vec<usize> = (0..rank).filter(|a| !axes.reduction.contains(a)).collect();
        for (what, along) in [
            ("x shape (rows)", &kept),
            ("x shape (row length)", &axes.reduction),
        ] {
            let dims: Vec<usize> = along.iter().map(|&a| x_shape[a]).collect();
            // Two tables of usize each.
            check_host_alloc(what, checked_product(what, &dims)?, 2 * size_of::<usize>())?;
        }
        Ok(Layout {
            row_base: offsets(x_shape, &kept, &x_strides),
            row_param: offsets(x_shape, &kept, &p_strides),
            inner: offsets(x_shape, &axes.reduction, &x_strides),
            inner_param: offsets(x_shape, &axes.reduction, &p_strides),
        })
    }

    pub fn rows(&self) -> usize {
        self.row_base.len()
    }

    pub fn row_len(&self) -> usize {
        self.inner.len()
    }

    /// `(input index, parameter index)` of position `j` of row `r`.
    pub fn at(&self, r: usize, j: usize) -> (usize, usize) {
        (
            self.row_base[r] + self.inner[j],
            self.row_param[r] + self.inner_param[j],
        )
    }
}

/// `sum(coord[a] * stride[a] for a in axes)` for every multi-index over `axes`,
/// row-major (the last listed axis varies fastest).
fn offsets(shape: &[usize], axes: &[usize], stride: &[usize]) -> Vec<usize> {
    // With an empty axis there are none; building the others first could take forever.
    if axes.iter().any(|&a| shape[a] == 0) {
        return Vec::new();
    }
    let mut out = vec![0usize];
    for &a in axes {
        out = out
            .iter()
            .flat_map(|&base| (0..shape[a]).map(move |c| base + c * stride[a]))
            .collect();
    }
    out
}
