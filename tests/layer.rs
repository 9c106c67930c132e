//! The LayerNorm module: on the CPU (always) and on a GPU against the CPU (skipped
//! without one), plus the no-GPU behaviour of device discovery.

mod common;

use common::{error_ratio, gpu_or_skip, max_abs, random_tensor, tolerance};
use warpnorm::{Array, DType, Device, Error, LayerNorm, NormConfig, NormKind, RmsNorm, Tensor};

#[test]
fn device_discovery_never_panics() {
    match Device::cuda(0) {
        Ok(dev) => assert!(dev.is_cuda()),
        Err(Error::NoDevice(why)) => {
            assert!(!why.is_empty());
            println!("no GPU here: {why}");
        }
        Err(e) => panic!("expected NoDevice without a GPU, got {e}"),
    }
    assert!(matches!(
        Device::parse("tpu:0"),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(Device::parse("cpu"), Ok(Device::Cpu)));
}

#[test]
fn parameters_start_from_the_configured_initializers() {
    let ln = LayerNorm::new(&Device::cpu(), &NormConfig::flax(), &[4, 16], 0).unwrap();
    let scale = ln.scale().unwrap().to_tensor().unwrap();
    let bias = ln.bias().unwrap().to_tensor().unwrap();
    assert_eq!(scale.shape(), &[16]);
    assert!(scale.data().iter().all(|&v| v == 1.0));
    assert!(bias.data().iter().all(|&v| v == 0.0));
    let rms = LayerNorm::new(&Device::cpu(), &NormConfig::rms(), &[4, 16], 0).unwrap();
    assert!(rms.bias().is_none(), "RMSNorm has no bias");
}

#[test]
fn cpu_forward_train_and_backward_have_the_right_shapes_and_dtypes() {
    let cfg = NormConfig::flax().with_param_dtype(DType::F32);
    let ln = LayerNorm::new(&Device::cpu(), &cfg, &[3, 5, 8], 1).unwrap();
    let x = Array::from_tensor(
        &Device::cpu(),
        &random_tensor(&[3, 5, 8], DType::BF16, 1.0, 1.0, 1),
    )
    .unwrap();
    let (y, saved) = ln.forward_train(&x).unwrap();
    assert_eq!(
        y.dtype(),
        DType::F32,
        "flax: bf16 x with f32 params gives f32 y"
    );
    assert_eq!(saved.mean.numel(), 15);
    let dy = Array::from_tensor(
        &Device::cpu(),
        &random_tensor(&[3, 5, 8], DType::F32, 0.0, 1.0, 2),
    )
    .unwrap();
    let g = ln.backward(&x, &dy, &saved).unwrap();
    assert_eq!(g.dx.dtype(), DType::BF16);
    assert_eq!(g.dscale.unwrap().shape(), &[8]);
}

#[test]
fn masked_inference_equals_masked_training_and_the_mask_matters() {
    let cfg = NormConfig::flax();
    let ln = LayerNorm::new(&Device::cpu(), &cfg, &[4, 16], 0).unwrap();
    let x = Array::from_tensor(
        &Device::cpu(),
        &random_tensor(&[4, 16], DType::F32, 1.0, 2.0, 3),
    )
    .unwrap();
    let mask: Vec<bool> = (0..64).map(|i| i % 5 != 0).collect();
    let y = ln.forward_masked(&x, &mask).unwrap().to_tensor().unwrap();
    let (y_train, _) = ln.forward_train_masked(&x, &mask).unwrap();
    assert_eq!(y.data(), y_train.to_tensor().unwrap().data());
    let unmasked = ln.forward(&x).unwrap().to_tensor().unwrap();
    assert!(y.data().iter().zip(unmasked.data()).any(|(a, b)| a != b));
    assert!(matches!(
        ln.forward_masked(&x, &mask[1..]),
        Err(Error::Shape { what: "mask", .. })
    ));
}

#[test]
fn bad_inputs_are_errors() {
    let ln = LayerNorm::new(&Device::cpu(), &NormConfig::flax(), &[4, 16], 0).unwrap();
    let wrong =
        Array::from_tensor(&Device::cpu(), &Tensor::zeros([4, 15], DType::F32).unwrap()).unwrap();
    assert!(matches!(
        ln.forward(&wrong),
        Err(Error::Shape { what: "x", .. })
    ));
    let x =
        Array::from_tensor(&Device::cpu(), &Tensor::zeros([4, 16], DType::F32).unwrap()).unwrap();
    assert!(matches!(
        ln.forward_train_masked(&x, &[true; 3]),
        Err(Error::Shape { what: "mask", .. })
    ));
    let (_, saved) = ln.forward_train(&x).unwrap();
    let dy16 =
        Array::from_tensor(&Device::cpu(), &Tensor::zeros([4, 16], DType::F16).unwrap()).unwrap();
    assert!(matches!(
        ln.backward(&x, &dy16, &saved),
        Err(Error::DType { what: "dy", .. })
    ));
    let mut ln = ln;
    assert!(ln
        .set_scale(&Tensor::zeros([15], DType::F32).unwrap())
        .is_err());
    assert!(LayerNorm::new(
        &Device::cpu(),
        &NormConfig::flax().epsilon(-1.0),
        &[4, 16],
        0
    )
    .is_err());
}

/// The same layer on the GPU and on the CPU reference gives the same results.
fn gpu_matches_cpu(cfg: &NormConfig, shape: &[usize], x_dtype: DType, masked: bool) {
    let Some(be) = gpu_or_skip("LayerNorm on the GPU") else {
        return;
    };
    let gpu = Device::Cuda(be);
    let cpu = Device::cpu();
    let mut ln_gpu = LayerNorm::new(&gpu, cfg, shape, 9).unwrap();
    let mut ln_cpu = LayerNorm::new(&cpu, cfg, shape, 9).unwrap();
    let pshape = ln_cpu.scale().map(|s| s.shape().to_vec());
    if let Some(pshape) = pshape {
        let scale = random_tensor(&pshape, cfg.param_dtype(), 1.0, 0.5, 21);
        ln_gpu.set_scale(&scale).unwrap();
        ln_cpu.set_scale(&scale).unwrap();
    }
    let x = random_tensor(shape, x_dtype, 2.0, 1.5, 22);
    let dy = random_tensor(shape, cfg.output_dtype(x_dtype), 0.0, 1.0, 23);
    let mask: Vec<bool> = (0..x.numel()).map(|i| i % 3 != 1).collect();
    let run = |ln: &LayerNorm, dev: &Device| {
        let xa = Array::from_tensor(dev, &x).unwrap();
        let (y, saved) = if masked {
            ln.forward_train_masked(&xa, &mask).unwrap()
        } else {
            ln.forward_train(&xa).unwrap()
        };
        let g = ln
            .backward(&xa, &Array::from_tensor(dev, &dy).unwrap(), &saved)
            .unwrap();
        (y.to_tensor().unwrap(), g.dx.to_tensor().unwrap())
    };
    let (y_gpu, dx_gpu) = run(&ln_gpu, &gpu);
    let (y_cpu, dx_cpu) = run(&ln_cpu, &cpu);
    let cols: usize = shape[1..].iter().product();
    for (name, g, c) in [("y", &y_gpu, &y_cpu), ("dx", &dx_gpu, &dx_cpu)] {
        assert_eq!(g.dtype(), c.dtype(), "{name} dtype");
        let (rel, abs) = tolerance(g.dtype(), max_abs(c.data()), cols);
        let (ratio, at) = error_ratio(g.data(), c.data(), rel, abs);
        assert!(ratio <= 1.0, "{name}: {ratio:.2}x the tolerance at {at}");
    }
}

#[test]
fn gpu_flax_bf16_with_f32_params() {
    gpu_matches_cpu(&NormConfig::flax(), &[64, 1024], DType::BF16, false);
}

#[test]
fn gpu_flax_masked() {
    gpu_matches_cpu(
        &NormConfig::flax().use_fast_variance(false),
        &[16, 96],
        DType::F32,
        true,
    );
}

#[test]
fn gpu_keras_channels_first() {
    gpu_matches_cpu(
        &NormConfig::keras().axis(1),
        &[4, 32, 49],
        DType::F32,
        false,
    );
}

#[test]
fn gpu_rms_norm_f16() {
    let cfg = NormConfig::rms()
        .dtype(DType::F16)
        .with_param_dtype(DType::F16);
    gpu_matches_cpu(&cfg, &[128, 4096], DType::F16, false);
}

#[test]
fn only_a_gpu_layer_has_kernels() {
    let ln = LayerNorm::new(&Device::cpu(), &NormConfig::flax(), &[4, 16], 0).unwrap();
    assert!(matches!(
        ln.kernels_cover(&[4, 16], DType::F32, false),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn gpu_layer_computes_uncovered_layouts_with_the_reference() {
    let Some(be) = gpu_or_skip("GPU reference path") else {
        return;
    };
    let dev = Device::Cuda(be);
    // Feature axes outside the reduction axes: parameters along an axis not normalised.
    let cfg = NormConfig::flax().reduction_axes(-1).feature_axes(-2);
    let ln = LayerNorm::new(&dev, &cfg, &[2, 5, 7], 0).unwrap();
    assert!(matches!(
        ln.kernels_cover(&[2, 5, 7], DType::F32, false),
        Err(Error::Unsupported(_))
    ));
    let covered = LayerNorm::new(&dev, &NormConfig::flax(), &[2, 5, 7], 0).unwrap();
    assert!(covered.kernels_cover(&[2, 5, 7], DType::F32, false).is_ok());
    gpu_matches_cpu(&cfg, &[2, 5, 7], DType::F32, false);
    // Non-adjacent reduction axes and a dtype combination the kernels do not take.
    gpu_matches_cpu(
        &NormConfig::flax()
            .reduction_axes([0, 2])
            .feature_axes([0, 2]),
        &[3, 4, 5],
        DType::F32,
        false,
    );
    gpu_matches_cpu(
        &NormConfig::flax().with_param_dtype(DType::BF16),
        &[4, 64],
        DType::F16,
        false,
    );
}

#[test]
fn rms_norm_new_builds_only_rmsnorm_layers() {
    let e = RmsNorm::new(&Device::cpu(), &NormConfig::flax(), &[4, 16], 0).unwrap_err();
    assert!(
        matches!(e, Error::InvalidConfig(_)) && e.to_string().contains("RMSNorm config"),
        "{e}"
    );
    let rms = RmsNorm::new(&Device::cpu(), &NormConfig::rms(), &[4, 16], 0).unwrap();
    assert_eq!(rms.config().kind(), NormKind::RmsNorm);
    assert_eq!(rms.into_inner().config().kind(), NormKind::RmsNorm);
}
