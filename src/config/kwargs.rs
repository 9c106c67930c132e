//! `NormConfig` to and from each API's own keyword arguments.
//!
//! Fixtures and saved configs speak the frameworks' language (`center`, not
//! `use_bias`; `"mixed_bfloat16"`, not a pair of dtypes). Parsing and writing live
//! together here so that `from_json(to_json(c)) == c` by construction.

use serde_json::{Map, Value};

use super::json::{axes, axes_value, boolean, check_keys, number, string, KerasObject};
use super::{Api, Constraint, DTypePolicy, Initializer, NormConfig, Regularizer};
use crate::{DType, Error, Result};

const FLAX_LN_KEYS: &[&str] = &[
    "epsilon",
    "dtype",
    "param_dtype",
    "use_bias",
    "use_scale",
    "bias_init",
    "scale_init",
    "reduction_axes",
    "feature_axes",
    "axis_name",
    "axis_index_groups",
    "use_fast_variance",
    "force_float32_reductions",
];

const FLAX_RMS_KEYS: &[&str] = &[
    "epsilon",
    "dtype",
    "param_dtype",
    "use_scale",
    "scale_init",
    "reduction_axes",
    "feature_axes",
    "axis_name",
    "axis_index_groups",
    "use_fast_variance",
    "force_float32_reductions",
];

/// `name` and `trainable` come from keras' base `Layer.get_config`; they do not
/// affect the computation and are accepted so a real keras config parses.
const KERAS_KEYS: &[&str] = &[
    "axis",
    "epsilon",
    "center",
    "scale",
    "rms_scaling",
    "beta_initializer",
    "gamma_initializer",
    "beta_regularizer",
    "gamma_regularizer",
    "beta_constraint",
    "gamma_constraint",
    "dtype",
    "name",
    "trainable",
];

fn object(v: &Value, api: Api) -> Result<&Map<String, Value>> {
    v.as_object().ok_or_else(|| {
        Error::InvalidConfig(format!("{api} arguments must be a JSON object, got {v}"))
    })
}

fn dtype_name(v: &Value, what: &str) -> Result<DType> {
    string(v, what)?.parse()
}

fn optional<T>(v: &Value, f: impl FnOnce(&Value) -> Result<T>) -> Result<Option<T>> {
    match v {
        Value::Null => Ok(None),
        _ => f(v).map(Some),
    }
}

fn groups(v: &Value) -> Result<Vec<Vec<usize>>> {
    let what = "axis_index_groups";
    let err = || {
        Error::InvalidGroups(format!(
            "`{what}` must be a list of lists of non-negative integers, got {v}"
        ))
    };
    let outer = v.as_array().ok_or_else(err)?;
    outer
        .iter()
        .map(|g| {
            g.as_array()
                .ok_or_else(err)?
                .iter()
                .map(|r| {
                    r.as_u64()
                        .and_then(|r| usize::try_from(r).ok())
                        .ok_or_else(err)
                })
                .collect()
        })
        .collect()
}

/// keras writes `dtype` as a policy name or, from `get_config`, as a serialized
/// `DTypePolicy` object whose `config.name` is the name.
fn keras_policy(v: &Value) -> Result<DTypePolicy> {
    match v {
        Value::Null => Ok(DTypePolicy::Float32),
        Value::Object(_) => {
            let obj = KerasObject::parse(v, "dtype")?;
            let name = obj.config.get("name").ok_or_else(|| {
                Error::InvalidConfig(format!("`dtype` policy object has no config.name: {v}"))
            })?;
            DTypePolicy::parse(string(name, "dtype.config.name")?)
        }
        _ => DTypePolicy::parse(string(v, "dtype")?),
    }
}

impl NormConfig {
    /// `flax.linen.LayerNorm(**kwargs)`: absent keys take flax's defaults.
    pub fn from_flax_kwargs(kwargs: &Value) -> Result<NormConfig> {
        NormConfig::from_kwargs(Api::FlaxLayerNorm, kwargs)
    }

    /// `flax.linen.RMSNorm(**kwargs)`.
    pub fn from_flax_rms_kwargs(kwargs: &Value) -> Result<NormConfig> {
        NormConfig::from_kwargs(Api::FlaxRmsNorm, kwargs)
    }

    /// `keras.layers.LayerNormalization(**kwargs)`, or a dictionary from its
    /// `get_config()`.
    pub fn from_keras_kwargs(kwargs: &Value) -> Result<NormConfig> {
        NormConfig::from_kwargs(Api::Keras, kwargs)
    }

    /// The constructor arguments of `api`, validated.
    pub fn from_kwargs(api: Api, kwargs: &Value) -> Result<NormConfig> {
        let map = object(kwargs, api)?;
        let cfg = match api {
            Api::Keras => keras_from_map(map)?,
            _ => flax_from_map(api, map)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every argument of the API, with the API's names (keras' `get_config`). Numbers
    /// are written as they are: call it on a validated config ([`NormConfig::to_json`]
    /// checks for you), since JSON writes a NaN or infinity as `null`.
    pub fn to_kwargs(&self) -> Value {
        match self.api {
            Api::Keras => keras_to_map(self),
            _ => flax_to_map(self),
        }
    }

    /// `{"api": ..., <to_kwargs>}` as a JSON value.
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        map.insert("api".into(), Value::from(self.api.name()));
        if let Value::Object(kwargs) = self.to_kwargs() {
            map.extend(kwargs);
        }
        Value::Object(map)
    }

    /// Parses [`NormConfig::to_value`]'s form.
    pub fn from_value(v: &Value) -> Result<NormConfig> {
        let mut map = v
            .as_object()
            .ok_or_else(|| {
                Error::InvalidConfig(format!("a config must be a JSON object, got {v}"))
            })?
            .clone();
        let api = match map.remove("api") {
            Some(a) => Api::parse(string(&a, "api")?)?,
            None => return Err(Error::InvalidConfig("config has no `api` field".into())),
        };
        NormConfig::from_kwargs(api, &Value::Object(map))
    }

    /// Serializes to JSON (keras' `get_config`, plus the API's name). Validates first:
    /// an invalid config (a NaN epsilon has no JSON form) is an error, never `null`.
    pub fn to_json(&self) -> Result<String> {
        self.validate()?;
        Ok(self.to_value().to_string())
    }

    /// Parses [`NormConfig::to_json`]'s output (keras' `from_config`).
    pub fn from_json(text: &str) -> Result<NormConfig> {
        NormConfig::from_value(&serde_json::from_str(text)?)
    }
}

fn flax_from_map(api: Api, map: &Map<String, Value>) -> Result<NormConfig> {
    let keys = if api == Api::FlaxRmsNorm {
        FLAX_RMS_KEYS
    } else {
        FLAX_LN_KEYS
    };
    check_keys(map, keys, api.name())?;
    let mut cfg = NormConfig::for_api(api);
    for (key, v) in map {
        match key.as_str() {
            "epsilon" => cfg.epsilon = number(v, key)?,
            "dtype" => cfg.dtype = optional(v, |v| dtype_name(v, key))?,
            "param_dtype" => cfg.param_dtype = dtype_name(v, key)?,
            "use_bias" => cfg.use_bias = boolean(v, key)?,
            "use_scale" => cfg.use_scale = boolean(v, key)?,
            "bias_init" => cfg.bias.init = Initializer::from_value(v)?,
            "scale_init" => cfg.scale.init = Initializer::from_value(v)?,
            "reduction_axes" => cfg.reduction_axes = axes(v, key)?,
            "feature_axes" => cfg.feature_axes = axes(v, key)?,
            "axis_name" => cfg.axis_name = optional(v, |v| string(v, key).map(str::to_string))?,
            "axis_index_groups" => cfg.axis_index_groups = optional(v, groups)?,
            "use_fast_variance" => cfg.use_fast_variance = boolean(v, key)?,
            "force_float32_reductions" => {
                if !boolean(v, key)? {
                    return Err(Error::Unsupported(
                        "force_float32_reductions=false (statistics in a half dtype)".into(),
                    ));
                }
            }
            _ => unreachable_key(key)?,
        }
    }
    Ok(cfg)
}

fn keras_from_map(map: &Map<String, Value>) -> Result<NormConfig> {
    check_keys(map, KERAS_KEYS, Api::Keras.name())?;
    let mut cfg = NormConfig::keras();
    let regularizer = |v: &Value| optional(v, Regularizer::from_value);
    let constraint = |v: &Value| optional(v, Constraint::from_value);
    for (key, v) in map {
        match key.as_str() {
            "axis" => {
                let a = axes(v, key)?;
                cfg.reduction_axes = a.clone();
                cfg.feature_axes = a;
            }
            "epsilon" => cfg.epsilon = number(v, key)?,
            "center" => cfg.use_bias = boolean(v, key)?,
            "scale" => cfg.use_scale = boolean(v, key)?,
            "rms_scaling" => cfg.rms_scaling = boolean(v, key)?,
            "beta_initializer" => cfg.bias.init = Initializer::from_value(v)?,
            "gamma_initializer" => cfg.scale.init = Initializer::from_value(v)?,
            "beta_regularizer" => cfg.bias.regularizer = regularizer(v)?,
            "gamma_regularizer" => cfg.scale.regularizer = regularizer(v)?,
            "beta_constraint" => cfg.bias.constraint = constraint(v)?,
            "gamma_constraint" => cfg.scale.constraint = constraint(v)?,
            "dtype" => cfg = cfg.dtype_policy(keras_policy(v)?),
            "name" => {
                optional(v, |v| string(v, key).map(drop))?;
            }
            "trainable" => {
                boolean(v, key)?;
            }
            _ => unreachable_key(key)?,
        }
    }
    Ok(cfg)
}

/// `check_keys` ran first, so this only guards against the two lists drifting apart.
fn unreachable_key(key: &str) -> Result<()> {
    Err(Error::InvalidConfig(format!("unhandled argument `{key}`")))
}

fn flax_to_map(cfg: &NormConfig) -> Value {
    let mut m = Map::new();
    m.insert("epsilon".into(), Value::from(cfg.epsilon));
    m.insert(
        "dtype".into(),
        cfg.dtype
            .map_or(Value::Null, |d| Value::from(d.numpy_name())),
    );
    m.insert(
        "param_dtype".into(),
        Value::from(cfg.param_dtype.numpy_name()),
    );
    if cfg.api == Api::FlaxLayerNorm {
        m.insert("use_bias".into(), Value::from(cfg.use_bias));
    }
    m.insert("use_scale".into(), Value::from(cfg.use_scale));
    if cfg.api == Api::FlaxLayerNorm {
        m.insert("bias_init".into(), cfg.bias.init.to_value());
    }
    m.insert("scale_init".into(), cfg.scale.init.to_value());
    m.insert("reduction_axes".into(), axes_value(&cfg.reduction_axes));
    m.insert("feature_axes".into(), axes_value(&cfg.feature_axes));
    m.insert(
        "axis_name".into(),
        cfg.axis_name.clone().map_or(Value::Null, Value::from),
    );
    m.insert(
        "axis_index_groups".into(),
        cfg.axis_index_groups
            .clone()
            .map_or(Value::Null, Value::from),
    );
    m.insert(
        "use_fast_variance".into(),
        Value::from(cfg.use_fast_variance),
    );
    Value::Object(m)
}

fn keras_to_map(cfg: &NormConfig) -> Value {
    let opt = |v: Option<Value>| v.unwrap_or(Value::Null);
    let mut m = Map::new();
    m.insert("axis".into(), axes_value(&cfg.reduction_axes));
    m.insert("epsilon".into(), Value::from(cfg.epsilon));
    m.insert("center".into(), Value::from(cfg.use_bias));
    m.insert("scale".into(), Value::from(cfg.use_scale));
    m.insert("rms_scaling".into(), Value::from(cfg.rms_scaling));
    m.insert("beta_initializer".into(), cfg.bias.init.to_value());
    m.insert("gamma_initializer".into(), cfg.scale.init.to_value());
    m.insert(
        "beta_regularizer".into(),
        opt(cfg.bias.regularizer.as_ref().map(Regularizer::to_value)),
    );
    m.insert(
        "gamma_regularizer".into(),
        opt(cfg.scale.regularizer.as_ref().map(Regularizer::to_value)),
    );
    m.insert(
        "beta_constraint".into(),
        opt(cfg.bias.constraint.as_ref().map(Constraint::to_value)),
    );
    m.insert(
        "gamma_constraint".into(),
        opt(cfg.scale.constraint.as_ref().map(Constraint::to_value)),
    );
    // An unnameable pair is rejected by validate(); write the compute dtype then.
    let dtype = cfg.policy().map_or_else(
        || cfg.output_dtype(DType::F32).numpy_name(),
        DTypePolicy::name,
    );
    m.insert("dtype".into(), Value::from(dtype));
    Value::Object(m)
}

impl serde::Serialize for NormConfig {
    /// [`NormConfig::to_value`] of a config that passes [`NormConfig::validate`].
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.validate().map_err(serde::ser::Error::custom)?;
        serde::Serialize::serialize(&self.to_value(), s)
    }
}

impl TryFrom<Value> for NormConfig {
    type Error = Error;
    fn try_from(v: Value) -> Result<NormConfig> {
        NormConfig::from_value(&v)
    }
}
