//! The CPU backend of [`ShardedLayerNorm`]: the GPU algorithm (per-shard statistics, one
//! collective, combine in rank order) in f64, through a host collective.

use super::{host_stats, ShardSaved, ShardedLayerNorm};
use crate::array::{Array, Storage};
use crate::dist::{Buf, BufMut};
use crate::layer::Gradients;
use crate::layout::Layout;
use crate::reference::{fast_variance, stats_grad};
use crate::shard_stats::StatsMode;
use crate::{Device, Error, NormKind, Result, Tensor};

/// A row's statistics over its whole group.
#[derive(Clone, Copy, Debug)]
struct RowStats {
    mean: f64,
    rstd: f64,
    /// d var / d (raw variance) of the fast form's clamp.
    dvar: f64,
}

/// Per-shard statistics of every row of `x` (`rows` x `cols`, row-major) over the elements
/// `mask` selects (all without one). A row with none selected has NaN means, as flax's
/// `mean(where=all false)`.
fn shard_stats(x: &[f64], mask: Option<&[bool]>, v: Layout, mode: StatsMode) -> Vec<f64> {
    let mut out = Vec::with_capacity(v.num_rows() * mode.floats_per_row());
    for (r, row) in x.chunks_exact(v.cols()).take(v.num_rows()).enumerate() {
        let selected = |c: usize| mask.is_none_or(|m| m[r * v.cols() + c]);
        let values = || {
            row.iter()
                .enumerate()
                .filter(|&(c, _)| selected(c))
                .map(|(_, &x)| x)
        };
        let n = values().count() as f64;
        let mean = values().sum::<f64>() / n;
        match mode {
            StatsMode::Means => {
                out.extend([mean, values().map(|x| x * x).sum::<f64>() / n]);
            }
            StatsMode::Moments => {
                let m2 = values().map(|x| (x - mean) * (x - mean)).sum::<f64>();
                out.extend([n, mean, m2]);
            }
        }
    }
    out
}

/// The group's mean and variance from every rank's `(n, mean, M2)` of a row, each rank
/// weighing `1 / k` (flax's `pmean` of the ranks' means, then of their mean squared
/// deviations from the group's mean), in position order.
fn merge_moments(parts: impl Iterator<Item = [f64; 3]> + Clone, k: f64) -> (f64, f64) {
    let mean = parts.clone().map(|p| p[1]).sum::<f64>() / k;
    let var = parts
        .map(|[n, m, m2]| m2 / n + (m - mean) * (m - mean))
        .sum::<f64>()
        / k;
    (mean, var)
}

/// Row `row`'s statistics from the combined buffer (see `kernels/sharded.cu`).
fn combine(
    stats: &[f64],
    row: usize,
    rows: usize,
    group: usize,
    eps: f64,
    kind: NormKind,
    mode: StatsMode,
) -> RowStats {
    let (mean, var, dvar) = match mode {
        StatsMode::Moments => {
            let parts = (0..group).map(|q| {
                let s = &stats[3 * (q * rows + row)..][..3];
                [s[0], s[1], s[2]]
            });
            let (mean, var) = merge_moments(parts, group as f64);
            (mean, var, 1.0)
        }
        StatsMode::Means => {
            let k = group as f64;
            let (mean_x, mean_sq) = (stats[2 * row] / k, stats[2 * row + 1] / k);
            if kind == NormKind::RmsNorm {
                (0.0, mean_sq, 1.0)
            } else {
                let (var, dvar) = fast_variance(mean_sq - mean_x * mean_x);
                (mean_x, var, dvar)
            }
        }
    };
    RowStats {
        mean,
        rstd: 1.0 / (var + eps).sqrt(),
        dvar,
    }
}

/// The unrounded f64 statistics the CPU backend saved (`Array::host` would round them to
/// the f32 the array is labelled with, as a GPU would have stored them).
fn host_values(a: &Array, what: &'static str) -> Result<Vec<f64>> {
    match &a.storage {
        Storage::Host(v) => Ok(v.clone()),
        _ => Err(Error::Unsupported(format!(
            "`{what}` is on a GPU but the layer is on the CPU"
        ))),
    }
}

/// Host values of an optional parameter.
fn param_values(p: &Option<Array>, what: &'static str) -> Result<Option<Vec<f64>>> {
    p.as_ref()
        .map(|a| a.host(what).map(Tensor::into_data))
        .transpose()
}

impl ShardedLayerNorm {
    fn centre(&self, st: &RowStats) -> f64 {
        if self.cfg.kind() == NormKind::LayerNorm {
            st.mean
        } else {
            0.0
        }
    }

    /// Every local rank's row statistics: per-shard statistics, then one collective.
    fn host_row_stats(
        &self,
        xs: &[Tensor],
        masks: Option<&[Vec<bool>]>,
        v: Layout,
    ) -> Result<Vec<Vec<RowStats>>> {
        let mode = self.mode();
        let k = self.group_size();
        let mut sends: Vec<Vec<f64>> = xs
            .iter()
            .enumerate()
            .map(|(i, x)| shard_stats(x.data(), masks.map(|m| &m[i][..]), v, mode))
            .collect();
        let combined = match mode {
            StatsMode::Moments => {
                let mut recvs = vec![vec![0.0; k * sends[0].len()]; sends.len()];
                let send: Vec<Buf<'_>> = sends.iter().map(|s| Buf::Host(s)).collect();
                let mut recv: Vec<BufMut<'_>> = recvs.iter_mut().map(|r| BufMut::Host(r)).collect();
                self.comm.all_gather(&send, &mut recv)?;
                recvs
            }
            StatsMode::Means => {
                let mut bufs: Vec<BufMut<'_>> = sends.iter_mut().map(|s| BufMut::Host(s)).collect();
                self.comm.all_reduce_sum(&mut bufs)?;
                sends
            }
        };
        let (eps, kind) = (self.cfg.eps(), self.cfg.kind());
        Ok(combined
            .iter()
            .map(|stats| {
                (0..v.num_rows())
                    .map(|r| combine(stats, r, v.num_rows(), k, eps, kind, mode))
                    .collect()
            })
            .collect())
    }

    pub(super) fn host_forward(
        &self,
        xs: &[Array],
        masks: Option<&[Vec<bool>]>,
        v: Layout,
    ) -> Result<(Vec<Array>, Vec<ShardSaved>)> {
        let xs: Vec<Tensor> = xs.iter().map(|x| x.host("x")).collect::<Result<_>>()?;
        let stats = self.host_row_stats(&xs, masks, v)?;
        let out_dtype = self.cfg.output_dtype(xs[0].dtype());
        let mut ys = Vec::with_capacity(xs.len());
        let mut saved = Vec::with_capacity(xs.len());
        for (i, ((x, st), p)) in xs.iter().zip(&stats).zip(&self.params).enumerate() {
            let scale = param_values(&p.scale, "scale")?;
            let bias = param_values(&p.bias, "bias")?;
            let mut y = Vec::with_capacity(x.numel());
            for (row, s) in x.data().chunks_exact(v.cols()).zip(st) {
                let centre = self.centre(s);
                y.extend(row.iter().enumerate().map(|(c, &x)| {
                    let g = scale.as_ref().map_or(1.0, |p| p[c]);
                    let b = bias.as_ref().map_or(0.0, |p| p[c]);
                    (x - centre) * s.rstd * g + b
                }));
            }
            ys.push(Array::from_tensor(
                &Device::Cpu,
                &Tensor::new(x.shape(), out_dtype, y)?,
            )?);
            saved.push(ShardSaved {
                mean: host_stats(st.iter().map(|s| s.mean).collect()),
                rstd: host_stats(st.iter().map(|s| s.rstd).collect()),
                dvar: self
                    .has_dvar()
                    .then(|| host_stats(st.iter().map(|s| s.dvar).collect())),
                mask: masks.map(|m| m[i].clone()),
                mask_on_gpu: None,
            });
        }
        Ok((ys, saved))
    }

    pub(super) fn host_backward(
        &self,
        xs: &[Array],
        dys: &[Array],
        saved: &[ShardSaved],
        v: Layout,
    ) -> Result<Vec<Gradients>> {
        let xs: Vec<Tensor> = xs.iter().map(|x| x.host("x")).collect::<Result<_>>()?;
        let dys: Vec<Tensor> = dys.iter().map(|d| d.host("dy")).collect::<Result<_>>()?;
        let mut stats = Vec::with_capacity(saved.len());
        for s in saved {
            let mean = host_values(&s.mean, "saved mean")?;
            let rstd = host_values(&s.rstd, "saved rstd")?;
            let dvar = match &s.dvar {
                Some(d) => host_values(d, "saved dvar")?,
                None => vec![1.0; v.num_rows()],
            };
            let rows: Vec<RowStats> = (0..v.num_rows())
                .map(|r| RowStats {
                    mean: mean[r],
                    rstd: rstd[r],
                    dvar: dvar[r],
                })
                .collect();
            stats.push(rows);
        }
        let scales: Vec<Option<Vec<f64>>> = self
            .params
            .iter()
            .map(|p| param_values(&p.scale, "scale"))
            .collect::<Result<_>>()?;
        let g = |i: usize, c: usize, dy: f64| dy * scales[i].as_ref().map_or(1.0, |s| s[c]);

        // Per-shard (sum g, sum g * xhat) per row, then one all-reduce over the group.
        let mut sums: Vec<Vec<f64>> = Vec::with_capacity(xs.len());
        for (i, ((x, dy), st)) in xs.iter().zip(&dys).zip(&stats).enumerate() {
            let mut s = Vec::with_capacity(2 * v.num_rows());
            for ((xr, dyr), rs) in x
                .data()
                .chunks_exact(v.cols())
                .zip(dy.data().chunks_exact(v.cols()))
                .zip(st)
            {
                let centre = self.centre(rs);
                let (mut a, mut b) = (0.0, 0.0);
                for (c, (&x, &d)) in xr.iter().zip(dyr).enumerate() {
                    let gy = g(i, c, d);
                    a += gy;
                    b += gy * (x - centre) * rs.rstd;
                }
                s.extend([a, b]);
            }
            sums.push(s);
        }
        {
            let mut bufs: Vec<BufMut<'_>> = sums.iter_mut().map(|s| BufMut::Host(s)).collect();
            self.comm.all_reduce_sum(&mut bufs)?;
        }

        let k = self.group_size() as f64;
        let layer_norm = self.cfg.kind() == NormKind::LayerNorm;
        let x_dtype = xs[0].dtype();
        let mut out = Vec::with_capacity(xs.len());
        for (i, (((x, dy), st), s)) in xs.iter().zip(&dys).zip(&stats).zip(&sums).enumerate() {
            let mut dx = Vec::with_capacity(x.numel());
            let mut dscale = vec![0.0; v.cols()];
            let mut dbias = vec![0.0; v.cols()];
            let rows = x
                .data()
                .chunks_exact(v.cols())
                .zip(dy.data().chunks_exact(v.cols()))
                .zip(st);
            let mask = saved[i].mask.as_deref();
            for (r, ((xr, dyr), rs)) in rows.enumerate() {
                let centre = self.centre(rs);
                let a = if layer_norm { s[2 * r] } else { 0.0 };
                let b = s[2 * r + 1];
                // Each selected element's weight in the group mean: 1 / (k * this rank's count).
                let selected = |c: usize| mask.is_none_or(|m| m[r * v.cols() + c]);
                let count = (0..v.cols()).filter(|&c| selected(c)).count() as f64;
                for (c, (&x, &d)) in xr.iter().zip(dyr).enumerate() {
                    let xhat = (x - centre) * rs.rstd;
                    let weight = if selected(c) { 1.0 / (k * count) } else { 0.0 };
                    let through_stats = stats_grad(weight, a + rs.dvar * xhat * b, xhat);
                    dx.push(rs.rstd * (g(i, c, d) - through_stats));
                    dscale[c] += d * xhat;
                    dbias[c] += d;
                }
            }
            let param = |on: bool, values: Vec<f64>| -> Result<Option<Array>> {
                if !on {
                    return Ok(None);
                }
                let t = Tensor::new(
                    self.axes.param_shape.clone(),
                    self.cfg.param_dtype(),
                    values,
                )?;
                Array::from_tensor(&Device::Cpu, &t).map(Some)
            };
            out.push(Gradients {
                dx: Array::from_tensor(&Device::Cpu, &Tensor::new(x.shape(), x_dtype, dx)?)?,
                dscale: param(self.params[i].scale.is_some(), dscale)?,
                dbias: param(self.params[i].bias.is_some(), dbias)?,
            });
        }
        Ok(out)
    }
}
