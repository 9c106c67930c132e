//! Reading API arguments out of JSON with errors that name the argument.
//!
//! Configs arrive as the frameworks' own keyword arguments (fixtures, saved
//! `get_config` dictionaries). A wrong type must be reported as "`epsilon` must be
//! a number, got \"abc\"", not as a generic serde message, so the few shapes an
//! argument can take are parsed by hand here.

use serde_json::{Map, Value};

use crate::{Error, Result};

fn invalid(what: &str, expected: &str, got: &Value) -> Error {
    Error::InvalidConfig(format!("`{what}` must be {expected}, got {got}"))
}

/// A finite or infinite JSON number.
pub(crate) fn number(v: &Value, what: &str) -> Result<f64> {
    v.as_f64().ok_or_else(|| invalid(what, "a number", v))
}

/// A JSON boolean.
pub(crate) fn boolean(v: &Value, what: &str) -> Result<bool> {
    v.as_bool().ok_or_else(|| invalid(what, "true or false", v))
}

/// A JSON integer that fits in i64.
pub(crate) fn integer(v: &Value, what: &str) -> Result<i64> {
    v.as_i64().ok_or_else(|| invalid(what, "an integer", v))
}

/// A JSON string.
pub(crate) fn string<'a>(v: &'a Value, what: &str) -> Result<&'a str> {
    v.as_str().ok_or_else(|| invalid(what, "a string", v))
}

/// An axis argument: one integer or a list of integers (Python's `int | Sequence[int]`).
pub(crate) fn axes(v: &Value, what: &str) -> Result<Vec<i64>> {
    match v {
        Value::Array(items) => items.iter().map(|a| integer(a, what)).collect(),
        _ => integer(v, what)
            .map(|a| vec![a])
            .map_err(|_| invalid(what, "an integer or a list of integers", v)),
    }
}

/// Writes axes back as the frameworks do: a lone axis as an integer, several as a list.
pub(crate) fn axes_value(axes: &[i64]) -> Value {
    match axes {
        [a] => Value::from(*a),
        _ => Value::from(axes.to_vec()),
    }
}

/// Fails on a key outside `allowed`, naming it and the object it was found in.
pub(crate) fn check_keys(map: &Map<String, Value>, allowed: &[&str], owner: &str) -> Result<()> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(Error::InvalidConfig(format!(
            "unknown {owner} argument `{k}` (expected one of: {})",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

/// A keras serialized object: a bare name (`"glorot_uniform"`) or
/// `{"class_name": ..., "config": {...}}` (keras 3 also writes `module` and
/// `registered_name`, which carry no meaning here and are accepted).
pub(crate) struct KerasObject {
    pub class_name: String,
    pub config: Map<String, Value>,
}

impl KerasObject {
    pub(crate) fn parse(v: &Value, what: &str) -> Result<KerasObject> {
        match v {
            Value::String(name) => Ok(KerasObject {
                class_name: name.clone(),
                config: Map::new(),
            }),
            Value::Object(map) => {
                check_keys(
                    map,
                    &["class_name", "config", "module", "registered_name"],
                    what,
                )?;
                let class_name = map
                    .get("class_name")
                    .ok_or_else(|| {
                        Error::InvalidConfig(format!("`{what}` object has no `class_name`"))
                    })
                    .and_then(|c| string(c, &format!("{what}.class_name")))?
                    .to_string();
                let config = match map.get("config") {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(c)) => c.clone(),
                    Some(other) => {
                        return Err(invalid(&format!("{what}.config"), "an object", other))
                    }
                };
                Ok(KerasObject { class_name, config })
            }
            _ => Err(invalid(
                what,
                "a name or a {\"class_name\", \"config\"} object",
                v,
            )),
        }
    }

    /// A numeric argument of the object, or `default` when absent.
    pub(crate) fn number_or(&self, key: &str, default: f64, what: &str) -> Result<f64> {
        self.config
            .get(key)
            .map_or(Ok(default), |v| number(v, &format!("{what}.{key}")))
    }

    /// Serializes as keras does for an object with arguments.
    pub(crate) fn to_value(class_name: &str, config: Map<String, Value>) -> Value {
        let mut m = Map::new();
        m.insert("class_name".into(), Value::from(class_name));
        m.insert("config".into(), Value::Object(config));
        Value::Object(m)
    }
}

/// A class name reduced to lowercase without underscores, so that keras' two
/// spellings of one object (`GlorotUniform`, `glorot_uniform`) compare equal.
pub(crate) fn normalized_name(name: &str) -> String {
    name.chars()
        .filter(|&c| c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}
