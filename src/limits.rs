//! Bounds on sizes a caller passes, checked before anything is allocated, indexed or
//! launched: an absurd size becomes an [`Error::TooLarge`] naming the argument, never a
//! `capacity overflow` panic, an aborting allocation failure, or a wrapped product.

use std::sync::OnceLock;

use crate::{Error, Result};

/// The product of `dims` (the element count of a shape), or [`Error::TooLarge`] naming
/// `what` when it overflows `usize`.
pub fn checked_product(what: &'static str, dims: &[usize]) -> Result<usize> {
    // A zero anywhere makes it 0, however large the dimensions before it.
    if dims.contains(&0) {
        return Ok(0);
    }
    dims.iter().try_fold(1usize, |acc, &d| {
        acc.checked_mul(d).ok_or_else(|| Error::TooLarge {
            what,
            msg: format!("the element count of {dims:?} overflows usize"),
        })
    })
}

/// Bytes of physical memory of this machine (`MemTotal` of `/proc/meminfo`), or `None`
/// where it cannot be read.
pub fn host_memory_bytes() -> Option<u64> {
    static TOTAL: OnceLock<Option<u64>> = OnceLock::new();
    *TOTAL.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    })
}

/// The most bytes one host buffer may take: the machine's physical memory, or where that
/// is unknown the allocator's own limit (`isize::MAX`). Larger requests are refused up
/// front rather than left to the allocator, which aborts the process when it fails.
pub fn host_alloc_limit() -> u64 {
    host_memory_bytes().unwrap_or(isize::MAX as u64)
}

/// Errors unless `count` elements of `elem_bytes` bytes fit in one host buffer
/// ([`host_alloc_limit`]); the message says how large the request was.
pub fn check_host_alloc(what: &'static str, count: usize, elem_bytes: usize) -> Result<()> {
    check_bytes(what, count, elem_bytes, host_alloc_limit(), "host memory")
}

/// Errors unless `count * elem_bytes` is at most `limit` bytes of `place`.
pub(crate) fn check_bytes(
    what: &'static str,
    count: usize,
    elem_bytes: usize,
    limit: u64,
    place: &str,
) -> Result<()> {
    let bytes = (count as u128) * (elem_bytes as u128);
    if bytes > limit as u128 {
        return Err(Error::TooLarge {
            what,
            msg: format!(
                "{count} elements ({}) exceed the {} of {place}",
                human_bytes(bytes),
                human_bytes(limit as u128)
            ),
        });
    }
    Ok(())
}

/// An empty host vector with room for `count` elements, checked against
/// [`host_alloc_limit`] and allocated fallibly, so that even a request below the limit
/// that the allocator cannot serve is an error rather than an abort.
pub(crate) fn host_vec_with_capacity<T>(what: &'static str, count: usize) -> Result<Vec<T>> {
    check_host_alloc(what, count, std::mem::size_of::<T>())?;
    let mut v = Vec::new();
    v.try_reserve_exact(count).map_err(|e| Error::TooLarge {
        what,
        msg: format!(
            "{count} elements of {} bytes could not be allocated ({e})",
            std::mem::size_of::<T>()
        ),
    })?;
    Ok(v)
}

/// `1.50 GiB`-style text for a byte count.
pub(crate) fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 7] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_that_overflow_name_the_argument() {
        assert_eq!(checked_product("x", &[3, 4]).unwrap(), 12);
        assert_eq!(checked_product("x", &[]).unwrap(), 1);
        assert_eq!(checked_product("x", &[0, usize::MAX]).unwrap(), 0);
        assert_eq!(checked_product("x", &[usize::MAX, 2, 0]).unwrap(), 0);
        let e = checked_product("x", &[1 << 40, 1 << 40]).unwrap_err();
        assert!(e.to_string().contains("`x`"), "{e}");
    }

    #[test]
    fn host_allocations_beyond_memory_are_refused() {
        let e = host_vec_with_capacity::<u8>("buffer", usize::MAX).unwrap_err();
        assert!(matches!(e, Error::TooLarge { what: "buffer", .. }), "{e}");
        assert!(host_vec_with_capacity::<f64>("buffer", usize::MAX / 8).is_err());
        assert!(
            host_vec_with_capacity::<u8>("buffer", 3)
                .unwrap()
                .capacity()
                >= 3
        );
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(5), "5 bytes");
    }
}
