//! Two threads launching the same kernels at once with different row lengths, so with
//! different dynamic shared memory: each launch must succeed and match the f64
//! reference. On a GPU this is what per-launch shared-memory attributes broke (one
//! thread's smaller opt-in failing the other's larger launch); the CPU emulation runs the
//! same selection and launch path concurrently.

mod common;

use std::sync::Arc;

use warpnorm::ops::{Layout, NormSpec};
use warpnorm::reference::{self, Params};
use warpnorm::{DType, NormConfig, Tensor};

fn config() -> NormConfig {
    NormConfig::flax().use_scale(false).use_bias(false)
}

fn check(got: &[f32], x: &Tensor, what: &str) {
    let want = reference::forward(&config(), x, Params::new(None, None), None).unwrap();
    let got: Vec<f64> = got.iter().map(|&v| v as f64).collect();
    let cols = x.shape()[1];
    let (rel, abs) = common::tolerance(DType::F32, 1.0, cols);
    let (ratio, at) = common::error_ratio(&got, want.y.data(), rel, abs);
    assert!(
        ratio <= 1.0,
        "{what}: element {at} off by {ratio} tolerances"
    );
}

fn input(rows: usize, cols: usize, salt: u64) -> Tensor {
    common::random_tensor(&[rows, cols], DType::F32, 0.5, 1.0, salt)
}

fn host(t: &Tensor) -> Vec<f32> {
    t.data().iter().map(|&v| v as f32).collect()
}

/// (rows, cols): a warp-per-row length, and one whose row cache needs more than the
/// 48 KiB of shared memory a kernel gets without opting in (f32: 12288 * 4 bytes).
#[cfg_attr(not(feature = "emulator"), allow(dead_code))]
const SHAPES: [(usize, usize); 2] = [(16, 33), (1, 12288)];

#[cfg(feature = "emulator")]
#[test]
fn emulated_launches_from_two_threads() {
    use warpnorm::cuda::emulator::{self, HostForward};
    let threads: Vec<_> = SHAPES
        .iter()
        .enumerate()
        .map(|(i, &(rows, cols))| {
            std::thread::spawn(move || {
                for round in 0..2 {
                    let x = input(rows, cols, (i * 10 + round) as u64);
                    let mut y = vec![f32::NAN; rows * cols];
                    let spec = NormSpec::from_config(&config());
                    emulator::forward::<f32, f32, f32>(
                        &spec,
                        Layout::rows(rows, cols),
                        HostForward {
                            x: &host(&x),
                            scale: None,
                            bias: None,
                            mask: None,
                            y: &mut y,
                            stats: None,
                        },
                    )
                    .unwrap();
                    check(&y, &x, &format!("cols {cols} round {round}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn gpu_launches_from_two_threads() {
    let Some(be) = common::gpu_or_skip("gpu_launches_from_two_threads") else {
        return;
    };
    let shapes = [(4096, 1024), (64, 16384)];
    let threads: Vec<_> = shapes
        .into_iter()
        .enumerate()
        .map(|(i, (rows, cols))| {
            let be = Arc::clone(&be);
            std::thread::spawn(move || {
                let stream = be.context().new_stream().unwrap();
                let spec = NormSpec::from_config(&config());
                for round in 0..20 {
                    let x = input(rows, cols, (i * 100 + round) as u64);
                    let xd = stream.clone_htod(&host(&x)).unwrap();
                    let mut yd = stream.alloc_zeros::<f32>(rows * cols).unwrap();
                    warpnorm::ops::forward::<f32, f32, f32>(
                        &be,
                        &stream,
                        &spec,
                        Layout::rows(rows, cols),
                        warpnorm::ops::Forward {
                            x: &xd,
                            scale: None,
                            bias: None,
                            mask: None,
                            y: &mut yd,
                            stats: None,
                        },
                    )
                    .unwrap();
                    let y = stream.clone_dtoh(&yd).unwrap();
                    check(&y, &x, &format!("cols {cols} round {round}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
