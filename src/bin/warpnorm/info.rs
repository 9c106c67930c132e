//! `warpnorm info`: what this build carries and what this machine offers.
//!
//! The first thing to run on a new machine: it answers "which kernels do I have, which GPU
//! will they run on, and is NCCL there" without running anything, and says plainly when
//! there is no GPU instead of failing.

use serde::Serialize;
use warpnorm::cuda::kernels::{ImageKind, IMAGES};
use warpnorm::cuda::{self, CudaBackend};
use warpnorm::Error;

use crate::output::{human_bytes, styled, table, Align, DIM, FAIL, HEAD, PASS, WARN};

/// Show the version, the embedded kernels, the GPUs found and whether NCCL loads.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    warpnorm info\n  \
    warpnorm info --json | jq .gpus\n  \
    NO_COLOR=1 warpnorm info > info.txt")]
pub struct Args {
    /// Print the same facts as JSON.
    #[arg(long)]
    json: bool,
}

/// Everything `info` reports, gathered once and then printed as text or JSON.
#[derive(Serialize)]
struct Info {
    version: &'static str,
    /// The git commit the binary was built from, when the build recorded it.
    commit: Option<&'static str>,
    kernels: Vec<Kernels>,
    /// Why no GPU can be used, when none can.
    no_gpu: Option<String>,
    /// The NVIDIA kernel driver's version (Linux).
    driver: Option<String>,
    /// The CUDA version the driver supports and which embedded kernels it loads.
    cuda_driver: Option<String>,
    gpus: Vec<Gpu>,
    nccl: Nccl,
}

#[derive(Serialize)]
struct Kernels {
    source: &'static str,
    arch: &'static str,
    kind: &'static str,
    kernels: usize,
    bytes: usize,
}

#[derive(Serialize)]
struct Gpu {
    device: String,
    name: Option<String>,
    compute_capability: Option<String>,
    memory_bytes: Option<usize>,
    sm_count: Option<u32>,
    max_shared_memory_per_block: Option<u32>,
    /// The embedded image that loads on it.
    image: Option<String>,
    /// Why the device cannot be opened, if it cannot.
    error: Option<String>,
}

#[derive(Serialize)]
struct Nccl {
    available: bool,
    message: Option<String>,
}

pub fn run(args: &Args) -> crate::exit::CommandResult {
    let info = gather();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print(&info);
    }
    Ok(crate::exit::Outcome::Success)
}

fn gather() -> Info {
    let kernels = IMAGES
        .iter()
        .map(|image| Kernels {
            source: image.source,
            arch: image.arch,
            kind: match image.kind {
                ImageKind::Cubin => "CUBIN",
                ImageKind::Ptx => "PTX",
            },
            kernels: image.names.len(),
            bytes: image.data.len(),
        })
        .collect();
    let (gpus, no_gpu) = match cuda::device_count() {
        Ok(n) => ((0..n).map(gpu).collect(), None),
        Err(Error::NoDevice(why)) => (Vec::new(), Some(why)),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let nccl = match warpnorm::dist::nccl_available() {
        Ok(()) => Nccl {
            available: true,
            message: None,
        },
        Err(Error::Nccl(hint)) => Nccl {
            available: false,
            message: Some(hint),
        },
        Err(e) => Nccl {
            available: false,
            message: Some(e.to_string()),
        },
    };
    Info {
        version: env!("CARGO_PKG_VERSION"),
        commit: option_env!("WARPNORM_GIT_COMMIT").filter(|c| !c.is_empty()),
        kernels,
        driver: driver_version(),
        cuda_driver: cuda::DriverSupport::detect().ok().map(|s| s.to_string()),
        no_gpu,
        gpus,
        nccl,
    }
}

/// Opens device `ordinal` to read its properties and the image it loads.
fn gpu(ordinal: usize) -> Gpu {
    let mut g = Gpu {
        device: format!("cuda:{ordinal}"),
        name: None,
        compute_capability: None,
        memory_bytes: None,
        sm_count: None,
        max_shared_memory_per_block: None,
        image: None,
        error: None,
    };
    match CudaBackend::new(ordinal) {
        Ok(be) => {
            let i = be.info();
            g.name = Some(i.name.clone());
            g.compute_capability = Some(format!(
                "{}.{}",
                i.compute_capability.0, i.compute_capability.1
            ));
            g.memory_bytes = Some(i.total_mem);
            g.sm_count = Some(i.sm_count);
            g.max_shared_memory_per_block = Some(i.max_smem_per_cta);
            g.image = Some(be.loaded_image());
        }
        Err(e) => g.error = Some(e.to_string()),
    }
    g
}

/// The kernel driver's version from procfs (cudarc's safe API does not expose
/// cuDriverGetVersion); None where that file does not exist (not Linux, no driver).
fn driver_version() -> Option<String> {
    let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    parse_driver_version(text.lines().next()?)
}

/// `580.65.06` out of `NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun ...`.
fn parse_driver_version(line: &str) -> Option<String> {
    line.split_whitespace()
        .find(|w| {
            w.contains('.')
                && w.split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
}

fn print(info: &Info) {
    anstream::println!(
        "{} {} - {}",
        styled(HEAD, "warpnorm"),
        info.version,
        env!("CARGO_PKG_DESCRIPTION")
    );
    match info.commit {
        Some(c) => anstream::println!("commit: {c}"),
        None => anstream::println!("commit: unknown (not recorded by this build)"),
    }
    anstream::println!();
    print_kernels(&info.kernels);
    anstream::println!();
    print_gpus(info);
    if let Some(support) = &info.cuda_driver {
        anstream::println!("{} {support}", styled(HEAD, "CUDA driver:"));
    }
    match &info.nccl {
        Nccl {
            available: true, ..
        } => anstream::println!(
            "{} found (libnccl.so loads; sharded normalization over several GPUs is available)",
            styled(PASS, "NCCL:")
        ),
        Nccl { message, .. } => anstream::println!(
            "{} not found (only sharded multi-GPU normalization needs it). {}",
            styled(WARN, "NCCL:"),
            message.as_deref().unwrap_or_default()
        ),
    }
}

fn print_kernels(kernels: &[Kernels]) {
    anstream::println!("{}", styled(HEAD, "Kernels embedded in this binary"));
    if kernels.is_empty() {
        anstream::println!(
            "  none: this build skipped kernel compilation (DOCS_RS); only the CPU backend works"
        );
        return;
    }
    let rows: Vec<Vec<String>> = kernels
        .iter()
        .map(|k| {
            vec![
                k.source.to_string(),
                k.arch.to_string(),
                k.kind.to_string(),
                k.kernels.to_string(),
                human_bytes(k.bytes as u64),
            ]
        })
        .collect();
    let t = table(
        &["source", "arch", "kind", "kernels", "size"],
        &[
            Align::Left,
            Align::Left,
            Align::Left,
            Align::Right,
            Align::Right,
        ],
        &rows,
    );
    for line in t.lines() {
        anstream::println!("  {line}");
    }
    let total: usize = kernels.iter().map(|k| k.bytes).sum();
    anstream::println!(
        "  {}",
        styled(
            DIM,
            format!(
                "{} in all. A CUBIN serves its major version (sm_80: every 8.x GPU); newer \
                 majors JIT-compile the PTX when the kernels load",
                human_bytes(total as u64)
            )
        )
    );
}

fn print_gpus(info: &Info) {
    if let Some(why) = &info.no_gpu {
        anstream::println!(
            "{} none ({why}); warpnorm runs on the CPU reference backend (--device cpu)",
            styled(WARN, "GPU:")
        );
        return;
    }
    let driver = info
        .driver
        .as_ref()
        .map(|v| format!(", NVIDIA driver {v}"))
        .unwrap_or_default();
    anstream::println!(
        "{} {} found{driver}",
        styled(HEAD, "GPUs:"),
        info.gpus.len()
    );
    for g in &info.gpus {
        match (&g.error, &g.name) {
            (Some(e), _) => {
                anstream::println!("  {}  {}: {e}", g.device, styled(FAIL, "unusable"))
            }
            (None, name) => {
                anstream::println!(
                    "  {}  {}: compute capability {}, {} memory, {} SMs, {} shared memory per block",
                    g.device,
                    name.as_deref().unwrap_or_default(),
                    g.compute_capability.as_deref().unwrap_or_default(),
                    human_bytes(g.memory_bytes.unwrap_or_default() as u64),
                    g.sm_count.unwrap_or_default(),
                    human_bytes(u64::from(g.max_shared_memory_per_block.unwrap_or_default())),
                );
                anstream::println!(
                    "          kernels: {}",
                    g.image.as_deref().unwrap_or_default()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_versions_parse_from_both_module_flavours() {
        let proprietary = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 07:09:58 UTC 2025";
        let open =
            "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.133.20  Release Build";
        assert_eq!(
            parse_driver_version(proprietary).as_deref(),
            Some("580.65.06")
        );
        assert_eq!(parse_driver_version(open).as_deref(), Some("570.133.20"));
        assert_eq!(parse_driver_version("no version here"), None);
    }
}
