//! Property tests over the sizes a caller controls: layouts, strides, shapes, groups and
//! fixture fields, absurd values included. Every case ends in a clear error or in a
//! result checked against the f64 reference; none may panic, abort or touch memory
//! outside the buffers it was given. Case counts are fixed so the file runs in seconds.

mod common;

use proptest::prelude::*;
use proptest::test_runner::Config;
use warpnorm::dist::AxisGroups;
use warpnorm::tooling::fixture::Fixture;
use warpnorm::tooling::verify::Backend;
use warpnorm::{Array, DType, Device, LayerNorm, NormConfig, Tensor};

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// A dimension: mostly small, sometimes far beyond any memory (never in between, so
/// that a size the checks accept stays cheap to allocate).
fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => 0usize..6,
        1 => Just(1usize << 40),
        1 => Just(1usize << 62),
        1 => Just(usize::MAX),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn tensor_shapes_allocate_or_fail_cleanly(shape in prop::collection::vec(dim(), 0..4)) {
        let exact = shape.iter().try_fold(1u128, |a, &d| a.checked_mul(d as u128));
        match Tensor::zeros(shape.clone(), DType::F32) {
            Ok(t) => prop_assert_eq!(Some(t.numel() as u128), exact),
            Err(e) => prop_assert!(exact.is_none_or(|n| n >= 1 << 40), "{shape:?}: {e}"),
        }
    }

    #[test]
    fn axis_groups_never_panic(
        world in prop_oneof![0usize..10, Just(1usize << 40), Just(usize::MAX)],
        groups in prop::option::of(prop::collection::vec(prop::collection::vec(0usize..12, 0..5), 0..4)),
    ) {
        if let Ok(g) = AxisGroups::new(world, groups) {
            for rank in 0..world {
                let peers = g.peers(rank).expect("every rank has a group");
                prop_assert!(peers.contains(&rank));
                prop_assert_eq!(peers.len(), g.group_size());
            }
        }
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn cpu_layers_of_any_shape_fail_cleanly_or_normalise(
        shape in prop::collection::vec(dim(), 1..4),
        salt in any::<u64>(),
    ) {
        let cpu = Device::cpu();
        let cfg = NormConfig::flax();
        let Ok(ln) = LayerNorm::new(&cpu, &cfg, &shape, 0) else { return Ok(()) };
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n.is_none_or(|n| n > 4096) {
            return Ok(());
        }
        let t = common::random_tensor(&shape, DType::F32, 0.5, 1.0, salt);
        // A shape with no elements can still have absurd rows: that is an error.
        if let Ok(y) = ln.forward(&Array::from_tensor(&cpu, &t).unwrap()) {
            let y = y.to_tensor().unwrap();
            prop_assert_eq!(y.shape(), t.shape());
            prop_assert!(y.data().iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn fixture_fields_are_checked_before_use(
        world in prop_oneof![
            Just("null".to_string()),
            (0u64..4).prop_map(|w| w.to_string()),
            Just("1099511627776".to_string()),
            Just("18446744073709551615".to_string()),
            Just("-1".to_string()),
            Just("1.5".to_string()),
        ],
        shape in prop::collection::vec(dim(), 1..4),
        short in any::<bool>(),
    ) {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&n| n <= 64);
        let count = match n {
            Some(n) if !short => n,
            Some(n) => n.saturating_sub(1),
            None => 3,
        };
        let data = format!("[{}]", vec!["0.5"; count].join(", "));
        let text = format!(
            r#"{{"name": "p", "api": "flax.linen.LayerNorm",
                "config": {{"axis_name": "i", "use_scale": false, "use_bias": false}},
                "world": {world},
                "x": {{"shape": {shape:?}, "dtype": "float32", "data": {data}}},
                "y": {{"shape": {shape:?}, "dtype": "float32", "data": {data}}}}}"#
        );
        if let Ok(fx) = Fixture::parse("p.json", &text) {
            prop_assert!(fx.world.is_none_or(|k| k <= warpnorm::dist::MAX_WORLD));
            // Running it is a result or an error, never an abort.
            let _ = warpnorm::tooling::verify::Cpu.run(&fx);
        }
    }
}

#[cfg(feature = "emulator")]
mod emulated {
    use super::*;
    use warpnorm::cuda::emulator::{self, HostBackward, HostForward};
    use warpnorm::ops::{Layout, NormSpec};
    use warpnorm::reference::{self, Params};

    /// What a buffer of x (at `stride`) must hold, in exact arithmetic: the oracle the
    /// crate's checked arithmetic is compared with.
    fn need(rows: u128, cols: u128, stride: u128) -> u128 {
        if rows == 0 {
            0
        } else {
            (rows - 1) * stride + cols
        }
    }

    /// Exact needs of x and y, or `None` for a layout every call must reject.
    fn oracle(layout: &Layout) -> Option<(u128, u128, u128)> {
        let (rows, cols, xs, ys) = match *layout {
            Layout::Rows {
                rows,
                cols,
                x_stride,
                y_stride,
            } => (
                rows as u128,
                cols as u128,
                x_stride as u128,
                y_stride as u128,
            ),
            Layout::ChannelsFirst { outer, cols, inner } => {
                let rows = outer as u128 * inner as u128;
                (rows, cols as u128, cols as u128, cols as u128)
            }
        };
        let limit = i64::MAX as u128;
        let ok = (1..1 << 31).contains(&cols)
            && xs >= cols
            && ys >= cols
            && rows <= limit
            && need(rows, cols, xs) <= limit
            && need(rows, cols, ys) <= limit;
        ok.then(|| (rows, need(rows, cols, xs), need(rows, cols, ys)))
    }

    fn extent() -> impl Strategy<Value = usize> {
        prop_oneof![
            8 => 0usize..5,
            4 => 1usize..70,
            1 => Just((1usize << 62) + 1),
            1 => Just(1usize << 31),
            1 => Just(usize::MAX),
            1 => any::<usize>(),
        ]
    }

    fn layout() -> impl Strategy<Value = Layout> {
        let extra = prop_oneof![4 => 0usize..3, 1 => any::<usize>()];
        prop_oneof![
            (extent(), extent(), extra.clone(), extra).prop_map(|(rows, cols, dx, dy)| {
                Layout::Rows {
                    rows,
                    cols,
                    x_stride: cols.wrapping_add(dx),
                    y_stride: cols.wrapping_add(dy),
                }
            }),
            (extent(), extent(), extent()).prop_map(|(outer, cols, inner)| Layout::ChannelsFirst {
                outer,
                cols,
                inner
            }),
        ]
    }

    /// Buffer sizes: what the exact oracle says (when small), minus `short`, or a small
    /// buffer for a layout that needs a huge one.
    fn buffer_len(need: Option<u128>, short: usize) -> usize {
        match need {
            Some(n) if n <= 20_000 => (n as usize).saturating_sub(short),
            _ => 16,
        }
    }

    const SENTINEL: f32 = 1234.5;

    proptest! {
        #![proptest_config(config(160))]

        #[test]
        fn layouts_are_checked_exactly_and_results_match_the_reference(
            layout in layout(),
            short in prop_oneof![6 => Just(0usize), 1 => 1usize..3],
            salt in any::<u64>(),
        ) {
            let exact = oracle(&layout);
            let x_len = buffer_len(exact.map(|e| e.1), short);
            let y_len = buffer_len(exact.map(|e| e.2), 0);
            let rows_len = buffer_len(exact.map(|e| e.0), 0);
            let cols = layout.cols().min(1 << 16);
            let x: Vec<f32> = common::random_tensor(&[x_len], DType::F32, 0.5, 1.0, salt)
                .data()
                .iter()
                .map(|&v| v as f32)
                .collect();
            let mut y = vec![SENTINEL; y_len];
            let (mut mean, mut rstd) = (vec![0f32; rows_len], vec![0f32; rows_len]);
            // RMSNorm: well-conditioned for any row (no cancellation), so one tolerance fits.
            let cfg = NormConfig::rms().use_scale(false);
            let spec = NormSpec::from_config(&cfg);
            let result = emulator::forward::<f32, f32, f32>(&spec, layout, HostForward {
                x: &x, scale: None, bias: None, mask: None, y: &mut y,
                stats: Some((&mut mean, &mut rstd)),
            });
            let fits = exact.is_some_and(|(r, nx, ny)| {
                r <= rows_len as u128 && nx <= x_len as u128 && ny <= y_len as u128
            });
            prop_assert_eq!(result.is_ok(), fits, "{:?}: {:?}", layout, result);
            if !fits {
                // An error writes nothing.
                prop_assert!(y.iter().all(|&v| v == SENTINEL));
                return Ok(());
            }
            if let Layout::Rows { rows, x_stride, y_stride, .. } = layout {
                let xt = Tensor::from_fn([rows, cols], DType::F32, |i| {
                    x[i / cols * x_stride + i % cols] as f64
                }).unwrap();
                let want = reference::forward(&cfg, &xt, Params::new(None, None), None).unwrap();
                let (rel, abs) = common::tolerance(DType::F32, 1.0, cols);
                for r in 0..rows {
                    let got: Vec<f64> = y[r * y_stride..r * y_stride + cols]
                        .iter().map(|&v| v as f64).collect();
                    let (ratio, at) = common::error_ratio(
                        &got, &want.y.data()[r * cols..(r + 1) * cols], rel, abs);
                    prop_assert!(ratio <= 1.0, "row {} col {}: ratio {}", r, at, ratio);
                    // The gap between rows is not the caller's output: untouched.
                    let gap_end = (r * y_stride + y_stride).min(y.len());
                    prop_assert!(y[r * y_stride + cols..gap_end].iter().all(|&v| v == SENTINEL));
                }
            }
        }

        #[test]
        fn backward_checks_layouts_like_forward(layout in layout(), short in 0usize..2) {
            let exact = oracle(&layout);
            let x_len = buffer_len(exact.map(|e| e.1), short);
            let y_len = buffer_len(exact.map(|e| e.2), 0);
            let rows_len = buffer_len(exact.map(|e| e.0), 0);
            let x = vec![0.25f32; x_len];
            let dy = vec![1f32; y_len];
            let (mean, rstd) = (vec![0f32; rows_len], vec![1f32; rows_len]);
            let mut dx = vec![SENTINEL; x_len];
            let mut workspace = vec![0f32; emulator::backward_workspace_len(&layout).min(1 << 20)];
            let spec = NormSpec::from_config(&NormConfig::flax());
            let result = emulator::backward::<f32, f32, f32>(&spec, layout, HostBackward {
                x: &x, dy: &dy, scale: None, mask: None, mean: &mean, rstd: &rstd,
                dx: &mut dx, dscale: None, dbias: None, workspace: &mut workspace,
            });
            let fits = exact.is_some_and(|(r, nx, ny)| {
                r <= rows_len as u128 && nx <= x_len as u128 && ny <= y_len as u128
            }) && workspace.len() >= emulator::backward_workspace_len(&layout);
            prop_assert_eq!(result.is_ok(), fits, "{:?}: {:?}", layout, result);
            if !fits {
                prop_assert!(dx.iter().all(|&v| v == SENTINEL));
            }
        }
    }
}
