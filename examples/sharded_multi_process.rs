//! Sharded LayerNorm over NCCL, one process per GPU.
//!
//! Each rank holds `[rows, 1024]`: its slice of the features of every row. The ranks of a
//! group (`--groups`, JAX's `axis_index_groups`; one group of all ranks by default)
//! combine their row statistics with one NCCL collective per direction. Every rank then
//! checks its own output and gradients against the CPU reference of the unsharded layer
//! on its group's concatenated features, and exits non-zero on a mismatch.
//!
//! NCCL must be loadable as `libnccl.so` (see `docs/sharded.md`; the pip wheel ships only
//! `libnccl.so.2`, so put a `libnccl.so` symlink to it in a folder on LD_LIBRARY_PATH).
//!
//! Three ways to start the ranks:
//!
//! ```text
//! # 1. A launcher that spawns one process per GPU and hands them the NCCL ids in
//! #    WARPNORM_NCCL_ID (it keeps NCCL's bootstrap alive until they finish):
//! cargo run --release --example sharded_multi_process -- --world 4 --groups 0,1/2,3
//!
//! # 2. Your own launcher (a job scheduler, a shell loop): every rank gets WARPNORM_RANK and
//! #    WARPNORM_WORLD; rank 0 writes the ids to a shared file, the others wait for it.
//! for r in 0 1; do
//!   WARPNORM_RANK=$r WARPNORM_WORLD=2 \
//!     target/release/examples/sharded_multi_process --id-file /tmp/warpnorm.nccl-id &
//! done; wait
//!
//! # 3. As 2, with the ids in WARPNORM_NCCL_ID (from a process that stays alive until the
//! #    ranks have joined, e.g. a launcher calling NcclIds::generate).
//! ```
//!
//! Options: `--world N` (launcher), `--groups 0,1/2,3`, `--rows R`, `--id-file PATH`,
//! `--exact-variance` (flax `use_fast_variance=False`), `--rms` (RMSNorm).

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Duration;

use warpnorm::cuda::{device_count, CudaBackend};
use warpnorm::dist::{AxisGroups, NcclCollective, NcclIds};
use warpnorm::reference::{self, Params};
use warpnorm::rng::Rng;
use warpnorm::{Array, DType, Device, Error, NormConfig, Result, ShardedLayerNorm, Tensor};

const FEATURES_PER_RANK: usize = 1024;
const SEED: u64 = 2024;

#[derive(Clone, Debug)]
struct Options {
    world: Option<usize>,
    groups: Option<Vec<Vec<usize>>>,
    rows: usize,
    id_file: Option<PathBuf>,
    exact_variance: bool,
    rms: bool,
}

fn parse_groups(text: &str) -> Result<Vec<Vec<usize>>> {
    text.split('/')
        .map(|g| {
            g.split(',')
                .map(|r| {
                    r.trim().parse::<usize>().map_err(|e| {
                        Error::InvalidConfig(format!("--groups: `{r}` is not a rank ({e})"))
                    })
                })
                .collect()
        })
        .collect()
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        world: None,
        groups: None,
        rows: 64,
        id_file: None,
        exact_variance: false,
        rms: false,
    };
    let mut args = std::env::args().skip(1);
    let bad = |msg: String| Error::InvalidConfig(msg);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| bad(format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--world" => {
                let v = value("--world")?;
                o.world = Some(v.parse().map_err(|e| bad(format!("--world {v}: {e}")))?);
            }
            "--groups" => o.groups = Some(parse_groups(&value("--groups")?)?),
            "--rows" => {
                let v = value("--rows")?;
                o.rows = v.parse().map_err(|e| bad(format!("--rows {v}: {e}")))?;
            }
            "--id-file" => o.id_file = Some(PathBuf::from(value("--id-file")?)),
            "--exact-variance" => o.exact_variance = true,
            "--rms" => o.rms = true,
            other => {
                return Err(bad(format!(
                    "unknown argument `{other}` (see the example's docs)"
                )))
            }
        }
    }
    Ok(o)
}

fn env_usize(name: &str) -> Result<Option<usize>> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|e| Error::InvalidConfig(format!("{name}={v}: {e}"))),
        Err(_) => Ok(None),
    }
}

fn config(o: &Options) -> NormConfig {
    let base = if o.rms {
        NormConfig::rms()
    } else {
        NormConfig::flax().use_fast_variance(!o.exact_variance)
    };
    let cfg = base.axis_name("model");
    match &o.groups {
        Some(g) => cfg.axis_index_groups(g.clone()),
        None => cfg,
    }
}

/// One rank's inputs: the same in every process, so each rank can rebuild its group's.
struct RankData {
    x: Tensor,
    dy: Tensor,
    scale: Option<Tensor>,
    bias: Option<Tensor>,
}

/// Rank r's x (bf16), dy (y's dtype), scale and bias, from a seed.
fn rank_data(cfg: &NormConfig, rank: usize, rows: usize) -> Result<RankData> {
    let mut rng = Rng::new(SEED + rank as u64);
    let shape = [rows, FEATURES_PER_RANK];
    let x = Tensor::from_fn(shape, DType::BF16, |_| 0.25 + rng.normal())?;
    let dy = Tensor::from_fn(shape, cfg.output_dtype(DType::BF16), |_| rng.normal())?;
    let p = [FEATURES_PER_RANK];
    let scale = cfg
        .has_scale()
        .then(|| Tensor::from_fn(p, cfg.param_dtype(), |_| 1.0 + 0.1 * rng.normal()));
    let bias = cfg
        .has_bias()
        .then(|| Tensor::from_fn(p, cfg.param_dtype(), |_| 0.1 * rng.normal()));
    Ok(RankData {
        x,
        dy,
        scale: scale.transpose()?,
        bias: bias.transpose()?,
    })
}

/// The group's tensors concatenated along `axis` (None when the ranks have none).
fn concat(
    parts: &[RankData],
    axis: usize,
    pick: impl Fn(&RankData) -> Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let parts: Option<Vec<Tensor>> = parts.iter().map(|d| pick(d).cloned()).collect();
    parts.map(|p| Tensor::concat(&p, axis)).transpose()
}

/// Largest error over the allowed `rel * |want| + abs * max|want|` (NaN and inf fail).
fn error_ratio(got: &Tensor, want: &Tensor, rel: f64, abs: f64) -> f64 {
    let scale = want.data().iter().fold(0.0f64, |m, v| m.max(v.abs()));
    got.data()
        .iter()
        .zip(want.data())
        .map(|(&g, &w)| {
            let err = (g - w).abs();
            if err.is_finite() {
                err / (rel * w.abs() + abs * scale)
            } else {
                f64::INFINITY
            }
        })
        .fold(0.0, |m, r| if r > m || r.is_nan() { r } else { m })
}

fn worker(o: &Options, rank: usize, world: usize) -> Result<()> {
    let cfg = config(o);
    let groups = cfg.groups_for(world)?;
    // Ids: from the launcher's environment variable, or through a shared file that rank 0
    // writes (rank 0 stays alive while the others join, which NCCL's bootstrap needs).
    let ids = match &o.id_file {
        Some(path) if rank == 0 => {
            let ids = NcclIds::for_groups(&groups)?;
            ids.write_file(path)?;
            ids
        }
        Some(path) => NcclIds::wait_for_file(path, Duration::from_secs(120))?,
        None => NcclIds::from_env()?,
    };
    let ordinal = rank % device_count()?;
    let backend = CudaBackend::new(ordinal)?;
    let comm = Arc::new(NcclCollective::multi_process(
        backend.clone(),
        rank,
        "model",
        groups.clone(),
        &ids,
    )?);
    if rank == 0 {
        if let Some(path) = &o.id_file {
            // Everyone has joined: the file has done its job.
            let _ = std::fs::remove_file(path);
        }
    }

    let shape = [o.rows, FEATURES_PER_RANK];
    let mut ln = ShardedLayerNorm::new(&cfg, comm, &shape, 0)?;
    let mine = rank_data(&cfg, rank, o.rows)?;
    if let Some(s) = &mine.scale {
        ln.set_scale(0, s)?;
    }
    if let Some(b) = &mine.bias {
        ln.set_bias(0, b)?;
    }
    let device = Device::Cuda(backend);
    let xs = [Array::from_tensor(&device, &mine.x)?];
    let dys = [Array::from_tensor(&device, &mine.dy)?];
    let (ys, saved) = ln.forward_train(&xs)?;
    let grads = ln.backward(&xs, &dys, &saved)?;

    // The unsharded layer on this rank's group, from the same seeded inputs.
    let (Some(members), Some(position)) = (groups.peers(rank), groups.position(rank)) else {
        return Err(Error::InvalidConfig(format!(
            "rank {rank} is outside the world 0..{world}"
        )));
    };
    let group: Vec<RankData> = members
        .iter()
        .map(|&q| rank_data(&cfg, q, o.rows))
        .collect::<Result<_>>()?;
    let x_cat = Tensor::concat(&group.iter().map(|d| d.x.clone()).collect::<Vec<_>>(), 1)?;
    let dy_cat = Tensor::concat(&group.iter().map(|d| d.dy.clone()).collect::<Vec<_>>(), 1)?;
    let scale_cat = concat(&group, 0, |d| d.scale.as_ref())?;
    let bias_cat = concat(&group, 0, |d| d.bias.as_ref())?;
    let plain = if o.rms {
        NormConfig::rms()
    } else {
        NormConfig::flax().use_fast_variance(!o.exact_variance)
    };
    let p = Params::new(scale_cat.as_ref(), bias_cat.as_ref());
    let want_y = reference::forward(&plain, &x_cat, p, None)?
        .y
        .split(1, members.len())?;
    let want_dx = reference::backward(&plain, &x_cat, p, None, &dy_cat)?
        .dx
        .split(1, members.len())?;

    let y = ys[0].to_tensor()?;
    let dx = grads[0].dx.to_tensor()?;
    let ry = error_ratio(
        &y,
        &want_y[position],
        2.0 * y.dtype().unit_roundoff() + 1e-5,
        1e-5,
    );
    let rdx = error_ratio(
        &dx,
        &want_dx[position],
        2.0 * dx.dtype().unit_roundoff() + 1e-5,
        1e-4,
    );
    let ok = ry <= 1.0 && rdx <= 1.0;
    println!(
        "rank {rank}/{world} (group {:?}, position {position}) on cuda:{ordinal}: y error {ry:.3}, dx error {rdx:.3} \
         of the tolerance: {}",
        members,
        if ok { "OK" } else { "MISMATCH" }
    );
    if ok {
        Ok(())
    } else {
        Err(Error::Nccl(format!(
            "rank {rank}: results differ from the reference"
        )))
    }
}

/// Spawns one worker per rank with the ids in WARPNORM_NCCL_ID, and waits for them.
fn launch(o: &Options, world: usize) -> Result<bool> {
    let groups = AxisGroups::new(world, o.groups.clone())?;
    let ids = NcclIds::for_groups(&groups)?;
    let exe = std::env::current_exe()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut children = Vec::with_capacity(world);
    for rank in 0..world {
        let child = Command::new(&exe)
            .args(&args)
            .env("WARPNORM_RANK", rank.to_string())
            .env("WARPNORM_WORLD", world.to_string())
            .env(NcclIds::ENV_VAR, ids.to_hex())
            .spawn()?;
        children.push(child);
    }
    let mut ok = true;
    for (rank, mut child) in children.into_iter().enumerate() {
        let status = child.wait()?;
        if !status.success() {
            eprintln!("rank {rank} failed: {status}");
            ok = false;
        }
    }
    Ok(ok)
}

fn run() -> Result<bool> {
    let o = parse_args()?;
    match (env_usize("WARPNORM_RANK")?, env_usize("WARPNORM_WORLD")?) {
        (Some(rank), Some(world)) => worker(&o, rank, world).map(|()| true),
        (None, None) => match o.world {
            Some(world) => launch(&o, world),
            None => Err(Error::InvalidConfig(
                "pass --world N to launch N ranks, or set WARPNORM_RANK and WARPNORM_WORLD to run one".into(),
            )),
        },
        _ => Err(Error::InvalidConfig("set both WARPNORM_RANK and WARPNORM_WORLD".into())),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sharded_multi_process: {e}");
            ExitCode::FAILURE
        }
    }
}
