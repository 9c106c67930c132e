//! keras weight regularizers: the penalty a training loop adds to the loss for a
//! parameter, and its gradient.
//!
//! The kernels never see these; they are part of the config so that a keras
//! `get_config` survives the round trip and so that the layer can report the
//! penalty of its gamma/beta.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::json::{check_keys, normalized_name, KerasObject};
use crate::{Error, Result};

/// keras' default factor for `l1`, `l2` and `l1_l2` given by name.
pub const DEFAULT_FACTOR: f64 = 0.01;

/// `loss = l1 * sum|w| + l2 * sum w^2`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub enum Regularizer {
    /// `l1 * sum|w|` (keras default 0.01).
    L1 { l1: f64 },
    /// `l2 * sum w^2` (keras default 0.01).
    L2 { l2: f64 },
    /// Both terms. By name (`"l1_l2"`) keras uses 0.01 for both; the class `L1L2`
    /// with no arguments uses 0 for both.
    L1L2 { l1: f64, l2: f64 },
}

impl Regularizer {
    fn factors(&self) -> (f64, f64) {
        match *self {
            Regularizer::L1 { l1 } => (l1, 0.0),
            Regularizer::L2 { l2 } => (0.0, l2),
            Regularizer::L1L2 { l1, l2 } => (l1, l2),
        }
    }

    /// The penalty for weights `w`.
    pub fn loss(&self, w: &[f64]) -> f64 {
        let (l1, l2) = self.factors();
        let abs: f64 = w.iter().map(|v| v.abs()).sum();
        let sq: f64 = w.iter().map(|v| v * v).sum();
        l1 * abs + l2 * sq
    }

    /// d loss / d w = `l1 * sign(w) + 2 * l2 * w`. At `w == 0` the l1 term uses
    /// `sign(0) = 0` (the subgradient TensorFlow and PyTorch return; JAX's `abs`
    /// returns +1 there).
    pub fn grad(&self, w: &[f64]) -> Vec<f64> {
        let (l1, l2) = self.factors();
        w.iter()
            .map(|&v| {
                let sign = if v > 0.0 {
                    1.0
                } else if v < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                l1 * sign + 2.0 * l2 * v
            })
            .collect()
    }

    /// keras' `validate_float_arg`: each factor finite and non-negative.
    pub fn validate(&self) -> Result<()> {
        let (l1, l2) = self.factors();
        for (name, v) in [("l1", l1), ("l2", l2)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::InvalidConfig(format!(
                    "regularizer factor {name} must be a non-negative finite number, got {v}"
                )));
            }
        }
        Ok(())
    }

    /// keras' serialized form `{"class_name": "L1", "config": {"l1": ...}}`.
    pub fn to_value(&self) -> Value {
        let (name, pairs): (&str, Vec<(&str, f64)>) = match *self {
            Regularizer::L1 { l1 } => ("L1", vec![("l1", l1)]),
            Regularizer::L2 { l2 } => ("L2", vec![("l2", l2)]),
            Regularizer::L1L2 { l1, l2 } => ("L1L2", vec![("l1", l1), ("l2", l2)]),
        };
        let config: Map<String, Value> = pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::from(v)))
            .collect();
        KerasObject::to_value(name, config)
    }

    /// Parses `"l1"`, `"l2"`, `"l1_l2"` or a serialized object.
    pub fn from_value(v: &Value) -> Result<Regularizer> {
        let what = "regularizer";
        let obj = KerasObject::parse(v, what)?;
        let by_name = v.is_string();
        let reg = match normalized_name(&obj.class_name).as_str() {
            "l1" => {
                check_keys(&obj.config, &["l1"], "L1")?;
                Regularizer::L1 {
                    l1: obj.number_or("l1", DEFAULT_FACTOR, what)?,
                }
            }
            "l2" => {
                check_keys(&obj.config, &["l2"], "L2")?;
                Regularizer::L2 {
                    l2: obj.number_or("l2", DEFAULT_FACTOR, what)?,
                }
            }
            "l1l2" => {
                check_keys(&obj.config, &["l1", "l2"], "L1L2")?;
                let default = if by_name { DEFAULT_FACTOR } else { 0.0 };
                Regularizer::L1L2 {
                    l1: obj.number_or("l1", default, what)?,
                    l2: obj.number_or("l2", default, what)?,
                }
            }
            _ => {
                return Err(Error::InvalidConfig(format!(
                    "unknown regularizer `{}` (expected l1, l2 or l1_l2)",
                    obj.class_name
                )))
            }
        };
        reg.validate()?;
        Ok(reg)
    }
}

impl From<Regularizer> for Value {
    fn from(r: Regularizer) -> Value {
        r.to_value()
    }
}

impl TryFrom<Value> for Regularizer {
    type Error = Error;
    fn try_from(v: Value) -> Result<Regularizer> {
        Regularizer::from_value(&v)
    }
}
