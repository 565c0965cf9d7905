//! The in-place address and port rewrite of a translated packet, with
//! incremental checksums (RFC 1624) for IPv4, TCP and UDP and SCTP's
//! CRC32c recomputed when a port changes.

use std::net::Ipv4Addr;

use podswitch_encap::checksum::combine;

use crate::flow::{Parsed, SCTP, TCP, UDP};

/// What the packet's source and destination become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nat {
    /// The new source address and port.
    pub src: (Ipv4Addr, u16),
    /// The new destination address and port.
    pub dst: (Ipv4Addr, u16),
}

/// What the transport checksum field of a packet holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Checksum {
    /// A finished checksum (or a UDP zero, "none", which stays zero).
    Full,
    /// virtio-net `NEEDS_CSUM` (a super-frame or a frame whose checksum
    /// the sender left to the device): the field holds the non-inverted
    /// pseudo-header sum, the device sums the transport bytes later. Only
    /// the address change is folded in, not the ports; SCTP's CRC is left
    /// to the device.
    Partial,
}

/// Rewrite an IPv4 packet (`ipv4` starts at its IPv4 header), which
/// [`crate::flow::parse`] has read as `parsed` (and that has not changed since),
/// to `nat`, in place.
pub fn apply_parsed(ipv4: &mut [u8], parsed: &Parsed, nat: &Nat, checksum: L4Checksum) {
    let key = parsed.key;
    let old_addrs = words(key.src, key.dst);
    let new_addrs = words(nat.src.0, nat.dst.0);
    let old_ports = [key.sport, key.dport];
    let new_ports = [nat.src.1, nat.dst.1];
    if old_addrs != new_addrs {
        let header = u16::from_be_bytes([ipv4[10], ipv4[11]]);
        let header = adjust_all(header, &old_addrs, &new_addrs);
        ipv4[10..12].copy_from_slice(&header.to_be_bytes());
        ipv4[12..16].copy_from_slice(&nat.src.0.octets());
        ipv4[16..20].copy_from_slice(&nat.dst.0.octets());
    }
    let l4 = &mut ipv4[parsed.l4_offset..parsed.total_len];
    l4[0..2].copy_from_slice(&nat.src.1.to_be_bytes());
    l4[2..4].copy_from_slice(&nat.dst.1.to_be_bytes());
    match key.protocol {
        TCP | UDP => {
            let at = if key.protocol == TCP { 16 } else { 6 };
            let old = u16::from_be_bytes([l4[at], l4[at + 1]]);
            let new = match checksum {
                // The field holds the sum itself: fold the change in as a sum.
                L4Checksum::Partial => !adjust_all(!old, &old_addrs, &new_addrs),
                L4Checksum::Full if key.protocol == UDP && old == 0 => 0,
                L4Checksum::Full => {
                    let new = adjust_all(old, &old_addrs, &new_addrs);
                    let new = adjust_all(new, &old_ports, &new_ports);
                    if key.protocol == UDP && new == 0 {
                        0xffff
                    } else {
                        new
                    }
                }
            };
            l4[at..at + 2].copy_from_slice(&new.to_be_bytes());
        }
        SCTP if checksum == L4Checksum::Full && old_ports != new_ports => {
            l4[8..12].fill(0);
            let crc = crc32c::crc32c(l4);
            l4[8..12].copy_from_slice(&crc.to_le_bytes());
        }
        _ => {}
    }
}

/// The four 16-bit words of a source and destination address.
fn words(src: Ipv4Addr, dst: Ipv4Addr) -> [u16; 4] {
    let (s, d) = (src.octets(), dst.octets());
    [
        u16::from_be_bytes([s[0], s[1]]),
        u16::from_be_bytes([s[2], s[3]]),
        u16::from_be_bytes([d[0], d[1]]),
        u16::from_be_bytes([d[2], d[3]]),
    ]
}

/// RFC 1624 equation 3 over several words at once (up to four).
fn adjust_all<const N: usize>(checksum: u16, old: &[u16; N], new: &[u16; N]) -> u16 {
    if old == new {
        return checksum;
    }
    let mut terms = [0u16; 9];
    terms[0] = !checksum;
    for i in 0..N {
        terms[1 + 2 * i] = !old[i];
        terms[2 + 2 * i] = new[i];
    }
    !combine(&terms[..1 + 2 * N])
}

#[cfg(test)]
mod tests {
    use crc32c::crc32c;
    use podswitch_encap::checksum::{ipv4_header_ok, ipv4_pseudo_header, sum};
    use proptest::prelude::*;

    use super::*;
    use crate::flow;

    /// Parse, then rewrite: `false` (and the packet untouched) when
    /// [`flow::parse`] does not read it.
    fn apply(ipv4: &mut [u8], nat: &Nat, checksum: L4Checksum) -> bool {
        let Some(parsed) = flow::parse(ipv4) else {
            return false;
        };
        apply_parsed(ipv4, &parsed, nat, checksum);
        true
    }
    use crate::flow::tests::{checked, key, l4_verifies, packet};

    fn l4_at(p: &[u8]) -> usize {
        if p[9] == TCP { 36 } else { 26 }
    }

    fn nat(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Nat {
        Nat {
            src: (src.into(), sport),
            dst: (dst.into(), dport),
        }
    }

    /// A TCP or UDP packet with a correct checksum and a rewrite for it.
    fn a_case() -> impl Strategy<Value = (Vec<u8>, Nat)> {
        (
            any::<bool>(),
            any::<([u8; 4], u16, [u8; 4], u16)>(),
            any::<([u8; 4], u16, [u8; 4], u16)>(),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(tcp, from, to, payload)| {
                let protocol = if tcp { TCP } else { UDP };
                let p = checked(key(from.0, from.1, from.2, from.3, protocol), &payload);
                (p, nat(to.0, to.1, to.2, to.3))
            })
    }

    proptest! {
        #[test]
        fn incremental_checksums_match_a_full_recompute((mut p, nat) in a_case()) {
            prop_assert!(apply(&mut p, &nat, L4Checksum::Full));
            prop_assert!(ipv4_header_ok(&p[..20]));
            prop_assert!(l4_verifies(&p));
            let at = l4_at(&p);
            prop_assert!(p[at..at + 2] != [0, 0] || p[9] == TCP, "UDP sends a computed zero as 0xffff");
            let key = flow::parse(&p).unwrap().key;
            prop_assert_eq!((key.src, key.sport, key.dst, key.dport), (nat.src.0, nat.src.1, nat.dst.0, nat.dst.1));
        }

        #[test]
        fn a_partial_checksum_gets_the_new_pseudo_header_sum((mut p, nat) in a_case()) {
            let pseudo = |p: &[u8]| ipv4_pseudo_header(
                p[12..16].try_into().unwrap(), p[16..20].try_into().unwrap(), p[9], (p.len() - 20) as u16);
            let at = l4_at(&p);
            let before = pseudo(&p);
            p[at..at + 2].copy_from_slice(&before.to_be_bytes());
            prop_assert!(apply(&mut p, &nat, L4Checksum::Partial));
            // Equal as ones-complement values (0 and 0xffff are both zero).
            let (got, want) = (u16::from_be_bytes([p[at], p[at + 1]]), pseudo(&p));
            prop_assert!(got == want || (got | want) == 0xffff && (got & want) == 0, "{got:#x} {want:#x}");
            // What the device then computes verifies.
            let device = !sum(&p[20..]);
            p[at..at + 2].copy_from_slice(&device.to_be_bytes());
            prop_assert!(l4_verifies(&p));
        }
    }

    #[test]
    fn a_udp_checksum_of_zero_stays_zero() {
        let mut p = packet(
            key([10, 244, 1, 2], 5000, [10, 96, 0, 10], 53, UDP),
            b"query",
        );
        assert_eq!(p[26..28], [0, 0]);
        assert!(apply(
            &mut p,
            &nat([10, 244, 1, 2], 5000, [10, 244, 2, 7], 5353),
            L4Checksum::Full
        ));
        assert_eq!(p[26..28], [0, 0]);
        assert_eq!(&p[20..24], &[0x13, 0x88, 0x14, 0xe9]);
        assert!(ipv4_header_ok(&p[..20]));
    }
    #[test]
    fn crc32c_matches_the_rfc_3720_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
    }

    #[test]
    fn sctp_gets_a_new_crc_when_a_port_changes_and_not_otherwise() {
        let mut p = packet(
            key([10, 244, 1, 2], 7000, [10, 96, 0, 20], 9000, SCTP),
            b"chunk...",
        );
        let crc = |p: &[u8]| {
            let mut copy = p[20..].to_vec();
            copy[8..12].fill(0);
            crc32c(&copy).to_le_bytes()
        };
        let first = crc(&p);
        p[28..32].copy_from_slice(&first);
        // Only the address changes: SCTP has no pseudo-header, the CRC stays.
        assert!(apply(
            &mut p,
            &nat([10, 244, 1, 2], 7000, [10, 244, 2, 7], 9000),
            L4Checksum::Full
        ));
        assert_eq!(&p[28..32], &first);
        assert!(apply(
            &mut p,
            &nat([10, 244, 1, 2], 7000, [10, 244, 2, 7], 9100),
            L4Checksum::Full
        ));
        assert_ne!(&p[28..32], &first);
        assert_eq!(p[28..32], crc(&p));
        assert!(ipv4_header_ok(&p[..20]));
        // Left to the device under NEEDS_CSUM.
        let before = p[28..32].to_vec();
        assert!(apply(
            &mut p,
            &nat([10, 244, 1, 2], 7000, [10, 244, 2, 7], 9200),
            L4Checksum::Partial
        ));
        assert_eq!(p[28..32], before[..]);
    }

    #[test]
    fn what_parse_refuses_is_left_untouched_and_short_frames_do_not_panic() {
        let p = packet(key([10, 244, 1, 2], 5000, [10, 96, 0, 10], 80, TCP), b"");
        let mut icmp = p.clone();
        icmp[9] = 1;
        let copy = icmp.clone();
        assert!(!apply(
            &mut icmp,
            &nat([1, 1, 1, 1], 1, [2, 2, 2, 2], 2),
            L4Checksum::Full
        ));
        assert_eq!(icmp, copy);
        // A total length that cuts into the TCP header or runs past the frame.
        for total in [0u16, 20, 22, 39, 41, 2000] {
            let mut short = p.clone();
            short[2..4].copy_from_slice(&total.to_be_bytes());
            let copy = short.clone();
            assert!(!apply(
                &mut short,
                &nat([1, 1, 1, 1], 1, [2, 2, 2, 2], 2),
                L4Checksum::Full
            ));
            assert_eq!(short, copy);
        }
    }
}
