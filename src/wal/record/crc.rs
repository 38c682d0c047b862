//! CRC-32C (Castagnoli) of a record's payload: the `crc32c` crate's value, computed faster
//! for the short records a beacon makes.
//!
//! The crate aligns its reads: a byte loop up to an 8-byte boundary, the words, a byte loop
//! for the rest, and two (empty, for a beacon) three-way parallel passes: ~185 instructions for
//! a 130-byte record (callgrind). Here the words are read unaligned from the start, one
//! `crc32` instruction per eight bytes: the same checksum (RFC 3720 §B.4) in about half.
//! Records of [`PARALLEL_FROM_BYTES`] or more, and CPUs without SSE4.2, go to the crate, whose
//! parallel passes win on long inputs. A proptest holds both paths to the same value.

/// From this many bytes on, the crate's three-way parallel passes are faster.
const PARALLEL_FROM_BYTES: usize = 512;

/// The CRC-32C of `bytes`, as `crc32c::crc32c` computes it.
pub fn crc32c(bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if bytes.len() < PARALLEL_FROM_BYTES && std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE4.2, checked just above.
        return unsafe { crc32c_sse42(bytes) };
    }
    crc32c::crc32c(bytes)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn crc32c_sse42(bytes: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let (words, tail) = bytes.as_chunks::<8>();
    let mut crc = u64::from(u32::MAX);
    for word in words {
        crc = _mm_crc32_u64(crc, u64::from_le_bytes(*word));
    }
    // `_mm_crc32_u64` leaves the 32-bit CRC in the low half and zeroes in the high one.
    let mut crc = crc as u32;
    for &b in tail {
        crc = _mm_crc32_u8(crc, b);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // RFC 3720 §B.4 and the usual check value.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        assert_eq!(crc32c(b""), 0);
    }

    proptest::proptest! {
        #[test]
        fn same_as_the_crate(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..1100),
            skip in 0usize..8,
        ) {
            // Every length and every start alignment.
            let bytes = &bytes[skip.min(bytes.len())..];
            proptest::prop_assert_eq!(crc32c(bytes), crc32c::crc32c(bytes));
        }
    }
}
