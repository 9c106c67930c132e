//! keras weight constraints: projections a training loop applies to a parameter
//! after each update.
//!
//! Norm-based constraints follow keras 3 exactly, including its `1e-7` added to
//! the norm in the denominator (`backend.epsilon()`), so a constrained vector's
//! norm is slightly below the target, as in keras.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::json::{axes, axes_value, check_keys, normalized_name, KerasObject};
use crate::tensor::{numel, strides};
use crate::{Error, Result};

/// keras' `backend.epsilon()`, added to norms before dividing.
pub const KERAS_EPSILON: f64 = 1e-7;

/// A projection applied to a weight after each update. `axis` lists the axes the
/// norm is taken over (keras default `0`; negative axes count from the end).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub enum Constraint {
    /// `max(w, 0)`.
    NonNeg,
    /// `w * clip(n, 0, max_value) / (eps + n)` (keras defaults 2, axis 0).
    MaxNorm { max_value: f64, axis: Vec<i64> },
    /// `w * (rate * clip(n, min_value, max_value) + (1 - rate) * n) / (eps + n)`
    /// (keras defaults 0, 1, 1, axis 0).
    MinMaxNorm {
        min_value: f64,
        max_value: f64,
        rate: f64,
        axis: Vec<i64>,
    },
    /// `w / (eps + n)` (keras default axis 0).
    UnitNorm { axis: Vec<i64> },
}

impl Constraint {
    /// Projects `w`, a row-major weight of `shape`, in place.
    pub fn apply(&self, w: &mut [f64], shape: &[usize]) -> Result<()> {
        self.validate()?;
        if numel(shape)? != w.len() {
            return Err(Error::Shape {
                what: "constrained weight",
                expected: format!("{} values for shape {shape:?}", numel(shape)?),
                got: format!("{} values", w.len()),
            });
        }
        match self {
            Constraint::NonNeg => {
                // `v < 0` keeps NaN as NaN, like jnp.maximum.
                w.iter_mut().filter(|v| **v < 0.0).for_each(|v| *v = 0.0);
            }
            Constraint::MaxNorm { max_value, axis } => {
                scale_by_norm(w, shape, axis, |n| n.clamp(0.0, *max_value))?
            }
            Constraint::MinMaxNorm {
                min_value,
                max_value,
                rate,
                axis,
            } => scale_by_norm(w, shape, axis, |n| {
                rate * n.clamp(*min_value, *max_value) + (1.0 - rate) * n
            })?,
            Constraint::UnitNorm { axis } => scale_by_norm(w, shape, axis, |_| 1.0)?,
        }
        Ok(())
    }

    /// Rejects bounds that make no projection.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidConfig(msg));
        match *self {
            Constraint::MaxNorm { max_value, .. }
                if !(max_value.is_finite() && max_value >= 0.0) =>
            {
                bad(format!(
                    "MaxNorm max_value must be finite and >= 0, got {max_value}"
                ))
            }
            Constraint::MinMaxNorm {
                min_value,
                max_value,
                rate,
                ..
            } if !(min_value.is_finite()
                && max_value.is_finite()
                && rate.is_finite()
                && 0.0 <= min_value
                && min_value <= max_value) =>
            {
                bad(format!(
                    "MinMaxNorm needs finite 0 <= min_value <= max_value and a finite rate, \
                     got min_value={min_value}, max_value={max_value}, rate={rate}"
                ))
            }
            _ => Ok(()),
        }
    }

    /// keras' class name.
    pub fn class_name(&self) -> &'static str {
        match self {
            Constraint::NonNeg => "NonNeg",
            Constraint::MaxNorm { .. } => "MaxNorm",
            Constraint::MinMaxNorm { .. } => "MinMaxNorm",
            Constraint::UnitNorm { .. } => "UnitNorm",
        }
    }

    /// keras' serialized form.
    pub fn to_value(&self) -> Value {
        let mut config = Map::new();
        match self {
            Constraint::NonNeg => {}
            Constraint::MaxNorm { max_value, axis } => {
                config.insert("max_value".into(), Value::from(*max_value));
                config.insert("axis".into(), axes_value(axis));
            }
            Constraint::MinMaxNorm {
                min_value,
                max_value,
                rate,
                axis,
            } => {
                config.insert("min_value".into(), Value::from(*min_value));
                config.insert("max_value".into(), Value::from(*max_value));
                config.insert("rate".into(), Value::from(*rate));
                config.insert("axis".into(), axes_value(axis));
            }
            Constraint::UnitNorm { axis } => {
                config.insert("axis".into(), axes_value(axis));
            }
        }
        KerasObject::to_value(self.class_name(), config)
    }

    /// Parses `"non_neg"`, `"max_norm"`, `"min_max_norm"`, `"unit_norm"` (or the
    /// class names) or a serialized object; absent arguments take keras' defaults.
    pub fn from_value(v: &Value) -> Result<Constraint> {
        let what = "constraint";
        let obj = KerasObject::parse(v, what)?;
        let axis = || match obj.config.get("axis") {
            Some(a) => axes(a, "constraint.axis"),
            None => Ok(vec![0]),
        };
        let c = match normalized_name(&obj.class_name).as_str() {
            "nonneg" => {
                check_keys(&obj.config, &[], "NonNeg")?;
                Constraint::NonNeg
            }
            "maxnorm" => {
                check_keys(&obj.config, &["max_value", "axis"], "MaxNorm")?;
                Constraint::MaxNorm {
                    max_value: obj.number_or("max_value", 2.0, what)?,
                    axis: axis()?,
                }
            }
            "minmaxnorm" => {
                check_keys(
                    &obj.config,
                    &["min_value", "max_value", "rate", "axis"],
                    "MinMaxNorm",
                )?;
                Constraint::MinMaxNorm {
                    min_value: obj.number_or("min_value", 0.0, what)?,
                    max_value: obj.number_or("max_value", 1.0, what)?,
                    rate: obj.number_or("rate", 1.0, what)?,
                    axis: axis()?,
                }
            }
            "unitnorm" => {
                check_keys(&obj.config, &["axis"], "UnitNorm")?;
                Constraint::UnitNorm { axis: axis()? }
            }
            _ => {
                let expected = "non_neg, max_norm, min_max_norm or unit_norm";
                return Err(Error::InvalidConfig(format!(
                    "unknown constraint `{}` (expected {expected})",
                    obj.class_name
                )));
            }
        };
        c.validate()?;
        Ok(c)
    }
}

/// Multiplies every element by `desired(n) / (eps + n)`, where `n` is the L2 norm
/// of the slice through that element along `axis` (keepdims semantics).
fn scale_by_norm(
    w: &mut [f64],
    shape: &[usize],
    axis: &[i64],
    desired: impl Fn(f64) -> f64,
) -> Result<()> {
    let rank = shape.len();
    let mut reduced = vec![false; rank];
    for &a in axis {
        let wrapped = if a < 0 { a + rank as i64 } else { a };
        if wrapped < 0 || wrapped >= rank as i64 {
            return Err(Error::AxisOutOfRange { axis: a, rank });
        }
        if std::mem::replace(&mut reduced[wrapped as usize], true) {
            return Err(Error::DuplicateAxis {
                axis: a,
                option: "constraint axis",
            });
        }
    }
    // Index of each element's norm group: its coordinates with the reduced axes dropped.
    let kept: Vec<usize> = shape
        .iter()
        .zip(&reduced)
        .map(|(&d, &r)| if r { 1 } else { d })
        .collect();
    let kept_strides = strides(&kept);
    let x_strides = strides(shape);
    let group_of = |flat: usize| -> usize {
        (0..rank)
            .filter(|&a| !reduced[a])
            .map(|a| (flat / x_strides[a]) % shape[a] * kept_strides[a])
            .sum()
    };
    let mut sq = vec![0.0; numel(&kept)?];
    for (i, v) in w.iter().enumerate() {
        sq[group_of(i)] += v * v;
    }
    let factor: Vec<f64> = sq
        .iter()
        .map(|s| {
            let n = s.sqrt();
            desired(n) / (KERAS_EPSILON + n)
        })
        .collect();
    for (i, v) in w.iter_mut().enumerate() {
        *v *= factor[group_of(i)];
    }
    Ok(())
}

impl From<Constraint> for Value {
    fn from(c: Constraint) -> Value {
        c.to_value()
    }
}

impl TryFrom<Value> for Constraint {
    type Error = Error;
    fn try_from(v: Value) -> Result<Constraint> {
        Constraint::from_value(&v)
    }
}
