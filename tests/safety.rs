//! Hostile and careless input: every case is a clear error (never a panic, an abort, a
//! hang or an out-of-bounds access), or a result checked against the f64 reference.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warpnorm::dist::{AxisGroups, InProcessHost};
use warpnorm::tooling::fixture::Fixture;
use warpnorm::tooling::verify::collect_files;
use warpnorm::{Array, DType, Device, Error, LayerNorm, NormConfig, ShardedLayerNorm, Tensor};

fn too_large<T: std::fmt::Debug>(r: warpnorm::Result<T>, what: &str) -> String {
    match r {
        Err(e @ Error::TooLarge { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(what), "`{msg}` should name `{what}`");
            msg
        }
        other => panic!("expected a TooLarge error naming `{what}`, got {other:?}"),
    }
}

#[test]
fn absurd_tensor_shapes_are_errors_before_allocating() {
    too_large(Tensor::zeros([usize::MAX], DType::F32), "tensor shape");
    too_large(
        Tensor::zeros([1 << 40, 1 << 40], DType::F32),
        "tensor shape",
    );
    too_large(Tensor::full([1 << 45], DType::BF16, 1.0), "tensor shape");
    assert_eq!(Tensor::zeros([0, 1 << 40], DType::F32).unwrap().numel(), 0);
}

#[test]
fn absurd_layer_shapes_are_errors_before_allocating() {
    let cpu = Device::cpu();
    let cfg = NormConfig::flax();
    let msg = too_large(LayerNorm::new(&cpu, &cfg, &[1, usize::MAX], 0), "x_shape");
    eprintln!("LayerNorm::new(&cpu, &cfg, &[1, usize::MAX]): {msg}");
    too_large(
        LayerNorm::new(&cpu, &cfg, &[1 << 40, 1 << 40], 0),
        "x_shape",
    );
    too_large(LayerNorm::new(&cpu, &cfg, &[0, 1 << 50], 0), "x_shape");
    // A layer without parameters allocates none, but its reference tables are refused.
    let bare = NormConfig::flax().use_scale(false).use_bias(false);
    let ln = LayerNorm::new(&cpu, &bare, &[0, 1 << 40], 0).unwrap();
    let x = Array::from_tensor(&cpu, &Tensor::zeros([0, 1 << 40], DType::F32).unwrap()).unwrap();
    too_large(ln.forward(&x), "x shape");
}

#[test]
fn absurd_worlds_are_errors_before_allocating() {
    let e = AxisGroups::new(1 << 40, None).unwrap_err();
    assert!(matches!(e, Error::InvalidGroups(_)), "{e}");
    assert!(e.to_string().contains("1099511627776"), "{e}");
    let e = AxisGroups::new(usize::MAX, Some(vec![vec![0]])).unwrap_err();
    assert!(matches!(e, Error::InvalidGroups(_)), "{e}");
    AxisGroups::new(warpnorm::dist::MAX_WORLD, None).unwrap();
}

/// A small valid sharded fixture's text with `world` and x's shape replaced.
fn fixture_text(world: &str, x_shape: &str, x_data: &str) -> String {
    format!(
        r#"{{"name": "hostile", "api": "flax.linen.LayerNorm",
            "config": {{"axis_name": "i", "use_scale": false, "use_bias": false}},
            "world": {world},
            "x": {{"shape": {x_shape}, "dtype": "float32", "data": {x_data}}},
            "y": {{"shape": {x_shape}, "dtype": "float32", "data": {x_data}}}}}"#
    )
}

#[test]
fn hostile_fixture_fields_are_errors() {
    let parse = |text: &str| Fixture::parse("hostile.json", text);
    let e = parse(&fixture_text("1099511627776", "[1, 2]", "[0, 0]")).unwrap_err();
    eprintln!("world 2^40: {e}");
    assert!(e.to_string().contains("world"), "{e}");
    let e = parse(&fixture_text("18446744073709551615", "[1, 2]", "[0, 0]")).unwrap_err();
    assert!(e.to_string().contains("world"), "{e}");
    // x of zero elements with an absurd row: it parses (it is consistent), then
    // verifying it is an error in the report, not an abort.
    let text =
        fixture_text("null", "[0, 1099511627776]", "[]").replace(r#""axis_name": "i", "#, "");
    parse(&text).unwrap();
    let path = scratch_dir("empty_x").join("empty.json");
    std::fs::write(&path, text).unwrap();
    let report = warpnorm::tooling::verify::verify_file(&path, &warpnorm::tooling::verify::Cpu);
    let e = report.error.expect("an error in the report");
    eprintln!("x [0, 2^40]: {e}");
    assert!(e.contains("is too large"), "{e}");
}

/// A fresh folder under the target directory (removed first if a previous run left it).
fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `f` on another thread and fails the test if it takes longer than `limit` (a hang).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}: it hangs"))
}

#[test]
fn a_folder_of_looping_symlinks_is_searched_once() {
    let dir = scratch_dir("symlink_loop");
    std::fs::write(dir.join("case.json"), "{}").unwrap();
    std::os::unix::fs::symlink(".", dir.join("a")).unwrap();
    std::os::unix::fs::symlink(".", dir.join("b")).unwrap();
    let files = within(Duration::from_secs(10), move || collect_files(&[dir])).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
}

#[test]
fn a_fifo_named_like_a_fixture_is_refused_without_blocking() {
    let dir = scratch_dir("fifo");
    let fifo = dir.join("x.json");
    match std::process::Command::new("mkfifo").arg(&fifo).status() {
        Ok(s) if s.success() => {}
        other => {
            common::skip(&format!("fifo fixture: mkfifo is unavailable ({other:?})"));
            return;
        }
    }
    let files = collect_files(&[dir]).unwrap();
    assert_eq!(files, vec![fifo.clone()]);
    let e = within(Duration::from_secs(10), move || Fixture::load(&fifo)).unwrap_err();
    eprintln!("FIFO x.json: {e}");
    assert!(e.to_string().contains("not a regular file (a FIFO)"), "{e}");
}

#[test]
fn devices_and_oversized_files_are_refused() {
    let started = Instant::now();
    let e = Fixture::load("/dev/zero").unwrap_err();
    eprintln!("/dev/zero: {e}");
    assert!(
        e.to_string().contains("not a regular file (a device)"),
        "{e}"
    );
    let dir = scratch_dir("oversized");
    let big = dir.join("big.json");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(warpnorm::tooling::fixture::MAX_FIXTURE_BYTES + 1)
        .unwrap();
    let e = Fixture::load(&big).unwrap_err();
    assert!(e.to_string().contains("more than the"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn epsilons_that_vanish_or_overflow_in_f32_are_rejected_everywhere() {
    let cpu = Device::cpu();
    for eps in [1e-50, 1e308, f64::NAN, f64::INFINITY, 0.0, -1e-5] {
        let cfg = NormConfig::flax().epsilon(eps);
        let e = cfg.validate().unwrap_err();
        assert!(e.to_string().contains("epsilon"), "{eps}: {e}");
        let e = LayerNorm::new(&cpu, &cfg, &[2, 8], 0).unwrap_err();
        assert!(e.to_string().contains("epsilon"), "{eps}: {e}");
        let e = cfg.to_json().unwrap_err();
        assert!(e.to_string().contains("epsilon"), "{eps}: {e}");
        assert!(serde_json::to_string(&cfg).is_err(), "{eps}");
    }
    eprintln!(
        "epsilon 1e-50: {}",
        NormConfig::flax().epsilon(1e-50).validate().unwrap_err()
    );
    // The smallest positive f32 is still an epsilon the kernels can add.
    NormConfig::flax().epsilon(1e-45).validate().unwrap();
}

fn cpu_layer(cfg: &NormConfig, shape: &[usize]) -> LayerNorm {
    LayerNorm::new(&Device::cpu(), cfg, shape, 0).unwrap()
}

fn cpu_array(shape: &[usize], salt: u64) -> Array {
    let t = common::random_tensor(shape, DType::F32, 0.5, 1.0, salt);
    Array::from_tensor(&Device::cpu(), &t).unwrap()
}

#[test]
fn cpu_backward_rejects_statistics_of_another_layer_or_shape() {
    let cfg = NormConfig::flax();
    let (a, b) = (cpu_layer(&cfg, &[4, 16]), cpu_layer(&cfg, &[4, 16]));
    let x = cpu_array(&[4, 16], 1);
    let dy = cpu_array(&[4, 16], 2);
    let (_, saved) = a.forward_train(&x).unwrap();
    a.backward(&x, &dy, &saved).unwrap();
    let e = b.backward(&x, &dy, &saved).unwrap_err();
    assert!(e.to_string().contains("another layer"), "{e}");
    let rms = cpu_layer(&NormConfig::rms(), &[4, 16]);
    assert!(rms.backward(&x, &dy, &saved).is_err());
    // Same layer, an x of another batch size.
    let x2 = cpu_array(&[2, 16], 3);
    let dy2 = cpu_array(&[2, 16], 4);
    let e = a.backward(&x2, &dy2, &saved).unwrap_err();
    assert!(e.to_string().contains("`saved`"), "{e}");
    // Masked statistics with another x: the error is about `saved`, not a `mask` the
    // caller never passed.
    let mask = vec![true; 64];
    let (_, masked) = a.forward_train_masked(&x, &mask).unwrap();
    let e = a.backward(&x2, &dy2, &masked).unwrap_err();
    assert!(
        e.to_string().contains("`saved`") && !e.to_string().contains("`mask`"),
        "{e}"
    );
    eprintln!("masked saved, other x: {e}");
}

#[test]
fn sharded_layers_move_between_threads() {
    use warpnorm::reference::{sharded_forward, Params};
    let cfg = NormConfig::flax().axis_name("i");
    let comm = Arc::new(InProcessHost::for_config(&cfg, 2).unwrap());
    let ln = Arc::new(ShardedLayerNorm::new(&cfg, comm, &[3, 8], 0).unwrap());
    let xs: Vec<Tensor> = (0..2)
        .map(|r| common::random_tensor(&[3, 8], DType::F32, 0.5, 1.0, 10 + r))
        .collect();
    let param = |a: Option<&Array>| a.map(|a| a.to_tensor().unwrap());
    let scales: Vec<Option<Tensor>> = (0..2).map(|r| param(ln.scale(r))).collect();
    let biases: Vec<Option<Tensor>> = (0..2).map(|r| param(ln.bias(r))).collect();
    let params: Vec<Params> = (0..2)
        .map(|r| Params::new(scales[r].as_ref(), biases[r].as_ref()))
        .collect();
    let want =
        sharded_forward(&cfg, &xs, &params, None, &AxisGroups::new(2, None).unwrap()).unwrap();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (ln, xs) = (ln.clone(), xs.clone());
            std::thread::spawn(move || {
                let arrays: Vec<Array> = xs
                    .iter()
                    .map(|t| Array::from_tensor(&Device::cpu(), t).unwrap())
                    .collect();
                let ys = ln.forward(&arrays).unwrap();
                ys.iter()
                    .map(|a| a.to_tensor().unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for t in threads {
        for (got, want) in t.join().unwrap().iter().zip(&want) {
            let (ratio, at) = common::error_ratio(got.data(), want.y.data(), 1e-6, 1e-6);
            assert!(ratio <= 1.0, "element {at}: ratio {ratio}");
        }
    }
}
