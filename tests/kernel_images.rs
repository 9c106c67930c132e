//! The embedded kernel images are what the driver-compatibility table in the README
//! promises: CUBIN machine code for sm_80 and sm_90, and a PTX for compute_80 whose ISA
//! version drivers from r535 (CUDA 12.2) on JIT-compile.

use warpnorm::cuda::driver::{ptx_isa_version, required_driver};
use warpnorm::cuda::kernels::{Image, ImageKind, IMAGES, NVRTC_VERSION};
use warpnorm::cuda::{CudaVersion, DriverSupport};

/// The oldest driver the release build supports: r535, CUDA 12.2 (PTX ISA 8.2).
const OLDEST_DRIVER: CudaVersion = CudaVersion::new(12, 2);

fn images(kind: ImageKind) -> impl Iterator<Item = &'static Image> {
    IMAGES.iter().filter(move |i| i.kind == kind)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// The SM version a CUBIN's ELF header declares (`80` for sm_80). CUDA's ELF keeps it in
/// `e_flags`: the low byte up to ELF ABI version 7, the second byte from ABI version 8 on.
fn cubin_sm(cubin: &[u8]) -> u32 {
    assert_eq!(&cubin[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(cubin[4], 2, "not a 64-bit ELF");
    assert_eq!(u16_at(cubin, 18), 190, "e_machine is not EM_CUDA");
    let flags = u32_at(cubin, 48);
    match cubin[8] {
        abi if abi < 8 => flags & 0xff,
        _ => (flags >> 8) & 0xff,
    }
}

#[test]
fn every_source_has_the_documented_images() {
    if IMAGES.is_empty() {
        eprintln!("SKIP: every_source_has_the_documented_images: built without kernels (DOCS_RS)");
        return;
    }
    for source in ["layernorm_fwd", "layernorm_bwd", "sharded"] {
        let mut archs: Vec<(&str, ImageKind)> = IMAGES
            .iter()
            .filter(|i| i.source == source)
            .map(|i| (i.arch, i.kind))
            .collect();
        archs.sort_by_key(|(a, _)| *a);
        let expected_cubins = ["sm_80", "sm_90"];
        for arch in expected_cubins {
            assert!(
                archs.contains(&(arch, ImageKind::Cubin)),
                "{source}: {archs:?}"
            );
        }
        assert!(
            archs.contains(&("compute_80", ImageKind::Ptx)),
            "{source}: {archs:?}"
        );
    }
}

#[test]
fn cubins_hold_machine_code_for_the_arch_they_claim() {
    let mut seen = 0;
    for image in images(ImageKind::Cubin) {
        let claimed: u32 = image.arch.strip_prefix("sm_").unwrap().parse().unwrap();
        assert_eq!(
            cubin_sm(image.data),
            claimed,
            "{} {}",
            image.source,
            image.arch
        );
        seen += 1;
    }
    if seen == 0 {
        eprintln!("SKIP: cubins_hold_machine_code_for_the_arch_they_claim: built without kernels (DOCS_RS)");
    }
}

#[test]
fn ptx_targets_compute_80_with_an_isa_r535_drivers_accept() {
    let mut seen = 0;
    for image in images(ImageKind::Ptx) {
        let text = std::str::from_utf8(image.data.strip_suffix(&[0]).unwrap()).unwrap();
        let target = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(".target"))
            .map(str::trim);
        assert_eq!(target, Some("sm_80"), "{}", image.source);
        let isa = ptx_isa_version(image.data).expect("the PTX has a .version");
        assert!(
            isa <= (8, 2),
            "{}: PTX ISA {isa:?} needs a driver newer than r535 (built with NVRTC {NVRTC_VERSION:?}; \
             the release build uses NVRTC 12.2, scripts/setup.sh)",
            image.source
        );
        assert!(required_driver(image).is_some_and(|v| v <= OLDEST_DRIVER));
        seen += 1;
    }
    if seen == 0 {
        eprintln!("SKIP: ptx_targets_compute_80_with_an_isa_r535_drivers_accept: built without kernels (DOCS_RS)");
    }
}

#[test]
fn the_readme_table_holds_for_these_images() {
    if IMAGES.is_empty() {
        eprintln!("SKIP: the_readme_table_holds_for_these_images: built without kernels (DOCS_RS)");
        return;
    }
    let all = ["sm_80 CUBIN", "sm_90 CUBIN", "compute_80 PTX"];
    // r525 / r530: the CUBINs, not the PTX.
    for old in [CudaVersion::new(12, 0), CudaVersion::new(12, 1)] {
        let s = DriverSupport::of(old, IMAGES);
        assert_eq!(s.loadable, ["sm_80 CUBIN", "sm_90 CUBIN"], "{s}");
        assert_eq!(
            s.too_new,
            [("compute_80 PTX".to_string(), Some(OLDEST_DRIVER))],
            "{s}"
        );
    }
    // r535 and everything newer: all of them.
    for v in [
        (12, 2),
        (12, 4),
        (12, 6),
        (12, 8),
        (12, 9),
        (13, 0),
        (13, 1),
    ] {
        let s = DriverSupport::of(CudaVersion::new(v.0, v.1), IMAGES);
        assert_eq!(s.loadable, all, "{s}");
        assert!(s.too_new.is_empty(), "{s}");
    }
    // A CUDA 11 driver loads nothing of a CUDA 12 build.
    let s = DriverSupport::of(CudaVersion::new(11, 8), IMAGES);
    assert!(s.loadable.is_empty(), "{s}");
}
