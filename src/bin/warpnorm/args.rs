//! Value parsers for the command line. Each rejects a bad value with a message that
//! names it and says what is expected; clap turns that into a usage error (exit status 2)
//! before any device is touched.

use std::fmt;

use warpnorm::{DType, Device, Result};

/// The most iterations `bench` times or warms up with: far beyond any useful run, small
/// enough that counts never overflow.
pub const MAX_ITERS: usize = 1_000_000;

/// Why `--device emulator` is refused by the commands other than `check` and `demo`.
pub const EMULATOR_RUNS_NO_BACKEND: &str =
    "the kernels' CPU emulation runs `check` and `demo` only (expected cpu, cuda or cuda:N)";

/// A device as written on the command line: parsed here, opened later (opening needs a
/// driver; parsing must not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    /// The kernels' CPU emulation (builds with the `emulator` feature; `check` and `demo`).
    Emulator,
}

impl DeviceSpec {
    /// `cpu`, `cuda` / `gpu` (= `cuda:0`), `cuda:N` or `emulator`, in any case.
    pub fn parse(s: &str) -> Result<DeviceSpec, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            "emulator" if crate::emulated::BUILT => Ok(DeviceSpec::Emulator),
            "emulator" => Err(format!(
                "`{s}`: this warpnorm was built without the CPU emulation of the kernels \
                 (cargo feature `emulator`)"
            )),
            t => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| {
                    format!("unknown device `{s}` (expected cpu, cuda, cuda:N or emulator)")
                }),
        }
    }

    /// [`DeviceSpec::parse`] for commands that run a backend, not the kernels alone:
    /// `cpu` or `cuda:N`.
    pub fn parse_backend(s: &str) -> Result<DeviceSpec, String> {
        match DeviceSpec::parse(s) {
            Ok(DeviceSpec::Emulator) => Err(format!("`{s}`: {EMULATOR_RUNS_NO_BACKEND}")),
            Err(e) if s.trim().eq_ignore_ascii_case("emulator") => Err(e),
            Err(_) => Err(format!(
                "unknown device `{s}` (expected cpu, cuda or cuda:N)"
            )),
            ok => ok,
        }
    }

    /// Opens a backend device: an error (never a panic) for a GPU that is not there, and
    /// for the emulation, which runs kernels but is no backend.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => Device::cuda(n),
            DeviceSpec::Emulator => Err(warpnorm::Error::Unsupported(
                EMULATOR_RUNS_NO_BACKEND.into(),
            )),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Emulator => f.write_str("emulator"),
        }
    }
}

/// `f32`, `f16` or `bf16` (also `float32`, `float16`, `bfloat16`).
pub fn parse_dtype(s: &str) -> Result<DType, String> {
    DType::parse(s.trim()).ok_or_else(|| format!("unknown dtype `{s}` (expected f32, f16 or bf16)"))
}

/// A kernel generation: `v1` or `v2`.
pub fn parse_kernels(s: &str) -> Result<warpnorm::ops::KernelGeneration, String> {
    s.parse().map_err(|e: warpnorm::Error| e.to_string())
}

/// `layer_norm` (`layer`, `ln`) or `rms_norm` (`rms`).
pub fn parse_norm(s: &str) -> Result<warpnorm::tooling::bench::Norm, String> {
    warpnorm::tooling::bench::Norm::parse(s).map_err(|e| e.to_string())
}

/// A length (`--rows`, `--cols`): a whole number >= 1. How large a problem may be is
/// decided later, against the chosen device's memory.
pub fn parse_len(s: &str) -> Result<usize, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err(format!("`{s}` must be >= 1")),
        Ok(n) => {
            usize::try_from(n).map_err(|_| format!("`{s}` is more than this platform can address"))
        }
        Err(_) => Err(format!("`{s}` is not a whole number >= 1")),
    }
}

/// A size such as `256MiB`, `1GiB`, `100MB` or `4096` (bytes).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    warpnorm::tooling::bench::parse_bytes(s)
        .map_err(|_| format!("`{s}` is not a size > 0 (e.g. 256MiB, 1GiB, 100MB, 4096)"))
}

/// An iteration count from 1 to [`MAX_ITERS`].
pub fn parse_iters(s: &str) -> Result<usize, String> {
    parse_count(s, 1)
}

/// A warm-up count from 0 to [`MAX_ITERS`].
pub fn parse_warmup(s: &str) -> Result<usize, String> {
    parse_count(s, 0)
}

fn parse_count(s: &str, min: usize) -> Result<usize, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n < min as u64 => Err(format!("`{s}` must be >= {min}")),
        Ok(n) if n > MAX_ITERS as u64 => Err(format!("`{s}` is more than {MAX_ITERS} iterations")),
        Ok(n) => Ok(n as usize),
        Err(_) => Err(format!("`{s}` is not a whole number >= {min}")),
    }
}

/// A seed: any whole number from 0 to 2^64 - 1.
pub fn parse_seed(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| format!("`{s}` is not a seed (a whole number from 0 to 2^64 - 1)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_without_opening() {
        assert_eq!(DeviceSpec::parse("cpu"), Ok(DeviceSpec::Cpu));
        assert_eq!(DeviceSpec::parse("CPU"), Ok(DeviceSpec::Cpu));
        assert_eq!(DeviceSpec::parse("CUDA"), Ok(DeviceSpec::Cuda(0)));
        assert_eq!(DeviceSpec::parse("cuda:3"), Ok(DeviceSpec::Cuda(3)));
        for bad in ["tpu:0", "cuda:x", "cuda:", "cuda:-1", ""] {
            let e = DeviceSpec::parse(bad).unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
        let e = DeviceSpec::parse_backend("emulator").unwrap_err();
        assert!(e.contains("`emulator`"), "{e}");
        assert_eq!(
            DeviceSpec::parse("Emulator").is_ok(),
            crate::emulated::BUILT
        );
    }

    #[test]
    fn lengths_counts_and_sizes() {
        assert_eq!(parse_dtype("bf16"), Ok(DType::BF16));
        assert_eq!(parse_dtype("float32"), Ok(DType::F32));
        assert!(parse_dtype("f64").unwrap_err().contains("`f64`"));
        assert_eq!(parse_len("4096"), Ok(4096));
        assert_eq!(parse_len("18446744073709551615"), Ok(usize::MAX));
        for bad in ["0", "-1", "abc", "18446744073709551616"] {
            assert!(parse_len(bad).unwrap_err().contains(&format!("`{bad}`")));
        }
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        for bad in ["lots", "-1", "0"] {
            assert!(parse_bytes(bad).unwrap_err().contains(&format!("`{bad}`")));
        }
        assert!(parse_iters("0").is_err());
        assert_eq!(parse_warmup("0"), Ok(0));
        assert_eq!(parse_iters("1000000"), Ok(MAX_ITERS));
        let e = parse_warmup("18446744073709551615").unwrap_err();
        assert!(e.contains("more than 1000000"), "{e}");
        assert_eq!(parse_seed("18446744073709551615"), Ok(u64::MAX));
        assert!(parse_seed("-1").is_err());
    }
}
