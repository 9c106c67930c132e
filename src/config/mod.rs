//! `NormConfig`: every option of flax's `LayerNorm` / `RMSNorm` and keras'
//! `LayerNormalization`, with each API's defaults and axis rules.
//!
//! One struct serves all three APIs because the kernels compute the same thing for
//! all of them; an [`Api`] tag fixes what differs (defaults, axis canonicalization,
//! which options exist, the output dtype rule). A config is built with a
//! constructor per API and chainable setters, parsed from the API's own keyword
//! arguments ([`NormConfig::from_flax_kwargs`], [`NormConfig::from_keras_kwargs`]),
//! and serialized back to them ([`NormConfig::to_json`]), which plays the part of
//! keras' `get_config` / `from_config`.

mod axes;
pub mod constraints;
pub mod initializers;
mod json;
mod kwargs;
mod policy;
pub mod regularizers;

pub use axes::{Axes, IntoAxes};
pub use constraints::Constraint;
pub use initializers::Initializer;
pub use policy::DTypePolicy;
pub use regularizers::Regularizer;

use crate::groups::AxisGroups;
use crate::{DType, Error, Result};

/// The framework API whose semantics a config follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// `flax.linen.LayerNorm`.
    FlaxLayerNorm,
    /// `flax.linen.RMSNorm`.
    FlaxRmsNorm,
    /// `keras.layers.LayerNormalization` (keras 3).
    Keras,
}

impl Api {
    /// The API's Python name, as written in fixtures and serialized configs.
    pub fn name(self) -> &'static str {
        match self {
            Api::FlaxLayerNorm => "flax.linen.LayerNorm",
            Api::FlaxRmsNorm => "flax.linen.RMSNorm",
            Api::Keras => "keras.layers.LayerNormalization",
        }
    }

    /// Parses [`Api::name`].
    pub fn parse(name: &str) -> Result<Api> {
        [Api::FlaxLayerNorm, Api::FlaxRmsNorm, Api::Keras]
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "unknown api `{name}` (expected flax.linen.LayerNorm, flax.linen.RMSNorm \
                     or keras.layers.LayerNormalization)"
                ))
            })
    }

    fn is_flax(self) -> bool {
        matches!(self, Api::FlaxLayerNorm | Api::FlaxRmsNorm)
    }
}

impl std::fmt::Display for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the kernel computes, whatever API asked for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormKind {
    /// `(x - mean) * rsqrt(var + eps) * scale + bias`.
    LayerNorm,
    /// `x * rsqrt(mean(x^2) + eps) * scale` (no centring, no bias).
    RmsNorm,
    /// keras' `rms_scaling=True`: `x * rsqrt(var + eps) * gamma` where `var` is the
    /// *centred* variance but `x` is not centred, and there is no beta. keras
    /// documents this as a mistake kept for compatibility; warpnorm matches it.
    RmsScaling,
}

/// How one parameter (scale/gamma or bias/beta) is created and maintained.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamOptions {
    /// Initial values.
    pub init: Initializer,
    /// keras only: penalty added to the loss.
    pub regularizer: Option<Regularizer>,
    /// keras only: projection applied after each update.
    pub constraint: Option<Constraint>,
}

impl ParamOptions {
    fn new(init: Initializer) -> ParamOptions {
        ParamOptions {
            init,
            regularizer: None,
            constraint: None,
        }
    }
}

/// A normalization layer's configuration. See the module docs.
///
/// Serializing (serde, [`NormConfig::to_json`]) validates first: JSON has no form for a
/// NaN or infinite epsilon, so such a config is an error rather than a `null`.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct NormConfig {
    api: Api,
    epsilon: f64,
    /// flax: the output dtype (`None`: promote x with the present params).
    /// keras: the policy's compute dtype (always set).
    dtype: Option<DType>,
    /// flax: `param_dtype`. keras: the policy's variable dtype.
    param_dtype: DType,
    use_bias: bool,
    use_scale: bool,
    scale: ParamOptions,
    bias: ParamOptions,
    reduction_axes: Vec<i64>,
    feature_axes: Vec<i64>,
    axis_name: Option<String>,
    axis_index_groups: Option<Vec<Vec<usize>>>,
    use_fast_variance: bool,
    rms_scaling: bool,
}

impl NormConfig {
    fn defaults(api: Api) -> NormConfig {
        let flax = api.is_flax();
        NormConfig {
            api,
            epsilon: if flax { 1e-6 } else { 1e-3 },
            dtype: if flax { None } else { Some(DType::F32) },
            param_dtype: DType::F32,
            use_bias: api == Api::FlaxLayerNorm || api == Api::Keras,
            use_scale: true,
            scale: ParamOptions::new(Initializer::Ones),
            bias: ParamOptions::new(Initializer::Zeros),
            reduction_axes: vec![-1],
            feature_axes: vec![-1],
            axis_name: None,
            axis_index_groups: None,
            // flax defaults to the one-pass E[x^2] - E[x]^2; keras computes jnp.var.
            use_fast_variance: flax,
            rms_scaling: false,
        }
    }

    /// `flax.linen.LayerNorm()` with flax's defaults (epsilon 1e-6, fast variance).
    pub fn flax() -> NormConfig {
        NormConfig::defaults(Api::FlaxLayerNorm)
    }

    /// `flax.linen.RMSNorm()` with flax's defaults.
    pub fn flax_rms() -> NormConfig {
        NormConfig::defaults(Api::FlaxRmsNorm)
    }

    /// Alias of [`NormConfig::flax_rms`].
    pub fn rms() -> NormConfig {
        NormConfig::flax_rms()
    }

    /// `keras.layers.LayerNormalization()` with keras' defaults (epsilon 1e-3,
    /// exact variance, policy `float32`).
    pub fn keras() -> NormConfig {
        NormConfig::defaults(Api::Keras)
    }

    /// The defaults of `api`.
    pub fn for_api(api: Api) -> NormConfig {
        NormConfig::defaults(api)
    }

    // ----- builders -------------------------------------------------------------

    /// Added to the variance before the reciprocal square root.
    pub fn epsilon(mut self, epsilon: f64) -> Self {
        self.epsilon = epsilon;
        self
    }

    /// flax: output dtype (`None` = promote). keras: the compute dtype of the policy
    /// (the variable dtype is kept; see [`NormConfig::dtype_policy`]).
    pub fn dtype(mut self, dtype: impl Into<Option<DType>>) -> Self {
        self.dtype = dtype.into();
        self
    }

    /// Parameter (flax `param_dtype`, keras variable) dtype. Named `with_` because
    /// [`NormConfig::param_dtype`] is the getter the kernels use.
    pub fn with_param_dtype(mut self, dtype: DType) -> Self {
        self.param_dtype = dtype;
        self
    }

    /// keras: set the whole dtype policy (compute and variable dtype).
    pub fn dtype_policy(mut self, policy: DTypePolicy) -> Self {
        self.dtype = Some(policy.compute());
        self.param_dtype = policy.variable();
        self
    }

    /// Whether a bias (keras: beta) is added.
    pub fn use_bias(mut self, on: bool) -> Self {
        self.use_bias = on;
        self
    }

    /// Whether a scale (keras: gamma) multiplies.
    pub fn use_scale(mut self, on: bool) -> Self {
        self.use_scale = on;
        self
    }

    /// keras' name for [`NormConfig::use_bias`].
    pub fn center(self, on: bool) -> Self {
        self.use_bias(on)
    }

    /// keras' name for [`NormConfig::use_scale`].
    pub fn scale(self, on: bool) -> Self {
        self.use_scale(on)
    }

    /// Axes the statistics are computed over.
    pub fn reduction_axes(mut self, axes: impl IntoAxes) -> Self {
        self.reduction_axes = axes.into_axes();
        self
    }

    /// Axes the scale and bias vary along.
    pub fn feature_axes(mut self, axes: impl IntoAxes) -> Self {
        self.feature_axes = axes.into_axes();
        self
    }

    /// keras' `axis`: both the reduction and the feature axes.
    pub fn axis(self, axes: impl IntoAxes) -> Self {
        let axes = axes.into_axes();
        self.reduction_axes(axes.clone()).feature_axes(axes)
    }

    /// flax: the mapped axis whose ranks combine statistics (a sharded feature axis).
    pub fn axis_name(mut self, name: impl Into<String>) -> Self {
        self.axis_name = Some(name.into());
        self
    }

    /// flax: groups of ranks of `axis_name` that reduce independently.
    pub fn axis_index_groups(mut self, groups: Vec<Vec<usize>>) -> Self {
        self.axis_index_groups = Some(groups);
        self
    }

    /// flax: one-pass `E[x^2] - E[x]^2` (clamped at 0) instead of `E[(x - mean)^2]`.
    pub fn use_fast_variance(mut self, on: bool) -> Self {
        self.use_fast_variance = on;
        self
    }

    /// keras: the `rms_scaling` quirk (see [`NormKind::RmsScaling`]).
    pub fn rms_scaling(mut self, on: bool) -> Self {
        self.rms_scaling = on;
        self
    }

    /// Initializer of the scale (keras: `gamma_initializer`).
    pub fn scale_init(mut self, init: Initializer) -> Self {
        self.scale.init = init;
        self
    }

    /// Initializer of the bias (keras: `beta_initializer`).
    pub fn bias_init(mut self, init: Initializer) -> Self {
        self.bias.init = init;
        self
    }

    /// keras `gamma_regularizer`.
    pub fn scale_regularizer(mut self, r: impl Into<Option<Regularizer>>) -> Self {
        self.scale.regularizer = r.into();
        self
    }

    /// keras `beta_regularizer`.
    pub fn bias_regularizer(mut self, r: impl Into<Option<Regularizer>>) -> Self {
        self.bias.regularizer = r.into();
        self
    }

    /// keras `gamma_constraint`.
    pub fn scale_constraint(mut self, c: impl Into<Option<Constraint>>) -> Self {
        self.scale.constraint = c.into();
        self
    }

    /// keras `beta_constraint`.
    pub fn bias_constraint(mut self, c: impl Into<Option<Constraint>>) -> Self {
        self.bias.constraint = c.into();
        self
    }

    // ----- what the kernels need -------------------------------------------------

    /// The API this config follows.
    pub fn api(&self) -> Api {
        self.api
    }

    /// The formula the kernel evaluates.
    pub fn kind(&self) -> NormKind {
        match self.api {
            Api::FlaxLayerNorm => NormKind::LayerNorm,
            Api::FlaxRmsNorm => NormKind::RmsNorm,
            Api::Keras if self.rms_scaling => NormKind::RmsScaling,
            Api::Keras => NormKind::LayerNorm,
        }
    }

    /// Epsilon added to the variance, as set by [`NormConfig::epsilon`] (the builder has
    /// the flax / keras name, so the getter cannot).
    pub fn eps(&self) -> f64 {
        self.epsilon
    }

    /// Whether a scale is applied: the getter of [`NormConfig::use_scale`]. keras creates
    /// gamma when `scale` *or* `rms_scaling` is set.
    pub fn has_scale(&self) -> bool {
        match self.api {
            Api::Keras => self.use_scale || self.rms_scaling,
            _ => self.use_scale,
        }
    }

    /// Whether a bias is added: the getter of [`NormConfig::use_bias`]. flax's RMSNorm has
    /// none; keras drops beta under `rms_scaling`.
    pub fn has_bias(&self) -> bool {
        match self.api {
            Api::FlaxLayerNorm => self.use_bias,
            Api::FlaxRmsNorm => false,
            Api::Keras => self.use_bias && !self.rms_scaling,
        }
    }

    /// Whether the variance is the one-pass `E[x^2] - E[x]^2` (flax's default) rather
    /// than the exact two-pass form (keras always). Irrelevant for [`NormKind::RmsNorm`].
    pub fn fast_variance(&self) -> bool {
        self.api.is_flax() && self.use_fast_variance
    }

    /// Dtype of scale and bias.
    pub fn param_dtype(&self) -> DType {
        self.param_dtype
    }

    /// The dtype `y` has for an input of dtype `x`.
    ///
    /// flax: `dtype` if given, else `jnp.result_type` of x and the parameters that
    /// are present (bf16 x with f32 scale gives f32 y; without parameters, x's
    /// dtype). keras: the policy's compute dtype (keras computes in at least f32,
    /// casts to x's dtype, then to the compute dtype; see
    /// [`NormConfig::intermediate_dtype`]).
    pub fn output_dtype(&self, x: DType) -> DType {
        match self.api {
            Api::Keras => self.dtype.unwrap_or(DType::F32),
            _ => self.dtype.unwrap_or_else(|| {
                if self.has_scale() || self.has_bias() {
                    x.promote(self.param_dtype)
                } else {
                    x
                }
            }),
        }
    }

    /// A rounding the output passes through before [`NormConfig::output_dtype`]:
    /// keras' `layer_normalization` returns `cast(outputs, x.dtype)` and the layer
    /// then casts to the compute dtype, so y is rounded to x's dtype first (and the
    /// cotangent dy, by the transpose of that cast, too). flax casts once: `None`.
    pub fn intermediate_dtype(&self, x: DType) -> Option<DType> {
        self.rounds_output_to_input_dtype().then_some(x)
    }

    /// The coarsest dtype y is rounded to on its way out: [`NormConfig::output_dtype`], or
    /// x's dtype where y passes through it first ([`NormConfig::intermediate_dtype`]) and it
    /// is the coarser. A result's error is judged at this dtype's precision.
    pub fn coarsest_y_dtype(&self, x: DType) -> DType {
        let out = self.output_dtype(x);
        match self.intermediate_dtype(x) {
            Some(d) if d.unit_roundoff() > out.unit_roundoff() => d,
            _ => out,
        }
    }

    /// Whether y passes through x's dtype on its way to [`NormConfig::output_dtype`] (keras;
    /// see [`NormConfig::intermediate_dtype`]).
    pub fn rounds_output_to_input_dtype(&self) -> bool {
        self.api == Api::Keras
    }

    /// Resolves the axes against an input shape, applying the API's rules.
    pub fn resolve(&self, x_shape: &[usize]) -> Result<Axes> {
        self.validate()?;
        let rank = x_shape.len();
        let (reduction, features) = match self.api {
            Api::Keras => {
                let axes = axes::canonical_keras(&self.reduction_axes, rank)?;
                (axes.clone(), axes)
            }
            _ => (
                axes::canonical_flax(&self.reduction_axes, rank)?,
                axes::canonical_flax(&self.feature_axes, rank)?,
            ),
        };
        let param_shape = features.iter().map(|&a| x_shape[a]).collect();
        Ok(Axes {
            reduction,
            features,
            param_shape,
        })
    }

    /// The shape the API itself gives scale/bias for this input. It equals
    /// [`Axes::param_shape`] except for keras with mixed-sign axes: keras sorts the
    /// *raw* values (`[1, -1]` becomes `[-1, 1]`) and builds gamma with shape
    /// `(x.shape[-1], x.shape[1])`, then *reshapes* (does not transpose) it to the
    /// broadcast shape. The data order is therefore that of `param_shape`; only the
    /// declared shape differs.
    pub fn declared_param_shape(&self, x_shape: &[usize]) -> Result<Vec<usize>> {
        let axes = self.resolve(x_shape)?;
        if self.api != Api::Keras {
            return Ok(axes.param_shape);
        }
        let mut raw = self.reduction_axes.clone();
        raw.sort_unstable();
        raw.iter()
            .map(|&a| axes::wrap(a, x_shape.len()).map(|a| x_shape[a]))
            .collect()
    }

    /// Checks every option on its own and against the API (an option the API does
    /// not have, set to a non-default value, is an error rather than ignored).
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidConfig(msg));
        let api = self.api;
        epsilon_f32(self.epsilon)?;
        if self.reduction_axes.is_empty() {
            return bad("reduction axes are empty: nothing to normalize over".into());
        }
        if self.feature_axes.is_empty() {
            return bad("feature axes are empty".into());
        }
        for init in [&self.scale.init, &self.bias.init] {
            init.validate()?;
        }
        for p in [&self.scale, &self.bias] {
            if let Some(r) = &p.regularizer {
                r.validate()?;
            }
            if let Some(c) = &p.constraint {
                c.validate()?;
            }
        }
        match api {
            Api::Keras => {
                axes::reject_literal_duplicates(&self.reduction_axes, "axis")?;
                if self.reduction_axes != self.feature_axes {
                    return bad(format!(
                        "{api} has one `axis` for statistics and parameters; got reduction axes \
                         {:?} and feature axes {:?}",
                        self.reduction_axes, self.feature_axes
                    ));
                }
                if self.use_fast_variance {
                    return bad(format!(
                        "{api} has no use_fast_variance (it is always exact)"
                    ));
                }
                if self.axis_name.is_some() || self.axis_index_groups.is_some() {
                    return bad(format!("{api} has no axis_name / axis_index_groups"));
                }
                let compute = self.dtype.unwrap_or(DType::F32);
                if DTypePolicy::from_dtypes(compute, self.param_dtype).is_none() {
                    return bad(format!(
                        "keras has no dtype policy computing in {compute} with {} variables",
                        self.param_dtype
                    ));
                }
            }
            Api::FlaxLayerNorm | Api::FlaxRmsNorm => {
                if self.rms_scaling {
                    return bad(format!("rms_scaling is a keras option, not one of {api}"));
                }
                if api == Api::FlaxRmsNorm && self.use_bias {
                    return bad(format!("{api} has no bias (use_bias must be false)"));
                }
                let keras_only = [&self.scale, &self.bias]
                    .iter()
                    .any(|p| p.regularizer.is_some() || p.constraint.is_some());
                if keras_only {
                    return bad(format!(
                        "regularizers and constraints are keras options, not ones of {api}"
                    ));
                }
                self.validate_sharding()?;
            }
        }
        Ok(())
    }

    fn validate_sharding(&self) -> Result<()> {
        if self.axis_name.as_deref() == Some("") {
            return Err(Error::InvalidConfig("axis_name must not be empty".into()));
        }
        if let Some(groups) = &self.axis_index_groups {
            if self.axis_name.is_none() {
                return Err(Error::InvalidGroups(
                    "axis_index_groups is set but axis_name is not: groups need a named axis"
                        .into(),
                ));
            }
            // Without the world size, JAX's own check: the groups cover 0..total once.
            let total = groups.iter().map(Vec::len).sum();
            AxisGroups::new(total, Some(groups.clone()))?;
        }
        Ok(())
    }

    // ----- other getters ---------------------------------------------------------

    /// flax's `dtype` / keras' compute dtype as configured (`None`: flax promotion).
    pub fn requested_dtype(&self) -> Option<DType> {
        self.dtype
    }

    /// keras: the dtype policy (`None` for flax configs or an unnameable pair).
    pub fn policy(&self) -> Option<DTypePolicy> {
        match self.api {
            Api::Keras => {
                DTypePolicy::from_dtypes(self.dtype.unwrap_or(DType::F32), self.param_dtype)
            }
            _ => None,
        }
    }

    /// The reduction axes as configured (before resolution against a rank).
    pub fn raw_reduction_axes(&self) -> &[i64] {
        &self.reduction_axes
    }

    /// The feature axes as configured.
    pub fn raw_feature_axes(&self) -> &[i64] {
        &self.feature_axes
    }

    /// flax: the named axis statistics are combined over.
    pub fn sync_axis_name(&self) -> Option<&str> {
        self.axis_name.as_deref()
    }

    /// flax: the configured `axis_index_groups`.
    pub fn index_groups(&self) -> Option<&[Vec<usize>]> {
        self.axis_index_groups.as_deref()
    }

    /// The groups for a world of `world` ranks (checked against it).
    pub fn groups_for(&self, world: usize) -> Result<AxisGroups> {
        AxisGroups::new(world, self.axis_index_groups.clone())
    }

    /// Scale (gamma) options.
    pub fn scale_options(&self) -> &ParamOptions {
        &self.scale
    }

    /// Bias (beta) options.
    pub fn bias_options(&self) -> &ParamOptions {
        &self.bias
    }

    /// keras' `rms_scaling` flag.
    pub fn rms_scaling_flag(&self) -> bool {
        self.rms_scaling
    }

    /// flax's `use_fast_variance` flag as configured.
    pub fn use_fast_variance_flag(&self) -> bool {
        self.use_fast_variance
    }
}

/// epsilon as the kernels add it: in f32, where the GPU computes the statistics. Values
/// that are finite and positive in f64 but not in f32 (`1e-50` rounds to 0, `1e308` to
/// infinity) are rejected here, so that the CPU and the GPU accept the same configs.
pub fn epsilon_f32(epsilon: f64) -> Result<f32> {
    let eps = epsilon as f32;
    if eps.is_finite() && eps > 0.0 {
        Ok(eps)
    } else {
        Err(Error::InvalidConfig(format!(
            "epsilon must be finite and > 0 in f32 (the kernels' precision), got {epsilon} \
             (= {eps} in f32)"
        )))
    }
}

impl Default for NormConfig {
    /// flax's `LayerNorm()`.
    fn default() -> NormConfig {
        NormConfig::flax()
    }
}
