//! Rows gathered across the ranks of a group, normalized, and scattered back.
//!
//! The unsharded reference is the world-of-one case of this code, so there is a
//! single implementation of the mathematics for both.

use super::layout::Layout;
use super::row::RowStats;
use crate::config::NormKind;
use crate::groups::AxisGroups;

/// One rank's inputs as plain values (already checked against the config).
pub(crate) struct RankInput<'a> {
    pub x: &'a [f64],
    pub scale: Option<&'a [f64]>,
    pub bias: Option<&'a [f64]>,
    pub mask: Option<&'a [bool]>,
}

/// One rank's exact (unrounded) forward results.
pub(crate) struct RankForward {
    pub y: Vec<f64>,
    pub mean: Vec<f64>,
    pub rstd: Vec<f64>,
}

/// One rank's exact (unrounded) gradients.
pub(crate) struct RankGrads {
    pub dx: Vec<f64>,
    /// The magnitude of each dx's terms (`row::Dx`).
    pub dx_magnitude: Vec<f64>,
    pub dscale: Vec<f64>,
    pub dbias: Vec<f64>,
}

pub(crate) struct Engine<'a> {
    pub kind: NormKind,
    pub fast: bool,
    pub eps: f64,
    pub layout: Layout,
    pub param_len: usize,
    pub ranks: Vec<RankInput<'a>>,
    pub groups: &'a AxisGroups,
}

/// A row's elements from every rank of its group.
struct Gathered {
    x: Vec<f64>,
    w: Vec<f64>,
    /// `(rank, input index, parameter index)` of each element.
    at: Vec<(usize, usize, usize)>,
}

impl Engine<'_> {
    /// Elements of row `r` across `members`, with their weight in the group mean:
    /// `m_i / (k * n_rank)` (NaN for a rank whose row has no selected element, as
    /// `mean(where=all false)` is NaN in flax).
    fn gather(&self, members: &[usize], r: usize) -> Gathered {
        let n = self.layout.row_len();
        let k = members.len() as f64;
        let mut g = Gathered {
            x: Vec::with_capacity(n * members.len()),
            w: Vec::with_capacity(n * members.len()),
            at: Vec::with_capacity(n * members.len()),
        };
        for &q in members {
            let rank = &self.ranks[q];
            let selected = |i: usize| rank.mask.is_none_or(|m| m[i]);
            let count = (0..n).filter(|&j| selected(self.layout.at(r, j).0)).count();
            for j in 0..n {
                let (i, p) = self.layout.at(r, j);
                let w = if count == 0 {
                    f64::NAN
                } else if selected(i) {
                    1.0 / (k * count as f64)
                } else {
                    0.0
                };
                g.x.push(rank.x[i]);
                g.w.push(w);
                g.at.push((q, i, p));
            }
        }
        g
    }

    fn stats(&self, g: &Gathered) -> RowStats {
        RowStats::new(self.kind, self.fast, self.eps, &g.x, &g.w)
    }

    /// y (unrounded), mean and rstd for every rank.
    pub fn forward(&self) -> Vec<RankForward> {
        let mut out: Vec<RankForward> = self
            .ranks
            .iter()
            .map(|r| RankForward {
                y: vec![0.0; r.x.len()],
                mean: vec![0.0; self.layout.rows()],
                rstd: vec![0.0; self.layout.rows()],
            })
            .collect();
        for members in self.groups.groups() {
            for r in 0..self.layout.rows() {
                let g = self.gather(members, r);
                let st = self.stats(&g);
                for (&x, &(q, i, p)) in g.x.iter().zip(&g.at) {
                    let rank = &self.ranks[q];
                    let scale = rank.scale.map_or(1.0, |s| s[p]);
                    let bias = rank.bias.map_or(0.0, |b| b[p]);
                    out[q].y[i] = st.xhat(x) * scale + bias;
                }
                for &q in members {
                    out[q].mean[r] = st.mean;
                    out[q].rstd[r] = st.rstd;
                }
            }
        }
        out
    }

    /// dx, dscale, dbias (unrounded) for every rank, given each rank's cotangent.
    /// Parameters are per rank, so their gradients sum over the rank's own rows only.
    pub fn backward(&self, dys: &[Vec<f64>]) -> Vec<RankGrads> {
        let mut out: Vec<RankGrads> = self
            .ranks
            .iter()
            .map(|r| RankGrads {
                dx: vec![0.0; r.x.len()],
                dx_magnitude: vec![0.0; r.x.len()],
                dscale: vec![0.0; self.param_len],
                dbias: vec![0.0; self.param_len],
            })
            .collect();
        for members in self.groups.groups() {
            for r in 0..self.layout.rows() {
                let g = self.gather(members, r);
                let st = self.stats(&g);
                let dy: Vec<f64> = g.at.iter().map(|&(q, i, _)| dys[q][i]).collect();
                let gy: Vec<f64> =
                    g.at.iter()
                        .zip(&dy)
                        .map(|(&(q, _, p), &d)| d * self.ranks[q].scale.map_or(1.0, |s| s[p]))
                        .collect();
                let dx = st.dx(self.kind, &g.x, &g.w, &gy);
                for (((&(q, i, p), &x), &d), dx) in g.at.iter().zip(&g.x).zip(&dy).zip(dx) {
                    let o = &mut out[q];
                    o.dx[i] = dx.value;
                    o.dx_magnitude[i] = dx.magnitude;
                    o.dscale[p] += d * st.xhat(x);
                    o.dbias[p] += d;
                }
            }
        }
        out
    }
}
