//! The sharded-normalization kernels (`kernels/sharded.cu`) on the CPU emulation (feature
//! `emulator`), through the launches a GPU gets (`warpnorm::cuda::emulator::sharded`), for
//! k = 1, 2, 4, 8 ranks in one process with the collectives done on the host: forward and
//! backward against a double-precision reference of the unsharded layer on the concatenated
//! features, each element weighted as in its group's mean.
#![cfg(feature = "emulator")]

use half::{bf16, f16};
use warpnorm::cuda::emulator::sharded::{self as emu, HostApply, HostBackward, StatsMode};
use warpnorm::rng::Rng;
use warpnorm::{DType, Element, NormConfig};

/// One sharded layer: `k` ranks, each with `rows` rows of `d` features.
#[derive(Clone, Copy, Debug)]
struct Case {
    k: usize,
    rows: usize,
    d: usize,
    rms: bool,
    fast: bool,
    tol: f64,
    seed: u64,
    /// flax's mask, with a different count of selected elements per rank and row.
    masked: bool,
    /// With `masked`: every other element the mask leaves out holds NaN, which must not
    /// reach the statistics.
    nan_padding: bool,
}

const EPS: f32 = 1e-5;

impl Case {
    fn config(&self) -> NormConfig {
        if self.rms {
            NormConfig::rms().epsilon(EPS.into())
        } else {
            NormConfig::flax()
                .epsilon(EPS.into())
                .use_fast_variance(self.fast)
        }
    }
}

/// The rounding of an output of dtype `d` the tolerances allow for (none for f32).
fn unit(d: DType) -> f64 {
    if d == DType::F32 {
        0.0
    } else {
        d.unit_roundoff()
    }
}

fn round<T: Element>(v: f64) -> f64 {
    T::from_f64(v).to_f64()
}

/// Mismatches (`what: got vs want`) of one case.
struct Check(Vec<String>);

impl Check {
    fn close(&mut self, what: &str, got: f64, want: f64, tol: f64) {
        // A NaN never passes: it is not within any tolerance.
        let within = (got - want).abs() <= tol;
        if !within {
            self.0.push(format!(
                "{what}: got {got:.9e} want {want:.9e} (tol {tol:.3e})"
            ));
        }
    }
}

/// Runs one case on the emulated kernels and checks it; returns the mismatches.
fn run<T: Element, P: Element, O: Element>(c: Case) -> Vec<String> {
    let (k, rows, d) = (c.k, c.rows, c.d);
    let n = rows * d;
    let cfg = c.config();
    let mode = emu::stats_mode(&cfg);
    let per_row = match mode {
        StatsMode::Moments => 3,
        StatsMode::Means => 2,
    };
    let layer_norm = !c.rms;
    let has_dvar = layer_norm && c.fast;
    let (ux, uo) = (unit(T::DTYPE), unit(O::DTYPE));
    let mut rng = Rng::new(c.seed);
    // Rank inputs rounded to their dtypes, kept as f64 for the reference.
    let mut draw = |len: usize, mean: f64, sd: f64, r: fn(f64) -> f64| -> Vec<f64> {
        (0..len).map(|_| r(mean + sd * rng.normal())).collect()
    };
    let xs: Vec<Vec<f64>> = (0..k).map(|_| draw(n, 0.3, 1.0, round::<T>)).collect();
    let dys: Vec<Vec<f64>> = (0..k).map(|_| draw(n, 0.0, 1.0, round::<O>)).collect();
    let scales: Vec<Vec<f64>> = (0..k).map(|_| draw(d, 1.0, 0.5, round::<P>)).collect();
    let biases: Vec<Vec<f64>> = (0..k).map(|_| draw(d, 0.0, 0.5, round::<P>)).collect();
    // Masks and every element's weight in its group's mean: flax's pmean of the ranks'
    // masked means gives a selected element 1 / (k * its rank's count).
    let mut masks = vec![vec![1u8; n]; k];
    let mut weights = vec![vec![1.0 / (k * d) as f64; n]; k];
    if c.masked {
        for r in 0..k {
            for row in 0..rows {
                let count = 1 + (3 * r + 5 * row) % d;
                for col in 0..d {
                    let i = row * d + col;
                    // d is prime to 7: exactly `count` selected.
                    let on = (col * 7 + row) % d < count;
                    masks[r][i] = u8::from(on);
                    weights[r][i] = if on { 1.0 / (k * count) as f64 } else { 0.0 };
                }
            }
        }
    }
    let mut x: Vec<Vec<T>> = xs
        .iter()
        .map(|v| v.iter().map(|&e| T::from_f64(e)).collect())
        .collect();
    if c.nan_padding {
        for r in 0..k {
            for i in (0..n).filter(|&i| masks[r][i] == 0 && i % 2 == 1) {
                x[r][i] = T::from_f64(f64::NAN);
            }
        }
    }
    let dy: Vec<Vec<O>> = dys
        .iter()
        .map(|v| v.iter().map(|&e| O::from_f64(e)).collect())
        .collect();
    let sc: Vec<Vec<P>> = scales
        .iter()
        .map(|v| v.iter().map(|&e| P::from_f64(e)).collect())
        .collect();
    let bi: Vec<Vec<P>> = biases
        .iter()
        .map(|v| v.iter().map(|&e| P::from_f64(e)).collect())
        .collect();
    let mask_of = |r: usize| c.masked.then(|| &masks[r][..]);

    // Forward: statistics per rank, one collective, then normalise.
    let mut send = vec![vec![f32::NAN; rows * per_row]; k];
    for r in 0..k {
        emu::row_stats(rows, d, &x[r], mask_of(r), mode, &mut send[r]).unwrap();
    }
    let stats: Vec<f32> = match mode {
        StatsMode::Moments => send.concat(),
        StatsMode::Means => (0..rows * per_row)
            .map(|i| send.iter().map(|s| s[i]).sum())
            .collect(),
    };
    let mut y = vec![vec![O::from_f64(f64::NAN); n]; k];
    let mut mean = vec![vec![f32::NAN; rows]; k];
    let mut rstd = mean.clone();
    let mut dvar = mean.clone();
    for r in 0..k {
        let a = HostApply {
            x: &x[r],
            scale: Some(&sc[r]),
            bias: Some(&bi[r]),
            stats: &stats,
            y: &mut y[r],
            mean: &mut mean[r],
            rstd: &mut rstd[r],
            dvar: has_dvar.then_some(&mut dvar[r][..]),
        };
        emu::apply(&cfg, rows, d, k, a).unwrap();
    }

    // Backward: per-rank sums, one all-reduce, then dx and the parameter gradients.
    let bwd = |r: usize| HostBackward {
        x: &x[r],
        dy: &dy[r],
        scale: Some(&sc[r][..]),
        mean: &mean[r],
        rstd: &rstd[r],
        dvar: has_dvar.then_some(&dvar[r][..]),
        mask: mask_of(r),
    };
    let mut sums = vec![vec![f32::NAN; 2 * rows]; k];
    for (r, sums) in sums.iter_mut().enumerate() {
        emu::bwd_sums(&cfg, rows, d, &bwd(r), sums).unwrap();
    }
    let total: Vec<f32> = (0..2 * rows)
        .map(|i| sums.iter().map(|s| s[i]).sum())
        .collect();
    let mut dx = vec![vec![T::from_f64(f64::NAN); n]; k];
    let mut dscale = vec![vec![P::from_f64(f64::NAN); d]; k];
    let mut dbias = dscale.clone();
    for r in 0..k {
        emu::dx(&cfg, rows, d, k, &bwd(r), &total, &mut dx[r]).unwrap();
        let mut workspace = vec![f32::NAN; emu::param_grads_workspace_len(rows, d)];
        emu::param_grads(
            &cfg,
            rows,
            d,
            &bwd(r),
            &mut workspace,
            Some(&mut dscale[r]),
            Some(&mut dbias[r]),
        )
        .unwrap();
    }

    // Reference on the concatenated row: mean = sum w x, var = sum w (x - mean)^2,
    // dx = rstd (g - w (c1 sum g + xhat sum g xhat)).
    let mut check = Check(Vec::new());
    let tol = c.tol;
    let eps = EPS as f64;
    for row in 0..rows {
        let at = |_rank: usize, col: usize| row * d + col;
        let all = || (0..k).flat_map(|r| (0..d).map(move |col| (r, col)));
        let mu = if layer_norm {
            all()
                .map(|(r, col)| weights[r][at(r, col)] * xs[r][at(r, col)])
                .sum()
        } else {
            0.0
        };
        let var: f64 = all()
            .map(|(r, col)| weights[r][at(r, col)] * (xs[r][at(r, col)] - mu).powi(2))
            .sum();
        let rs = 1.0 / (var + eps).sqrt();
        let (mut sg, mut sgx) = (0.0, 0.0);
        for (r, col) in all() {
            let g = dys[r][at(r, col)] * scales[r][col];
            sg += g;
            sgx += g * (xs[r][at(r, col)] - mu) * rs;
        }
        for r in 0..k {
            check.close("mean", mean[r][row] as f64, mu, tol);
            check.close("rstd", rstd[r][row] as f64, rs, tol * rs);
            for col in 0..d {
                let i = at(r, col);
                let xh = (xs[r][i] - mu) * rs;
                let g = dys[r][i] * scales[r][col];
                let want_y = xh * scales[r][col] + biases[r][col];
                let w = weights[r][i];
                let c1 = if layer_norm { sg } else { 0.0 };
                let want_dx = rs * (g - w * (c1 + xh * sgx));
                let (got_y, got_dx) = (y[r][i].to_f64(), dx[r][i].to_f64());
                if c.nan_padding {
                    // Checked: the selected y, and the unselected dx: rstd * g where x is
                    // finite, NaN where it is NaN (as JAX); the rest is NaN, as in flax.
                    if masks[r][i] == 1 {
                        check.close("y", got_y, want_y, tol * (1.0 + want_y.abs()));
                    } else if i % 2 == 1 {
                        check.close("dx is NaN", f64::from(u8::from(got_dx.is_nan())), 1.0, 0.0);
                    } else {
                        check.close("dx", got_dx, rs * g, tol * 4.0 * rs);
                    }
                    continue;
                }
                let tol_y = tol * (1.0 + want_y.abs()) + uo * want_y.abs();
                check.close("y", got_y, want_y, tol_y);
                let tol_dx = tol * 4.0 * rs + ux * want_dx.abs();
                check.close("dx", got_dx, want_dx, tol_dx);
            }
        }
    }
    if !c.nan_padding {
        // The shard's own parameter gradients, from the statistics the kernels saved; they
        // come out in the parameter dtype.
        let up = unit(P::DTYPE);
        for r in 0..k {
            for col in 0..d {
                let (mut ds, mut db) = (0.0, 0.0);
                for row in 0..rows {
                    let i = row * d + col;
                    let mu = if layer_norm { mean[r][row] as f64 } else { 0.0 };
                    ds += dys[r][i] * (xs[r][i] - mu) * rstd[r][row] as f64;
                    db += dys[r][i];
                }
                let tol_p = |v: f64| tol * rows as f64 * 4.0 + up * v.abs();
                check.close("dscale", dscale[r][col].to_f64(), ds, tol_p(ds));
                check.close("dbias", dbias[r][col].to_f64(), db, tol_p(db));
            }
        }
    }
    check.0
}

/// Runs `c` for x, parameters and output in `T`, `P`, `O`; prints a line for it.
fn case<T: Element, P: Element, O: Element>(c: Case, failures: &mut Vec<String>) {
    let found = run::<T, P, O>(c);
    let label = format!(
        "k={} rows={} d={} {} fast={} masked={} nan_padding={} x {} p {} y {}",
        c.k,
        c.rows,
        c.d,
        if c.rms { "rmsnorm" } else { "layernorm" },
        c.fast,
        c.masked,
        c.nan_padding,
        T::DTYPE.short_name(),
        P::DTYPE.short_name(),
        O::DTYPE.short_name()
    );
    println!("{label}: {}", if found.is_empty() { "ok" } else { "FAIL" });
    failures.extend(found.into_iter().take(20).map(|m| format!("{label}: {m}")));
}

#[test]
fn sharded_kernels_match_the_unsharded_reference_under_emulation() {
    let mut failures = Vec::new();
    let mut cases = 0;
    let base = Case {
        k: 1,
        rows: 11,
        d: 5,
        rms: false,
        fast: false,
        tol: 2e-5,
        seed: 0,
        masked: false,
        nan_padding: false,
    };
    for (rms, fast) in [(false, true), (false, false), (true, true)] {
        let kind = Case { rms, fast, ..base };
        for k in [1, 2, 4, 8] {
            case::<f32, f32, f32>(
                Case {
                    k,
                    d: 5,
                    seed: 1 + k as u64,
                    ..kind
                },
                &mut failures,
            );
            case::<f32, f32, f32>(
                Case {
                    k,
                    d: 70,
                    seed: 2 + k as u64,
                    ..kind
                },
                &mut failures,
            );
            cases += 2;
        }
        let (rows, d) = (9, 33);
        case::<bf16, f32, f32>(
            Case {
                k: 4,
                rows,
                d,
                seed: 99,
                ..kind
            },
            &mut failures,
        );
        let half = Case {
            k: 2,
            rows,
            d: 40,
            tol: 4e-3,
            seed: 98,
            ..kind
        };
        case::<f16, f16, f16>(half, &mut failures);
        for k in [1, 4] {
            let masked = Case {
                k,
                d: 33,
                seed: 50 + k as u64,
                masked: true,
                ..kind
            };
            case::<f32, f32, f32>(masked, &mut failures);
        }
        let padded = Case {
            k: 4,
            d: 33,
            seed: 60,
            masked: true,
            nan_padding: true,
            ..kind
        };
        case::<f32, f32, f32>(padded, &mut failures);
        // More rows than the emulated device's grid has warps: the grid-stride loops.
        case::<f32, f32, f32>(
            Case {
                k: 2,
                rows: 131,
                d: 5,
                seed: 70,
                ..kind
            },
            &mut failures,
        );
        cases += 6;
    }
    assert_eq!(cases, 42);
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_element_wise_kernels_of_psum_and_the_in_process_collective() {
    let mut a = vec![1.0f32, 2.0, 3.0];
    emu::accumulate(&mut a, &[0.5, 0.25, -1.0]).unwrap();
    assert_eq!(a, [1.5, 2.25, 2.0]);
    let mut h = vec![f16::from_f64(f64::NAN); 3];
    emu::cast_scale(&a, &mut h, 2.0).unwrap();
    assert!((h[1].to_f64() - 1.125).abs() <= 1e-3, "{h:?}");
    emu::cast_scale_in_place(&mut a, 2.0).unwrap();
    assert_eq!(a[2], 1.0);
    // A buffer shorter than its partner is an error, not a read past its end.
    assert!(emu::accumulate(&mut a, &[1.0; 4]).is_err());
}
