//! Anchor fixtures: one case computed by flax or keras, read from JSON.
//!
//! A fixture records a framework's inputs, parameters, outputs and gradients (see
//! the fixture format in `tests/fixtures/README.md`). Loading checks everything
//! that can be checked without computing: shapes against the config's axes,
//! dtypes against the API's dtype rules, values exactly representable in their
//! dtype. A malformed file becomes [`Error::Fixture`] naming the file and the
//! field, e.g. "field `x.data`: expected 24 numbers for shape [2, 12], got 23".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::config::{Api, NormConfig};
use crate::tensor::{numel, strides};
use crate::{DType, Error, Result, Tensor};

/// A loaded, checked fixture. Parameters are stored with the config's
/// [`crate::Axes::param_shape`] (keras' mixed-sign declared shape is reshaped).
#[derive(Clone, Debug)]
pub struct Fixture {
    /// Where it was read from.
    pub path: PathBuf,
    pub name: String,
    pub config: NormConfig,
    /// `Some(k)`: flax under `pmap` over k ranks; every array has a leading rank axis.
    pub world: Option<usize>,
    pub x: Tensor,
    pub scale: Option<Tensor>,
    pub bias: Option<Tensor>,
    /// flax's `mask`, broadcast to the shape of `x`.
    pub mask: Option<Vec<bool>>,
    pub y: Tensor,
    /// The cotangent and the framework's gradients, when the fixture has them.
    pub backward: Option<Backward>,
    pub versions: BTreeMap<String, String>,
}

/// The backward half of a fixture.
#[derive(Clone, Debug)]
pub struct Backward {
    pub dy: Tensor,
    pub dx: Tensor,
    pub dscale: Option<Tensor>,
    pub dbias: Option<Tensor>,
}

/// One rank's inputs (the whole fixture when it is not sharded).
#[derive(Clone, Debug)]
pub struct RankInputs {
    pub x: Tensor,
    pub scale: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub mask: Option<Vec<bool>>,
    pub dy: Option<Tensor>,
}

impl RankInputs {
    /// The rank's parameters as the reference takes them.
    pub fn params(&self) -> crate::reference::Params<'_> {
        crate::reference::Params::new(self.scale.as_ref(), self.bias.as_ref())
    }
}

/// Relative distance (a few ulps of f64) within which a parsed number counts as the
/// dtype value it rounds to.
const PARSE_SLACK: f64 = 1.0 / (1u64 << 50) as f64;

/// The largest fixture file [`Fixture::load`] reads: far above the largest generated case
/// (a few hundred KiB), far below what could exhaust memory.
pub const MAX_FIXTURE_BYTES: u64 = 64 << 20;

/// The text of a regular file of at most [`MAX_FIXTURE_BYTES`]. Anything else (a FIFO,
/// a device such as `/dev/zero`, a socket, a folder) is refused by its type: a FIFO would
/// block until a writer appears and a device may never end.
fn read_text(path: &Path) -> std::result::Result<String, String> {
    use std::io::Read;
    // Refused by the path's type before opening, and checked again on the opened file in
    // case the path changed in between; the open itself does not wait on a FIFO.
    regular(&std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?)?;
    let file = open_without_blocking(path).map_err(|e| format!("cannot read: {e}"))?;
    regular(&file.metadata().map_err(|e| format!("cannot read: {e}"))?)?;
    let mut text = String::new();
    file.take(MAX_FIXTURE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read: {e}"))?;
    if text.len() as u64 > MAX_FIXTURE_BYTES {
        return Err(format!(
            "grew past the {MAX_FIXTURE_BYTES} bytes a fixture may have while being read"
        ));
    }
    Ok(text)
}

/// Refuses what is not a regular file of at most [`MAX_FIXTURE_BYTES`].
fn regular(meta: &std::fs::Metadata) -> std::result::Result<(), String> {
    if !meta.is_file() {
        return Err(format!(
            "not a regular file ({}); fixtures are regular JSON files",
            file_kind(meta)
        ));
    }
    if meta.len() > MAX_FIXTURE_BYTES {
        return Err(format!(
            "{} bytes is more than the {MAX_FIXTURE_BYTES} bytes a fixture may have",
            meta.len()
        ));
    }
    Ok(())
}

/// Opens `path` for reading without waiting for a FIFO's writer (`O_NONBLOCK`, which
/// changes nothing for a regular file), so that a path swapped for a FIFO after its type
/// was checked cannot block the caller.
fn open_without_blocking(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path)
}

/// What a file that is not regular is, for messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a folder"
    } else {
        "a special file"
    }
}

/// A message about one field; the loader adds the path.
type FieldResult<T> = std::result::Result<T, String>;

impl Fixture {
    /// Reads and checks a fixture file.
    pub fn load(path: impl AsRef<Path>) -> Result<Fixture> {
        let path = path.as_ref();
        let fail = |msg: String| Error::Fixture {
            path: path.to_path_buf(),
            msg,
        };
        let text = read_text(path).map_err(fail)?;
        Fixture::parse(path, &text)
    }

    /// Parses and checks fixture text; `path` is only used in messages.
    pub fn parse(path: impl AsRef<Path>, text: &str) -> Result<Fixture> {
        let path = path.as_ref();
        let value: Value = serde_json::from_str(text).map_err(|e| Error::Fixture {
            path: path.to_path_buf(),
            msg: format!("not valid JSON: {e}"),
        })?;
        parse_value(path, &value).map_err(|msg| Error::Fixture {
            path: path.to_path_buf(),
            msg,
        })
    }

    /// The inputs of each rank (one entry when the fixture is not sharded).
    pub fn ranks(&self) -> Result<Vec<RankInputs>> {
        let Some(k) = self.world else {
            return Ok(vec![RankInputs {
                x: self.x.clone(),
                scale: self.scale.clone(),
                bias: self.bias.clone(),
                mask: self.mask.clone(),
                dy: self.backward.as_ref().map(|b| b.dy.clone()),
            }]);
        };
        let split = |t: Option<&Tensor>| -> Result<Vec<Option<Tensor>>> {
            match t {
                Some(t) => Ok(t.unstack()?.into_iter().map(Some).collect()),
                None => Ok(vec![None; k]),
            }
        };
        let xs = self.x.unstack()?;
        let scales = split(self.scale.as_ref())?;
        let biases = split(self.bias.as_ref())?;
        let dys = split(self.backward.as_ref().map(|b| &b.dy))?;
        let per_rank = self.x.numel() / k.max(1);
        Ok((0..k)
            .map(|r| RankInputs {
                x: xs[r].clone(),
                scale: scales[r].clone(),
                bias: biases[r].clone(),
                mask: self
                    .mask
                    .as_ref()
                    .map(|m| m[r * per_rank..(r + 1) * per_rank].to_vec()),
                dy: dys[r].clone(),
            })
            .collect())
    }
}

fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> FieldResult<&'a Value> {
    obj.get(key).ok_or_else(|| format!("missing field `{key}`"))
}

fn parse_value(path: &Path, value: &Value) -> FieldResult<Fixture> {
    let obj = value
        .as_object()
        .ok_or_else(|| "the file must hold one JSON object".to_string())?;
    let name = field(obj, "name")?
        .as_str()
        .ok_or("field `name`: expected a string")?
        .to_string();
    let api_name = field(obj, "api")?
        .as_str()
        .ok_or("field `api`: expected a string")?;
    let api = Api::parse(api_name).map_err(|e| format!("field `api`: {e}"))?;
    let config = NormConfig::from_kwargs(api, field(obj, "config")?)
        .map_err(|e| format!("field `config`: {e}"))?;
    let world = match obj.get("world") {
        None | Some(Value::Null) => None,
        Some(w) => Some(
            w.as_u64()
                .and_then(|w| usize::try_from(w).ok())
                .filter(|&w| w > 0)
                .ok_or_else(|| format!("field `world`: expected a positive integer, got {w}"))?,
        ),
    };
    if world.is_some() && config.sync_axis_name().is_none() {
        return Err("field `world`: a sharded case needs `config.axis_name`".into());
    }
    if let Some(k) = world {
        config
            .groups_for(k)
            .map_err(|e| format!("field `config.axis_index_groups`: {e}"))?;
    }

    let x = tensor(obj, "x")?;
    let local_shape = match world {
        Some(k) => match x.shape().split_first() {
            Some((&lead, rest)) if lead == k => rest.to_vec(),
            _ => {
                return Err(format!(
                    "field `x.shape`: a sharded case with world {k} needs a leading rank axis of \
                     length {k}, got {:?}",
                    x.shape()
                ))
            }
        },
        None => x.shape().to_vec(),
    };
    let axes = config
        .resolve(&local_shape)
        .map_err(|e| format!("field `config` for x of shape {local_shape:?}: {e}"))?;
    let declared = config
        .declared_param_shape(&local_shape)
        .map_err(|e| format!("field `config`: {e}"))?;
    let lead: Vec<usize> = world.into_iter().collect();
    let with_lead = |s: &[usize]| [lead.as_slice(), s].concat();
    let param_shape = with_lead(&axes.param_shape);
    let declared = with_lead(&declared);
    let pdt = config.param_dtype();

    let param = |key: &str, wanted: bool| -> FieldResult<Option<Tensor>> {
        match (obj.get(key), wanted) {
            (None, false) => Ok(None),
            (None, true) => Err(format!("missing field `{key}` (the config uses one)")),
            (Some(_), false) => Err(format!(
                "field `{key}`: present, but the config ({}) has none",
                config.api()
            )),
            (Some(_), true) => {
                let t = tensor(obj, key)?;
                expect_param(key, t, &param_shape, &declared, pdt).map(Some)
            }
        }
    };
    let scale = param("scale", config.has_scale())?;
    let bias = param("bias", config.has_bias())?;

    let y_dtype = config.output_dtype(x.dtype());
    let y = tensor(obj, "y")?;
    expect_shape("y", &y, x.shape())?;
    if y.dtype() != y_dtype {
        return Err(format!(
            "field `y.dtype`: {}'s rule gives {y_dtype} for x {} with parameters {pdt}{}, the \
             fixture has {}",
            config.api(),
            x.dtype(),
            config
                .requested_dtype()
                .map_or(String::new(), |d| format!(" and dtype {d}")),
            y.dtype()
        ));
    }

    let backward = match obj.get("dy") {
        None => {
            for key in ["dx", "dscale", "dbias"] {
                if obj.contains_key(key) {
                    return Err(format!("field `{key}`: present without `dy`"));
                }
            }
            None
        }
        Some(_) => {
            let dy = tensor(obj, "dy")?;
            expect_shape("dy", &dy, x.shape())?;
            expect_dtype("dy", &dy, y_dtype)?;
            let dx = tensor(obj, "dx")?;
            expect_shape("dx", &dx, x.shape())?;
            expect_dtype("dx", &dx, x.dtype())?;
            Some(Backward {
                dy,
                dx,
                dscale: param("dscale", scale.is_some())?,
                dbias: param("dbias", bias.is_some())?,
            })
        }
    };

    let mask = match obj.get("mask") {
        None | Some(Value::Null) => None,
        Some(m) => Some(mask(m, x.shape())?),
    };
    let versions = match obj.get("versions") {
        None => BTreeMap::new(),
        Some(Value::Object(v)) => v
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_string),
                )
            })
            .collect(),
        Some(other) => return Err(format!("field `versions`: expected an object, got {other}")),
    };
    Ok(Fixture {
        path: path.to_path_buf(),
        name,
        config,
        world,
        x,
        scale,
        bias,
        mask,
        y,
        backward,
        versions,
    })
}

fn expect_shape(key: &str, t: &Tensor, shape: &[usize]) -> FieldResult<()> {
    if t.shape() == shape {
        Ok(())
    } else {
        Err(format!(
            "field `{key}.shape`: expected {shape:?}, got {:?}",
            t.shape()
        ))
    }
}

fn expect_dtype(key: &str, t: &Tensor, dtype: DType) -> FieldResult<()> {
    if t.dtype() == dtype {
        Ok(())
    } else {
        Err(format!(
            "field `{key}.dtype`: expected {dtype}, got {}",
            t.dtype()
        ))
    }
}

/// A parameter (or its gradient) in the API's declared shape, returned in
/// `param_shape` (same data order; see [`NormConfig::declared_param_shape`]).
fn expect_param(
    key: &str,
    t: Tensor,
    param_shape: &[usize],
    declared: &[usize],
    dtype: DType,
) -> FieldResult<Tensor> {
    expect_dtype(key, &t, dtype)?;
    if t.shape() != param_shape && t.shape() != declared {
        return Err(format!(
            "field `{key}.shape`: expected {param_shape:?}, got {:?}",
            t.shape()
        ));
    }
    t.reshape(param_shape.to_vec())
        .map_err(|e| format!("field `{key}`: {e}"))
}

fn shape_of(obj: &Map<String, Value>, key: &str) -> FieldResult<Vec<usize>> {
    let s = field(obj, "shape").map_err(|_| format!("missing field `{key}.shape`"))?;
    let bad = || format!("field `{key}.shape`: expected a list of non-negative integers, got {s}");
    s.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|d| {
            d.as_u64()
                .and_then(|d| usize::try_from(d).ok())
                .ok_or_else(bad)
        })
        .collect()
}

fn array_obj<'a>(obj: &'a Map<String, Value>, key: &str) -> FieldResult<&'a Map<String, Value>> {
    field(obj, key)?.as_object().ok_or_else(|| {
        format!("field `{key}`: expected an object with `shape`, `dtype` and `data`")
    })
}

fn data_of<'a>(
    t: &'a Map<String, Value>,
    key: &str,
    n: usize,
    shape: &[usize],
    noun: &str,
) -> FieldResult<&'a [Value]> {
    let data = field(t, "data")
        .map_err(|_| format!("missing field `{key}.data`"))?
        .as_array()
        .ok_or_else(|| format!("field `{key}.data`: expected a list"))?;
    if data.len() != n {
        return Err(format!(
            "field `{key}.data`: expected {n} {noun} for shape {shape:?}, got {}",
            data.len()
        ));
    }
    Ok(data)
}

/// `{"shape", "dtype", "data"}` with every value exact in the dtype.
fn tensor(obj: &Map<String, Value>, key: &str) -> FieldResult<Tensor> {
    let t = array_obj(obj, key)?;
    let shape = shape_of(t, key)?;
    let dtype_name = field(t, "dtype")
        .map_err(|_| format!("missing field `{key}.dtype`"))?
        .as_str()
        .ok_or_else(|| format!("field `{key}.dtype`: expected a string"))?;
    let dtype = DType::parse(dtype_name).ok_or_else(|| {
        format!("field `{key}.dtype`: unknown dtype `{dtype_name}` (expected float32, float16 or bfloat16)")
    })?;
    let n = numel(&shape).map_err(|e| format!("field `{key}.shape`: {e}"))?;
    let data = data_of(t, key, n, &shape, "numbers")?;
    let values = data
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let f = v
                .as_f64()
                .ok_or_else(|| format!("field `{key}.data[{i}]`: expected a number, got {v}"))?;
            // serde_json's default number parser may be off by an ulp of f64; a value
            // that is exact in the (much coarser) dtype is recovered by rounding to it.
            let exact = dtype.round(f);
            if (exact - f).abs() > f.abs() * PARSE_SLACK {
                return Err(format!(
                    "field `{key}.data[{i}]`: {f} is not exactly representable in {dtype}"
                ));
            }
            Ok(exact)
        })
        .collect::<FieldResult<Vec<f64>>>()?;
    Tensor::new(shape, dtype, values).map_err(|e| format!("field `{key}`: {e}"))
}

/// A bool array broadcast (numpy rules) to `x_shape`.
fn mask(m: &Value, x_shape: &[usize]) -> FieldResult<Vec<bool>> {
    let key = "mask";
    let t = m
        .as_object()
        .ok_or("field `mask`: expected an object with `shape`, `dtype` and `data`")?;
    let shape = shape_of(t, key)?;
    match t.get("dtype").and_then(Value::as_str) {
        Some("bool") => {}
        other => {
            return Err(format!(
                "field `mask.dtype`: expected \"bool\", got {other:?}"
            ))
        }
    }
    let n = numel(&shape).map_err(|e| format!("field `mask.shape`: {e}"))?;
    let flags = data_of(t, key, n, &shape, "booleans")?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_bool()
                .ok_or_else(|| format!("field `mask.data[{i}]`: expected true or false, got {v}"))
        })
        .collect::<FieldResult<Vec<bool>>>()?;
    broadcast(&flags, &shape, x_shape).ok_or_else(|| {
        format!("field `mask.shape`: {shape:?} does not broadcast to x's {x_shape:?}")
    })
}

/// numpy broadcasting of `data` of `shape` to `target` (right-aligned; size-1 axes
/// repeat). `None` when the shapes are incompatible.
fn broadcast<T: Copy>(data: &[T], shape: &[usize], target: &[usize]) -> Option<Vec<T>> {
    if shape.len() > target.len() {
        return None;
    }
    let pad = target.len() - shape.len();
    let src_strides = strides(shape);
    let mut eff = vec![0; target.len()];
    for (i, &d) in shape.iter().enumerate() {
        match d {
            _ if d == target[pad + i] => eff[pad + i] = src_strides[i],
            1 => eff[pad + i] = 0,
            _ => return None,
        }
    }
    let tgt_strides = strides(target);
    let n = numel(target).ok()?;
    Some(
        (0..n)
            .map(|flat| {
                let src: usize = (0..target.len())
                    .map(|a| (flat / tgt_strides[a]) % target[a] * eff[a])
                    .sum();
                data[src]
            })
            .collect(),
    )
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A path that became a FIFO after its type was checked: the open returns at once
    /// (no writer is waited for) and the check on the opened file refuses it.
    #[test]
    fn a_fifo_swapped_in_after_the_check_is_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("warpnorm-fifo-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("x.json");
        match std::process::Command::new("mkfifo").arg(&fifo).status() {
            Ok(s) if s.success() => {}
            other => {
                eprintln!("SKIP: mkfifo is unavailable ({other:?})");
                return;
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let opened = fifo.clone();
        std::thread::spawn(move || {
            let result = open_without_blocking(&opened)
                .map_err(|e| e.to_string())
                .and_then(|f| regular(&f.metadata().map_err(|e| e.to_string())?));
            let _ = tx.send(result);
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("opening a FIFO blocked");
        let _ = std::fs::remove_dir_all(&dir);
        let e = result.unwrap_err();
        assert!(e.contains("not a regular file (a FIFO)"), "{e}");
    }
}
