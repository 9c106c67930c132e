//! Named parameter initializers with keras' names, defaults and fan rules.
//!
//! flax takes initializer *functions* and keras takes names or serialized objects;
//! a config that must round-trip through JSON needs the keras form, so both APIs
//! use this one enum. Values are drawn in f64 from [`Rng`]; the caller rounds them
//! to the parameter dtype.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::json::{normalized_name, KerasObject};
use crate::rng::Rng;
use crate::tensor::numel;
use crate::{Error, Result};

/// How a parameter is initialized. Random variants follow keras 3's formulas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub enum Initializer {
    /// All zeros (flax's bias default, keras' beta default).
    Zeros,
    /// All ones (flax's scale default, keras' gamma default).
    Ones,
    /// Every element equal to `value` (keras default 0).
    Constant { value: f64 },
    /// Normal(mean, stddev) (keras defaults 0, 0.05).
    RandomNormal { mean: f64, stddev: f64 },
    /// Uniform in `[minval, maxval)` (keras defaults -0.05, 0.05).
    RandomUniform { minval: f64, maxval: f64 },
    /// Normal(mean, stddev) redrawn outside `mean ± 2 stddev` (keras defaults 0, 0.05).
    TruncatedNormal { mean: f64, stddev: f64 },
    /// Uniform, limit `sqrt(6 / (fan_in + fan_out))`.
    GlorotUniform,
    /// Truncated normal, stddev `sqrt(2 / (fan_in + fan_out)) / 0.8796...`.
    GlorotNormal,
    /// Truncated normal, stddev `sqrt(2 / fan_in) / 0.8796...`.
    HeNormal,
    /// Uniform, limit `sqrt(6 / fan_in)`.
    HeUniform,
    /// Truncated normal, stddev `sqrt(1 / fan_in) / 0.8796...`.
    LecunNormal,
    /// Uniform, limit `sqrt(3 / fan_in)`.
    LecunUniform,
}

/// keras' `compute_fans`: `(fan_in, fan_out)` of a weight shape. A 1-D shape (every
/// normalization parameter with one feature axis) has `fan_in = fan_out = len`;
/// for rank > 2 the leading axes are a receptive field.
pub fn compute_fans(shape: &[usize]) -> (f64, f64) {
    match shape {
        [] => (1.0, 1.0),
        [n] => (*n as f64, *n as f64),
        [i, o] => (*i as f64, *o as f64),
        [field @ .., i, o] => {
            let rf: f64 = field.iter().map(|&d| d as f64).product();
            (*i as f64 * rf, *o as f64 * rf)
        }
    }
}

/// keras' `VarianceScaling` fan modes.
#[derive(Clone, Copy)]
enum Fan {
    In,
    Avg,
}

/// keras' `VarianceScaling` distributions.
#[derive(Clone, Copy)]
enum Dist {
    Uniform,
    TruncatedNormal,
}

/// The stddev of a standard normal truncated to ±2: keras divides by it so that
/// the truncated draw has the intended variance.
const TRUNCATED_STDDEV: f64 = 0.879_625_661_034_239_8;

impl Initializer {
    /// Draws the initial values of a parameter of `shape`, deterministically from `rng`.
    pub fn init(&self, shape: &[usize], rng: &mut Rng) -> Result<Vec<f64>> {
        self.validate()?;
        let n = numel(shape)?;
        crate::limits::check_host_alloc("parameter shape", n, std::mem::size_of::<f64>())?;
        let values = match *self {
            Initializer::Zeros => vec![0.0; n],
            Initializer::Ones => vec![1.0; n],
            Initializer::Constant { value } => vec![value; n],
            Initializer::RandomNormal { mean, stddev } => {
                (0..n).map(|_| rng.normal_with(mean, stddev)).collect()
            }
            Initializer::RandomUniform { minval, maxval } => {
                (0..n).map(|_| rng.uniform_in(minval, maxval)).collect()
            }
            Initializer::TruncatedNormal { mean, stddev } => {
                (0..n).map(|_| rng.truncated_normal(mean, stddev)).collect()
            }
            Initializer::GlorotUniform => scaled(1.0, Fan::Avg, Dist::Uniform, shape, n, rng),
            Initializer::GlorotNormal => {
                scaled(1.0, Fan::Avg, Dist::TruncatedNormal, shape, n, rng)
            }
            Initializer::HeNormal => scaled(2.0, Fan::In, Dist::TruncatedNormal, shape, n, rng),
            Initializer::HeUniform => scaled(2.0, Fan::In, Dist::Uniform, shape, n, rng),
            Initializer::LecunNormal => scaled(1.0, Fan::In, Dist::TruncatedNormal, shape, n, rng),
            Initializer::LecunUniform => scaled(1.0, Fan::In, Dist::Uniform, shape, n, rng),
        };
        Ok(values)
    }

    /// Rejects arguments keras would reject or that make no distribution.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidConfig(msg));
        match *self {
            Initializer::Constant { value } if !value.is_finite() => {
                bad(format!("Constant initializer value must be finite, got {value}"))
            }
            Initializer::RandomNormal { mean, stddev }
            | Initializer::TruncatedNormal { mean, stddev }
                if !(mean.is_finite() && stddev.is_finite() && stddev >= 0.0) =>
            {
                bad(format!(
                    "{} needs a finite mean and a finite stddev >= 0, got mean={mean}, stddev={stddev}",
                    self.class_name()
                ))
            }
            Initializer::RandomUniform { minval, maxval }
                if !(minval.is_finite() && maxval.is_finite() && minval <= maxval) =>
            {
                bad(format!(
                    "RandomUniform needs finite minval <= maxval, got minval={minval}, maxval={maxval}"
                ))
            }
            _ => Ok(()),
        }
    }

    /// keras' class name (`GlorotUniform`, ...).
    pub fn class_name(&self) -> &'static str {
        match self {
            Initializer::Zeros => "Zeros",
            Initializer::Ones => "Ones",
            Initializer::Constant { .. } => "Constant",
            Initializer::RandomNormal { .. } => "RandomNormal",
            Initializer::RandomUniform { .. } => "RandomUniform",
            Initializer::TruncatedNormal { .. } => "TruncatedNormal",
            Initializer::GlorotUniform => "GlorotUniform",
            Initializer::GlorotNormal => "GlorotNormal",
            Initializer::HeNormal => "HeNormal",
            Initializer::HeUniform => "HeUniform",
            Initializer::LecunNormal => "LecunNormal",
            Initializer::LecunUniform => "LecunUniform",
        }
    }

    /// keras' serialized form: the snake_case name for argument-free initializers,
    /// `{"class_name", "config"}` otherwise.
    pub fn to_value(&self) -> Value {
        let obj = |pairs: [(&str, f64); 2]| {
            let config: Map<String, Value> = pairs
                .iter()
                .map(|&(k, v)| (k.to_string(), Value::from(v)))
                .collect();
            KerasObject::to_value(self.class_name(), config)
        };
        match *self {
            Initializer::Constant { value } => {
                let mut config = Map::new();
                config.insert("value".into(), Value::from(value));
                KerasObject::to_value("Constant", config)
            }
            Initializer::RandomNormal { mean, stddev }
            | Initializer::TruncatedNormal { mean, stddev } => {
                obj([("mean", mean), ("stddev", stddev)])
            }
            Initializer::RandomUniform { minval, maxval } => {
                obj([("minval", minval), ("maxval", maxval)])
            }
            _ => Value::from(snake_name(self.class_name())),
        }
    }

    /// Parses a keras name (`"he_normal"`, `"HeNormal"`, aliases `normal`, `uniform`,
    /// `one`, `zero`) or a serialized object; absent arguments take keras' defaults.
    /// `seed` is accepted and ignored: randomness comes from the [`Rng`] passed to
    /// [`Initializer::init`].
    pub fn from_value(v: &Value) -> Result<Initializer> {
        let what = "initializer";
        let obj = KerasObject::parse(v, what)?;
        let name = normalized_name(&obj.class_name);
        let allowed: &[&str] = match name.as_str() {
            "constant" => &["value"],
            "randomnormal" | "normal" | "truncatednormal" => &["mean", "stddev", "seed"],
            "randomuniform" | "uniform" => &["minval", "maxval", "seed"],
            _ => &["seed"],
        };
        super::json::check_keys(&obj.config, allowed, &obj.class_name)?;
        let init = match name.as_str() {
            "zeros" | "zero" => Initializer::Zeros,
            "ones" | "one" => Initializer::Ones,
            "constant" => Initializer::Constant {
                value: obj.number_or("value", 0.0, what)?,
            },
            "randomnormal" | "normal" => Initializer::RandomNormal {
                mean: obj.number_or("mean", 0.0, what)?,
                stddev: obj.number_or("stddev", 0.05, what)?,
            },
            "randomuniform" | "uniform" => Initializer::RandomUniform {
                minval: obj.number_or("minval", -0.05, what)?,
                maxval: obj.number_or("maxval", 0.05, what)?,
            },
            "truncatednormal" => Initializer::TruncatedNormal {
                mean: obj.number_or("mean", 0.0, what)?,
                stddev: obj.number_or("stddev", 0.05, what)?,
            },
            "glorotuniform" => Initializer::GlorotUniform,
            "glorotnormal" => Initializer::GlorotNormal,
            "henormal" => Initializer::HeNormal,
            "heuniform" => Initializer::HeUniform,
            "lecunnormal" => Initializer::LecunNormal,
            "lecununiform" => Initializer::LecunUniform,
            _ => {
                return Err(Error::InvalidConfig(format!(
                    "unknown initializer `{}`",
                    obj.class_name
                )))
            }
        };
        init.validate()?;
        Ok(init)
    }
}

/// keras' `VarianceScaling.__call__` for the named schemes above.
fn scaled(scale: f64, fan: Fan, dist: Dist, shape: &[usize], n: usize, rng: &mut Rng) -> Vec<f64> {
    let (fan_in, fan_out) = compute_fans(shape);
    let denom = match fan {
        Fan::In => fan_in,
        Fan::Avg => (fan_in + fan_out) / 2.0,
    };
    let scale = scale / denom.max(1.0);
    match dist {
        Dist::Uniform => {
            let limit = (3.0 * scale).sqrt();
            (0..n).map(|_| rng.uniform_in(-limit, limit)).collect()
        }
        Dist::TruncatedNormal => {
            let stddev = scale.sqrt() / TRUNCATED_STDDEV;
            (0..n).map(|_| rng.truncated_normal(0.0, stddev)).collect()
        }
    }
}

/// `GlorotUniform` -> `glorot_uniform`.
fn snake_name(class_name: &str) -> String {
    let mut out = String::new();
    for (i, c) in class_name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

impl From<Initializer> for Value {
    fn from(i: Initializer) -> Value {
        i.to_value()
    }
}

impl TryFrom<Value> for Initializer {
    type Error = Error;
    fn try_from(v: Value) -> Result<Initializer> {
        Initializer::from_value(&v)
    }
}
