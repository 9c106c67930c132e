//! NormConfig: per-API defaults, axis rules, validation errors, the kwargs / JSON
//! round trip, AxisGroups, and the keras parameter helpers (initializers,
//! regularizers, constraints).

use serde_json::json;
use warpnorm::config::{
    initializers::compute_fans, Constraint, DTypePolicy, Initializer, ParamOptions, Regularizer,
};
use warpnorm::dist::AxisGroups;
use warpnorm::rng::Rng;
use warpnorm::{Api, DType, Error, NormConfig, NormKind};

fn invalid_config(r: warpnorm::Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(Error::InvalidConfig(msg)) => msg,
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

fn invalid_groups(r: warpnorm::Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(Error::InvalidGroups(msg)) => msg,
        other => panic!("expected InvalidGroups, got {other:?}"),
    }
}

// ----- defaults -----------------------------------------------------------------------

#[test]
fn flax_layernorm_defaults() {
    let c = NormConfig::flax();
    assert_eq!(c.api(), Api::FlaxLayerNorm);
    assert_eq!(c.kind(), NormKind::LayerNorm);
    assert_eq!(c.eps(), 1e-6);
    assert!(c.has_scale() && c.has_bias());
    assert!(c.fast_variance(), "flax defaults to use_fast_variance=True");
    assert_eq!(c.param_dtype(), DType::F32);
    assert_eq!(c.requested_dtype(), None);
    assert_eq!(c.raw_reduction_axes(), &[-1]);
    assert_eq!(c.raw_feature_axes(), &[-1]);
    assert_eq!(c.sync_axis_name(), None);
    assert_eq!(c.index_groups(), None);
    assert_eq!(c.scale_options().init, Initializer::Ones);
    assert_eq!(c.bias_options().init, Initializer::Zeros);
    assert_eq!(NormConfig::default(), c);
    c.validate().unwrap();
}

#[test]
fn flax_rmsnorm_defaults() {
    let c = NormConfig::flax_rms();
    assert_eq!(c, NormConfig::rms());
    assert_eq!(c.api(), Api::FlaxRmsNorm);
    assert_eq!(c.kind(), NormKind::RmsNorm);
    assert_eq!(c.eps(), 1e-6);
    assert!(c.has_scale());
    assert!(!c.has_bias(), "RMSNorm has no bias");
    c.validate().unwrap();
}

#[test]
fn keras_defaults() {
    let c = NormConfig::keras();
    assert_eq!(c.api(), Api::Keras);
    assert_eq!(c.kind(), NormKind::LayerNorm);
    assert_eq!(c.eps(), 1e-3);
    assert!(c.has_scale() && c.has_bias());
    assert!(!c.fast_variance(), "keras computes the exact variance");
    assert_eq!(c.policy(), Some(DTypePolicy::Float32));
    assert_eq!(c.output_dtype(DType::F32), DType::F32);
    assert!(c.scale_options().regularizer.is_none());
    assert!(c.scale_options().constraint.is_none());
    c.validate().unwrap();
}

#[test]
fn empty_kwargs_are_the_api_defaults() {
    assert_eq!(
        NormConfig::from_flax_kwargs(&json!({})).unwrap(),
        NormConfig::flax()
    );
    assert_eq!(
        NormConfig::from_flax_rms_kwargs(&json!({})).unwrap(),
        NormConfig::flax_rms()
    );
    assert_eq!(
        NormConfig::from_keras_kwargs(&json!({})).unwrap(),
        NormConfig::keras()
    );
}

#[test]
fn keras_kwargs_map_onto_the_options() {
    let c = NormConfig::from_keras_kwargs(&json!({
        "axis": [1, 2], "epsilon": 1e-5, "center": false, "scale": true,
        "dtype": "mixed_bfloat16", "name": "ln", "trainable": true,
        "gamma_regularizer": "l2", "beta_constraint": "non_neg",
        "gamma_initializer": {"class_name": "RandomNormal", "config": {"stddev": 0.1, "seed": null}},
    }))
    .unwrap();
    let want = NormConfig::keras()
        .axis([1, 2])
        .epsilon(1e-5)
        .center(false)
        .dtype_policy(DTypePolicy::MixedBFloat16)
        .scale_regularizer(Regularizer::L2 { l2: 0.01 })
        .bias_constraint(Constraint::NonNeg)
        .scale_init(Initializer::RandomNormal {
            mean: 0.0,
            stddev: 0.1,
        });
    assert_eq!(c, want);
    assert!(!c.has_bias());
    assert_eq!(c.param_dtype(), DType::F32);
    assert_eq!(c.output_dtype(DType::F32), DType::BF16);
}

#[test]
fn keras_dtype_policy_object_from_get_config() {
    let c = NormConfig::from_keras_kwargs(&json!({
        "dtype": {"module": "keras", "class_name": "DTypePolicy",
                  "config": {"name": "mixed_float16"}, "registered_name": null}
    }))
    .unwrap();
    assert_eq!(c.policy(), Some(DTypePolicy::MixedFloat16));
}

#[test]
fn keras_rms_scaling_forces_gamma_and_drops_beta() {
    let c = NormConfig::keras().rms_scaling(true);
    assert_eq!(c.kind(), NormKind::RmsScaling);
    assert!(c.has_scale() && !c.has_bias());
    let c = NormConfig::keras().rms_scaling(true).scale(false);
    assert!(
        c.has_scale(),
        "keras builds gamma when scale or rms_scaling"
    );
    assert!(!c.has_bias());
}

// ----- dtype rules ----------------------------------------------------------------------

#[test]
fn flax_output_dtype_promotes_x_with_present_params() {
    let c = NormConfig::flax();
    assert_eq!(c.output_dtype(DType::BF16), DType::F32);
    assert_eq!(c.output_dtype(DType::F32), DType::F32);
    let no_params = NormConfig::flax().use_scale(false).use_bias(false);
    assert_eq!(no_params.output_dtype(DType::BF16), DType::BF16);
    let bf16_params = NormConfig::flax().with_param_dtype(DType::BF16);
    assert_eq!(bf16_params.output_dtype(DType::BF16), DType::BF16);
    assert_eq!(
        bf16_params.output_dtype(DType::F16),
        DType::F32,
        "f16 with bf16 promotes to f32 in JAX"
    );
    let explicit = NormConfig::flax().dtype(DType::F16);
    assert_eq!(explicit.output_dtype(DType::F32), DType::F16);
    assert_eq!(c.intermediate_dtype(DType::BF16), None);
}

#[test]
fn keras_output_dtype_is_the_policy_compute_dtype() {
    for (policy, compute, variable) in [
        ("float32", DType::F32, DType::F32),
        ("float16", DType::F16, DType::F16),
        ("bfloat16", DType::BF16, DType::BF16),
        ("mixed_float16", DType::F16, DType::F32),
        ("mixed_bfloat16", DType::BF16, DType::F32),
    ] {
        let c = NormConfig::from_keras_kwargs(&json!({ "dtype": policy })).unwrap();
        for x in [DType::F32, DType::F16, DType::BF16] {
            assert_eq!(c.output_dtype(x), compute, "{policy} x {x}");
            assert_eq!(
                c.intermediate_dtype(x),
                Some(x),
                "keras casts to x's dtype first"
            );
        }
        assert_eq!(c.param_dtype(), variable, "{policy}");
        assert_eq!(c.policy().map(DTypePolicy::name), Some(policy));
    }
    let msg = invalid_config(NormConfig::from_keras_kwargs(&json!({"dtype": "float64"})));
    assert!(msg.contains("float64"), "{msg}");
    let unnameable = NormConfig::keras()
        .dtype(DType::F32)
        .with_param_dtype(DType::F16);
    assert!(invalid_config(unnameable.validate()).contains("no dtype policy"));
}

// ----- axes -------------------------------------------------------------------------------

#[test]
fn flax_axes_wrap_and_deduplicate() {
    let c = NormConfig::flax()
        .reduction_axes([-1, 2])
        .feature_axes([2, 1]);
    let a = c.resolve(&[2, 3, 16]).unwrap();
    assert_eq!(a.reduction, vec![2]);
    assert_eq!(a.features, vec![1, 2]);
    assert_eq!(a.param_shape, vec![3, 16]);
    assert_eq!(a.rows(&[2, 3, 16]), 6);
    assert_eq!(a.row_len(&[2, 3, 16]), 16);
}

#[test]
fn flax_feature_axes_may_lie_outside_the_reduction() {
    let c = NormConfig::flax().reduction_axes(-1).feature_axes([-2]);
    let a = c.resolve(&[2, 5, 7]).unwrap();
    assert_eq!(a.reduction, vec![2]);
    assert_eq!(a.features, vec![1]);
    assert_eq!(a.param_shape, vec![5]);
}

#[test]
fn keras_axis_is_sorted_and_sets_both() {
    let c = NormConfig::from_keras_kwargs(&json!({"axis": [2, 1]})).unwrap();
    let a = c.resolve(&[2, 4, 8]).unwrap();
    assert_eq!(a.reduction, vec![1, 2]);
    assert_eq!(a.features, vec![1, 2]);
    assert_eq!(a.param_shape, vec![4, 8]);
}

#[test]
fn keras_mixed_sign_axes_declare_the_raw_sorted_shape() {
    // keras sorts the raw values: [1, -1] -> [-1, 1], gamma (x[-1], x[1]) = (5, 3).
    let c = NormConfig::keras().axis([1, -1]);
    assert_eq!(c.resolve(&[2, 3, 5]).unwrap().param_shape, vec![3, 5]);
    assert_eq!(c.declared_param_shape(&[2, 3, 5]).unwrap(), vec![5, 3]);
    let flax = NormConfig::flax()
        .reduction_axes([1, -1])
        .feature_axes([1, -1]);
    assert_eq!(flax.declared_param_shape(&[2, 3, 5]).unwrap(), vec![3, 5]);
}

#[test]
fn keras_rejects_duplicate_axes() {
    let c = NormConfig::keras().axis([1, 1]);
    assert!(matches!(
        c.validate(),
        Err(Error::DuplicateAxis { axis: 1, .. })
    ));
    // The same axis under two spellings is only visible once the rank is known.
    let c = NormConfig::keras().axis([-1, 2]);
    c.validate().unwrap();
    assert!(matches!(
        c.resolve(&[2, 3, 4]),
        Err(Error::DuplicateAxis { axis: 2, .. })
    ));
}

#[test]
fn axes_out_of_range_are_errors() {
    for c in [
        NormConfig::flax().reduction_axes(3),
        NormConfig::flax().feature_axes(-4),
        NormConfig::keras().axis(3),
        NormConfig::keras().axis([-4]),
    ] {
        match c.resolve(&[2, 3, 4]) {
            Err(Error::AxisOutOfRange { rank: 3, axis }) => assert!(axis == 3 || axis == -4),
            other => panic!("{c:?}: expected AxisOutOfRange, got {other:?}"),
        }
    }
    assert!(matches!(
        NormConfig::flax().resolve(&[]),
        Err(Error::AxisOutOfRange { axis: -1, rank: 0 })
    ));
}

#[test]
fn empty_axes_are_errors() {
    let empty: [i64; 0] = [];
    assert!(invalid_config(NormConfig::flax().reduction_axes(empty).validate()).contains("empty"));
    assert!(invalid_config(NormConfig::flax().feature_axes(empty).validate()).contains("empty"));
    assert!(invalid_config(NormConfig::keras().axis(empty).validate()).contains("empty"));
}

// ----- validation -------------------------------------------------------------------------

#[test]
fn epsilon_must_be_positive_and_finite() {
    for eps in [0.0, -1e-6, f64::NAN, f64::INFINITY] {
        for c in [NormConfig::flax(), NormConfig::rms(), NormConfig::keras()] {
            let msg = invalid_config(c.epsilon(eps).validate());
            assert!(msg.contains("epsilon"), "{msg}");
        }
    }
    let msg = invalid_config(NormConfig::from_flax_kwargs(&json!({"epsilon": 0.0})));
    assert!(msg.contains("epsilon"));
}

#[test]
fn options_of_another_api_are_rejected() {
    let cases = [
        (NormConfig::flax().rms_scaling(true), "rms_scaling"),
        (NormConfig::rms().use_bias(true), "no bias"),
        (
            NormConfig::keras().use_fast_variance(true),
            "use_fast_variance",
        ),
        (NormConfig::keras().axis_name("i"), "axis_name"),
        (
            NormConfig::keras().reduction_axes(-1).feature_axes(-2),
            "one `axis`",
        ),
        (
            NormConfig::flax().scale_regularizer(Regularizer::L1 { l1: 0.1 }),
            "keras options",
        ),
        (
            NormConfig::flax().bias_constraint(Constraint::NonNeg),
            "keras options",
        ),
    ];
    for (c, needle) in cases {
        let msg = invalid_config(c.validate());
        assert!(msg.contains(needle), "`{msg}` should mention `{needle}`");
    }
}

#[test]
fn bad_axis_index_groups_are_named() {
    let with = |g: Vec<Vec<usize>>| NormConfig::flax().axis_name("i").axis_index_groups(g);
    let cases = [
        (vec![vec![0, 1], vec![1, 2]], "appears twice"),
        (vec![vec![0, 1], vec![3, 4]], "outside the world"),
        (vec![vec![0, 1, 2], vec![3]], "differ in size"),
        (vec![vec![0], vec![]], "empty"),
        (vec![], "no groups"),
    ];
    for (g, needle) in cases {
        let msg = invalid_groups(with(g.clone()).validate());
        assert!(
            msg.contains(needle),
            "{g:?}: `{msg}` should mention `{needle}`"
        );
    }
    let msg = invalid_groups(
        NormConfig::flax()
            .axis_index_groups(vec![vec![0, 1]])
            .validate(),
    );
    assert!(msg.contains("axis_name"), "{msg}");
    // Valid groups, then checked against a world size.
    let c = with(vec![vec![0, 2], vec![1, 3]]);
    c.validate().unwrap();
    c.groups_for(4).unwrap();
    let msg = invalid_groups(c.groups_for(8));
    assert!(msg.contains("in no group"), "{msg}");
    let msg = invalid_config(NormConfig::flax().axis_name("").validate());
    assert!(msg.contains("axis_name"));
}

#[test]
fn kwargs_errors_name_the_argument() {
    let msg = invalid_config(NormConfig::from_flax_kwargs(&json!({"epsilom": 1e-5})));
    assert!(msg.contains("`epsilom`"), "{msg}");
    let msg = invalid_config(NormConfig::from_flax_kwargs(&json!({"epsilon": "small"})));
    assert!(msg.contains("`epsilon` must be a number"), "{msg}");
    let msg = invalid_config(NormConfig::from_flax_kwargs(
        &json!({"reduction_axes": [1.5]}),
    ));
    assert!(msg.contains("reduction_axes"), "{msg}");
    let msg = invalid_config(NormConfig::from_flax_rms_kwargs(&json!({"use_bias": true})));
    assert!(msg.contains("use_bias"), "{msg}");
    let msg = invalid_config(NormConfig::from_keras_kwargs(&json!({"center": 1})));
    assert!(msg.contains("`center`"), "{msg}");
    let msg = invalid_config(NormConfig::from_keras_kwargs(&json!([1, 2])));
    assert!(msg.contains("JSON object"), "{msg}");
    let msg = invalid_groups(NormConfig::from_flax_kwargs(
        &json!({"axis_name": "i", "axis_index_groups": [[0, -1]]}),
    ));
    assert!(msg.contains("axis_index_groups"), "{msg}");
    assert!(matches!(
        NormConfig::from_flax_kwargs(&json!({"force_float32_reductions": false})),
        Err(Error::Unsupported(_))
    ));
    NormConfig::from_flax_kwargs(&json!({"force_float32_reductions": true})).unwrap();
}

// ----- serde round trip -----------------------------------------------------------------

fn rich_configs() -> Vec<NormConfig> {
    vec![
        NormConfig::flax(),
        NormConfig::rms(),
        NormConfig::keras(),
        NormConfig::flax()
            .epsilon(1e-5)
            .dtype(DType::BF16)
            .with_param_dtype(DType::BF16)
            .use_bias(false)
            .reduction_axes([-2, -1])
            .feature_axes([-1])
            .axis_name("model")
            .axis_index_groups(vec![vec![0, 1], vec![2, 3]])
            .use_fast_variance(false)
            .scale_init(Initializer::TruncatedNormal {
                mean: 1.0,
                stddev: 0.02,
            })
            .bias_init(Initializer::Constant { value: 0.25 }),
        NormConfig::rms()
            .use_scale(false)
            .scale_init(Initializer::HeUniform)
            .reduction_axes([1, 2]),
        NormConfig::keras()
            .axis([1, -1])
            .epsilon(1e-5)
            .rms_scaling(true)
            .center(false)
            .dtype_policy(DTypePolicy::MixedFloat16)
            .scale_init(Initializer::GlorotNormal)
            .bias_init(Initializer::RandomUniform {
                minval: -0.1,
                maxval: 0.3,
            })
            .scale_regularizer(Regularizer::L1L2 { l1: 0.1, l2: 0.2 })
            .bias_regularizer(Regularizer::L1 { l1: 0.5 })
            .scale_constraint(Constraint::MinMaxNorm {
                min_value: 0.5,
                max_value: 2.0,
                rate: 0.9,
                axis: vec![0],
            })
            .bias_constraint(Constraint::MaxNorm {
                max_value: 3.0,
                axis: vec![0, 1],
            }),
        NormConfig::keras()
            .dtype_policy(DTypePolicy::BFloat16)
            .scale_constraint(Constraint::UnitNorm { axis: vec![-1] }),
    ]
}

#[test]
fn json_round_trip_is_exact() {
    for c in rich_configs() {
        c.validate().unwrap();
        let text = c.to_json().unwrap();
        let back = NormConfig::from_json(&text).unwrap();
        assert_eq!(back, c, "{text}");
        // serde's Serialize/Deserialize take the same route.
        let via_serde: NormConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(via_serde, c);
        // The kwargs alone rebuild it through the API's constructor.
        assert_eq!(NormConfig::from_kwargs(c.api(), &c.to_kwargs()).unwrap(), c);
    }
}

#[test]
fn json_uses_the_apis_own_names() {
    let keras = NormConfig::keras().center(false).to_kwargs();
    assert_eq!(keras["center"], json!(false));
    assert_eq!(keras["axis"], json!(-1));
    assert_eq!(keras["dtype"], json!("float32"));
    assert_eq!(keras["gamma_initializer"], json!("ones"));
    assert!(keras.get("use_bias").is_none());
    let flax = NormConfig::flax().reduction_axes([1, 2]).to_kwargs();
    assert_eq!(flax["reduction_axes"], json!([1, 2]));
    assert_eq!(flax["use_fast_variance"], json!(true));
    assert_eq!(flax["dtype"], json!(null));
    let v: serde_json::Value = serde_json::from_str(&NormConfig::rms().to_json().unwrap()).unwrap();
    assert_eq!(v["api"], json!("flax.linen.RMSNorm"));
    assert!(v.get("use_bias").is_none());
}

#[test]
fn from_json_errors() {
    assert!(matches!(NormConfig::from_json("{"), Err(Error::Json(_))));
    assert!(invalid_config(NormConfig::from_json("{}")).contains("api"));
    assert!(
        invalid_config(NormConfig::from_json(r#"{"api": "torch.nn.LayerNorm"}"#))
            .contains("unknown api")
    );
}

// ----- AxisGroups ---------------------------------------------------------------------------

#[test]
fn axis_groups_default_and_lookup() {
    let g = AxisGroups::new(4, None).unwrap();
    assert_eq!(g.groups(), &[vec![0, 1, 2, 3]]);
    assert_eq!(g.group_size(), 4);
    assert_eq!(g.world(), 4);
    assert_eq!(g.position(2), Some(2));
    let g = AxisGroups::new(
        8,
        Some(vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]]),
    )
    .unwrap();
    assert_eq!(g.group_size(), 2);
    assert_eq!(g.group_of(5), Some(1));
    assert_eq!(g.position(5), Some(1));
    assert_eq!(g.position(3), Some(0));
    assert_eq!(g.peers(6), Some(&[2, 6][..]));
    assert_eq!(g.group_of(8), None);
}

#[test]
fn axis_groups_errors() {
    assert!(invalid_groups(AxisGroups::new(0, None)).contains("no ranks"));
    assert!(
        invalid_groups(AxisGroups::new(4, Some(vec![vec![0, 1], vec![2, 2]])))
            .contains("rank 2 appears twice")
    );
    assert!(invalid_groups(AxisGroups::new(4, Some(vec![vec![0, 1]]))).contains("[2, 3]"));
    assert!(
        invalid_groups(AxisGroups::new(4, Some(vec![vec![0, 1, 2], vec![3]])))
            .contains("differ in size")
    );
    assert!(invalid_groups(AxisGroups::new(2, Some(vec![vec![0, 9]]))).contains("rank 9"));
}

// ----- initializers -----------------------------------------------------------------------

fn mean_var(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (m, v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n)
}

#[test]
fn initializers_are_deterministic() {
    for init in [
        Initializer::RandomNormal {
            mean: 0.0,
            stddev: 1.0,
        },
        Initializer::GlorotUniform,
        Initializer::HeNormal,
    ] {
        let a = init.init(&[64], &mut Rng::new(7)).unwrap();
        let b = init.init(&[64], &mut Rng::new(7)).unwrap();
        let c = init.init(&[64], &mut Rng::new(8)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}

#[test]
fn constant_initializers() {
    let mut rng = Rng::new(0);
    assert_eq!(
        Initializer::Zeros.init(&[2, 3], &mut rng).unwrap(),
        vec![0.0; 6]
    );
    assert_eq!(
        Initializer::Ones.init(&[4], &mut rng).unwrap(),
        vec![1.0; 4]
    );
    assert_eq!(
        Initializer::Constant { value: 0.5 }
            .init(&[3], &mut rng)
            .unwrap(),
        vec![0.5; 3]
    );
}

#[test]
fn random_initializers_have_the_right_statistics() {
    let n = 40_000usize;
    let mut rng = Rng::new(42);
    // 5 standard errors of the mean and of the variance (normal: sd(var) ~ var*sqrt(2/n)).
    let check = |name: &str, v: &[f64], mean: f64, var: f64| {
        let (m, s2) = mean_var(v);
        let se = (var / n as f64).sqrt();
        assert!((m - mean).abs() < 5.0 * se, "{name}: mean {m} vs {mean}");
        assert!(
            (s2 - var).abs() < 5.0 * var * (2.0 / n as f64).sqrt(),
            "{name}: variance {s2} vs {var}"
        );
    };
    let v = Initializer::RandomNormal {
        mean: 1.0,
        stddev: 2.0,
    }
    .init(&[n], &mut rng)
    .unwrap();
    check("random_normal", &v, 1.0, 4.0);
    let v = Initializer::RandomUniform {
        minval: -1.0,
        maxval: 3.0,
    }
    .init(&[n], &mut rng)
    .unwrap();
    assert!(v.iter().all(|&x| (-1.0..3.0).contains(&x)));
    check("random_uniform", &v, 1.0, 16.0 / 12.0);
    let v = Initializer::TruncatedNormal {
        mean: 0.5,
        stddev: 0.1,
    }
    .init(&[n], &mut rng)
    .unwrap();
    assert!(v.iter().all(|&x| (x - 0.5).abs() <= 0.2));
    // A standard normal truncated to +-2 has standard deviation 0.8796.
    check(
        "truncated_normal",
        &v,
        0.5,
        (0.1f64 * 0.879_625_661).powi(2),
    );

    // Variance scaling on a [fan_in, fan_out] weight.
    let (fi, fo) = (200usize, 200usize);
    let shape = [fi, fo];
    let cases = [
        (Initializer::GlorotUniform, 2.0 / (fi + fo) as f64),
        (Initializer::GlorotNormal, 2.0 / (fi + fo) as f64),
        (Initializer::HeNormal, 2.0 / fi as f64),
        (Initializer::HeUniform, 2.0 / fi as f64),
        (Initializer::LecunNormal, 1.0 / fi as f64),
        (Initializer::LecunUniform, 1.0 / fi as f64),
    ];
    for (init, var) in cases {
        let v = init.init(&shape, &mut rng).unwrap();
        assert_eq!(v.len(), fi * fo);
        check(init.class_name(), &v, 0.0, var);
        if matches!(
            init,
            Initializer::GlorotUniform | Initializer::HeUniform | Initializer::LecunUniform
        ) {
            let limit = (3.0 * var).sqrt();
            assert!(
                v.iter().all(|x| x.abs() <= limit),
                "{init:?} exceeds {limit}"
            );
        }
    }
}

#[test]
fn fans_follow_keras() {
    assert_eq!(compute_fans(&[]), (1.0, 1.0));
    assert_eq!(compute_fans(&[7]), (7.0, 7.0));
    assert_eq!(compute_fans(&[3, 5]), (3.0, 5.0));
    assert_eq!(compute_fans(&[2, 3, 4, 5]), (24.0, 30.0));
    // A 1-D gamma of 64: he_uniform limit sqrt(6 / 64).
    let v = Initializer::HeUniform
        .init(&[64], &mut Rng::new(1))
        .unwrap();
    assert!(v.iter().all(|x| x.abs() <= (6.0f64 / 64.0).sqrt()));
}

#[test]
fn initializer_serialization() {
    let parse = |v: serde_json::Value| Initializer::from_value(&v);
    assert_eq!(
        parse(json!("glorot_uniform")).unwrap(),
        Initializer::GlorotUniform
    );
    assert_eq!(parse(json!("HeNormal")).unwrap(), Initializer::HeNormal);
    assert_eq!(parse(json!("zero")).unwrap(), Initializer::Zeros);
    assert_eq!(
        parse(json!("normal")).unwrap(),
        Initializer::RandomNormal {
            mean: 0.0,
            stddev: 0.05
        }
    );
    assert_eq!(
        parse(json!({"class_name": "RandomUniform", "config": {"maxval": 1.0, "seed": 3}}))
            .unwrap(),
        Initializer::RandomUniform {
            minval: -0.05,
            maxval: 1.0
        }
    );
    assert!(invalid_config(parse(json!("orthogonal"))).contains("orthogonal"));
    assert!(invalid_config(parse(
        json!({"class_name": "Constant", "config": {"valu": 1}})
    ))
    .contains("valu"));
    assert!(invalid_config(parse(
        json!({"class_name": "RandomNormal", "config": {"stddev": -1}})
    ))
    .contains("stddev"));
    for init in [
        Initializer::Zeros,
        Initializer::LecunUniform,
        Initializer::Constant { value: -2.5 },
        Initializer::TruncatedNormal {
            mean: 0.0,
            stddev: 3.0,
        },
    ] {
        assert_eq!(parse(init.to_value()).unwrap(), init);
    }
}

// ----- regularizers -----------------------------------------------------------------------

#[test]
fn regularizer_loss_and_gradient() {
    let w = [0.5, -1.25, 2.0, -0.75];
    let r = Regularizer::L1L2 { l1: 0.1, l2: 0.2 };
    let abs: f64 = w.iter().map(|v: &f64| v.abs()).sum();
    let sq: f64 = w.iter().map(|v| v * v).sum();
    assert!((r.loss(&w) - (0.1 * abs + 0.2 * sq)).abs() < 1e-15);
    for r in [
        Regularizer::L1 { l1: 0.3 },
        Regularizer::L2 { l2: 0.7 },
        Regularizer::L1L2 { l1: 0.1, l2: 0.2 },
    ] {
        let g = r.grad(&w);
        for i in 0..w.len() {
            let h = 1e-6;
            let (mut up, mut dn) = (w, w);
            up[i] += h;
            dn[i] -= h;
            let fd = (r.loss(&up) - r.loss(&dn)) / (2.0 * h);
            assert!((fd - g[i]).abs() < 1e-8, "{r:?}[{i}]: {fd} vs {}", g[i]);
        }
    }
    assert_eq!(Regularizer::L1 { l1: 1.0 }.grad(&[0.0]), vec![0.0]);
}

#[test]
fn regularizer_serialization_and_defaults() {
    let parse = |v: serde_json::Value| Regularizer::from_value(&v);
    assert_eq!(parse(json!("l1")).unwrap(), Regularizer::L1 { l1: 0.01 });
    assert_eq!(parse(json!("l2")).unwrap(), Regularizer::L2 { l2: 0.01 });
    assert_eq!(
        parse(json!("l1_l2")).unwrap(),
        Regularizer::L1L2 { l1: 0.01, l2: 0.01 }
    );
    assert_eq!(
        parse(json!({"class_name": "L1L2", "config": {}})).unwrap(),
        Regularizer::L1L2 { l1: 0.0, l2: 0.0 }
    );
    assert!(
        invalid_config(parse(json!({"class_name": "L2", "config": {"l2": -1.0}}))).contains("l2")
    );
    assert!(invalid_config(parse(json!("orthogonal_regularizer"))).contains("unknown"));
    let r = Regularizer::L1L2 { l1: 0.3, l2: 0.0 };
    assert_eq!(parse(r.to_value()).unwrap(), r);
}

// ----- constraints --------------------------------------------------------------------------

const KERAS_EPS: f64 = 1e-7;

#[test]
fn non_neg_clamps_negatives() {
    let mut w = vec![1.0, -2.0, 0.0, 3.5, -0.1];
    Constraint::NonNeg.apply(&mut w, &[5]).unwrap();
    assert_eq!(w, vec![1.0, 0.0, 0.0, 3.5, 0.0]);
}

#[test]
fn norm_constraints_match_hand_computed_values() {
    // Columns (axis 0) of [[3, 1], [4, 0]]: norms 5 and 1.
    let shape = [2, 2];
    let w0 = vec![3.0, 1.0, 4.0, 0.0];
    let close = |a: &[f64], b: &[f64]| {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12) || panic!("{a:?} vs {b:?}")
    };

    let mut w = w0.clone();
    Constraint::MaxNorm {
        max_value: 2.0,
        axis: vec![0],
    }
    .apply(&mut w, &shape)
    .unwrap();
    let f5 = 2.0 / (KERAS_EPS + 5.0);
    let f1 = 1.0 / (KERAS_EPS + 1.0);
    close(&w, &[3.0 * f5, 1.0 * f1, 4.0 * f5, 0.0]);

    let mut w = w0.clone();
    Constraint::UnitNorm { axis: vec![0] }
        .apply(&mut w, &shape)
        .unwrap();
    close(
        &w,
        &[
            3.0 / (KERAS_EPS + 5.0),
            1.0 / (KERAS_EPS + 1.0),
            4.0 / (KERAS_EPS + 5.0),
            0.0,
        ],
    );

    // Rows (axis 1 / -1): norms sqrt(10) and 4.
    let mut w = w0.clone();
    Constraint::MinMaxNorm {
        min_value: 3.5,
        max_value: 3.75,
        rate: 0.5,
        axis: vec![-1],
    }
    .apply(&mut w, &shape)
    .unwrap();
    let n0 = 10f64.sqrt();
    let f0 = (0.5 * n0.clamp(3.5, 3.75) + 0.5 * n0) / (KERAS_EPS + n0);
    let f1 = (0.5 * 3.75 + 0.5 * 4.0) / (KERAS_EPS + 4.0);
    close(&w, &[3.0 * f0, 1.0 * f0, 4.0 * f1, 0.0]);

    // Both axes: one norm, sqrt(26).
    let mut w = w0.clone();
    Constraint::UnitNorm { axis: vec![0, 1] }
        .apply(&mut w, &shape)
        .unwrap();
    let n = 26f64.sqrt() + KERAS_EPS;
    close(&w, &[3.0 / n, 1.0 / n, 4.0 / n, 0.0]);
}

#[test]
fn constraint_errors_and_serialization() {
    let mut w = vec![1.0; 4];
    assert!(matches!(
        Constraint::UnitNorm { axis: vec![2] }.apply(&mut w, &[2, 2]),
        Err(Error::AxisOutOfRange { axis: 2, rank: 2 })
    ));
    assert!(matches!(
        Constraint::UnitNorm { axis: vec![0, -2] }.apply(&mut w, &[2, 2]),
        Err(Error::DuplicateAxis { .. })
    ));
    assert!(matches!(
        Constraint::NonNeg.apply(&mut w, &[3]),
        Err(Error::Shape { .. })
    ));
    let bad = Constraint::MinMaxNorm {
        min_value: 2.0,
        max_value: 1.0,
        rate: 1.0,
        axis: vec![0],
    };
    assert!(invalid_config(bad.validate()).contains("min_value"));

    let parse = |v: serde_json::Value| Constraint::from_value(&v);
    assert_eq!(parse(json!("non_neg")).unwrap(), Constraint::NonNeg);
    assert_eq!(
        parse(json!("max_norm")).unwrap(),
        Constraint::MaxNorm {
            max_value: 2.0,
            axis: vec![0]
        }
    );
    assert_eq!(
        parse(json!({"class_name": "MinMaxNorm", "config": {"axis": [0, 1]}})).unwrap(),
        Constraint::MinMaxNorm {
            min_value: 0.0,
            max_value: 1.0,
            rate: 1.0,
            axis: vec![0, 1]
        }
    );
    let c = Constraint::UnitNorm { axis: vec![-1] };
    assert_eq!(parse(c.to_value()).unwrap(), c);
    assert!(invalid_config(parse(json!("radial_constraint"))).contains("unknown"));
}

#[test]
fn param_options_are_public_and_comparable() {
    let o = ParamOptions {
        init: Initializer::Ones,
        regularizer: None,
        constraint: None,
    };
    assert_eq!(&o, NormConfig::flax().scale_options());
}
