//! How large a problem the command takes on. Sizes from the command line are multiplied
//! with checked arithmetic and compared with the memory of the device that will hold
//! them before anything is allocated, so a typo such as `--cols 4294967296` is a usage
//! error in a few microseconds instead of an abort after minutes of paging.

use warpnorm::cuda::CudaBackend;

use crate::exit::Failure;
use crate::output::human_bytes;

/// Host memory the command allows one problem on the CPU backends (the f64 reference and
/// the kernels' emulation): they are correctness tools, slow far below this size.
pub const HOST_LIMIT: u64 = 4 << 30;

/// Host bytes per element of a problem on the CPU backends: the reference keeps every
/// tensor in f64, and x, dy, y and dx exist for the backend under test and again for the
/// reference it is compared with (8 tensors of 8 bytes).
pub const HOST_BYTES_PER_ELEMENT: u64 = 64;

/// Device bytes per element of a problem on a GPU: x, y, dy and dx, each at most 4 bytes.
pub const DEVICE_BYTES_PER_ELEMENT: u64 = 16;

/// The memory one problem may take, and what that figure is.
#[derive(Clone, Debug)]
pub struct Budget {
    bytes: u64,
    source: String,
}

impl Budget {
    /// The stated host limit, [`HOST_LIMIT`].
    pub fn host() -> Budget {
        Budget {
            bytes: HOST_LIMIT,
            source: format!(
                "the {} a problem may take on the host",
                human_bytes(HOST_LIMIT)
            ),
        }
    }

    /// The memory free on the GPU now.
    pub fn gpu(be: &CudaBackend) -> warpnorm::Result<Budget> {
        let (free, _) = be.context().mem_get_info()?;
        Ok(Budget {
            bytes: free as u64,
            source: format!(
                "the {} free on cuda:{}",
                human_bytes(free as u64),
                be.info().ordinal
            ),
        })
    }

    /// A usage error naming `problem` when it needs more than this budget; `need` is
    /// `None` when the size does not even fit in a 64-bit count.
    pub fn admit(&self, problem: &str, need: Option<u64>) -> Result<(), Failure> {
        match need {
            Some(n) if n <= self.bytes => Ok(()),
            Some(n) => Err(Failure::Usage(format!(
                "{problem} needs {}, more than {}",
                human_bytes(n),
                self.source
            ))),
            None => Err(Failure::Usage(format!(
                "{problem} needs more than 2^64 bytes, more than {}",
                self.source
            ))),
        }
    }
}

/// Bytes of a tensor of shape `dims` at `bytes_each` per element; `None` on overflow.
pub fn bytes_of(dims: &[usize], bytes_each: u64) -> Option<u64> {
    dims.iter().try_fold(bytes_each, |acc, &d| {
        acc.checked_mul(u64::try_from(d).ok()?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_are_checked_and_refusals_say_how_large() {
        assert_eq!(bytes_of(&[3, 4], 2), Some(24));
        assert_eq!(bytes_of(&[1 << 32, 1 << 32], 1), None);
        assert_eq!(bytes_of(&[usize::MAX], 2), None);
        let host = Budget::host();
        assert!(host.admit("x", Some(HOST_LIMIT)).is_ok());
        let Err(Failure::Usage(msg)) =
            host.admit("a 3 x 4294967296 batch", bytes_of(&[3, 1 << 32], 64))
        else {
            panic!("not refused");
        };
        assert_eq!(
            msg,
            "a 3 x 4294967296 batch needs 768.0 GiB, more than the 4.0 GiB a problem may take on the host"
        );
        let Err(Failure::Usage(msg)) = host.admit("y", None) else {
            panic!("not refused");
        };
        assert!(msg.contains("more than 2^64 bytes"), "{msg}");
    }
}
