//! The CPU reference on its own: gradients against finite differences, metamorphic
//! relations, sharded against unsharded, dtype rules, and input errors.

use warpnorm::dist::AxisGroups;
use warpnorm::reference::{self, Grads, Params};
use warpnorm::rng::Rng;
use warpnorm::{DType, Error, NormConfig, Tensor};

/// Values that are multiples of 2^-8 in [-4, 4] (plus `offset`): exact in f32, and
/// still exact after adding the finite-difference steps 2^-6 and 2^-7.
fn grid(rng: &mut Rng, shape: &[usize], offset: f64) -> Tensor {
    Tensor::from_fn(shape.to_vec(), DType::F32, |_| {
        offset + (rng.below(2049) as f64 - 1024.0) / 256.0
    })
    .unwrap()
}

/// Parameters near 1 (scale) or 0 (bias) on the same grid.
fn param(rng: &mut Rng, shape: &[usize], around: f64) -> Tensor {
    Tensor::from_fn(shape.to_vec(), DType::F32, |_| {
        around + (rng.below(257) as f64 - 128.0) / 256.0
    })
    .unwrap()
}

fn with_value(t: &Tensor, i: usize, v: f64) -> Tensor {
    let mut d = t.data().to_vec();
    d[i] = v;
    Tensor::new(t.shape(), t.dtype(), d).unwrap()
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    a.data().iter().zip(b.data()).map(|(x, y)| x * y).sum()
}

/// One case: a config and its inputs (one entry per rank; one rank when unsharded).
struct Case {
    cfg: NormConfig,
    xs: Vec<Tensor>,
    scales: Vec<Option<Tensor>>,
    biases: Vec<Option<Tensor>>,
    masks: Option<Vec<Vec<bool>>>,
    dys: Vec<Tensor>,
    groups: Option<AxisGroups>,
}

impl Case {
    fn new(cfg: NormConfig, shape: &[usize], seed: u64) -> Case {
        Case::sharded(cfg, shape, 1, None, seed)
    }

    fn sharded(
        cfg: NormConfig,
        shape: &[usize],
        world: usize,
        groups: Option<AxisGroups>,
        seed: u64,
    ) -> Case {
        let mut rng = Rng::new(seed);
        let pshape = cfg.resolve(shape).unwrap().param_shape;
        let pdt = cfg.param_dtype();
        let mut case = Case {
            xs: vec![],
            scales: vec![],
            biases: vec![],
            masks: None,
            dys: vec![],
            groups,
            cfg,
        };
        for _ in 0..world {
            case.xs.push(grid(&mut rng, shape, 0.5));
            case.scales.push(
                case.cfg
                    .has_scale()
                    .then(|| param(&mut rng, &pshape, 1.0).cast(pdt)),
            );
            case.biases.push(
                case.cfg
                    .has_bias()
                    .then(|| param(&mut rng, &pshape, 0.0).cast(pdt)),
            );
            let dy_dtype = case.cfg.output_dtype(DType::F32);
            let dy = grid(&mut rng, shape, 0.0).cast(dy_dtype);
            case.dys.push(dy);
        }
        case
    }

    fn mask(mut self, f: impl Fn(usize, usize) -> bool) -> Case {
        let masks = self
            .xs
            .iter()
            .enumerate()
            .map(|(r, x)| (0..x.numel()).map(|i| f(r, i)).collect())
            .collect();
        self.masks = Some(masks);
        self
    }

    fn params(&self) -> Vec<Params<'_>> {
        self.scales
            .iter()
            .zip(&self.biases)
            .map(|(s, b)| Params::new(s.as_ref(), b.as_ref()))
            .collect()
    }

    fn ys(&self, xs: &[Tensor], params: &[Params]) -> Vec<Tensor> {
        match &self.groups {
            None => {
                let mask = self.masks.as_ref().map(|m| m[0].as_slice());
                vec![
                    reference::forward(&self.cfg, &xs[0], params[0], mask)
                        .unwrap()
                        .y,
                ]
            }
            Some(g) => reference::sharded_forward(&self.cfg, xs, params, self.masks.as_deref(), g)
                .unwrap()
                .into_iter()
                .map(|f| f.y)
                .collect(),
        }
    }

    fn grads(&self) -> Vec<Grads> {
        let params = self.params();
        match &self.groups {
            None => {
                let mask = self.masks.as_ref().map(|m| m[0].as_slice());
                vec![
                    reference::backward(&self.cfg, &self.xs[0], params[0], mask, &self.dys[0])
                        .unwrap(),
                ]
            }
            Some(g) => reference::sharded_backward(
                &self.cfg,
                &self.xs,
                &params,
                self.masks.as_deref(),
                &self.dys,
                g,
            )
            .unwrap(),
        }
    }

    /// `sum over ranks of <dy, y>` with one input replaced.
    fn loss(&self, xs: &[Tensor], scales: &[Option<Tensor>], biases: &[Option<Tensor>]) -> f64 {
        let params: Vec<Params> = scales
            .iter()
            .zip(biases)
            .map(|(s, b)| Params::new(s.as_ref(), b.as_ref()))
            .collect();
        self.ys(xs, &params)
            .iter()
            .zip(&self.dys)
            .map(|(y, dy)| dot(y, dy))
            .sum()
    }
}

/// Richardson-extrapolated central difference of `f` at 0 (steps 2^-6 and 2^-7,
/// exact on the input grid): truncation error O(h^4).
fn derivative(f: impl Fn(f64) -> f64) -> f64 {
    let d = |h: f64| (f(h) - f(-h)) / (2.0 * h);
    let h = 1.0 / 64.0;
    (4.0 * d(h / 2.0) - d(h)) / 3.0
}

/// Checks every gradient of the case against finite differences of the loss.
///
/// y is rounded to f32, so each loss carries ~sqrt(n) * 2^-24 * |y| |dy| of noise,
/// amplified by 1/h: the tolerance is 1e-3 of the largest gradient.
fn check_gradients(case: &Case, label: &str) {
    let grads = case.grads();
    let mut worst = 0.0f64;
    let mut compare = |what: &str, analytic: &Tensor, fd: &[f64]| {
        let scale = analytic.data().iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        for (i, (&a, &n)) in analytic.data().iter().zip(fd).enumerate() {
            let err = (a - n).abs() / scale;
            worst = worst.max(err);
            assert!(
                err < 1e-3,
                "{label}: {what}[{i}] analytic {a} vs finite difference {n}"
            );
        }
    };
    for r in 0..case.xs.len() {
        let fd: Vec<f64> = (0..case.xs[r].numel())
            .map(|i| {
                derivative(|t| {
                    let mut xs = case.xs.clone();
                    xs[r] = with_value(&xs[r], i, xs[r].data()[i] + t);
                    case.loss(&xs, &case.scales, &case.biases)
                })
            })
            .collect();
        compare("dx", &grads[r].dx, &fd);
        for (which, params, grad) in [
            ("dscale", &case.scales, &grads[r].dscale),
            ("dbias", &case.biases, &grads[r].dbias),
        ] {
            let Some(p) = &params[r] else {
                assert!(grad.is_none(), "{label}: {which} without a parameter");
                continue;
            };
            let grad = grad.as_ref().unwrap();
            assert_eq!(grad.dtype(), case.cfg.param_dtype());
            let fd: Vec<f64> = (0..p.numel())
                .map(|i| {
                    derivative(|t| {
                        let mut ps = params.clone();
                        ps[r] = Some(with_value(p, i, p.data()[i] + t));
                        if which == "dscale" {
                            case.loss(&case.xs, &ps, &case.biases)
                        } else {
                            case.loss(&case.xs, &case.scales, &ps)
                        }
                    })
                })
                .collect();
            compare(which, grad, &fd);
        }
    }
    eprintln!("{label}: worst |analytic - fd| / max|grad| = {worst:.2e}");
}

// ----- finite differences -------------------------------------------------------------

#[test]
fn gradients_layernorm_fast_and_exact_variance() {
    check_gradients(
        &Case::new(NormConfig::flax(), &[3, 7], 1),
        "flax fast variance",
    );
    check_gradients(
        &Case::new(NormConfig::flax().use_fast_variance(false), &[3, 7], 2),
        "flax exact variance",
    );
    check_gradients(
        &Case::new(NormConfig::keras().epsilon(1e-5), &[4, 6], 3),
        "keras",
    );
}

#[test]
fn gradients_with_mask() {
    // Row 0 partly selected, row 1 fully, row 2 two elements.
    let mask = |_: usize, i: usize| match i / 6 {
        0 => !i.is_multiple_of(3),
        1 => true,
        _ => i % 6 == 1 || i % 6 == 4,
    };
    check_gradients(
        &Case::new(NormConfig::flax(), &[3, 6], 4).mask(mask),
        "flax mask fast",
    );
    check_gradients(
        &Case::new(NormConfig::flax().use_fast_variance(false), &[3, 6], 5).mask(mask),
        "flax mask exact",
    );
    check_gradients(
        &Case::new(NormConfig::rms(), &[3, 6], 6).mask(mask),
        "rms mask",
    );
}

#[test]
fn gradients_rms_and_rms_scaling() {
    check_gradients(&Case::new(NormConfig::rms(), &[3, 8], 7), "rms");
    check_gradients(
        &Case::new(NormConfig::rms().use_scale(false), &[2, 5], 8),
        "rms no scale",
    );
    check_gradients(
        &Case::new(NormConfig::keras().rms_scaling(true), &[3, 8], 9),
        "keras rms_scaling",
    );
}

#[test]
fn gradients_with_other_axes() {
    check_gradients(
        &Case::new(
            NormConfig::flax().reduction_axes(1).feature_axes(1),
            &[2, 5, 3],
            10,
        ),
        "channels first (reduce axis 1)",
    );
    check_gradients(
        &Case::new(NormConfig::keras().axis(1), &[2, 5, 3], 11),
        "keras axis 1",
    );
    check_gradients(
        &Case::new(NormConfig::flax().reduction_axes([1, 2]), &[2, 3, 4], 12),
        "reduce (1, 2), features last",
    );
    check_gradients(
        &Case::new(
            NormConfig::flax().reduction_axes(-1).feature_axes(-2),
            &[2, 3, 4],
            13,
        ),
        "features outside the reduction",
    );
    check_gradients(
        &Case::new(
            NormConfig::flax()
                .reduction_axes([0, 2])
                .feature_axes([0, 1])
                .use_fast_variance(false),
            &[3, 2, 4],
            14,
        ),
        "reduce (0, 2), features (0, 1)",
    );
    check_gradients(
        &Case::new(
            NormConfig::flax().use_scale(false).use_bias(false),
            &[2, 6],
            15,
        ),
        "no parameters",
    );
}

#[test]
fn gradients_sharded() {
    let cfg = NormConfig::flax().axis_name("i");
    let groups = AxisGroups::new(4, Some(vec![vec![0, 2], vec![1, 3]])).unwrap();
    let g = |cfg: NormConfig| cfg.axis_index_groups(vec![vec![0, 2], vec![1, 3]]);
    check_gradients(
        &Case::sharded(g(cfg.clone()), &[2, 3], 4, Some(groups.clone()), 16),
        "sharded fast",
    );
    check_gradients(
        &Case::sharded(
            g(cfg.clone().use_fast_variance(false)),
            &[2, 3],
            4,
            Some(groups.clone()),
            17,
        ),
        "sharded exact",
    );
    check_gradients(
        &Case::sharded(
            g(NormConfig::rms().axis_name("i")),
            &[2, 3],
            4,
            Some(groups.clone()),
            18,
        ),
        "sharded rms",
    );
    // Masks with different counts per rank: flax averages the per-rank means.
    check_gradients(
        &Case::sharded(g(cfg), &[2, 4], 4, Some(groups), 19).mask(|r, i| (i + r) % 3 != 0),
        "sharded mask",
    );
}

// ----- metamorphic relations ------------------------------------------------------------

/// Elementwise equality up to `ulps` units in the last place of f32.
/// Element-wise equality within `ulps` units in the last place of f32 (the tensors hold
/// f32 values), as approx counts them.
fn assert_close_ulps(a: &Tensor, b: &Tensor, ulps: u32, label: &str) {
    assert_eq!(a.shape(), b.shape());
    for (i, (&x, &y)) in a.data().iter().zip(b.data()).enumerate() {
        assert!(
            approx::ulps_eq!(x as f32, y as f32, max_ulps = ulps),
            "{label}[{i}]: {x} vs {y}"
        );
    }
}

fn affine(t: &Tensor, a: f64, b: f64) -> Tensor {
    let out = Tensor::from_fn(t.shape().to_vec(), t.dtype(), |i| a * t.data()[i] + b).unwrap();
    assert!(
        out.data()
            .iter()
            .zip(t.data())
            .all(|(o, x)| *o == a * x + b),
        "the affine map must be exact in f32 for this check"
    );
    out
}

#[test]
fn layernorm_is_invariant_to_positive_affine_maps() {
    // LN_eps(a x + b) == LN_{eps / a^2}(x) exactly in real arithmetic.
    let mut rng = Rng::new(20);
    let x = grid(&mut rng, &[4, 16], 0.25);
    let scale = param(&mut rng, &[16], 1.0);
    let bias = param(&mut rng, &[16], 0.0);
    let p = Params::new(Some(&scale), Some(&bias));
    for fast in [true, false] {
        for (a, b) in [(4.0, 1.5), (0.25, -3.0), (2.0, 0.0)] {
            let eps = 1e-5;
            let base = NormConfig::flax().use_fast_variance(fast).epsilon(eps);
            let moved = base.clone().epsilon(eps * a * a);
            let y0 = reference::forward(&base, &x, p, None).unwrap().y;
            let y1 = reference::forward(&moved, &affine(&x, a, b), p, None)
                .unwrap()
                .y;
            assert_close_ulps(&y0, &y1, 2, &format!("LN(a={a}, b={b}, fast={fast})"));
        }
    }
    // a < 0 flips the normalized value: LN(-x) = -LN(x) without a bias.
    let cfg = NormConfig::flax().use_bias(false);
    let p = Params::new(Some(&scale), None);
    let y0 = reference::forward(&cfg, &x, p, None).unwrap().y;
    let y1 = reference::forward(&cfg, &affine(&x, -1.0, 0.0), p, None)
        .unwrap()
        .y;
    assert_close_ulps(&affine(&y0, -1.0, 0.0), &y1, 2, "LN(-x)");
}

#[test]
fn rmsnorm_is_invariant_to_scaling() {
    let mut rng = Rng::new(21);
    let x = grid(&mut rng, &[4, 16], 0.0);
    let scale = param(&mut rng, &[16], 1.0);
    let p = Params::new(Some(&scale), None);
    for a in [4.0, 0.5, 8.0] {
        let y0 = reference::forward(&NormConfig::rms().epsilon(1e-6), &x, p, None)
            .unwrap()
            .y;
        let cfg = NormConfig::rms().epsilon(1e-6 * a * a);
        let y1 = reference::forward(&cfg, &affine(&x, a, 0.0), p, None)
            .unwrap()
            .y;
        assert_close_ulps(&y0, &y1, 2, &format!("RMS(a={a})"));
    }
}

#[test]
fn reducing_a_leading_axis_equals_transposing_it_last() {
    // LN over axis 1 of [N, C, S] == LN over the last axis of the [N, S, C] transpose.
    let mut rng = Rng::new(22);
    let (n, c, s) = (2, 6, 3);
    let x = grid(&mut rng, &[n, c, s], 1.0);
    let scale = param(&mut rng, &[c], 1.0);
    let bias = param(&mut rng, &[c], 0.0);
    let p = Params::new(Some(&scale), Some(&bias));
    let cfg = NormConfig::flax().reduction_axes(1).feature_axes(1);
    let y = reference::forward(&cfg, &x, p, None).unwrap();
    let xt = Tensor::from_fn(vec![n, s, c], DType::F32, |i| {
        let (b, k, ch) = (i / (s * c), (i / c) % s, i % c);
        x.data()[(b * c + ch) * s + k]
    })
    .unwrap();
    let yt = reference::forward(&NormConfig::flax(), &xt, p, None).unwrap();
    for b in 0..n {
        for k in 0..s {
            for ch in 0..c {
                assert_eq!(
                    y.y.data()[(b * c + ch) * s + k],
                    yt.y.data()[(b * s + k) * c + ch]
                );
            }
            // Rows are ordered row-major over the kept axes (N, S) in both.
            assert_eq!(y.mean[b * s + k], yt.mean[b * s + k]);
        }
    }
}

#[test]
fn keras_layernorm_equals_flax_with_exact_variance() {
    let mut rng = Rng::new(23);
    let x = grid(&mut rng, &[3, 10], 0.5);
    let scale = param(&mut rng, &[10], 1.0);
    let bias = param(&mut rng, &[10], 0.0);
    let p = Params::new(Some(&scale), Some(&bias));
    let k = reference::forward(&NormConfig::keras().epsilon(1e-4), &x, p, None).unwrap();
    let f = reference::forward(
        &NormConfig::flax().epsilon(1e-4).use_fast_variance(false),
        &x,
        p,
        None,
    )
    .unwrap();
    assert_eq!(k, f);
}

#[test]
fn rms_scaling_uses_centred_variance_without_centring() {
    let mut rng = Rng::new(24);
    let x = grid(&mut rng, &[2, 8], 2.0);
    let gamma = param(&mut rng, &[8], 1.0);
    let eps = 1e-3;
    let cfg = NormConfig::keras().rms_scaling(true).epsilon(eps);
    let f = reference::forward(&cfg, &x, Params::new(Some(&gamma), None), None).unwrap();
    for r in 0..2 {
        let row = &x.data()[r * 8..(r + 1) * 8];
        let mean = row.iter().sum::<f64>() / 8.0;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 8.0;
        for (j, (&x, &g)) in row.iter().zip(gamma.data()).enumerate() {
            let want = x / (var + eps).sqrt() * g;
            let got = f.y.data()[r * 8 + j];
            assert!((got - want).abs() <= f64::from(f32::EPSILON) * want.abs());
        }
        assert!((f.mean[r] - mean).abs() < 1e-12);
    }
}

// ----- sharded == unsharded -------------------------------------------------------------

/// Every layout the distributed backends must support, for worlds 1, 2, 4, 8.
fn layouts() -> Vec<(usize, Option<Vec<Vec<usize>>>)> {
    vec![
        (1, None),
        (2, None),
        (4, None),
        (4, Some(vec![vec![0, 1], vec![2, 3]])),
        (8, None),
        (8, Some(vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]])),
        (
            8,
            Some(vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]]),
        ),
    ]
}

#[test]
fn sharded_equals_unsharded_on_concatenated_features() {
    let configs = [
        NormConfig::flax(),
        NormConfig::flax().use_fast_variance(false),
        NormConfig::rms(),
        NormConfig::flax()
            .use_bias(false)
            .with_param_dtype(DType::BF16),
    ];
    for (ci, base) in configs.iter().enumerate() {
        for (world, groups) in layouts() {
            let mut cfg = base.clone().axis_name("i");
            if let Some(g) = &groups {
                cfg = cfg.axis_index_groups(g.clone());
            }
            let ag = AxisGroups::new(world, groups.clone()).unwrap();
            let case = Case::sharded(
                cfg.clone(),
                &[3, 5],
                world,
                Some(ag.clone()),
                100 + ci as u64,
            );
            let params = case.params();
            let fwd = reference::sharded_forward(&cfg, &case.xs, &params, None, &ag).unwrap();
            let grads = case.grads();
            let label = format!("config {ci}, world {world}, groups {groups:?}");
            for members in ag.groups() {
                let cat = |ts: Vec<&Tensor>| {
                    let owned: Vec<Tensor> = ts.into_iter().cloned().collect();
                    Tensor::concat(&owned, owned[0].rank() - 1).unwrap()
                };
                let x = cat(members.iter().map(|&r| &case.xs[r]).collect());
                let dy = cat(members.iter().map(|&r| &case.dys[r]).collect());
                let scale = case.scales[0].as_ref().map(|_| {
                    cat(members
                        .iter()
                        .map(|&r| case.scales[r].as_ref().unwrap())
                        .collect())
                });
                let bias = case.biases[0].as_ref().map(|_| {
                    cat(members
                        .iter()
                        .map(|&r| case.biases[r].as_ref().unwrap())
                        .collect())
                });
                let p = Params::new(scale.as_ref(), bias.as_ref());
                let plain = base.clone();
                let f = reference::forward(&plain, &x, p, None).unwrap();
                let g = reference::backward(&plain, &x, p, None, &dy).unwrap();
                let k = members.len();
                let ys = f.y.split(1, k).unwrap();
                let dxs = g.dx.split(1, k).unwrap();
                let dscales = g.dscale.as_ref().map(|d| d.split(0, k).unwrap());
                let dbiases = g.dbias.as_ref().map(|d| d.split(0, k).unwrap());
                for (pos, &r) in members.iter().enumerate() {
                    assert_close_ulps(&fwd[r].y, &ys[pos], 2, &format!("{label}: y rank {r}"));
                    assert_close_ulps(&grads[r].dx, &dxs[pos], 4, &format!("{label}: dx rank {r}"));
                    for (a, b) in fwd[r].rstd.iter().zip(&f.rstd) {
                        assert!((a - b).abs() <= 1e-12 * b.abs(), "{label}: rstd");
                    }
                    for (a, b) in fwd[r].mean.iter().zip(&f.mean) {
                        assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{label}: mean");
                    }
                    if let Some(d) = &dscales {
                        let got = grads[r].dscale.as_ref().unwrap();
                        if got.dtype() == DType::BF16 {
                            // bf16 results: at most one bf16 step apart.
                            for (a, b) in got.data().iter().zip(d[pos].data()) {
                                assert!((a - b).abs() <= 2f64.powi(-7) * b.abs().max(1e-30));
                            }
                        } else {
                            assert_close_ulps(got, &d[pos], 4, &format!("{label}: dscale"));
                        }
                    }
                    if let Some(d) = &dbiases {
                        let got = grads[r].dbias.as_ref().unwrap();
                        assert_close_ulps(got, &d[pos], 4, &format!("{label}: dbias"));
                    }
                }
            }
        }
    }
}

#[test]
fn sharded_masks_average_the_per_rank_means() {
    // One row, two ranks: rank 0 selects 1 of 4 elements, rank 1 all 4. flax's pmean
    // of the per-rank masked means is (m0 + m1) / 2, not the mean of the 5 selected.
    let cfg = NormConfig::flax()
        .axis_name("i")
        .use_scale(false)
        .use_bias(false);
    let xs = vec![
        Tensor::new(vec![1, 4], DType::F32, vec![8.0, 100.0, 100.0, 100.0]).unwrap(),
        Tensor::new(vec![1, 4], DType::F32, vec![1.0, 2.0, 3.0, 4.0]).unwrap(),
    ];
    let masks = vec![vec![true, false, false, false], vec![true; 4]];
    let groups = AxisGroups::new(2, None).unwrap();
    let f =
        reference::sharded_forward(&cfg, &xs, &[Params::none(); 2], Some(&masks), &groups).unwrap();
    assert_eq!(f[0].mean, vec![(8.0 + 2.5) / 2.0]);
    assert_eq!(f[1].mean, f[0].mean);
}

// ----- dtypes -----------------------------------------------------------------------------

#[test]
fn outputs_take_the_api_dtypes() {
    let mut rng = Rng::new(30);
    let x = grid(&mut rng, &[2, 8], 0.5).cast(DType::BF16);
    let scale = param(&mut rng, &[8], 1.0);
    let bias = param(&mut rng, &[8], 0.0);
    let p = Params::new(Some(&scale), Some(&bias));
    let cfg = NormConfig::flax();
    let f = reference::forward(&cfg, &x, p, None).unwrap();
    assert_eq!(
        f.y.dtype(),
        DType::F32,
        "bf16 x with f32 params gives f32 y"
    );
    let dy = grid(&mut rng, &[2, 8], 0.0);
    let g = reference::backward(&cfg, &x, p, None, &dy).unwrap();
    assert_eq!(g.dx.dtype(), DType::BF16);
    assert_eq!(g.dscale.unwrap().dtype(), DType::F32);

    // An explicit bf16 dtype rounds the same values once more (at most one bf16 step).
    let low = reference::forward(&cfg.clone().dtype(DType::BF16), &x, p, None).unwrap();
    assert_eq!(low.y.dtype(), DType::BF16);
    for (a, b) in low.y.data().iter().zip(f.y.data()) {
        assert!((a - b).abs() <= 2f64.powi(-8) * b.abs(), "{a} vs {b}");
        assert_eq!(*a, DType::BF16.round(*a));
    }
}

#[test]
fn keras_rounds_y_to_x_dtype_before_the_policy_dtype() {
    let mut rng = Rng::new(31);
    let x = grid(&mut rng, &[2, 8], 0.5).cast(DType::F16);
    let gamma = param(&mut rng, &[8], 1.0);
    let beta = param(&mut rng, &[8], 0.0);
    let p = Params::new(Some(&gamma), Some(&beta));
    let f = reference::forward(&NormConfig::keras(), &x, p, None).unwrap();
    assert_eq!(f.y.dtype(), DType::F32);
    assert!(
        f.y.data().iter().all(|&v| DType::F16.round(v) == v),
        "float32 policy with f16 x: y holds f16 values"
    );
    // The cotangent takes the transposed route: an f32 dy is seen in f16.
    let dy = Tensor::from_fn(vec![2, 8], DType::F32, |i| 0.1 + i as f64 * 1e-4).unwrap();
    let g1 = reference::backward(&NormConfig::keras(), &x, p, None, &dy).unwrap();
    let g2 = reference::backward(
        &NormConfig::keras(),
        &x,
        p,
        None,
        &dy.cast(DType::F16).cast(DType::F32),
    )
    .unwrap();
    assert_eq!(g1, g2);
    assert_eq!(g1.dx.dtype(), DType::F16);
}

// ----- NaN handling -----------------------------------------------------------------------

#[test]
fn nan_stays_in_its_row() {
    let mut d = vec![1.0; 12];
    d[5] = f64::NAN;
    let x = Tensor::new(vec![3, 4], DType::F32, d).unwrap();
    let cfg = NormConfig::flax().use_scale(false).use_bias(false);
    let f = reference::forward(&cfg, &x, Params::none(), None).unwrap();
    assert!(f.y.data()[4..8].iter().all(|v| v.is_nan()));
    assert!(f.y.data()[..4]
        .iter()
        .chain(&f.y.data()[8..])
        .all(|v| v.is_finite()));
}

#[test]
fn a_fully_masked_row_is_nan_as_in_flax() {
    let mut rng = Rng::new(32);
    let x = grid(&mut rng, &[2, 4], 0.0);
    let mask = [false, false, false, false, true, true, false, true];
    let cfg = NormConfig::flax().use_scale(false).use_bias(false);
    let f = reference::forward(&cfg, &x, Params::none(), Some(&mask)).unwrap();
    assert!(f.mean[0].is_nan() && f.y.data()[..4].iter().all(|v| v.is_nan()));
    assert!(f.y.data()[4..].iter().all(|v| v.is_finite()));
}

// ----- errors -------------------------------------------------------------------------------

#[test]
fn mismatched_inputs_are_errors() {
    let mut rng = Rng::new(40);
    let x = grid(&mut rng, &[2, 8], 0.0);
    let s8 = param(&mut rng, &[8], 1.0);
    let s7 = param(&mut rng, &[7], 1.0);
    let s8h = s8.cast(DType::BF16);
    let cfg = NormConfig::flax();
    let fwd =
        |cfg: &NormConfig, p: Params, mask: Option<&[bool]>| reference::forward(cfg, &x, p, mask);
    let shape_err = |r: warpnorm::Result<reference::Forward>, what: &str| match r {
        Err(Error::Shape { what: w, .. }) => assert_eq!(w, what),
        other => panic!("expected a shape error for {what}, got {other:?}"),
    };
    shape_err(fwd(&cfg, Params::new(None, Some(&s8)), None), "scale");
    shape_err(fwd(&cfg, Params::new(Some(&s7), Some(&s8)), None), "scale");
    shape_err(
        fwd(&NormConfig::rms(), Params::new(Some(&s8), Some(&s8)), None),
        "bias",
    );
    shape_err(
        fwd(&cfg, Params::new(Some(&s8), Some(&s8)), Some(&[true; 3])),
        "mask",
    );
    assert!(matches!(
        fwd(&cfg, Params::new(Some(&s8h), Some(&s8)), None),
        Err(Error::DType { what: "scale", .. })
    ));
    assert!(matches!(
        fwd(
            &NormConfig::keras(),
            Params::new(Some(&s8), Some(&s8)),
            Some(&[true; 16])
        ),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        fwd(
            &NormConfig::flax().reduction_axes(2),
            Params::new(Some(&s8), Some(&s8)),
            None
        ),
        Err(Error::AxisOutOfRange { axis: 2, rank: 2 })
    ));
    let p = Params::new(Some(&s8), Some(&s8));
    let dy_bad_shape = grid(&mut rng, &[8, 2], 0.0);
    assert!(matches!(
        reference::backward(&cfg, &x, p, None, &dy_bad_shape),
        Err(Error::Shape { what: "dy", .. })
    ));
    let dy_bad_dtype = grid(&mut rng, &[2, 8], 0.0).cast(DType::F16);
    assert!(matches!(
        reference::backward(&cfg, &x, p, None, &dy_bad_dtype),
        Err(Error::DType { what: "dy", .. })
    ));
}

#[test]
fn sharded_input_errors() {
    let mut rng = Rng::new(41);
    let xs = vec![grid(&mut rng, &[2, 4], 0.0), grid(&mut rng, &[2, 4], 0.0)];
    let p = [Params::none(); 2];
    let cfg = NormConfig::flax().use_scale(false).use_bias(false);
    let two = AxisGroups::new(2, None).unwrap();
    assert!(matches!(
        reference::sharded_forward(&cfg, &xs, &p, None, &two),
        Err(Error::InvalidConfig(msg)) if msg.contains("axis_name")
    ));
    let cfg = cfg.axis_name("i");
    let four = AxisGroups::new(4, None).unwrap();
    assert!(matches!(
        reference::sharded_forward(&cfg, &xs, &p, None, &four),
        Err(Error::Shape { what: "shards", .. })
    ));
    assert!(matches!(
        reference::sharded_forward(&cfg, &xs, &p[..1], None, &two),
        Err(Error::Shape { what: "params", .. })
    ));
    let odd = vec![xs[0].clone(), grid(&mut rng, &[2, 5], 0.0)];
    assert!(matches!(
        reference::sharded_forward(&cfg, &odd, &p, None, &two),
        Err(Error::Shape {
            what: "x shard",
            ..
        })
    ));
    let grouped = cfg.clone().axis_index_groups(vec![vec![0], vec![1]]);
    assert!(matches!(
        reference::sharded_forward(&grouped, &xs, &p, None, &two),
        Err(Error::InvalidGroups(_))
    ));
    assert!(matches!(
        reference::sharded_backward(&cfg, &xs, &p, None, &xs[..1], &two),
        Err(Error::Shape {
            what: "dy shards",
            ..
        })
    ));
}

#[test]
fn nan_padding_outside_the_mask_stays_out_of_the_statistics() {
    let mut rng = Rng::new(17);
    let mut random = |shape: [usize; 2]| {
        let data = (0..shape[0] * shape[1])
            .map(|_| rng.normal_with(1.0, 2.0))
            .collect();
        Tensor::new(shape, DType::F32, data).unwrap()
    };
    let (x, dy) = (random([4, 12]), random([4, 12]));
    let mask: Vec<bool> = (0..48).map(|i| i % 4 != 1).collect();
    // Half the elements the mask leaves out become NaN.
    let nan_at: Vec<bool> = (0..48).map(|i| i % 8 == 1).collect();
    let data = x.data().iter().zip(&nan_at);
    let padded = data.map(|(&v, &n)| if n { f64::NAN } else { v }).collect();
    let padded = Tensor::new([4, 12], DType::F32, padded).unwrap();
    let bare = NormConfig::flax().use_scale(false).use_bias(false);
    for cfg in [
        bare.clone(),
        bare.use_fast_variance(false),
        NormConfig::flax_rms().use_scale(false),
    ] {
        let p = Params::none();
        let a = reference::forward(&cfg, &x, p, Some(&mask)).unwrap();
        let b = reference::forward(&cfg, &padded, p, Some(&mask)).unwrap();
        assert_eq!((&a.mean, &a.rstd), (&b.mean, &b.rstd), "{:?}", cfg.kind());
        let ga = reference::backward(&cfg, &x, p, Some(&mask), &dy).unwrap();
        let gb = reference::backward(&cfg, &padded, p, Some(&mask), &dy).unwrap();
        for (i, (&m, &n)) in mask.iter().zip(&nan_at).enumerate() {
            if m {
                assert_eq!(a.y.data()[i], b.y.data()[i], "y[{i}]");
            } else if n {
                // JAX: the zero cotangent of mean(where=mask) times 2 (x - mean) is NaN.
                assert!(gb.dx.data()[i].is_nan(), "dx[{i}]");
            } else {
                // Outside the statistics only y itself depends on x: dx = rstd * dy.
                assert!(gb.dx.data()[i].is_finite(), "dx[{i}]");
                assert_eq!(ga.dx.data()[i], gb.dx.data()[i], "dx[{i}]");
            }
        }
    }
}
