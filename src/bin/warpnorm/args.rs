//! Value parsers for the command line. Each rejects a bad value with a message that
//! names it and says what is expected; clap turns that into a usage error (exit code 2)
//! before any device is touched.

use std::fmt;

use warpnorm::{DType, Device, Result};

/// A device as written on the command line: parsed here, opened later (opening needs a
/// driver; parsing must not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    /// `cpu`, `cuda` / `gpu` (= `cuda:0`) or `cuda:N`.
    pub fn parse(s: &str) -> Result<DeviceSpec, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            t => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("unknown device `{s}` (expected cpu, cuda or cuda:N)")),
        }
    }

    /// Opens the device: an error (never a panic) for a GPU that is not there.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => Device::cuda(n),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The device to run on: the one asked for, or else `cuda:0` when usable and the CPU
/// reference otherwise, with the reason the GPU is not (to tell the user in one line).
pub fn choose_device(spec: Option<DeviceSpec>) -> Result<(Device, Option<String>)> {
    match spec {
        Some(spec) => Ok((spec.open()?, None)),
        None => Ok(Device::best()),
    }
}

/// `f32`, `f16` or `bf16` (also `float32`, `float16`, `bfloat16`).
pub fn parse_dtype(s: &str) -> Result<DType, String> {
    DType::parse(s.trim()).ok_or_else(|| format!("unknown dtype `{s}` (expected f32, f16 or bf16)"))
}

/// `layer_norm` (`layer`, `ln`) or `rms_norm` (`rms`).
pub fn parse_norm(s: &str) -> Result<warpnorm::bench::Norm, String> {
    warpnorm::bench::Norm::parse(s).map_err(|e| e.to_string())
}

/// A row length: a whole number >= 1.
pub fn parse_cols(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err(format!("row length `{s}` must be >= 1")),
        Err(_) => Err(format!("`{s}` is not a row length (a whole number >= 1)")),
    }
}

/// A size such as `256MiB`, `1GiB`, `100MB` or `4096` (bytes).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    warpnorm::bench::parse_bytes(s)
        .map_err(|_| format!("`{s}` is not a size > 0 (e.g. 256MiB, 1GiB, 100MB, 4096)"))
}

/// A count >= 1 (iterations, seeds are separate).
pub fn parse_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` is not a count >= 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_without_opening() {
        assert_eq!(DeviceSpec::parse("cpu"), Ok(DeviceSpec::Cpu));
        assert_eq!(DeviceSpec::parse("CUDA"), Ok(DeviceSpec::Cuda(0)));
        assert_eq!(DeviceSpec::parse("cuda:3"), Ok(DeviceSpec::Cuda(3)));
        for bad in ["tpu:0", "cuda:x", "cuda:", "cuda:-1", ""] {
            let e = DeviceSpec::parse(bad).unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn dtypes_cols_and_sizes() {
        assert_eq!(parse_dtype("bf16"), Ok(DType::BF16));
        assert_eq!(parse_dtype("float32"), Ok(DType::F32));
        assert!(parse_dtype("f64").unwrap_err().contains("`f64`"));
        assert_eq!(parse_cols("4096"), Ok(4096));
        assert!(parse_cols("0").unwrap_err().contains("`0`"));
        assert!(parse_cols("abc").unwrap_err().contains("`abc`"));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert!(parse_bytes("lots").unwrap_err().contains("`lots`"));
        assert!(parse_count("0").is_err());
    }
}
