//! GPU timing of warpnorm's LayerNorm, with a device-to-device copy as the ceiling.
//!
//! A LayerNorm is memory-bound, so the figure that matters is how close it comes to the
//! bandwidth a plain copy reaches on the same device, measured in the same run. This module
//! times the forward pass, the backward pass and forward + backward with CUDA events
//! (warm-up, then the median of many iterations), and reports GB/s of the bytes a LayerNorm
//! must move (see [`Problem::bytes`]) and the percentage of the measured copy bandwidth.
//!
//! Each iteration uses the next of several distinct buffer sets (x, y, dy, dx and the
//! statistics), so a set is never re-read while it could still be in L2: results are DRAM
//! numbers, not cache numbers.
//!
//! The pure parts (byte accounting, sizing, medians, parsing, the table) work without a GPU;
//! [`run`] returns [`Error::NoDevice`] on a machine without one.
//!
//! ```no_run
//! let records = warpnorm::tooling::bench::run(&warpnorm::tooling::bench::BenchOptions::default())?;
//! print!("{}", warpnorm::tooling::bench::render_table(&records));
//! # Ok::<(), warpnorm::Error>(())
//! ```

use serde::{Deserialize, Serialize};

use crate::ops::{KernelGeneration, NormSpec};
use crate::{DType, Error, NormKind, Result};

mod gpu;

pub use gpu::{Case, GpuTimer};

/// Row lengths the comparison covers by default: transformer widths from tiny to 64 Ki.
pub const DEFAULT_COLS: [usize; 13] = [
    128, 256, 512, 768, 1024, 2048, 4096, 5120, 8192, 12288, 16384, 32768, 65536,
];

/// Default size of x (one activation tensor): far past any L2 (50-60 MB on H100/H200).
pub const DEFAULT_BYTES: u64 = 256 << 20;

/// Never more sets than this, whatever the footprint asks for.
const MAX_SETS: u64 = 64;

/// What one timed iteration runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pass {
    /// Training forward: y and the statistics (mean, rstd).
    Fwd,
    /// Backward alone: dx, dscale, dbias from the statistics of an earlier forward.
    Bwd,
    /// Forward then backward, as one training step of the layer.
    FwdBwd,
    /// Device-to-device copy of x's bytes: the bandwidth ceiling.
    Copy,
}

impl Pass {
    /// The name used in records, tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Pass::Fwd => "fwd",
            Pass::Bwd => "bwd",
            Pass::FwdBwd => "fwd_bwd",
            Pass::Copy => "copy",
        }
    }

    /// Parses `fwd`, `bwd`, `fwd_bwd` (or `fwd+bwd`) and `copy`.
    pub fn parse(s: &str) -> Result<Pass> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fwd" | "forward" => Ok(Pass::Fwd),
            "bwd" | "backward" => Ok(Pass::Bwd),
            "fwd_bwd" | "fwd+bwd" | "fwdbwd" => Ok(Pass::FwdBwd),
            "copy" => Ok(Pass::Copy),
            _ => Err(Error::InvalidConfig(format!(
                "unknown pass `{s}` (expected fwd, bwd, fwd_bwd or copy)"
            ))),
        }
    }

    fn needs_backward_buffers(self) -> bool {
        matches!(self, Pass::Bwd | Pass::FwdBwd)
    }
}

impl std::fmt::Display for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which normalization a problem times.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    /// LayerNorm with scale and bias; saves mean and rstd.
    #[default]
    LayerNorm,
    /// RMSNorm with a scale and no bias; saves rstd.
    RmsNorm,
}

impl Norm {
    /// The name used in records and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Norm::LayerNorm => "layer_norm",
            Norm::RmsNorm => "rms_norm",
        }
    }

    /// Parses `layer_norm` (or `layer`, `ln`) and `rms_norm` (or `rms`).
    pub fn parse(s: &str) -> Result<Norm> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "layer_norm" | "layernorm" | "layer" | "ln" => Ok(Norm::LayerNorm),
            "rms_norm" | "rmsnorm" | "rms" => Ok(Norm::RmsNorm),
            _ => Err(Error::InvalidConfig(format!(
                "unknown normalization `{s}` (expected layer_norm or rms_norm)"
            ))),
        }
    }

    pub fn kind(self) -> NormKind {
        match self {
            Norm::LayerNorm => NormKind::LayerNorm,
            Norm::RmsNorm => NormKind::RmsNorm,
        }
    }

    fn has_bias(self) -> bool {
        self == Norm::LayerNorm
    }

    /// f32 statistics a training forward saves per row.
    fn stats_per_row(self) -> u64 {
        match self {
            Norm::LayerNorm => 2,
            Norm::RmsNorm => 1,
        }
    }
}

impl std::fmt::Display for Norm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Serialises a [`DType`] by its short name, so records match the command line.
mod short_dtype {
    use super::DType;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &DType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(d.short_name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DType, D::Error> {
        let name = String::deserialize(d)?;
        DType::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown dtype `{name}`")))
    }
}

/// One normalization problem: `rows` rows of `cols` elements of `dtype` (x, y, dy and dx
/// all in `dtype`), with scale (and, for LayerNorm, bias) in `param_dtype`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Problem {
    pub dtype: DType,
    pub param_dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub norm: Norm,
}

impl Problem {
    /// The LayerNorm problem whose x takes about `bytes`: `rows = bytes / (cols * size)`,
    /// at least 1.
    pub fn for_bytes(dtype: DType, param_dtype: DType, cols: usize, bytes: u64) -> Result<Problem> {
        Ok(Problem {
            dtype,
            param_dtype,
            rows: rows_for_bytes(cols, dtype, bytes)?,
            cols,
            norm: Norm::LayerNorm,
        })
    }

    /// The same shapes, normalised by `norm`.
    pub fn with_norm(self, norm: Norm) -> Problem {
        Problem { norm, ..self }
    }

    /// Elements of x.
    pub fn elems(&self) -> u64 {
        self.rows as u64 * self.cols as u64
    }

    /// Bytes of x (and of y, dy, dx).
    pub fn x_bytes(&self) -> u64 {
        self.elems() * self.dtype.size() as u64
    }

    /// Bytes the normalization must move for `pass`, whatever the implementation does
    /// inside (for RMSNorm drop the bias, dbias and mean):
    ///
    /// - forward: read x, scale, bias; write y, mean and rstd (f32 per row);
    /// - backward: read x, dy, scale, mean, rstd; write dx, dscale, dbias;
    /// - forward + backward: the sum of the two;
    /// - copy: read x, write a buffer of the same size.
    ///
    /// Scratch traffic (partial sums, re-reads of a row that did not fit on chip) is not
    /// counted: it is a cost of the implementation, not of the problem.
    pub fn bytes(&self, pass: Pass) -> u64 {
        let act = self.x_bytes();
        let stats = 4 * self.norm.stats_per_row() * self.rows as u64;
        let param = self.cols as u64 * self.param_dtype.size() as u64;
        // scale, and the bias for LayerNorm: read forward, their gradients written backward
        let params = if self.norm.has_bias() { 2 } else { 1 } * param;
        let fwd = act + params + act + stats;
        let bwd = 2 * act + param + stats + act + params;
        match pass {
            Pass::Fwd => fwd,
            Pass::Bwd => bwd,
            Pass::FwdBwd => fwd + bwd,
            Pass::Copy => 2 * act,
        }
    }

    /// Device bytes one buffer set takes (x, y, mean, rstd, and dy, dx for a backward).
    fn set_bytes(&self, backward: bool) -> u64 {
        let per = 2 * self.x_bytes() + 2 * 4 * self.rows as u64;
        if backward {
            per + 2 * self.x_bytes()
        } else {
            per
        }
    }
}

/// Rows of `cols` elements of `dtype` that fit in `bytes` (at least 1).
pub fn rows_for_bytes(cols: usize, dtype: DType, bytes: u64) -> Result<usize> {
    if cols == 0 {
        return Err(Error::InvalidConfig(
            "row length (cols) must be >= 1".into(),
        ));
    }
    if bytes == 0 {
        return Err(Error::InvalidConfig(
            "the activation size must be > 0 bytes".into(),
        ));
    }
    let row = (cols as u64).saturating_mul(dtype.size() as u64);
    usize::try_from((bytes / row).max(1))
        .map_err(|_| Error::InvalidConfig(format!("{bytes} bytes is too large for this platform")))
}

/// How many buffer sets to rotate through: enough that the sets together touch
/// `footprint` bytes (at least 2, so consecutive iterations never share buffers, at most
/// 64), and no more than fit in `budget` bytes of `alloc_per_set` each. 0 when not even
/// one set fits.
pub fn rotation_sets(
    touched_per_iter: u64,
    footprint: u64,
    alloc_per_set: u64,
    budget: u64,
) -> usize {
    let want = footprint
        .div_ceil(touched_per_iter.max(1))
        .clamp(2, MAX_SETS);
    let fit = budget / alloc_per_set.max(1);
    want.min(fit) as usize
}

/// The median of `samples` (mean of the middle two for an even count); None when empty.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Decimal GB/s of `bytes` moved in `ms` milliseconds (0 for a non-positive time).
pub fn gbps(bytes: u64, ms: f64) -> f64 {
    if ms > 0.0 {
        bytes as f64 / (ms * 1e-3) / 1e9
    } else {
        0.0
    }
}

/// Parses a size: a number with an optional unit, `B`, `KiB`/`K`, `MiB`/`M`, `GiB`/`G`
/// (powers of 1024) or `KB`, `MB`, `GB` (powers of 1000); case-insensitive.
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        Error::InvalidConfig(format!(
            "cannot read `{s}` as a size (e.g. 256MiB, 1GiB, 100MB)"
        ))
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    let bytes = value * scale as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// Parses a comma-separated list of row lengths (`128,1024,4096`).
pub fn parse_cols(s: &str) -> Result<Vec<usize>> {
    let cols: Vec<usize> = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Error::InvalidConfig(format!(
                "`{p}` is not a row length >= 1"
            ))),
        })
        .collect::<Result<_>>()?;
    if cols.is_empty() {
        return Err(Error::InvalidConfig("no row lengths given".into()));
    }
    Ok(cols)
}

/// What [`run`] measures.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchOptions {
    /// CUDA device ordinal.
    pub device: usize,
    pub dtypes: Vec<DType>,
    /// Scale and bias dtype; `None`: the same as x (as PyTorch's layer_norm takes them).
    pub param_dtype: Option<DType>,
    pub cols: Vec<usize>,
    /// Bytes of x per problem; rows follow (see [`rows_for_bytes`]).
    pub bytes: u64,
    /// Passes to time besides the copy, which every problem gets as its ceiling.
    pub passes: Vec<Pass>,
    /// Untimed iterations before the timed ones.
    pub warmup: usize,
    /// Timed iterations; the record holds their median.
    pub iters: usize,
    /// Buffer sets to rotate through; `None` sizes them from the L2 (see [`rotation_sets`]).
    pub sets: Option<usize>,
    /// LayerNorm or RMSNorm.
    pub norm: Norm,
    /// Epsilon (the value does not change the timing; kept for completeness).
    pub eps: f32,
    /// Kernel generations to time on the same buffers, side by side (records named
    /// `warpnorm-v1`, `warpnorm-v2`); empty: the default (`WARPNORM_KERNELS`, else v1),
    /// recorded as `warpnorm`.
    pub kernels: Vec<KernelGeneration>,
}

/// The longest row the kernels take (`i32::MAX` elements).
pub const MAX_BENCH_COLS: usize = i32::MAX as usize;

/// The most warm-up or timed iterations one case may ask for: hours of GPU time on the
/// smallest shapes, and a bound on the events allocated for the timings.
pub const MAX_BENCH_ITERS: usize = 1 << 20;

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            device: 0,
            dtypes: vec![DType::F32, DType::F16, DType::BF16],
            param_dtype: None,
            cols: DEFAULT_COLS.to_vec(),
            bytes: DEFAULT_BYTES,
            passes: vec![Pass::Fwd, Pass::FwdBwd],
            warmup: 10,
            iters: 100,
            sets: None,
            norm: Norm::LayerNorm,
            eps: 1e-5,
            kernels: Vec::new(),
        }
    }
}

impl BenchOptions {
    /// Rejects options [`run`] cannot honour, before any device work.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidConfig(m.to_string()));
        if self.dtypes.is_empty() {
            return bad("no dtypes to benchmark");
        }
        if self.cols.is_empty() || self.cols.contains(&0) {
            return bad("row lengths must be given and >= 1");
        }
        if let Some(c) = self.cols.iter().find(|&&c| c > MAX_BENCH_COLS) {
            return Err(Error::TooLarge {
                what: "cols",
                msg: format!("a row of {c} elements is longer than the kernels' {MAX_BENCH_COLS}"),
            });
        }
        for (what, n) in [("warmup", self.warmup), ("iters", self.iters)] {
            if n > MAX_BENCH_ITERS {
                return Err(Error::TooLarge {
                    what,
                    msg: format!("{n} iterations is more than the {MAX_BENCH_ITERS} allowed"),
                });
            }
        }
        if self.bytes == 0 {
            return bad("the activation size must be > 0 bytes");
        }
        if self.iters == 0 {
            return bad("at least one timed iteration is needed");
        }
        if self.sets == Some(0) {
            return bad("at least one buffer set is needed");
        }
        if self.kernels.is_empty() {
            // The default generation comes from WARPNORM_KERNELS, which may name none.
            KernelGeneration::from_env()?;
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("epsilon must be finite and > 0");
        }
        for &d in &self.dtypes {
            let p = self.param_dtype.unwrap_or(d);
            if !(p == d || p == DType::F32) {
                return Err(Error::Unsupported(format!(
                    "{d} activations with {p} parameters (parameters are x's dtype or float32)"
                )));
            }
        }
        Ok(())
    }
}

/// The JSON fields of a [`BenchRecord`] (`warpnorm bench --json`; documented in
/// bench/README.md, read by bench/compare.py).
pub const RECORD_FIELDS: [&str; 17] = [
    "impl",
    "norm",
    "dtype",
    "param_dtype",
    "cols",
    "rows",
    "pass",
    "bytes",
    "ms",
    "ms_min",
    "ms_max",
    "iters",
    "gbps",
    "copy_gbps",
    "pct_copy",
    "sets",
    "device",
];

/// One measurement: an implementation, a problem and a pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchRecord {
    /// `warpnorm`, or `copy` for the ceiling.
    #[serde(rename = "impl")]
    pub implementation: String,
    /// What was normalised (records written before RMSNorm was timed are LayerNorm).
    #[serde(default)]
    pub norm: Norm,
    #[serde(with = "short_dtype")]
    pub dtype: DType,
    #[serde(with = "short_dtype")]
    pub param_dtype: DType,
    pub cols: usize,
    pub rows: usize,
    pub pass: Pass,
    /// Bytes one iteration must move ([`Problem::bytes`]).
    pub bytes: u64,
    /// Median milliseconds per iteration, and the fastest and slowest.
    pub ms: f64,
    pub ms_min: f64,
    pub ms_max: f64,
    pub iters: usize,
    /// `bytes / ms`, decimal GB/s.
    pub gbps: f64,
    /// The copy's GB/s on this problem's buffers, measured in the same run.
    pub copy_gbps: f64,
    /// `100 * gbps / copy_gbps`.
    pub pct_copy: f64,
    /// Buffer sets rotated through.
    pub sets: usize,
    /// `cuda:N (name)`.
    pub device: String,
}

impl BenchRecord {
    /// A record of `implementation` timing `pass` on `p` (median, min and max of
    /// `times_ms`, GB/s from the pass's byte count), with no copy ceiling yet.
    pub fn new(
        implementation: &str,
        p: &Problem,
        pass: Pass,
        times_ms: &[f64],
        sets: usize,
        device: &str,
    ) -> Self {
        let ms = median(times_ms).unwrap_or(0.0);
        let bytes = p.bytes(pass);
        BenchRecord {
            implementation: implementation.to_string(),
            norm: p.norm,
            dtype: p.dtype,
            param_dtype: p.param_dtype,
            cols: p.cols,
            rows: p.rows,
            pass,
            bytes,
            ms,
            ms_min: times_ms.iter().copied().fold(f64::INFINITY, f64::min),
            ms_max: times_ms.iter().copied().fold(0.0, f64::max),
            iters: times_ms.len(),
            gbps: gbps(bytes, ms),
            copy_gbps: 0.0,
            pct_copy: 0.0,
            sets,
            device: device.to_string(),
        }
    }

    fn against(mut self, copy_gbps: f64) -> Self {
        self.copy_gbps = copy_gbps;
        self.pct_copy = if copy_gbps > 0.0 {
            100.0 * self.gbps / copy_gbps
        } else {
            0.0
        };
        self
    }
}

/// Runs every dtype x row length x pass of `opts` and returns the records, copy first for
/// each problem.
pub fn run(opts: &BenchOptions) -> Result<Vec<BenchRecord>> {
    run_with(opts, |_| {})
}

/// [`run`], calling `progress` with each record as soon as it is measured.
pub fn run_with(
    opts: &BenchOptions,
    mut progress: impl FnMut(&BenchRecord),
) -> Result<Vec<BenchRecord>> {
    opts.validate()?;
    let timer = GpuTimer::new(opts.device)?;
    let device = format!("cuda:{} ({})", opts.device, timer.backend().info().name);
    let spec = NormSpec {
        kind: opts.norm.kind(),
        eps: opts.eps,
        fast_variance: false,
        round_output_to_x: false,
        kernels: None,
    };
    let generations: Vec<(Option<KernelGeneration>, String)> = if opts.kernels.is_empty() {
        vec![(None, "warpnorm".to_string())]
    } else {
        let named = |g: &KernelGeneration| (Some(*g), format!("warpnorm-{g}"));
        opts.kernels.iter().map(named).collect()
    };
    let backward = opts.passes.iter().any(|p| p.needs_backward_buffers());
    let mut records = Vec::new();
    for &dtype in &opts.dtypes {
        for &cols in &opts.cols {
            let problem =
                Problem::for_bytes(dtype, opts.param_dtype.unwrap_or(dtype), cols, opts.bytes)?
                    .with_norm(opts.norm);
            let mut case = timer.case_with(&problem, &spec, opts.sets, backward)?;
            let sets = case.sets();
            let mut measure = |pass: Pass,
                               generation: Option<KernelGeneration>,
                               name: &str|
             -> Result<BenchRecord> {
                if let Some(g) = generation {
                    case.set_kernels(g);
                }
                let times = case.time_each(pass, opts.warmup, opts.iters)?;
                Ok(BenchRecord::new(
                    name, &problem, pass, &times, sets, &device,
                ))
            };
            let copy = measure(Pass::Copy, None, "copy")?;
            let copy_gbps = copy.gbps;
            let copy = copy.against(copy_gbps);
            progress(&copy);
            records.push(copy);
            for &pass in opts.passes.iter().filter(|&&p| p != Pass::Copy) {
                for (generation, name) in &generations {
                    let rec = measure(pass, *generation, name)?.against(copy_gbps);
                    progress(&rec);
                    records.push(rec);
                }
            }
        }
    }
    Ok(records)
}

/// A plain-text table of records: one line each, aligned columns. The `% copy` column
/// only when some record was measured against a copy (the CPU reference's are not).
pub fn render_table(records: &[BenchRecord]) -> String {
    use super::table::{render, Align::*};
    let against_copy = records.iter().any(|r| r.copy_gbps > 0.0);
    let mut header = vec![
        "impl", "norm", "dtype", "cols", "rows", "pass", "ms", "GB/s",
    ];
    // Text columns left-aligned, numbers right-aligned.
    let mut align = vec![Left, Left, Right, Right, Left, Right, Right, Right];
    if against_copy {
        header.push("% copy");
        align.push(Right);
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let mut row = vec![
                r.implementation.clone(),
                r.norm.name().to_string(),
                r.dtype.short_name().to_string(),
                r.cols.to_string(),
                r.rows.to_string(),
                r.pass.name().to_string(),
                format!("{:.4}", r.ms),
                throughput(r.gbps),
            ];
            if against_copy {
                row.push(format!("{:.1}", r.pct_copy));
            }
            row
        })
        .collect();
    render(&header, &align, &rows)
}

/// GB/s to a tenth on a GPU; the CPU reference's fractions of one keep three decimals.
fn throughput(gbps: f64) -> String {
    if gbps >= 10.0 {
        format!("{gbps:.1}")
    } else {
        format!("{gbps:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(dtype: DType, param: DType, rows: usize, cols: usize) -> Problem {
        Problem {
            dtype,
            param_dtype: param,
            rows,
            cols,
            norm: Norm::LayerNorm,
        }
    }

    #[test]
    fn byte_accounting_counts_each_required_tensor_once() {
        // 1000 rows of 512 bf16, f32 parameters.
        let p = problem(DType::BF16, DType::F32, 1000, 512);
        let act = 1000 * 512 * 2;
        let stats = 1000 * 8;
        let param = 512 * 4;
        assert_eq!(p.x_bytes(), act);
        assert_eq!(p.bytes(Pass::Fwd), 2 * act + stats + 2 * param);
        assert_eq!(p.bytes(Pass::Bwd), 3 * act + stats + 3 * param);
        assert_eq!(p.bytes(Pass::FwdBwd), 5 * act + 2 * stats + 5 * param);
        assert_eq!(p.bytes(Pass::Copy), 2 * act);
    }

    #[test]
    fn rms_norm_moves_no_bias_and_one_statistic() {
        let ln = problem(DType::BF16, DType::F32, 1000, 512);
        let rms = ln.with_norm(Norm::RmsNorm);
        let (act, param, row) = (1000 * 512 * 2, 512 * 4, 1000 * 4);
        assert_eq!(rms.bytes(Pass::Fwd), 2 * act + param + row);
        assert_eq!(rms.bytes(Pass::Bwd), 3 * act + 2 * param + row);
        assert_eq!(ln.bytes(Pass::Fwd) - rms.bytes(Pass::Fwd), param + row);
        assert_eq!(rms.bytes(Pass::Copy), ln.bytes(Pass::Copy));
        for (text, norm) in [
            ("rms", Norm::RmsNorm),
            ("LayerNorm", Norm::LayerNorm),
            ("layer-norm", Norm::LayerNorm),
        ] {
            assert_eq!(Norm::parse(text).unwrap(), norm);
        }
        assert!(Norm::parse("group").is_err());
        // Records from before the field existed read as LayerNorm.
        let mut v =
            serde_json::to_value(BenchRecord::new("w", &rms, Pass::Fwd, &[1.0], 1, "d")).unwrap();
        assert_eq!(v["norm"], "rms_norm");
        v.as_object_mut().unwrap().remove("norm");
        let old: BenchRecord = serde_json::from_value(v).unwrap();
        assert_eq!(old.norm, Norm::LayerNorm);
    }

    #[test]
    fn rows_fill_the_requested_bytes() {
        assert_eq!(rows_for_bytes(1024, DType::F32, 256 << 20).unwrap(), 65_536);
        assert_eq!(
            rows_for_bytes(1024, DType::BF16, 256 << 20).unwrap(),
            131_072
        );
        assert_eq!(rows_for_bytes(5120, DType::F16, 256 << 20).unwrap(), 26_214);
        // A row longer than the budget still gives one row.
        assert_eq!(rows_for_bytes(1 << 20, DType::F32, 1024).unwrap(), 1);
        assert!(rows_for_bytes(0, DType::F32, 1024).is_err());
        assert!(rows_for_bytes(8, DType::F32, 0).is_err());
        let p = Problem::for_bytes(DType::F16, DType::F16, 768, DEFAULT_BYTES).unwrap();
        assert!(p.x_bytes() <= DEFAULT_BYTES && p.x_bytes() + 768 * 2 > DEFAULT_BYTES);
    }

    #[test]
    fn rotation_covers_the_footprint_within_the_budget() {
        let mib = 1u64 << 20;
        // 256 MiB touched per iteration: two sets (never the same buffers twice in a row).
        assert_eq!(rotation_sets(256 * mib, 512 * mib, 512 * mib, 64 << 30), 2);
        // 8 MiB per iteration: 64 sets to touch 512 MiB.
        assert_eq!(rotation_sets(8 * mib, 512 * mib, 16 * mib, 64 << 30), 64);
        // 1 MiB per iteration: capped at 64.
        assert_eq!(rotation_sets(mib, 512 * mib, 2 * mib, 64 << 30), 64);
        // The memory budget wins.
        assert_eq!(rotation_sets(8 * mib, 512 * mib, 16 * mib, 100 * mib), 6);
        assert_eq!(rotation_sets(8 * mib, 512 * mib, 16 * mib, 10 * mib), 0);
        assert_eq!(rotation_sets(0, 512 * mib, 0, 0), 0);
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[7.5]), Some(7.5));
    }

    #[test]
    fn gbps_is_decimal_and_safe_at_zero() {
        assert!((gbps(2_000_000_000, 1000.0) - 2.0).abs() < 1e-12);
        assert!((gbps(1_000_000, 1.0) - 1.0).abs() < 1e-12);
        assert_eq!(gbps(1, 0.0), 0.0);
    }

    #[test]
    fn sizes_and_lists_parse() {
        assert_eq!(parse_bytes("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_bytes("256m").unwrap(), 256 << 20);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("0.5GiB").unwrap(), 1 << 29);
        for bad in ["", "MiB", "12XB", "-1MiB", "0"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_cols("128, 1024,4096").unwrap(), vec![128, 1024, 4096]);
        assert!(parse_cols("").is_err());
        assert!(parse_cols("128,0").is_err());
        assert!(parse_cols("12x").is_err());
        assert_eq!(Pass::parse("fwd+bwd").unwrap(), Pass::FwdBwd);
        assert!(Pass::parse("sideways").is_err());
    }

    #[test]
    fn options_are_validated_before_any_device_work() {
        assert!(BenchOptions::default().validate().is_ok());
        let with = |f: fn(&mut BenchOptions)| {
            let mut o = BenchOptions::default();
            f(&mut o);
            o.validate()
        };
        assert!(with(|o| o.dtypes.clear()).is_err());
        assert!(with(|o| o.cols = vec![128, 0]).is_err());
        assert!(with(|o| o.iters = 0).is_err());
        assert!(with(|o| o.sets = Some(0)).is_err());
        assert!(with(|o| o.eps = 0.0).is_err());
        assert!(with(|o| o.param_dtype = Some(DType::F16)).is_err()); // f32 x with f16 params
        let o = BenchOptions {
            dtypes: vec![DType::BF16],
            param_dtype: Some(DType::F32),
            ..BenchOptions::default()
        };
        assert!(o.validate().is_ok());
    }

    #[test]
    fn run_without_a_device_is_an_error_not_a_panic() {
        // On a GPU machine this would run the benchmark: only check the no-GPU contract.
        if crate::cuda::device_count().is_ok() {
            eprintln!("SKIP: a GPU is present; the no-device path is not exercised");
            return;
        }
        let o = BenchOptions {
            cols: vec![128],
            dtypes: vec![DType::F32],
            ..BenchOptions::default()
        };
        assert!(matches!(run(&o), Err(Error::NoDevice(_))));
        assert!(matches!(GpuTimer::new(0), Err(Error::NoDevice(_))));
    }

    fn record(pass: Pass, ms: f64) -> BenchRecord {
        let p = problem(DType::BF16, DType::BF16, 131_072, 1024);
        BenchRecord::new(
            "warpnorm",
            &p,
            pass,
            &[ms, ms * 1.1, ms * 0.9],
            2,
            "cuda:0 (Test GPU)",
        )
        .against(3000.0)
    }

    #[test]
    fn records_serialise_with_the_documented_names() {
        let r = record(Pass::FwdBwd, 0.5);
        let v = serde_json::to_value(&r).unwrap();
        for key in RECORD_FIELDS {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v.as_object().unwrap().len(), RECORD_FIELDS.len(), "{v}");
        assert_eq!(v["impl"], "warpnorm");
        assert_eq!(v["dtype"], "bf16");
        assert_eq!(v["pass"], "fwd_bwd");
        assert_eq!(v["iters"], 3);
        let back: BenchRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        assert!((r.gbps - r.bytes as f64 / 0.5e-3 / 1e9).abs() < 1e-9);
        assert!((r.pct_copy - 100.0 * r.gbps / 3000.0).abs() < 1e-9);
        assert!((r.ms_min - 0.45).abs() < 1e-12 && (r.ms_max - 0.55).abs() < 1e-12);
    }

    #[test]
    fn table_has_a_header_and_one_aligned_line_per_record() {
        let records = [record(Pass::Fwd, 0.25), record(Pass::FwdBwd, 0.5)];
        let table = render_table(&records);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[0].starts_with("impl")
                && lines[0].contains("GB/s")
                && lines[0].ends_with("% copy")
        );
        assert!(lines[1].chars().all(|c| c == '-' || c == ' '));
        assert!(lines[2].contains("fwd ") && lines[3].contains("fwd_bwd"));
        assert!(lines[2].contains("131072") && lines[2].contains("0.2500"));
        // Right-aligned numbers end in the same column.
        assert_eq!(lines[2].len(), lines[3].len());
        assert_eq!(render_table(&[]).lines().count(), 2);
        // Records without a copy to compare with (the CPU reference's) have no such column.
        // 64 x 1024 f32 forward: 532992 bytes in 2 ms.
        let p = problem(DType::F32, DType::F32, 64, 1024);
        let cpu = BenchRecord::new("cpu_reference", &p, Pass::Fwd, &[2.0], 1, "cpu");
        let table = render_table(&[cpu]);
        assert!(table.lines().next().unwrap().ends_with("GB/s"), "{table}");
        assert!(table.contains(" 0.266"), "{table}");
    }
}
