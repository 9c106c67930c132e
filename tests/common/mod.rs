//! Helpers shared by the GPU test files.
#![allow(dead_code)]

use std::sync::Arc;

use warpnorm::cuda::CudaBackend;
use warpnorm::rng::Rng;
use warpnorm::tooling::kernel_matrix::Findings;
use warpnorm::{DType, Tensor};

/// The first GPU, or `None` after printing `SKIP: <reason>` (no driver, no device).
pub fn gpu_or_skip(test: &str) -> Option<Arc<CudaBackend>> {
    match CudaBackend::new(0) {
        Ok(be) => Some(be),
        Err(e) => {
            skip(&format!("{test}: {e}"));
            None
        }
    }
}

/// Prints `SKIP: <reason>` straight to stderr, past the test harness' output capture, so
/// that a skipped GPU test is visible in every log.
pub fn skip(reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIP: {reason}");
}

/// Fresh random values (different every run unless WARPNORM_TEST_SEED is set), with an
/// offset so that centring matters, rounded to `dtype`.
pub fn random_tensor(shape: &[usize], dtype: DType, offset: f64, spread: f64, salt: u64) -> Tensor {
    let mut rng = Rng::new(seed() ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    Tensor::from_fn(shape.to_vec(), dtype, |_| offset + spread * rng.normal()).unwrap()
}

/// The run's seed: printed so a failure can be replayed with WARPNORM_TEST_SEED.
pub fn seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        let s = std::env::var("WARPNORM_TEST_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        println!("test seed: WARPNORM_TEST_SEED={s}");
        s
    })
}

/// The kernel matrix's tolerance model, for every test that compares with the reference
/// (each test file uses some of it).
#[allow(unused_imports)]
pub use warpnorm::tooling::kernel_matrix::tolerance::{error_ratio, max_abs, tolerance};

/// Asserts that the kernel matrix found no failure, printing each first.
pub fn assert_no_failures(findings: Findings) {
    for f in &findings.failures {
        println!("FAIL {f}");
    }
    assert!(
        findings.failures.is_empty(),
        "{} failures (listed above)",
        findings.failures.len()
    );
}

/// Asserts that `failures` is empty, printing each first.
pub fn assert_none(failures: Vec<String>) {
    assert_no_failures(Findings { failures });
}
