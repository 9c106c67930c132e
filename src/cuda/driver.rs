//! Which embedded kernel images the installed CUDA driver can load.
//!
//! A driver loads a CUBIN made by any toolkit of its own CUDA major version or older (CUDA's
//! minor-version compatibility), and JIT-compiles a PTX only when it knows the PTX's ISA
//! version (`.version`), which each toolkit release raises. So the NVRTC that built the
//! images decides the oldest driver: CUDA 12.2's (PTX ISA 8.2) serves every driver from r535.

use std::fmt;

use super::kernels::{Image, ImageKind, IMAGES, NVRTC_VERSION};
use crate::{Error, Result};

/// A CUDA version, as drivers report the newest one they support.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CudaVersion {
    pub major: u32,
    pub minor: u32,
}

impl CudaVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        CudaVersion { major, minor }
    }

    /// From `cuDriverGetVersion`'s encoding (`12020` is 12.2).
    pub const fn from_driver_api(version: u32) -> Self {
        CudaVersion::new(version / 1000, version % 1000 / 10)
    }
}

impl fmt::Display for CudaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The first CUDA release whose driver JIT-compiles each PTX ISA version (NVIDIA's PTX ISA
/// release history). ISA 8.6 came with CUDA 12.7, which had no public release: 12.6 stayed
/// at 8.5.
const PTX_ISA_RELEASES: &[((u32, u32), CudaVersion)] = &[
    ((7, 0), CudaVersion::new(11, 0)),
    ((7, 1), CudaVersion::new(11, 1)),
    ((7, 2), CudaVersion::new(11, 2)),
    ((7, 3), CudaVersion::new(11, 3)),
    ((7, 4), CudaVersion::new(11, 4)),
    ((7, 5), CudaVersion::new(11, 5)),
    ((7, 6), CudaVersion::new(11, 6)),
    ((7, 7), CudaVersion::new(11, 7)),
    ((7, 8), CudaVersion::new(11, 8)),
    ((8, 0), CudaVersion::new(12, 0)),
    ((8, 1), CudaVersion::new(12, 1)),
    ((8, 2), CudaVersion::new(12, 2)),
    ((8, 3), CudaVersion::new(12, 3)),
    ((8, 4), CudaVersion::new(12, 4)),
    ((8, 5), CudaVersion::new(12, 5)),
    ((8, 6), CudaVersion::new(12, 7)),
    ((8, 7), CudaVersion::new(12, 8)),
    ((8, 8), CudaVersion::new(12, 9)),
    ((9, 0), CudaVersion::new(13, 0)),
    ((9, 1), CudaVersion::new(13, 1)),
];

/// The driver branch that first supported each CUDA release (Linux), for messages.
const DRIVER_BRANCHES: &[(CudaVersion, u32)] = &[
    (CudaVersion::new(12, 0), 525),
    (CudaVersion::new(12, 1), 530),
    (CudaVersion::new(12, 2), 535),
    (CudaVersion::new(12, 3), 545),
    (CudaVersion::new(12, 4), 550),
    (CudaVersion::new(12, 5), 555),
    (CudaVersion::new(12, 6), 560),
    (CudaVersion::new(12, 8), 570),
    (CudaVersion::new(12, 9), 575),
    (CudaVersion::new(13, 0), 580),
];

/// ` (r535)` for a CUDA release whose driver branch is known, else nothing.
fn branch_suffix(v: CudaVersion) -> String {
    DRIVER_BRANCHES
        .iter()
        .find(|(cuda, _)| *cuda == v)
        .map(|(_, r)| format!(" (r{r})"))
        .unwrap_or_default()
}

/// The `.version` directive of PTX text: `(8, 2)` for `.version 8.2`.
pub fn ptx_isa_version(ptx: &[u8]) -> Option<(u32, u32)> {
    let text = std::str::from_utf8(ptx.strip_suffix(&[0]).unwrap_or(ptx)).ok()?;
    let version = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(".version"))?
        .trim();
    let (major, minor) = version.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The oldest CUDA version a driver must support to load `image`; `None` when unknown (a
/// PTX ISA newer than this table).
pub fn required_driver(image: &Image) -> Option<CudaVersion> {
    match image.kind {
        ImageKind::Cubin => NVRTC_VERSION.map(|(major, _)| CudaVersion::new(major, 0)),
        ImageKind::Ptx => {
            let isa = ptx_isa_version(image.data)?;
            PTX_ISA_RELEASES
                .iter()
                .find(|(v, _)| *v == isa)
                .map(|(_, cuda)| *cuda)
        }
    }
}

/// The CUDA version the installed driver supports (`cuDriverGetVersion`), or
/// [`Error::NoDevice`] without a driver. Needs no device and no `cuInit`.
pub fn driver_version() -> Result<CudaVersion> {
    super::require_driver_library()?;
    let mut version = 0;
    // SAFETY: the driver library is present (checked above); the call only writes the int.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(|e| Error::NoDevice(format!("cuDriverGetVersion failed: {e}")))?;
    Ok(CudaVersion::from_driver_api(version.max(0) as u32))
}

/// Errors unless a driver of CUDA `driver` can load `image`, saying what it needs.
pub(crate) fn check_loadable(image: &Image, driver: CudaVersion) -> Result<()> {
    match required_driver(image) {
        Some(needed) if needed <= driver => Ok(()),
        needed => Err(Error::NoDevice(format!(
            "the NVIDIA driver supports CUDA {driver}{}, but this device needs the {} {} kernels, \
             which load on drivers for CUDA {}{} or newer: update the driver, or build warpnorm \
             with an older NVRTC (see the crate docs, \"Configuring CUDA\")",
            branch_suffix(driver),
            image.arch,
            match image.kind {
                ImageKind::Cubin => "CUBIN",
                ImageKind::Ptx => "PTX",
            },
            needed.map_or_else(|| "an unknown version".to_string(), |v| v.to_string()),
            needed.map(branch_suffix).unwrap_or_default(),
        ))),
    }
}

/// What the installed driver can run of this build's kernels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverSupport {
    /// The CUDA version the driver supports.
    pub driver: CudaVersion,
    /// The embedded images it can load, as `sm_80 CUBIN` / `compute_80 PTX`.
    pub loadable: Vec<String>,
    /// The embedded images it cannot load, with the CUDA version each needs.
    pub too_new: Vec<(String, Option<CudaVersion>)>,
}

impl DriverSupport {
    /// The installed driver against the embedded images.
    pub fn detect() -> Result<DriverSupport> {
        Ok(DriverSupport::of(driver_version()?, IMAGES))
    }

    /// A driver of CUDA `driver` against `images` (one entry per arch and kind).
    pub fn of(driver: CudaVersion, images: &[Image]) -> DriverSupport {
        let mut support = DriverSupport {
            driver,
            loadable: Vec::new(),
            too_new: Vec::new(),
        };
        for image in images {
            let name = format!(
                "{} {}",
                image.arch,
                match image.kind {
                    ImageKind::Cubin => "CUBIN",
                    ImageKind::Ptx => "PTX",
                }
            );
            if support.loadable.contains(&name) || support.too_new.iter().any(|(n, _)| *n == name) {
                continue;
            }
            match required_driver(image) {
                Some(needed) if needed <= driver => support.loadable.push(name),
                needed => support.too_new.push((name, needed)),
            }
        }
        support
    }
}

impl fmt::Display for DriverSupport {
    /// One line: `CUDA 12.2 (r535): loads sm_80 CUBIN, sm_90 CUBIN, compute_80 PTX`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CUDA {}{}", self.driver, branch_suffix(self.driver))?;
        if self.loadable.is_empty() && self.too_new.is_empty() {
            return write!(f, ": this build has no kernels (built with DOCS_RS)");
        }
        if self.loadable.is_empty() {
            write!(f, ": loads none of the embedded kernels")?;
        } else {
            write!(f, ": loads {}", self.loadable.join(", "))?;
        }
        if !self.too_new.is_empty() {
            let needs: Vec<String> = self
                .too_new
                .iter()
                .map(|(name, v)| match v {
                    Some(v) => format!("{name} needs CUDA {v}{}", branch_suffix(*v)),
                    None => format!("{name} needs a newer driver"),
                })
                .collect();
            write!(f, "; {}", needs.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ptx(version: &str) -> Image {
        let text = format!(
            "//\n// Generated by NVIDIA NVVM Compiler\n.version {version}\n.target sm_80\n\0"
        );
        Image {
            source: "t",
            arch: "compute_80",
            kind: ImageKind::Ptx,
            data: Box::leak(text.into_bytes().into_boxed_slice()),
            names: &[],
        }
    }

    #[test]
    fn ptx_needs_the_release_of_its_isa() {
        assert_eq!(ptx_isa_version(ptx("8.2").data), Some((8, 2)));
        assert_eq!(required_driver(&ptx("8.2")), Some(CudaVersion::new(12, 2)));
        assert_eq!(required_driver(&ptx("8.5")), Some(CudaVersion::new(12, 5)));
        assert_eq!(required_driver(&ptx("9.0")), Some(CudaVersion::new(13, 0)));
        assert_eq!(required_driver(&ptx("99.0")), None);
        assert!(check_loadable(&ptx("8.2"), CudaVersion::new(12, 2)).is_ok());
        assert!(check_loadable(&ptx("8.2"), CudaVersion::new(13, 0)).is_ok());
        let err = check_loadable(&ptx("9.0"), CudaVersion::new(12, 2)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::NoDevice(_)));
        assert!(
            msg.contains("CUDA 12.2 (r535)") && msg.contains("CUDA 13.0 (r580)"),
            "{msg}"
        );
        assert!(check_loadable(&ptx("99.0"), CudaVersion::new(13, 1)).is_err());
    }

    #[test]
    fn driver_api_versions_decode() {
        assert_eq!(CudaVersion::from_driver_api(12020), CudaVersion::new(12, 2));
        assert_eq!(CudaVersion::from_driver_api(13000), CudaVersion::new(13, 0));
        assert_eq!(CudaVersion::from_driver_api(12080).to_string(), "12.8");
    }

    #[test]
    fn support_lines_name_what_loads_and_what_needs_more() {
        let images = [ptx("8.2"), ptx("8.2")];
        let old = DriverSupport::of(CudaVersion::new(12, 1), &images);
        assert!(old.loadable.is_empty());
        assert_eq!(
            old.to_string(),
            "CUDA 12.1 (r530): loads none of the embedded kernels; compute_80 PTX needs CUDA 12.2 (r535)"
        );
        let new = DriverSupport::of(CudaVersion::new(12, 8), &images);
        assert_eq!(new.to_string(), "CUDA 12.8 (r570): loads compute_80 PTX");
    }
}
