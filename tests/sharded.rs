//! Sharded normalization: ShardedLayerNorm over k ranks equals the unsharded layer on the
//! concatenated features (CPU collective in CI, one GPU through the in-process collective),
//! flax's pmap fixtures, the NCCL backend at world size 1, group validation before any
//! communication, and psum / pmean semantics.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
#[cfg(feature = "nccl")]
use std::sync::Arc;

#[cfg(feature = "nccl")]
use common::skip;
use common::{error_ratio, gpu_or_skip, max_abs, random_tensor};
#[cfg(feature = "nccl")]
use warpnorm::cuda::CudaBackend;
use warpnorm::dist::{
    nccl_available, pmean, pmean_host, psum, psum_host, AxisGroups, Buf, BufMut, Collective,
    InProcessCuda, InProcessHost, Membership,
};
#[cfg(feature = "nccl")]
use warpnorm::dist::{NcclCollective, NcclIds};
use warpnorm::reference::{self, Params};
use warpnorm::tooling::fixture::Fixture;
use warpnorm::tooling::verify::{self, Outputs};
use warpnorm::{Array, DType, Device, Error, NormConfig, ShardSaved, ShardedLayerNorm, Tensor};

// ----- cases ------------------------------------------------------------------------------

type Groups = Option<Vec<Vec<usize>>>;

/// Worlds 1, 2, 4, 8 with one group, and the two 8-rank layouts of the brief.
fn layouts() -> Vec<(usize, Groups)> {
    vec![
        (1, None),
        (2, None),
        (4, None),
        (8, None),
        (8, Some(vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]])),
        (
            8,
            Some(vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]]),
        ),
    ]
}

/// Unsharded configs: fast variance (flax's default), exact variance, RMSNorm.
fn configs() -> Vec<(&'static str, NormConfig)> {
    vec![
        ("fast variance", NormConfig::flax()),
        (
            "exact variance",
            NormConfig::flax().use_fast_variance(false),
        ),
        ("rmsnorm", NormConfig::rms()),
    ]
}

fn sharded_cfg(base: &NormConfig, groups: &Groups) -> NormConfig {
    let cfg = base.clone().axis_name("i");
    match groups {
        Some(g) => cfg.axis_index_groups(g.clone()),
        None => cfg,
    }
}

/// Every rank's inputs for shards of `[rows, d]`.
struct Case {
    cfg: NormConfig,
    base: NormConfig,
    world: usize,
    xs: Vec<Tensor>,
    scales: Vec<Option<Tensor>>,
    biases: Vec<Option<Tensor>>,
    dys: Vec<Tensor>,
}

impl Case {
    fn new(
        base: &NormConfig,
        world: usize,
        groups: &Groups,
        shape: [usize; 2],
        x_dtype: DType,
        salt: u64,
    ) -> Case {
        let cfg = sharded_cfg(base, groups);
        let y_dtype = cfg.output_dtype(x_dtype);
        let p_dtype = cfg.param_dtype();
        let d = shape[1];
        let param = |on: bool, offset: f64, s: u64| {
            on.then(|| random_tensor(&[d], p_dtype, offset, 0.5, s))
        };
        let s = salt * 1000;
        Case {
            xs: (0..world)
                .map(|r| random_tensor(&shape, x_dtype, 0.3, 1.0, s + r as u64))
                .collect(),
            scales: (0..world)
                .map(|r| param(cfg.has_scale(), 1.0, s + 100 + r as u64))
                .collect(),
            biases: (0..world)
                .map(|r| param(cfg.has_bias(), 0.0, s + 200 + r as u64))
                .collect(),
            dys: (0..world)
                .map(|r| random_tensor(&shape, y_dtype, 0.0, 1.0, s + 300 + r as u64))
                .collect(),
            base: base.clone(),
            cfg,
            world,
        }
    }

    fn layer(&self, comm: Arc<dyn Collective>) -> ShardedLayerNorm {
        let mut ln = ShardedLayerNorm::new(&self.cfg, comm, self.xs[0].shape(), 7).unwrap();
        for r in 0..self.world {
            if let Some(s) = &self.scales[r] {
                ln.set_scale(r, s).unwrap();
            }
            if let Some(b) = &self.biases[r] {
                ln.set_bias(r, b).unwrap();
            }
        }
        ln
    }

    /// The unsharded layer on each group's concatenated features, split back per rank:
    /// (y, dx, dscale, dbias, mean, rstd) of every rank.
    fn expected(&self) -> Vec<Expected> {
        let groups = self.cfg.groups_for(self.world).unwrap();
        let mut out: Vec<Option<Expected>> = (0..self.world).map(|_| None).collect();
        for members in groups.groups() {
            let cat = |ts: Vec<&Tensor>, axis: usize| {
                let owned: Vec<Tensor> = ts.into_iter().cloned().collect();
                Tensor::concat(&owned, axis).unwrap()
            };
            let x = cat(members.iter().map(|&r| &self.xs[r]).collect(), 1);
            let dy = cat(members.iter().map(|&r| &self.dys[r]).collect(), 1);
            let scale = self.scales[0].as_ref().map(|_| {
                cat(
                    members
                        .iter()
                        .map(|&r| self.scales[r].as_ref().unwrap())
                        .collect(),
                    0,
                )
            });
            let bias = self.biases[0].as_ref().map(|_| {
                cat(
                    members
                        .iter()
                        .map(|&r| self.biases[r].as_ref().unwrap())
                        .collect(),
                    0,
                )
            });
            let p = Params::new(scale.as_ref(), bias.as_ref());
            let f = reference::forward(&self.base, &x, p, None).unwrap();
            let g = reference::backward(&self.base, &x, p, None, &dy).unwrap();
            let k = members.len();
            let ys = f.y.split(1, k).unwrap();
            let dxs = g.dx.split(1, k).unwrap();
            let dscales = g.dscale.map(|t| t.split(0, k).unwrap());
            let dbiases = g.dbias.map(|t| t.split(0, k).unwrap());
            for (pos, &r) in members.iter().enumerate() {
                out[r] = Some(Expected {
                    y: ys[pos].clone(),
                    dx: dxs[pos].clone(),
                    dscale: dscales.as_ref().map(|d| d[pos].clone()),
                    dbias: dbiases.as_ref().map(|d| d[pos].clone()),
                    mean: f.mean.clone(),
                    rstd: f.rstd.clone(),
                });
            }
        }
        out.into_iter().map(Option::unwrap).collect()
    }

    /// reference::sharded_forward / sharded_backward with flax's masks, every rank.
    fn expected_masked(&self, masks: &[Vec<bool>]) -> Vec<Expected> {
        let groups = self.cfg.groups_for(self.world).unwrap();
        let params: Vec<Params> = (0..self.world)
            .map(|r| Params::new(self.scales[r].as_ref(), self.biases[r].as_ref()))
            .collect();
        let m = Some(masks);
        let f = reference::sharded_forward(&self.cfg, &self.xs, &params, m, &groups).unwrap();
        let g = reference::sharded_backward(&self.cfg, &self.xs, &params, m, &self.dys, &groups)
            .unwrap();
        f.into_iter()
            .zip(g)
            .map(|(f, g)| Expected {
                y: f.y,
                dx: g.dx,
                dscale: g.dscale,
                dbias: g.dbias,
                mean: f.mean,
                rstd: f.rstd,
            })
            .collect()
    }

    fn arrays(&self, device: &Device, ts: &[Tensor]) -> Vec<Array> {
        ts.iter()
            .map(|t| Array::from_tensor(device, t).unwrap())
            .collect()
    }
}

struct Expected {
    y: Tensor,
    dx: Tensor,
    dscale: Option<Tensor>,
    dbias: Option<Tensor>,
    mean: Vec<f64>,
    rstd: Vec<f64>,
}

/// Asserts `got` within `rel * |want| + abs_frac * max|want|` everywhere (NaN fails).
fn assert_close(got: &Tensor, want: &Tensor, rel: f64, abs_frac: f64, label: &str) {
    assert_eq!(got.shape(), want.shape(), "{label}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{label}: dtype");
    let abs = abs_frac * max_abs(want.data()).max(f64::MIN_POSITIVE);
    let (ratio, i) = error_ratio(got.data(), want.data(), rel, abs);
    assert!(
        ratio <= 1.0,
        "{label}: element {i} is {} but should be {} (error {ratio:.3} x the tolerance)",
        got.data()[i],
        want.data()[i]
    );
}

fn to_tensors(arrays: &[Array]) -> Vec<Tensor> {
    arrays.iter().map(|a| a.to_tensor().unwrap()).collect()
}

/// Runs forward_train + backward and compares every rank with the unsharded layer on the
/// concatenated features, or with flax's masks, with reference::sharded_forward / backward.
/// `rel` / `abs` scale the tolerances (exact f64 on the CPU, f32 kernels on a GPU).
fn check_case(
    case: &Case,
    masks: Option<&[Vec<bool>]>,
    comm: Arc<dyn Collective>,
    device: &Device,
    tol: &dyn Fn(DType, usize) -> (f64, f64),
    label: &str,
) {
    let ln = case.layer(comm);
    let xs = case.arrays(device, &case.xs);
    let dys = case.arrays(device, &case.dys);
    let ((ys, saved), inference, want) = match masks {
        None => (
            ln.forward_train(&xs).unwrap(),
            ln.forward(&xs).unwrap(),
            case.expected(),
        ),
        Some(m) => (
            ln.forward_train_masked(&xs, m).unwrap(),
            ln.forward_masked(&xs, m).unwrap(),
            case.expected_masked(m),
        ),
    };
    let grads = ln.backward(&xs, &dys, &saved).unwrap();
    let inference = to_tensors(&inference);
    let k = case.cfg.groups_for(case.world).unwrap().group_size();
    let cols = k * case.xs[0].shape()[1];
    for r in 0..case.world {
        let w = &want[r];
        let l = format!("{label}, rank {r}");
        let y = ys[r].to_tensor().unwrap();
        let (rel, abs) = tol(y.dtype(), cols);
        assert_close(&y, &w.y, rel, abs, &format!("{l}: y"));
        assert_eq!(
            inference[r].data(),
            y.data(),
            "{l}: forward and forward_train differ"
        );
        let dx = grads[r].dx.to_tensor().unwrap();
        let (rel, abs) = tol(dx.dtype(), cols);
        assert_close(&dx, &w.dx, rel, 4.0 * abs, &format!("{l}: dx"));
        for (name, got, want) in [
            ("dscale", &grads[r].dscale, &w.dscale),
            ("dbias", &grads[r].dbias, &w.dbias),
        ] {
            match (got, want) {
                (Some(g), Some(w)) => {
                    let g = g.to_tensor().unwrap();
                    let rows = case.xs[0].shape()[0];
                    let (rel, abs) = tol(g.dtype(), rows);
                    assert_close(&g, w, rel, 4.0 * abs, &format!("{l}: {name}"));
                }
                (None, None) => {}
                _ => panic!("{l}: {name} present on one side only"),
            }
        }
        let stats = |s: &Array| s.to_tensor().unwrap().into_data();
        let ShardSaved { mean, rstd, .. } = &saved[r];
        let (rel, _) = tol(DType::F32, cols);
        let mean_t = Tensor::new(vec![w.mean.len()], DType::F32, stats(mean)).unwrap();
        let rstd_t = Tensor::new(vec![w.rstd.len()], DType::F32, stats(rstd)).unwrap();
        let want_mean = Tensor::new(vec![w.mean.len()], DType::F32, w.mean.clone()).unwrap();
        let want_rstd = Tensor::new(vec![w.rstd.len()], DType::F32, w.rstd.clone()).unwrap();
        assert_close(&mean_t, &want_mean, rel, rel, &format!("{l}: mean"));
        assert_close(&rstd_t, &want_rstd, rel, rel, &format!("{l}: rstd"));
    }
}

/// CPU: the same f64 arithmetic in another order, each result rounded once to its dtype,
/// so at most about one unit of that dtype apart.
fn cpu_tol(dtype: DType, _cols: usize) -> (f64, f64) {
    (2.0 * dtype.unit_roundoff(), 1e-12)
}

/// GPU: f32 statistics and sums (see tests/common), plus one rounding to the dtype.
fn gpu_tol(dtype: DType, cols: usize) -> (f64, f64) {
    let (rel, abs) = common::tolerance(dtype, 1.0, cols);
    (rel, abs)
}

// ----- sharded == unsharded, CPU ------------------------------------------------------------

#[test]
fn cpu_sharded_equals_unsharded_on_concatenated_features() {
    let mut checked = 0;
    for (ci, (name, base)) in configs().into_iter().enumerate() {
        for (li, (world, groups)) in layouts().into_iter().enumerate() {
            for (di, (x_dtype, d)) in [(DType::F32, 5), (DType::BF16, 8)].into_iter().enumerate() {
                let salt = (ci * 100 + li * 10 + di) as u64;
                let case = Case::new(&base, world, &groups, [7, d], x_dtype, salt);
                let comm = Arc::new(InProcessHost::for_config(&case.cfg, world).unwrap());
                let label = format!("cpu {name}, world {world}, groups {groups:?}, x {x_dtype}");
                check_case(&case, None, comm, &Device::Cpu, &cpu_tol, &label);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 3 * 6 * 2);
}

#[test]
fn cpu_sharded_handles_low_precision_outputs_and_no_parameters() {
    let cases = [
        NormConfig::flax()
            .dtype(DType::F16)
            .with_param_dtype(DType::F16),
        NormConfig::flax().use_scale(false).use_bias(false),
        NormConfig::rms().use_scale(false),
    ];
    for (i, base) in cases.iter().enumerate() {
        let groups = Some(vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]]);
        let case = Case::new(base, 8, &groups, [3, 6], DType::F16, 900 + i as u64);
        let comm = Arc::new(InProcessHost::for_config(&case.cfg, 8).unwrap());
        check_case(
            &case,
            None,
            comm,
            &Device::Cpu,
            &cpu_tol,
            &format!("cpu case {i}"),
        );
    }
}

// ----- sharded == unsharded, one GPU ----------------------------------------------------------

#[test]
fn gpu_in_process_sharded_equals_unsharded() {
    let Some(be) = gpu_or_skip("gpu_in_process_sharded_equals_unsharded") else {
        return;
    };
    let device = Device::Cuda(be.clone());
    for (ci, (name, base)) in configs().into_iter().enumerate() {
        for (li, (world, groups)) in layouts().into_iter().enumerate() {
            for (di, d) in [5usize, 64, 1000].into_iter().enumerate() {
                let salt = (ci * 100 + li * 10 + di) as u64;
                let case = Case::new(&base, world, &groups, [9, d], DType::F32, salt);
                let comm =
                    Arc::new(InProcessCuda::for_config(be.clone(), &case.cfg, world).unwrap());
                let label = format!("gpu {name}, world {world}, groups {groups:?}, d {d}");
                check_case(&case, None, comm, &device, &gpu_tol, &label);
            }
        }
    }
}

#[test]
fn gpu_in_process_every_dtype_combination() {
    let Some(be) = gpu_or_skip("gpu_in_process_every_dtype_combination") else {
        return;
    };
    let device = Device::Cuda(be.clone());
    let groups = Some(vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
    for x in [DType::F32, DType::F16, DType::BF16] {
        for p in [x, DType::F32] {
            for out in [x, DType::F32] {
                for (name, base) in configs() {
                    let base = base.with_param_dtype(p).dtype(out);
                    let case = Case::new(&base, 8, &groups, [5, 33], x, 77);
                    let comm =
                        Arc::new(InProcessCuda::for_config(be.clone(), &case.cfg, 8).unwrap());
                    let label = format!("gpu {name}, x {x}, params {p}, y {out}");
                    check_case(&case, None, comm, &device, &gpu_tol, &label);
                }
            }
        }
    }
}

#[test]
fn gpu_sharded_results_are_bitwise_reproducible() {
    let Some(be) = gpu_or_skip("gpu_sharded_results_are_bitwise_reproducible") else {
        return;
    };
    let device = Device::Cuda(be.clone());
    let groups = Some(vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]]);
    for (_, base) in configs() {
        let case = Case::new(&base, 8, &groups, [300, 257], DType::F32, 5);
        let comm = Arc::new(InProcessCuda::for_config(be.clone(), &case.cfg, 8).unwrap());
        let ln = case.layer(comm);
        let xs = case.arrays(&device, &case.xs);
        let dys = case.arrays(&device, &case.dys);
        let run = || {
            let (ys, saved) = ln.forward_train(&xs).unwrap();
            let g = ln.backward(&xs, &dys, &saved).unwrap();
            let mut all = to_tensors(&ys);
            for g in &g {
                all.push(g.dx.to_tensor().unwrap());
                all.extend(g.dscale.iter().map(|a| a.to_tensor().unwrap()));
            }
            all
        };
        let (a, b) = (run(), run());
        for (a, b) in a.iter().zip(&b) {
            let bits = |t: &Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(a), bits(b));
        }
    }
}

// ----- flax's mask on sharded rows ----------------------------------------------------------

/// Per rank and row a different count of selected features (1 to d), so that flax's
/// pmean of the ranks' masked means differs from the mean of the row's selected elements.
fn shard_masks(world: usize, rows: usize, d: usize, salt: usize) -> Vec<Vec<bool>> {
    (0..world)
        .map(|r| {
            (0..rows)
                .flat_map(|i| {
                    let count = 1 + (3 * r + 5 * i + salt) % d;
                    // d is prime to 7 in these tests: c -> (7c + i) mod d is a permutation.
                    (0..d).map(move |c| (7 * c + i) % d < count)
                })
                .collect()
        })
        .collect()
}

#[test]
fn cpu_masked_sharded_layer_follows_flax_pmean_of_masked_means() {
    let mut checked = 0;
    for (ci, (name, base)) in configs().into_iter().enumerate() {
        for (li, (world, groups)) in layouts().into_iter().enumerate() {
            let salt = (ci * 10 + li) as u64;
            let case = Case::new(&base, world, &groups, [6, 9], DType::F32, 500 + salt);
            let masks = shard_masks(world, 6, 9, salt as usize);
            let comm = Arc::new(InProcessHost::for_config(&case.cfg, world).unwrap());
            let label = format!("cpu masked {name}, world {world}, groups {groups:?}");
            check_case(&case, Some(&masks), comm, &Device::Cpu, &cpu_tol, &label);
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * 6);
}

#[test]
fn gpu_masked_sharded_layer_follows_flax_pmean_of_masked_means() {
    let Some(be) = gpu_or_skip("gpu_masked_sharded_layer_follows_flax_pmean_of_masked_means")
    else {
        return;
    };
    let device = Device::Cuda(be.clone());
    for (ci, (name, base)) in configs().into_iter().enumerate() {
        for (li, (world, groups)) in layouts().into_iter().enumerate() {
            for d in [9usize, 300] {
                let salt = (ci * 10 + li) as u64;
                let case = Case::new(&base, world, &groups, [6, d], DType::F32, 500 + salt);
                let masks = shard_masks(world, 6, d, salt as usize);
                let comm =
                    Arc::new(InProcessCuda::for_config(be.clone(), &case.cfg, world).unwrap());
                let label = format!("gpu masked {name}, world {world}, groups {groups:?}, d {d}");
                check_case(&case, Some(&masks), comm, &device, &gpu_tol, &label);
            }
        }
    }
}

#[test]
fn cpu_nan_padding_outside_the_masks_stays_out_of_the_statistics() {
    for (name, base) in configs() {
        let groups = Some(vec![vec![0, 1], vec![2, 3]]);
        let case = Case::new(&base, 4, &groups, [5, 8], DType::F32, 40);
        let masks = shard_masks(4, 5, 8, 2);
        let comm = Arc::new(InProcessHost::for_config(&case.cfg, 4).unwrap());
        let ln = case.layer(comm);
        let run = |xs: &[Tensor]| {
            let xs = case.arrays(&Device::Cpu, xs);
            let (ys, saved) = ln.forward_train_masked(&xs, &masks).unwrap();
            let stats: Vec<Vec<f64>> = saved
                .iter()
                .flat_map(|s| [s.mean.to_tensor().unwrap(), s.rstd.to_tensor().unwrap()])
                .map(Tensor::into_data)
                .collect();
            let dys = case.arrays(&Device::Cpu, &case.dys);
            let grads = ln.backward(&xs, &dys, &saved).unwrap();
            let dxs: Vec<Tensor> = grads.iter().map(|g| g.dx.to_tensor().unwrap()).collect();
            (to_tensors(&ys), stats, dxs)
        };
        let (ys, stats, dxs) = run(&case.xs);
        let padded: Vec<Tensor> = case
            .xs
            .iter()
            .zip(&masks)
            .map(|(x, m)| {
                // Every other element the mask leaves out becomes NaN.
                let data = x.data().iter().zip(m).enumerate();
                let data = data.map(|(i, (&v, &m))| if !m && i % 2 == 1 { f64::NAN } else { v });
                Tensor::new(x.shape(), x.dtype(), data.collect()).unwrap()
            })
            .collect();
        let (ys_padded, stats_padded, dxs_padded) = run(&padded);
        assert_eq!(stats, stats_padded, "{name}: statistics");
        for (r, m) in masks.iter().enumerate() {
            for (i, &m) in m.iter().enumerate() {
                let (dx, dx_padded) = (dxs[r].data()[i], dxs_padded[r].data()[i]);
                if m {
                    assert_eq!(ys[r].data()[i], ys_padded[r].data()[i], "{name}: y[{i}]");
                } else if i % 2 == 1 {
                    // JAX: the zero cotangent of mean(where=mask) times 2 (x - mean) is NaN.
                    assert!(dx_padded.is_nan(), "{name}: rank {r} dx[{i}]");
                } else {
                    assert_eq!(dx, dx_padded, "{name}: rank {r} dx[{i}]");
                }
            }
        }
    }
}

#[test]
fn masks_must_match_their_shards() {
    let case = Case::new(&NormConfig::flax(), 2, &None, [3, 4], DType::F32, 1);
    let comm = Arc::new(InProcessHost::for_config(&case.cfg, 2).unwrap());
    let ln = case.layer(comm);
    let xs = case.arrays(&Device::Cpu, &case.xs);
    let one = vec![vec![true; 12]];
    assert!(matches!(
        ln.forward_train_masked(&xs, &one),
        Err(Error::Shape { what: "masks", .. })
    ));
    let short = vec![vec![true; 12], vec![true; 11]];
    assert!(matches!(
        ln.forward_train_masked(&xs, &short),
        Err(Error::Shape { what: "mask", .. })
    ));
}

// ----- flax's pmap fixtures ---------------------------------------------------------------

fn sharded_fixtures() -> Vec<Fixture> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let files = verify::collect_files(&[dir]).unwrap();
    let fixtures: Vec<Fixture> = files
        .iter()
        .map(|f| Fixture::load(f).unwrap())
        .filter(|f| f.world.is_some())
        .collect();
    assert!(
        fixtures.len() >= 12,
        "expected the flax_*_sharded_* fixtures, found {}",
        fixtures.len()
    );
    fixtures
}

/// Runs a sharded fixture through ShardedLayerNorm over `comm` and compares with flax.
fn check_fixture(fx: &Fixture, comm: Arc<dyn Collective>, device: &Device) {
    let ranks = fx.ranks().unwrap();
    let mut ln = ShardedLayerNorm::new(&fx.config, comm, ranks[0].x.shape(), 0).unwrap();
    for (r, inputs) in ranks.iter().enumerate() {
        if let Some(s) = &inputs.scale {
            ln.set_scale(r, s).unwrap();
        }
        if let Some(b) = &inputs.bias {
            ln.set_bias(r, b).unwrap();
        }
    }
    let xs: Vec<Array> = ranks
        .iter()
        .map(|r| Array::from_tensor(device, &r.x).unwrap())
        .collect();
    let dys: Vec<Array> = ranks
        .iter()
        .map(|r| Array::from_tensor(device, r.dy.as_ref().unwrap()).unwrap())
        .collect();
    let masks: Option<Vec<Vec<bool>>> = ranks.iter().map(|r| r.mask.clone()).collect();
    let (ys, saved) = match &masks {
        Some(m) => ln.forward_train_masked(&xs, m).unwrap(),
        None => ln.forward_train(&xs).unwrap(),
    };
    let grads = ln.backward(&xs, &dys, &saved).unwrap();
    let stack = |ts: Vec<Tensor>| Tensor::stack(&ts).unwrap();
    let params = |f: &dyn Fn(&warpnorm::Gradients) -> Option<&Array>| -> Option<Tensor> {
        let parts: Option<Vec<Tensor>> = grads
            .iter()
            .map(|g| f(g).map(|a| a.to_tensor().unwrap()))
            .collect();
        parts.map(stack)
    };
    let out = Outputs {
        y: stack(to_tensors(&ys)),
        dx: Some(stack(
            grads.iter().map(|g| g.dx.to_tensor().unwrap()).collect(),
        )),
        dscale: params(&|g| g.dscale.as_ref()),
        dbias: params(&|g| g.dbias.as_ref()),
    };
    let checks = verify::check_outputs(fx, &out).unwrap();
    assert_eq!(
        checks.len(),
        2 + fx.config.has_scale() as usize + fx.config.has_bias() as usize
    );
    for c in checks {
        assert!(
            c.passed(),
            "{}: {} fails: worst error {:.3} x the tolerance at {} ({:?})",
            fx.name,
            c.name,
            c.worst_ratio,
            c.worst_index,
            c.problem
        );
    }
}

#[test]
fn cpu_sharded_layer_matches_flax_pmap_fixtures() {
    for fx in sharded_fixtures() {
        let world = fx.world.unwrap();
        let comm = Arc::new(InProcessHost::for_config(&fx.config, world).unwrap());
        check_fixture(&fx, comm, &Device::Cpu);
    }
}

#[test]
fn gpu_sharded_layer_matches_flax_pmap_fixtures() {
    let Some(be) = gpu_or_skip("gpu_sharded_layer_matches_flax_pmap_fixtures") else {
        return;
    };
    for fx in sharded_fixtures() {
        let world = fx.world.unwrap();
        let comm = Arc::new(InProcessCuda::for_config(be.clone(), &fx.config, world).unwrap());
        check_fixture(&fx, comm, &Device::Cuda(be.clone()));
    }
}

// ----- NCCL ---------------------------------------------------------------------------------

#[cfg(not(feature = "nccl"))]
#[test]
fn without_the_nccl_feature_nccl_is_an_error_that_names_the_feature() {
    match nccl_available() {
        Err(Error::Nccl(msg)) => assert!(msg.contains("`nccl` cargo feature"), "{msg}"),
        other => panic!("expected Error::Nccl, got {other:?}"),
    }
}

#[cfg(feature = "nccl")]
#[test]
fn missing_nccl_is_an_error_that_says_how_to_provide_it() {
    match nccl_available() {
        Err(Error::Nccl(msg)) => {
            assert!(msg.contains("libnccl.so"), "{msg}");
            assert!(msg.contains("LD_LIBRARY_PATH"), "{msg}");
            // Anything that would call into NCCL fails the same way instead of panicking.
            assert!(matches!(NcclIds::generate(1), Err(Error::Nccl(_))));
        }
        Err(e) => panic!("unexpected error kind: {e}"),
        Ok(()) => {
            // NCCL is installed: ids can be made without a GPU.
            let ids = NcclIds::generate(2).unwrap();
            assert_eq!(ids.len(), 2);
            assert_eq!(
                NcclIds::from_hex(&ids.to_hex()).unwrap().to_hex(),
                ids.to_hex()
            );
        }
    }
}

#[cfg(feature = "nccl")]
#[test]
fn nccl_ids_round_trip_through_hex_and_files() {
    let hex: Vec<String> = (0..3u8)
        .map(|g| {
            (0..128u8)
                .map(|b| format!("{:02x}", b.wrapping_mul(7).wrapping_add(g)))
                .collect()
        })
        .collect();
    let text = hex.join(",");
    let ids = NcclIds::from_hex(&format!("  {text}\n")).unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids.to_hex(), text);

    let dir = std::env::temp_dir().join(format!("warpnorm-ids-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("nccl.id");
    ids.write_file(&path).unwrap();
    assert_eq!(NcclIds::read_file(&path).unwrap().to_hex(), text);
    let waited = NcclIds::wait_for_file(&path, std::time::Duration::from_secs(1)).unwrap();
    assert_eq!(waited.to_hex(), text);
    let missing = NcclIds::wait_for_file(dir.join("absent"), std::time::Duration::from_millis(50));
    assert!(matches!(missing, Err(Error::Nccl(_))));
    std::fs::remove_dir_all(&dir).unwrap();

    for bad in ["", "abc", &text[..255], &format!("{}zz", &text[..254])] {
        assert!(
            matches!(NcclIds::from_hex(bad), Err(Error::InvalidConfig(_))),
            "{bad:?}"
        );
    }
    if std::env::var_os(NcclIds::ENV_VAR).is_none() {
        assert!(matches!(NcclIds::from_env(), Err(Error::InvalidConfig(_))));
    }
}

/// The GPU and NCCL, or `None` after a SKIP line.
#[cfg(feature = "nccl")]
fn gpu_with_nccl(test: &str) -> Option<Arc<CudaBackend>> {
    let be = gpu_or_skip(test)?;
    match nccl_available() {
        Ok(()) => Some(be),
        Err(e) => {
            skip(&format!("{test}: {e}"));
            None
        }
    }
}

#[cfg(feature = "nccl")]
#[test]
fn nccl_world_of_one_on_a_gpu() {
    let Some(be) = gpu_with_nccl("nccl_world_of_one_on_a_gpu") else {
        return;
    };
    let groups = AxisGroups::new(1, None).unwrap();
    let ids = NcclIds::for_groups(&groups).unwrap();
    let comms: Vec<Arc<dyn Collective>> = vec![
        Arc::new(
            NcclCollective::single_process(std::slice::from_ref(&be), "i", groups.clone()).unwrap(),
        ),
        Arc::new(NcclCollective::multi_process(be.clone(), 0, "i", groups, &ids).unwrap()),
    ];
    let device = Device::Cuda(be.clone());
    for comm in comms {
        // psum / pmean over one rank leave the values as they are.
        let stream = be.stream();
        let host = vec![1.5f32, -2.0, 3.25];
        let mut bufs = vec![stream.clone_htod(&host).unwrap()];
        psum(comm.as_ref(), "i", &mut bufs).unwrap();
        pmean(comm.as_ref(), "i", &mut bufs).unwrap();
        assert_eq!(stream.clone_dtoh(&bufs[0]).unwrap(), host);
        // The layer at world size 1 is the unsharded layer.
        for (name, base) in configs() {
            let case = Case::new(&base, 1, &None, [6, 96], DType::F32, 3);
            check_case(
                &case,
                None,
                comm.clone(),
                &device,
                &gpu_tol,
                &format!("nccl {name}"),
            );
        }
    }
}

// ----- groups are validated before any communication -----------------------------------------

/// A CPU collective that counts its calls.
struct Counting {
    inner: InProcessHost,
    calls: AtomicUsize,
}

impl Counting {
    fn new(world: usize, groups: Groups) -> Arc<Counting> {
        let groups = AxisGroups::new(world, groups).unwrap();
        Arc::new(Counting {
            inner: InProcessHost::new("i", groups).unwrap(),
            calls: AtomicUsize::new(0),
        })
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Collective for Counting {
    fn membership(&self) -> &Membership {
        self.inner.membership()
    }
    fn all_reduce_sum(&self, bufs: &mut [BufMut<'_>]) -> warpnorm::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.all_reduce_sum(bufs)
    }
    fn all_gather(&self, send: &[Buf<'_>], recv: &mut [BufMut<'_>]) -> warpnorm::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.all_gather(send, recv)
    }
}

#[test]
fn wrong_groups_are_rejected_before_any_communication() {
    let comm = Counting::new(8, Some(vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]));
    let bad: [(Vec<Vec<usize>>, &str); 5] = [
        (vec![vec![0, 1], vec![2, 3]], "[4, 5, 6, 7] are in no group"),
        (
            vec![vec![0, 1, 2, 3], vec![3, 4, 5, 6]],
            "rank 3 appears twice",
        ),
        (vec![vec![0, 1, 2], vec![3, 4, 5, 6, 7]], "differ in size"),
        (
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 8]],
            "outside the world",
        ),
        (
            vec![vec![0, 2, 4, 6], vec![1, 3, 5, 7]],
            "differ from the collective's groups",
        ),
    ];
    for (groups, needle) in bad {
        let cfg = NormConfig::flax()
            .axis_name("i")
            .axis_index_groups(groups.clone());
        match ShardedLayerNorm::new(&cfg, comm.clone(), &[4, 8], 0) {
            Err(Error::InvalidGroups(msg)) => {
                assert!(msg.contains(needle), "{groups:?}: `{msg}` lacks `{needle}`")
            }
            other => panic!("{groups:?}: expected InvalidGroups, got {other:?}"),
        }
    }
    // The collective's own groups, but another axis name (JAX: unbound axis name).
    let cfg = NormConfig::flax()
        .axis_name("j")
        .axis_index_groups(vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
    assert!(matches!(
        ShardedLayerNorm::new(&cfg, comm.clone(), &[4, 8], 0),
        Err(Error::InvalidConfig(_))
    ));
    // No axis_name at all.
    assert!(matches!(
        ShardedLayerNorm::new(&NormConfig::flax(), comm.clone(), &[4, 8], 0),
        Err(Error::InvalidConfig(_))
    ));
    assert_eq!(comm.calls(), 0, "a rejected layer must not communicate");
    // And bad groups never become a collective in the first place.
    assert!(matches!(
        AxisGroups::new(8, Some(vec![vec![0, 1], vec![2, 3]])),
        Err(Error::InvalidGroups(_))
    ));
}

#[test]
fn each_direction_takes_exactly_one_collective() {
    for (name, base) in configs() {
        let groups = Some(vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
        let comm = Counting::new(8, groups.clone());
        let case = Case::new(&base, 8, &groups, [3, 4], DType::F32, 11);
        let ln = case.layer(comm.clone());
        let xs = case.arrays(&Device::Cpu, &case.xs);
        let dys = case.arrays(&Device::Cpu, &case.dys);
        let (_, saved) = ln.forward_train(&xs).unwrap();
        assert_eq!(comm.calls(), 1, "{name}: forward_train");
        ln.forward(&xs).unwrap();
        assert_eq!(comm.calls(), 2, "{name}: forward");
        ln.backward(&xs, &dys, &saved).unwrap();
        assert_eq!(comm.calls(), 3, "{name}: backward");
        // Bad inputs fail before communicating.
        assert!(ln.forward(&xs[..7]).is_err());
        assert!(ln.backward(&xs, &dys[..3], &saved).is_err());
        assert_eq!(comm.calls(), 3, "{name}: rejected calls");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let comm: Arc<dyn Collective> =
        Arc::new(InProcessHost::new("i", AxisGroups::new(2, None).unwrap()).unwrap());
    let cfg = NormConfig::flax().axis_name("i");
    // Sharded axes must be the trailing ones (each rank holds a slice of the features).
    let channels_first = cfg.clone().reduction_axes(1).feature_axes(1);
    assert!(matches!(
        ShardedLayerNorm::new(&channels_first, comm.clone(), &[2, 4, 3], 0),
        Err(Error::Unsupported(_))
    ));
    // keras has no axis_name.
    assert!(ShardedLayerNorm::new(&NormConfig::keras(), comm.clone(), &[2, 4], 0).is_err());
    let ln = ShardedLayerNorm::new(&cfg, comm, &[2, 4], 0).unwrap();
    let x = |shape: &[usize], dtype| {
        Array::from_tensor(
            &Device::Cpu,
            &Tensor::full(shape.to_vec(), dtype, 1.0).unwrap(),
        )
        .unwrap()
    };
    // Shards of different shapes or dtypes, or a wrong feature size.
    assert!(matches!(
        ln.forward(&[x(&[2, 4], DType::F32), x(&[3, 4], DType::F32)]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        ln.forward(&[x(&[2, 4], DType::F32), x(&[2, 4], DType::BF16)]),
        Err(Error::DType { .. })
    ));
    assert!(matches!(
        ln.forward(&[x(&[2, 5], DType::F32), x(&[2, 5], DType::F32)]),
        Err(Error::Shape { .. })
    ));
    // dy of the wrong dtype.
    let xs = [x(&[2, 4], DType::F32), x(&[2, 4], DType::F32)];
    let (_, saved) = ln.forward_train(&xs).unwrap();
    let dys = [x(&[2, 4], DType::BF16), x(&[2, 4], DType::BF16)];
    assert!(matches!(
        ln.backward(&xs, &dys, &saved),
        Err(Error::DType { .. })
    ));
    // Parameters of the wrong shape.
    let mut ln = ln;
    assert!(matches!(
        ln.set_scale(0, &Tensor::full([5], DType::F32, 1.0).unwrap()),
        Err(Error::Shape { .. })
    ));
    assert!(ln
        .set_scale(2, &Tensor::full([4], DType::F32, 1.0).unwrap())
        .is_err());
}

// ----- psum / pmean / all_gather semantics ------------------------------------------------------

#[test]
fn psum_and_pmean_follow_jax_on_the_cpu() {
    let strided = vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]];
    for groups in [None, Some(strided)] {
        let ag = AxisGroups::new(8, groups.clone()).unwrap();
        let comm = InProcessHost::new("i", ag.clone()).unwrap();
        let input: Vec<Vec<f64>> = (0..8)
            .map(|r| vec![r as f64, 10.0 * r as f64 + 1.0, -0.5])
            .collect();
        let want_sum: Vec<Vec<f64>> = (0..8)
            .map(|r| {
                let peers = ag.peers(r).unwrap();
                (0..3)
                    .map(|i| peers.iter().map(|&q| input[q][i]).sum())
                    .collect()
            })
            .collect();
        let mut bufs = input.clone();
        psum_host(&comm, "i", &mut bufs).unwrap();
        assert_eq!(bufs, want_sum, "psum, groups {groups:?}");
        let mut bufs = input.clone();
        pmean_host(&comm, "i", &mut bufs).unwrap();
        let k = ag.group_size() as f64;
        for (got, want) in bufs.iter().zip(&want_sum) {
            for (g, w) in got.iter().zip(want) {
                assert_eq!(*g, w / k, "pmean divides by the rank's own group size {k}");
            }
        }
        // Another axis name, or a wrong number of buffers, is an error.
        assert!(matches!(
            psum_host(&comm, "j", &mut input.clone()),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            psum_host(&comm, "i", &mut input[..7].to_vec()),
            Err(Error::Shape { .. })
        ));
        let mut ragged = input.clone();
        ragged[3].push(1.0);
        assert!(matches!(
            psum_host(&comm, "i", &mut ragged),
            Err(Error::Shape { .. })
        ));
    }
}

#[test]
fn all_gather_concatenates_in_group_position_order() {
    // Positions differ from rank order: group 0 is [3, 1], group 1 is [0, 2].
    let ag = AxisGroups::new(4, Some(vec![vec![3, 1], vec![0, 2]])).unwrap();
    let comm = InProcessHost::new("i", ag).unwrap();
    let send: Vec<Vec<f64>> = (0..4).map(|r| vec![r as f64, r as f64 + 0.5]).collect();
    let mut recv = vec![vec![f64::NAN; 4]; 4];
    {
        let s: Vec<Buf<'_>> = send.iter().map(|v| Buf::Host(v)).collect();
        let mut r: Vec<BufMut<'_>> = recv.iter_mut().map(|v| BufMut::Host(v)).collect();
        comm.all_gather(&s, &mut r).unwrap();
    }
    assert_eq!(recv[3], vec![3.0, 3.5, 1.0, 1.5]);
    assert_eq!(recv[1], recv[3]);
    assert_eq!(recv[0], vec![0.0, 0.5, 2.0, 2.5]);
    assert_eq!(recv[2], recv[0]);
    // recv must hold group_size x the send length.
    let mut short = vec![vec![0.0; 3]; 4];
    let s: Vec<Buf<'_>> = send.iter().map(|v| Buf::Host(v)).collect();
    let mut r: Vec<BufMut<'_>> = short.iter_mut().map(|v| BufMut::Host(v)).collect();
    assert!(matches!(
        comm.all_gather(&s, &mut r),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn psum_and_pmean_on_one_gpu() {
    let Some(be) = gpu_or_skip("psum_and_pmean_on_one_gpu") else {
        return;
    };
    let ag = AxisGroups::new(4, Some(vec![vec![0, 2], vec![1, 3]])).unwrap();
    let comm = InProcessCuda::new(be.clone(), "i", ag.clone()).unwrap();
    let stream = be.stream();
    let input: Vec<Vec<f64>> = (0..4)
        .map(|r| vec![r as f64 + 0.25, -(r as f64), 3.0, 1.0 / 3.0])
        .collect();
    let want = |r: usize, i: usize, mean: bool| {
        let s: f64 = ag.peers(r).unwrap().iter().map(|&q| input[q][i]).sum();
        if mean {
            s / 2.0
        } else {
            s
        }
    };
    macro_rules! check {
        ($t:ty, $rel:expr) => {
            for mean in [false, true] {
                let mut bufs: Vec<_> = input
                    .iter()
                    .map(|v| {
                        stream
                            .clone_htod(
                                &v.iter()
                                    .map(|&x| <$t as warpnorm::Element>::from_f64(x))
                                    .collect::<Vec<$t>>(),
                            )
                            .unwrap()
                    })
                    .collect();
                if mean {
                    pmean(&comm, "i", &mut bufs).unwrap();
                } else {
                    psum(&comm, "i", &mut bufs).unwrap();
                }
                for (r, b) in bufs.iter().enumerate() {
                    let got = stream.clone_dtoh(b).unwrap();
                    for (i, g) in got.iter().enumerate() {
                        let g = <$t as warpnorm::Element>::to_f64(*g);
                        let w = want(r, i, mean);
                        assert!(
                            (g - w).abs() <= $rel * w.abs() + 1e-7,
                            "{} rank {r}[{i}]: {g} vs {w}",
                            stringify!($t)
                        );
                    }
                }
            }
        };
    }
    check!(f32, 1e-6);
    check!(half::f16, 2e-3);
    check!(half::bf16, 1.6e-2);
    // A host buffer or another axis is an error.
    let mut bufs: Vec<_> = (0..4)
        .map(|_| stream.alloc_zeros::<f32>(4).unwrap())
        .collect();
    assert!(matches!(
        psum(&comm, "j", &mut bufs),
        Err(Error::InvalidConfig(_))
    ));
    let host = InProcessHost::new("i", ag).unwrap();
    assert!(matches!(
        psum(&host, "i", &mut bufs),
        Err(Error::Unsupported(_))
    ));
}
