//! `warpnorm::candle` checked against candle itself: outputs and gradients (dx, dscale,
//! dbias through `loss.backward()`) against candle-nn's own decomposed LayerNorm / RmsNorm
//! under candle's autograd, on random inputs of several shapes, in f32 / f16 / bf16, with
//! and without bias; on candle's CPU device and, when there is one, on a CUDA device.

mod common;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{error_ratio, max_abs, random_tensor, skip};
use warpnorm::candle::{layer_norm, norm, rms_norm, LayerNorm, RmsNorm};
use warpnorm::NormConfig;

const EPS: f64 = 1e-5;
const SHAPES: [&[usize]; 4] = [&[4, 7], &[2, 3, 64], &[3, 1000], &[5, 1]];
const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// The norms candle-nn has, each with its decomposed (differentiable) form.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// `candle_nn::ops::layer_norm_slow`.
    LayerNorm,
    /// `candle_nn::LayerNorm::new_no_bias` (always decomposed).
    LayerNormNoBias,
    /// `candle_nn::RmsNorm::forward_diff`.
    RmsNorm,
}

impl Kind {
    fn config(self, dtype: DType) -> NormConfig {
        let p = warpnorm_dtype(dtype);
        match self {
            Kind::LayerNorm => NormConfig::flax().use_fast_variance(false),
            Kind::LayerNormNoBias => NormConfig::flax().use_fast_variance(false).use_bias(false),
            Kind::RmsNorm => NormConfig::rms(),
        }
        .epsilon(EPS)
        .with_param_dtype(p)
    }

    fn candle_nn(self, x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Kind::LayerNorm => candle_nn::ops::layer_norm_slow(x, w, b, EPS as f32),
            Kind::LayerNormNoBias => candle_nn::LayerNorm::new_no_bias(w.clone(), EPS).forward(x),
            Kind::RmsNorm => candle_nn::RmsNorm::new(w.clone(), EPS).forward_diff(x),
        }
    }

    fn has_bias(self) -> bool {
        matches!(self, Kind::LayerNorm)
    }
}

fn warpnorm_dtype(d: DType) -> warpnorm::DType {
    match d {
        DType::F32 => warpnorm::DType::F32,
        DType::F16 => warpnorm::DType::F16,
        DType::BF16 => warpnorm::DType::BF16,
        other => panic!("no warpnorm dtype for {other:?}"),
    }
}

/// The devices to test on: the CPU, and the first CUDA device when built with
/// `candle-cuda` and candle finds one.
fn devices(test: &str) -> Vec<Device> {
    let mut devs = vec![Device::Cpu];
    if !cfg!(feature = "candle-cuda") {
        skip(&format!(
            "{test} on CUDA: built without the `candle-cuda` feature"
        ));
        return devs;
    }
    match Device::new_cuda(0) {
        Ok(d) => devs.push(d),
        Err(e) => skip(&format!("{test} on CUDA: no CUDA device ({e})")),
    }
    devs
}

/// Random values exact in `dtype` (so every precision sees the same numbers), on `dev`.
fn random(
    dims: &[usize],
    dtype: DType,
    offset: f64,
    spread: f64,
    salt: u64,
    dev: &Device,
) -> Tensor {
    let t = random_tensor(dims, warpnorm_dtype(dtype), offset, spread, salt);
    let data: Vec<f32> = t.data().iter().map(|&v| v as f32).collect();
    Tensor::from_vec(data, dims, dev)
        .and_then(|t| t.to_dtype(dtype))
        .unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .unwrap()
}

/// y, dx, dscale and dbias (when the norm has one) of `loss = sum(y * w)`, where `f` maps
/// (x, scale, bias) to y: the cotangent dy is `w`, random, so that dx does not vanish.
fn run(
    x: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
    w: &Tensor,
    f: impl Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> Vec<(&'static str, Tensor)> {
    let (x, scale, bias) = (
        Var::from_tensor(x).unwrap(),
        Var::from_tensor(scale).unwrap(),
        Var::from_tensor(bias).unwrap(),
    );
    let y = f(x.as_tensor(), scale.as_tensor(), bias.as_tensor()).unwrap();
    let loss = (&y * w.to_dtype(y.dtype()).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let grad = |v: &Var| grads.get(v.as_tensor()).cloned();
    let mut out = vec![("y", y.clone()), ("dx", grad(&x).expect("no dx"))];
    out.push(("dscale", grad(&scale).expect("no dscale")));
    if let Some(db) = grad(&bias) {
        out.push(("dbias", db));
    }
    out
}

/// Compares warpnorm with candle-nn's decomposed norm on one case. The oracle is candle-nn
/// computing in f32 from the same values (exact in every dtype), under candle's autograd:
/// warpnorm must agree within one rounding to the dtype plus f32 error. candle-nn run in
/// the low-precision dtype itself rounds several times (normalized x, the product with the
/// scale, the sum of the bias) and accumulates dscale / dbias in that dtype; it is printed
/// for comparison.
fn check_case(dev: &Device, norm_kind: Kind, dims: &[usize], dtype: DType, salt: u64) {
    let cols = *dims.last().unwrap();
    let x = random(dims, dtype, 1.5, 2.0, salt, dev);
    let scale = random(&[cols], dtype, 1.0, 0.5, salt + 1, dev);
    let bias = random(&[cols], dtype, 0.0, 0.5, salt + 2, dev);
    let w = random(dims, dtype, 0.0, 1.0, salt + 3, dev);
    let cfg = norm_kind.config(dtype);

    let ours = run(&x, &scale, &bias, &w, |x, s, b| {
        norm(x, Some(s), norm_kind.has_bias().then_some(b), &cfg)
    });
    let up = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let oracle = run(&up(&x), &up(&scale), &up(&bias), &w, |x, s, b| {
        norm_kind.candle_nn(x, s, b)
    });
    let native = run(&x, &scale, &bias, &w, |x, s, b| {
        norm_kind.candle_nn(x, s, b)
    });

    assert_eq!(ours.len(), oracle.len(), "{norm_kind:?}: gradients present");
    let u = warpnorm_dtype(dtype).unit_roundoff();
    // One rounding to the dtype (an ulp is at most 2u relative), plus the f32 error of the
    // oracle and of the dtype's subnormal-free range, relative to the largest magnitude.
    let (rel, abs) = (2.0 * u + 1e-5, 2.0 * u + 1e-5);
    for (((name, got), (_, want)), (_, theirs)) in ours.iter().zip(&oracle).zip(&native) {
        assert_eq!(got.dtype(), dtype, "{norm_kind:?} {name} dtype");
        assert_eq!(got.dims(), want.dims(), "{norm_kind:?} {name} shape");
        let (got, want, theirs) = (values(got), values(want), values(theirs));
        let scale = max_abs(&want).max(1e-3);
        let (ratio, at) = error_ratio(&got, &want, rel, abs * scale);
        let (theirs_ratio, _) = error_ratio(&theirs, &want, rel, abs * scale);
        println!(
            "{dev:?} {norm_kind:?} {dims:?} {dtype:?} {name}: warpnorm {ratio:.3}, candle-nn in \
             {dtype:?} {theirs_ratio:.3} (of the allowed error)"
        );
        assert!(
            ratio <= 1.0,
            "{dev:?} {norm_kind:?} {dims:?} {dtype:?} {name}[{at}]: warpnorm {} vs candle-nn (f32) {}, \
             {ratio:.2}x the tolerance",
            got[at],
            want[at]
        );
    }
}

#[test]
fn outputs_and_gradients_match_candle_nn_decomposed() {
    for dev in devices("candle comparison") {
        let mut salt = 0;
        for norm_kind in [Kind::LayerNorm, Kind::LayerNormNoBias, Kind::RmsNorm] {
            for dims in SHAPES {
                // With one feature RMSNorm's y is sign(x) * scale, and dx = scale * dy * eps /
                // (x^2 + eps)^1.5 is what is left after terms of size |scale * dy / x| cancel:
                // the f32 oracle keeps none of its digits (warpnorm computes it in f64).
                if matches!(norm_kind, Kind::RmsNorm) && dims.ends_with(&[1]) {
                    continue;
                }
                for dtype in DTYPES {
                    salt += 10;
                    check_case(&dev, norm_kind, dims, dtype, salt);
                }
            }
        }
    }
}

#[test]
fn non_contiguous_input_gives_the_contiguous_result() {
    for dev in devices("non-contiguous input") {
        let cfg = NormConfig::flax().epsilon(EPS);
        let ln = warpnorm_layer(&cfg, 16, &dev);
        // x^T of a [16, 6] tensor is a strided [6, 16] view.
        let xt = random(&[16, 6], DType::F32, 0.5, 1.0, 7, &dev);
        let strided = xt.t().unwrap();
        assert!(!strided.is_contiguous());
        let want = values(&ln.forward(&strided.contiguous().unwrap()).unwrap());
        let got = values(&ln.forward(&strided).unwrap());
        assert_eq!(got, want);

        // The gradient reaches the transposed variable through the copy.
        let v = Var::from_tensor(&xt).unwrap();
        let y = ln.forward(&v.as_tensor().t().unwrap()).unwrap();
        let w = random(&[6, 16], DType::F32, 0.0, 1.0, 8, &dev);
        let grads = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let dxt = grads.get(v.as_tensor()).expect("no gradient for x");
        assert_eq!(dxt.dims(), &[16, 6]);
        let c = Var::from_tensor(&strided.contiguous().unwrap()).unwrap();
        let y = ln.forward(c.as_tensor()).unwrap();
        let grads = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let want = values(&grads.get(c.as_tensor()).unwrap().t().unwrap());
        assert_eq!(values(dxt), want);
    }
}

fn warpnorm_layer(cfg: &NormConfig, cols: usize, dev: &Device) -> LayerNorm {
    let scale = random(&[cols], DType::F32, 1.0, 0.3, 11, dev);
    let bias = random(&[cols], DType::F32, 0.0, 0.3, 12, dev);
    LayerNorm::new(Some(scale), Some(bias), cfg.clone()).unwrap()
}

#[test]
fn inference_and_training_forwards_agree() {
    for dev in devices("inference forward") {
        let cfg = NormConfig::flax().epsilon(EPS);
        let ln = warpnorm_layer(&cfg, 33, &dev);
        let x = random(&[5, 33], DType::F32, 0.0, 1.0, 13, &dev);
        let plain = ln.forward(&x).unwrap();
        let tracked = ln
            .forward(Var::from_tensor(&x).unwrap().as_tensor())
            .unwrap();
        assert!(!plain.track_op() && tracked.track_op());
        assert_eq!(values(&plain), values(&tracked));
        assert_eq!(values(&x.apply(&ln).unwrap()), values(&plain));
    }
}

#[test]
fn var_builder_layers_create_candle_nn_named_parameters_that_train() {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let cfg = NormConfig::flax().epsilon(EPS);
    let ln = layer_norm(8, &cfg, vb.pp("ln")).unwrap();
    let rms = rms_norm(8, &NormConfig::rms(), vb.pp("rms")).unwrap();
    let vars = varmap.data().lock().unwrap();
    let mut names: Vec<_> = vars.keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["ln.bias", "ln.weight", "rms.weight"]);
    assert_eq!(values(&vars["ln.weight"]), vec![1.0; 8]);
    assert_eq!(values(&vars["ln.bias"]), vec![0.0; 8]);
    let all: Vec<Tensor> = vars.values().map(|v| v.as_tensor().clone()).collect();
    drop(vars);

    let x = random(&[3, 8], DType::F32, 0.5, 1.0, 21, &dev);
    let w = random(&[3, 8], DType::F32, 0.0, 1.0, 22, &dev);
    let y = rms.forward(&ln.forward(&x).unwrap()).unwrap();
    let grads = (y * w).unwrap().sum_all().unwrap().backward().unwrap();
    for p in &all {
        let g = grads.get(p).expect("every parameter gets a gradient");
        assert!(values(g).iter().all(|v| v.is_finite()));
        assert!(values(g).iter().any(|&v| v != 0.0));
    }
}

#[test]
fn bf16_activations_with_f32_parameters_follow_flax_promotion() {
    let dev = Device::Cpu;
    let cfg = NormConfig::flax().epsilon(EPS); // param_dtype f32
    let ln = warpnorm_layer(&cfg, 12, &dev);
    let x = Var::from_tensor(&random(&[4, 12], DType::BF16, 0.0, 1.0, 31, &dev)).unwrap();
    let y = ln.forward(x.as_tensor()).unwrap();
    assert_eq!(
        y.dtype(),
        DType::F32,
        "flax: bf16 x with f32 params gives f32 y"
    );
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(grads.get(x.as_tensor()).unwrap().dtype(), DType::BF16);
    assert_eq!(grads.get(ln.scale().unwrap()).unwrap().dtype(), DType::F32);
}

#[test]
fn bad_inputs_are_errors_that_name_the_problem() {
    let dev = Device::Cpu;
    let cfg = NormConfig::flax().epsilon(EPS);
    let ln = warpnorm_layer(&cfg, 8, &dev);
    let err = |r: candle_core::Result<Tensor>| r.expect_err("expected an error").to_string();

    let ints = Tensor::zeros((2, 8), DType::U32, &dev).unwrap();
    assert!(err(ln.forward(&ints)).contains("f32, f16 and bf16"));
    let wrong_width = random(&[2, 9], DType::F32, 0.0, 1.0, 41, &dev);
    assert!(err(ln.forward(&wrong_width)).contains("scale"));
    let scale = ln.scale().unwrap();
    assert!(err(norm(&wrong_width, Some(scale), None, &cfg)).contains("bias"));
    let x = random(&[2, 8], DType::F32, 0.0, 1.0, 42, &dev);
    let half_scale = scale.to_dtype(DType::F16).unwrap();
    let e = err(norm(&x, Some(&half_scale), ln.bias(), &cfg));
    assert!(e.contains("dtype mismatch for `scale`"), "{e}");
    let sharded = cfg.clone().axis_name("batch");
    assert!(err(norm(&x, Some(scale), ln.bias(), &sharded)).contains("axis_name"));
    let bad_eps = NormConfig::flax().epsilon(0.0);
    assert!(err(norm(&x, Some(scale), ln.bias(), &bad_eps)).contains("epsilon"));

    let e = RmsNorm::new(Some(scale.clone()), cfg.clone()).expect_err("LayerNorm config");
    assert!(e.to_string().contains("RmsNorm needs"), "{e}");
    let e = LayerNorm::new(Some(scale.clone()), None, cfg).expect_err("missing bias");
    assert!(e.to_string().contains("bias"), "{e}");
}

/// The README's candle example is not compiled itself: it must stay the module docs' one,
/// which the doc tests compile.
#[test]
fn readme_example_is_the_compiled_module_doc_example() {
    let root = env!("CARGO_MANIFEST_DIR");
    let read = |path: &str| std::fs::read_to_string(format!("{root}/{path}")).unwrap();
    let readme = read("README.md");
    let section = readme
        .split("\n## candle\n")
        .nth(1)
        .expect("README has a candle section");
    let in_readme = section
        .split("```rust,ignore\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the candle section has a rust example");
    let module = read("src/candle/mod.rs");
    let in_docs: String = module
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .skip_while(|l| *l != "```no_run")
        .skip(1)
        .take_while(|l| *l != "```")
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!in_docs.is_empty(), "the module docs have a no_run example");
    assert_eq!(in_readme, in_docs);
}
