//! How the normalised axis of a call sits in memory ([`Layout`]), and the elements each of
//! its buffers must hold: shared by the checked ops, the kernels' launches, the emulator
//! and the sharded modules.

use crate::{Error, Result};

/// How the normalised axis sits in memory (in elements, not bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `rows` rows of `cols` elements; row r of x (and dx) starts at `r * x_stride`, of y
    /// (and dy) at `r * y_stride`. A mask, when given, is a contiguous `[rows, cols]`.
    Rows {
        rows: usize,
        cols: usize,
        x_stride: usize,
        y_stride: usize,
    },
    /// A contiguous `[outer, cols, inner]` normalised over `cols` (channels-first, e.g.
    /// `[N, C, H*W]` over C), without a transpose. Statistics are `[outer, inner]`.
    ChannelsFirst {
        outer: usize,
        cols: usize,
        inner: usize,
    },
}

impl Layout {
    /// Contiguous rows.
    pub fn rows(rows: usize, cols: usize) -> Self {
        Layout::Rows {
            rows,
            cols,
            x_stride: cols,
            y_stride: cols,
        }
    }

    /// Number of normalised rows (= entries of mean and rstd). Saturates at `usize::MAX`
    /// for a channels-first layout whose `outer * inner` overflows, which every call
    /// rejects.
    pub fn num_rows(&self) -> usize {
        match *self {
            Layout::Rows { rows, .. } => rows,
            Layout::ChannelsFirst { outer, inner, .. } => outer.saturating_mul(inner),
        }
    }

    /// Length of the normalised axis.
    pub fn cols(&self) -> usize {
        match *self {
            Layout::Rows { cols, .. } | Layout::ChannelsFirst { cols, .. } => cols,
        }
    }

    /// Checks the layout and computes, with checked arithmetic, how many elements each
    /// buffer of a call must hold. Every extent also fits the kernels' signed 64-bit
    /// offsets, so no index a kernel forms from it can wrap.
    pub(crate) fn extents(&self) -> Result<Extents> {
        let bad = |msg: String| {
            Err(Error::Shape {
                what: "layout",
                expected: msg,
                got: format!("{self:?}"),
            })
        };
        let cols = self.cols();
        if cols == 0 {
            return bad("cols >= 1".into());
        }
        if cols > i32::MAX as usize {
            return bad("cols < 2^31".into());
        }
        let (x_stride, y_stride) = strides(self);
        if x_stride < cols || y_stride < cols {
            return bad(format!("row strides >= cols ({cols})"));
        }
        let too_large = |what: &'static str| Error::TooLarge {
            what,
            msg: format!("{self:?} spans more than 2^63 - 1 elements"),
        };
        let fits = |what: &'static str, n: Option<usize>| {
            n.filter(|&n| n <= i64::MAX as usize)
                .ok_or_else(|| too_large(what))
        };
        let (rows, elems) = match *self {
            Layout::Rows { rows, .. } => (rows, rows.checked_mul(cols)),
            Layout::ChannelsFirst { outer, inner, .. } => {
                let rows = fits("layout rows (outer * inner)", outer.checked_mul(inner))?;
                (rows, rows.checked_mul(cols))
            }
        };
        // The last row starts `stride` elements after the one before it and holds `cols`.
        let span = |stride: usize| match rows {
            0 => Some(0),
            _ => (rows - 1).checked_mul(stride)?.checked_add(cols),
        };
        Ok(Extents {
            rows: fits("layout rows", Some(rows))?,
            cols,
            x: fits("x (rows at x_stride)", span(x_stride))?,
            y: fits("y (rows at y_stride)", span(y_stride))?,
            mask: fits("mask (rows * cols)", elems)?,
        })
    }
}

/// Elements each buffer of a call on a checked [`Layout`] must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Extents {
    /// Rows, and the entries of mean and rstd.
    pub rows: usize,
    /// The normalised axis, and the entries of scale, bias, dscale and dbias.
    pub cols: usize,
    /// x and dx.
    pub x: usize,
    /// y and dy.
    pub y: usize,
    /// A contiguous `[rows, cols]` mask.
    pub mask: usize,
}

/// The row strides of x (and dx) and of y (and dy).
pub(crate) fn strides(layout: &Layout) -> (usize, usize) {
    match *layout {
        Layout::Rows {
            x_stride, y_stride, ..
        } => (x_stride, y_stride),
        Layout::ChannelsFirst { cols, .. } => (cols, cols),
    }
}

/// A buffer of `len` elements where the call needs `need`.
pub(crate) fn check_len(what: &'static str, len: usize, need: usize) -> Result<()> {
    if len < need {
        return Err(Error::Shape {
            what,
            expected: format!("at least {need} elements"),
            got: format!("{len} elements"),
        });
    }
    Ok(())
}
