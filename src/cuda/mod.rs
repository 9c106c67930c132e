//! The CUDA backend: device discovery, the embedded kernels, the parameter structs of every
//! kernel (`norm.rs` for the single-device kernels, `sharded.rs` for sharded normalization)
//! and the one `unsafe` launch site (`launch.rs`), which both go through.
//!
//! [`CudaBackend`] owns a context, a stream and the loaded kernel modules of one GPU. The
//! safe operations on caller-owned buffers live in [`crate::ops`].

pub mod driver;
mod dtypes;
#[cfg(feature = "emulator")]
pub mod emulator;
mod generation;
mod guards;
pub mod kernels;
mod launch;
#[cfg(feature = "nccl")]
pub(crate) mod nccl;
pub(crate) mod norm;
pub(crate) mod params;
mod select;
pub(crate) mod sharded;
pub mod tiers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;

use crate::{Error, Result};
use kernels::{Image, ImageKind, IMAGES};

pub use driver::{CudaVersion, DriverSupport};
pub use dtypes::Dtypes;
pub use generation::{KernelGeneration, KERNELS_ENV};
pub(crate) use guards::BufferGuards;
pub(crate) use launch::OnStream;
pub use select::backward_workspace_len;

/// Errors unless the driver library can be loaded: cudarc panics on the first driver call
/// without it.
fn require_driver_library() -> Result<()> {
    if library_loads(&["libcuda.so", "libcuda.so.1", "nvcuda.dll"]) {
        Ok(())
    } else {
        Err(Error::NoDevice(
            "the CUDA driver library (libcuda.so) was not found; is an NVIDIA driver installed?"
                .into(),
        ))
    }
}

/// Whether a shared library loads under one of `names`. Asked here rather than of cudarc,
/// whose `is_culib_present` exists only when it loads libraries itself (not when the host
/// project links them, as candle does): a library the program links is always loadable.
pub(crate) fn library_loads(names: &[&str]) -> bool {
    names.iter().any(|name| {
        // SAFETY: NVIDIA's driver and NCCL libraries run no initialisers with preconditions
        // when loaded; the handle is closed again at once.
        unsafe { libloading::Library::new(*name) }.is_ok()
    })
}

/// Why no GPU can be used, or `Ok` with the number of devices. Never panics.
pub fn device_count() -> Result<usize> {
    require_driver_library()?;
    let n =
        CudaContext::device_count().map_err(|e| Error::NoDevice(format!("cuInit failed: {e}")))?;
    if n <= 0 {
        return Err(Error::NoDevice("the CUDA driver reports no devices".into()));
    }
    Ok(n as usize)
}

/// Static facts about a device that kernel selection needs.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub sm_count: u32,
    pub total_mem: usize,
    /// Opt-in shared memory per CTA (bytes), the ceiling for the row caches.
    pub max_smem_per_cta: u32,
    /// Whether kernels can be launched cooperatively (all CTAs resident at once): what
    /// the backward of rows split over groups of CTAs needs.
    pub cooperative_launch: bool,
}

/// One GPU: its context, a stream, and the warpnorm kernels loaded into it.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: DeviceInfo,
    modules: HashMap<&'static str, (Arc<CudaModule>, &'static Image)>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    /// CTAs per SM by (kernel, threads, dynamic shared memory): asked of the driver once.
    occupancy: Mutex<HashMap<(String, u32, u32), u32>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("info", &self.info)
            .finish()
    }
}

impl CudaBackend {
    /// Opens device `ordinal` (its primary context) and loads the kernels for it.
    pub fn new(ordinal: usize) -> Result<Arc<Self>> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::NoDevice(format!(
                "device cuda:{ordinal} does not exist ({count} device(s) found)"
            )));
        }
        let ctx = CudaContext::new(ordinal)?;
        let stream = ctx.default_stream();
        Self::with_stream(stream)
    }

    /// Uses an existing stream (and its context): warpnorm's launches go on that stream.
    pub fn with_stream(stream: Arc<CudaStream>) -> Result<Arc<Self>> {
        let ctx = stream.context().clone();
        let attr = |a| ctx.attribute(a).map_err(Error::from);
        let info = DeviceInfo {
            ordinal: ctx.ordinal(),
            name: ctx.name()?,
            compute_capability: ctx.compute_capability()?,
            sm_count: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
            total_mem: ctx.total_mem()?,
            max_smem_per_cta: attr(
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )? as u32,
            cooperative_launch: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH)?
                != 0,
        };
        let driver = driver::driver_version()?;
        let mut modules = HashMap::new();
        for source in ["layernorm_fwd", "layernorm_bwd", "sharded"] {
            let image = pick_image(source, info.compute_capability)?;
            // A too-old driver would fail inside cuModuleLoadData with a bare error code.
            driver::check_loadable(image, driver)?;
            let ptx = match image.kind {
                ImageKind::Cubin => Ptx::from_binary(image.data.to_vec()),
                ImageKind::Ptx => {
                    let text = image.data.strip_suffix(&[0]).unwrap_or(image.data);
                    Ptx::from_src(String::from_utf8_lossy(text).into_owned())
                }
            };
            modules.insert(source, (ctx.load_module(ptx)?, image));
        }
        Ok(Arc::new(Self {
            ctx,
            stream,
            info,
            modules,
            functions: Mutex::new(HashMap::new()),
            occupancy: Mutex::new(HashMap::new()),
        }))
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The stream the modules (LayerNorm, RmsNorm) launch on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }
    /// `sm_90 (CUBIN)` or `compute_80 (PTX, JIT)`: what was loaded for this device.
    pub fn loaded_image(&self) -> String {
        let (_, image) = &self.modules["layernorm_fwd"];
        match image.kind {
            ImageKind::Cubin => format!("{} (CUBIN)", image.arch),
            ImageKind::Ptx => format!("{} (PTX, JIT-compiled by the driver)", image.arch),
        }
    }

    /// Whether the kernels loaded for this device may run in thread-block clusters: the
    /// backward's CUBIN is for sm_90 or later (its PTX and sm_80 CUBIN trap there).
    pub(crate) fn has_clusters(&self) -> bool {
        let (_, image) = &self.modules["layernorm_bwd"];
        image.kind == ImageKind::Cubin && capability_of(image.arch).is_some_and(|v| v >= (9, 0))
    }

    /// The kernel for a template name expression of `tiers::expr`, loaded once.
    pub(crate) fn function(&self, source: &'static str, expr: &str) -> Result<CudaFunction> {
        let mut cache = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = cache.get(expr) {
            return Ok(f.clone());
        }
        let (module, image) = &self.modules[source];
        let lowered = image
            .names
            .iter()
            .find(|(e, _)| *e == expr)
            .map(|(_, l)| *l)
            .ok_or_else(|| {
                Error::Unsupported(format!("kernel `{expr}` was not compiled into this build"))
            })?;
        let f = module.load_function(lowered)?;
        self.opt_in_shared_memory(&f)?;
        cache.insert(expr.to_string(), f.clone());
        Ok(f)
    }

    /// Allows `f` every byte of dynamic shared memory the device gives a CTA beside `f`'s
    /// static shared memory. Done once, when `f` is loaded (under the cache's lock, before
    /// any thread can launch it), so that every launch of any size is allowed: an
    /// attribute set per launch would be shared by all threads, and one thread lowering it
    /// could make another's larger launch fail.
    fn opt_in_shared_memory(&self, f: &CudaFunction) -> Result<()> {
        let static_bytes = f.shared_size_bytes()?;
        let dynamic = (self.info.max_smem_per_cta as i32).saturating_sub(static_bytes);
        if dynamic > select::DEFAULT_SMEM as i32 {
            // The attribute call acts on the current context (get_attribute bound it).
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                dynamic,
            )?;
        }
        Ok(())
    }

    /// The remembered occupancy of a kernel launch shape, or `compute`'s (then remembered).
    pub(crate) fn occupancy(
        &self,
        key: (String, u32, u32),
        compute: impl FnOnce() -> Result<u32>,
    ) -> Result<u32> {
        let mut cache = self.occupancy.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&n) = cache.get(&key) {
            return Ok(n);
        }
        let n = compute()?;
        cache.insert(key, n);
        Ok(n)
    }

    /// Errors unless `stream` belongs to this backend's context (a launch on another
    /// device's stream would fault).
    pub(crate) fn check_stream(&self, stream: &CudaStream) -> Result<()> {
        if Arc::ptr_eq(stream.context(), &self.ctx) {
            Ok(())
        } else {
            Err(Error::Unsupported(format!(
                "the stream belongs to another CUDA context than cuda:{}",
                self.info.ordinal
            )))
        }
    }
}

/// The compute capability (major, minor) an image's arch names: `sm_90a` and `compute_90`
/// are (9, 0).
fn capability_of(arch: &str) -> Option<(i32, i32)> {
    let digits = arch
        .strip_prefix("sm_")
        .or_else(|| arch.strip_prefix("compute_"))?;
    let v: i32 = digits
        .trim_end_matches(|c: char| c.is_alphabetic())
        .parse()
        .ok()?;
    Some((v / 10, v % 10))
}

/// The best embedded image for a compute capability: a CUBIN of the same major version and
/// the highest minor not above the device's (binary compatible), else the PTX (JIT).
fn pick_image(source: &str, (major, minor): (i32, i32)) -> Result<&'static Image> {
    let of_source = || IMAGES.iter().filter(move |i| i.source == source);
    let cubin = of_source()
        .filter(|i| i.kind == ImageKind::Cubin)
        .filter_map(|i| capability_of(i.arch).map(|v| (v, i)))
        .filter(|((ma, mi), _)| *ma == major && *mi <= minor)
        .max_by_key(|(v, _)| *v)
        .map(|(_, i)| i);
    if let Some(image) = cubin {
        return Ok(image);
    }
    of_source()
        .filter(|i| i.kind == ImageKind::Ptx)
        .find(|i| capability_of(i.arch).is_some_and(|v| v <= (major, minor)))
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "compute capability {major}.{minor} is below the oldest supported (8.0), or this build has no kernels \
                 (built with DOCS_RS)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_exist_for_every_default_arch() {
        for source in ["layernorm_fwd", "layernorm_bwd"] {
            assert_eq!(pick_image(source, (8, 0)).unwrap().arch, "sm_80");
            assert_eq!(pick_image(source, (8, 9)).unwrap().arch, "sm_80");
            assert_eq!(pick_image(source, (9, 0)).unwrap().arch, "sm_90");
            let jit = pick_image(source, (12, 0)).unwrap();
            assert_eq!((jit.arch, jit.kind), ("compute_80", ImageKind::Ptx));
            assert!(pick_image(source, (7, 5)).is_err());
        }
    }

    #[test]
    fn every_instantiation_has_a_lowered_name() {
        for image in IMAGES {
            let expected = tiers::instantiations(&format!("{}.cu", image.source));
            assert_eq!(
                image.names.len(),
                expected.len(),
                "{} {}",
                image.source,
                image.arch
            );
            for (expr, lowered) in image.names {
                assert!(expected.iter().any(|e| e == expr));
                assert!(lowered.starts_with("_Z"), "{expr} -> {lowered}");
            }
        }
    }
}
