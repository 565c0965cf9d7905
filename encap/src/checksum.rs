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
}
