//! Internet checksum helpers (RFC 1071, RFC 1624) on top of
//! `smoltcp::wire::checksum`, which sums the bytes.

pub use smoltcp::wire::checksum::{combine, data};

/// The folded ones-complement sum of a 20-byte IPv4 header (no options):
/// five 32-bit adds instead of the general byte loop, since every outer
/// header the uplink receives goes through it. 0xffff means it verifies.
pub fn ipv4_header_sum(header: &[u8; 20]) -> u16 {
    let sum: u64 = header
        .chunks_exact(4)
        .map(|word| u64::from(u32::from_be_bytes([word[0], word[1], word[2], word[3]])))
        .sum();
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    ((sum & 0xffff) + (sum >> 16)) as u16
}

/// Whether an IPv4 header (options included, exactly its IHL bytes)
/// checksums correctly. Under `cfg(fuzzing)` it always does, so fuzzers get
/// past it (as smoltcp's checks do).
pub fn ipv4_header_ok(header: &[u8]) -> bool {
    if cfg!(fuzzing) {
        return true;
    }
    match header.first_chunk::<20>() {
        Some(fixed) if header.len() == 20 => ipv4_header_sum(fixed) == 0xffff,
        _ => data(header) == 0xffff,
    }
}

/// Update a header checksum for one 16-bit word changing from `old` to
/// `new`, without re-summing the header (RFC 1624, equation 3).
pub fn adjust(checksum: u16, old: u16, new: u16) -> u16 {
    !combine(&[!checksum, !old, new])
}

/// The checksum field value for a folded sum: its complement, with zero
/// sent as 0xffff as UDP requires (a zero UDP checksum means "none").
pub fn finish_udp(sum: u16) -> u16 {
    match !sum {
        0 => 0xffff,
        checksum => checksum,
    }
}

/// The folded ones-complement sum of `data` as a big-endian word, like
/// [`data`] and as fast, but for any length: `data` sums into 32 bits and
/// wraps past 128 KiB, this sums 64 KiB blocks into a 64-bit total.
pub fn sum(data: &[u8]) -> u16 {
    // The sum is taken in native byte order and swapped at the end, which
    // RFC 1071 section 2(B) allows. A block's 32768 words of at most
    // 0xffff stay under 2^32; the loop is smoltcp's, which vectorizes.
    let mut acc: u64 = 0;
    for block in data.chunks(1 << 16) {
        let (quads, rest) = block.as_chunks::<4>();
        let mut block_sum: u32 = 0;
        for quad in quads {
            block_sum += u32::from(u16::from_ne_bytes([quad[0], quad[1]]));
            block_sum += u32::from(u16::from_ne_bytes([quad[2], quad[3]]));
        }
        acc += u64::from(block_sum);
        let (pairs, rest) = rest.as_chunks::<2>();
        for pair in pairs {
            acc += u64::from(u16::from_ne_bytes(*pair));
        }
        if let Some(&last) = rest.first() {
            acc += u64::from(u16::from_ne_bytes([last, 0]));
        }
    }
    u16::from_be(fold(acc))
}

/// Fold a 64-bit ones-complement accumulator to 16 bits.
fn fold(acc: u64) -> u16 {
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    ((acc & 0xffff) + (acc >> 16)) as u16
}

/// The offset of the TCP or UDP checksum field in a transport header of
/// IP protocol `protocol` (6 or 17); `None` for another protocol.
pub fn transport_checksum_at(protocol: u8) -> Option<usize> {
    match protocol {
        6 => Some(16),
        17 => Some(6),
        _ => None,
    }
}

/// The folded sum of the IPv4 pseudo-header (RFC 793, RFC 768): source,
/// destination, protocol and the transport length.
pub fn ipv4_pseudo_header(src: [u8; 4], dst: [u8; 4], protocol: u8, length: u16) -> u16 {
    let acc = u64::from(u32::from_be_bytes(src))
        + u64::from(u32::from_be_bytes(dst))
        + u64::from(protocol)
        + u64::from(length);
    fold(acc)
}

/// Write the header checksum of an IPv4 header (exactly its IHL bytes, at
/// least 20): the field is zeroed, summed over and set to the complement.
pub fn fill_ipv4_header(header: &mut [u8]) {
    if header.len() < 20 {
        return;
    }
    header[10..12].fill(0);
    let checksum = match header.first_chunk::<20>() {
        Some(fixed) if header.len() == 20 => !ipv4_header_sum(fixed),
        _ => !sum(header),
    };
    header[10..12].copy_from_slice(&checksum.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjust_matches_full_recompute() {
        // An IPv4 header (RFC 1071 style example); change the TTL/protocol word.
        let mut header = [
            0x45u8, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let full = |h: &[u8; 20]| !data(h);
        let before = full(&header);
        assert_eq!(before, 0xb861);
        header[10..12].copy_from_slice(&before.to_be_bytes());
        assert_eq!(data(&header), 0xffff);

        let old = u16::from_be_bytes([header[8], header[9]]);
        header[8] -= 1; // TTL 64 -> 63
        let new = u16::from_be_bytes([header[8], header[9]]);
        let updated = adjust(before, old, new);
        header[10..12].fill(0);
        assert_eq!(updated, full(&header));
    }

    #[test]
    fn ipv4_header_sum_matches_the_general_sum() {
        let mut header = [0u8; 20];
        for seed in 0u32..2000 {
            for (i, b) in header.iter_mut().enumerate() {
                *b = (seed.wrapping_mul(2654435761).rotate_left(i as u32) >> 7) as u8;
            }
            assert_eq!(ipv4_header_sum(&header), data(&header), "{header:?}");
        }
        assert_eq!(ipv4_header_sum(&[0xff; 20]), 0xffff);
        assert_eq!(ipv4_header_sum(&[0; 20]), 0);
    }

    #[test]
    fn finish_udp_never_sends_zero() {
        assert_eq!(finish_udp(0xffff), 0xffff);
        assert_eq!(finish_udp(0x1234), !0x1234);
    }
    #[test]
    fn sum_matches_data_on_every_length_and_alignment() {
        let bytes: Vec<u8> = (0u32..700)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for start in 0..4 {
            for end in start..bytes.len() {
                assert_eq!(
                    sum(&bytes[start..end]),
                    data(&bytes[start..end]),
                    "{start}..{end}"
                );
            }
        }
        assert_eq!(sum(&[0xff; 65536]), 0xffff);
        assert_eq!(sum(&[]), 0);
        // Past 64 KiB blocks, and past where smoltcp's 32-bit sum wraps.
        assert_eq!(sum(&vec![0xff; 300_000]), 0xffff);
        let long: Vec<u8> = (0u32..200_001)
            .map(|i| (i.wrapping_mul(2654435761) >> 9) as u8)
            .collect();
        let reference = |bytes: &[u8]| {
            let mut acc: u64 = bytes
                .chunks(2)
                .map(|w| u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
                .sum();
            while acc > 0xffff {
                acc = (acc & 0xffff) + (acc >> 16);
            }
            acc as u16
        };
        for len in [65535, 65536, 65537, 131072, 131073, 200_001] {
            assert_eq!(sum(&long[..len]), reference(&long[..len]), "{len}");
        }
    }

    #[test]
    fn pseudo_header_matches_smoltcp() {
        use smoltcp::wire::{IpProtocol, Ipv4Address};
        let (src, dst) = ([10, 244, 1, 5], [10, 244, 2, 7]);
        for length in [0u16, 20, 1420, 0xffff] {
            assert_eq!(
                ipv4_pseudo_header(src, dst, 6, length),
                smoltcp::wire::checksum::pseudo_header_v4(
                    &Ipv4Address::from(src),
                    &Ipv4Address::from(dst),
                    IpProtocol::Tcp,
                    length.into(),
                )
            );
        }
        // 0a f4 01 05 + 0a f4 02 07 + 0006 + 0578 (golden: by hand).
        assert_eq!(ipv4_pseudo_header(src, dst, 6, 0x578), 0x1e72);
    }

    #[test]
    fn fill_ipv4_header_golden() {
        let mut header = [
            0x45u8, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xaa, 0xaa, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        fill_ipv4_header(&mut header);
        assert_eq!(header[10..12], [0xb8, 0x61]);
        // With 4 bytes of options, through the general sum.
        let mut with_options = [0u8; 24];
        with_options[..20].copy_from_slice(&header);
        with_options[0] = 0x46;
        with_options[20..].copy_from_slice(&[1, 1, 1, 0]);
        fill_ipv4_header(&mut with_options);
        assert_eq!(data(&with_options), 0xffff);
    }
}
