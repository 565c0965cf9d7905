//! The in-place address and port rewrite of a translated packet, with
//! incremental checksums (RFC 1624) for IPv4, TCP, UDP and ICMP errors,
//! and SCTP's CRC32c recomputed when a port changes.

use std::net::Ipv4Addr;
use std::ops::Range;

use podswitch_encap::checksum::{combine, sum, transport_checksum_at};

use crate::flow::{FlowKey, IcmpError, Parsed, SCTP, TCP, UDP};

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
    let l4 = parsed.l4_offset..parsed.total_len;
    rewrite(ipv4, &parsed.key, l4, nat, Some(checksum));
}

/// Rewrite the packet at `ipv4` whose tuple is `key` and whose transport
/// bytes are `ipv4[l4]` to `nat`: its addresses (and IPv4 header
/// checksum), its ports, and its transport checksum as `checksum` says.
/// `None`: the packet is the start of one quoted in an ICMP error, whose
/// transport checksum covers bytes the quote may have cut off: a TCP or
/// UDP checksum field the quote holds is adjusted as a finished one (the
/// change is all it needs), SCTP's CRC is left as it is.
fn rewrite(
    ipv4: &mut [u8],
    key: &FlowKey,
    l4: Range<usize>,
    nat: &Nat,
    checksum: Option<L4Checksum>,
) {
    let old_addrs = words(key.src, key.dst);
    let new_addrs = words(nat.src.0, nat.dst.0);
    let old_ports = [key.sport, key.dport];
    let new_ports = [nat.src.1, nat.dst.1];
    readdress(ipv4, &old_addrs, nat.src.0, nat.dst.0);
    let l4 = &mut ipv4[l4];
    l4[0..2].copy_from_slice(&nat.src.1.to_be_bytes());
    l4[2..4].copy_from_slice(&nat.dst.1.to_be_bytes());
    match key.protocol {
        TCP | UDP => {
            let Some(field) =
                transport_checksum_at(key.protocol).and_then(|at| l4.get_mut(at..at + 2))
            else {
                return;
            };
            let old = u16::from_be_bytes([field[0], field[1]]);
            let new = match checksum.unwrap_or(L4Checksum::Full) {
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
            field.copy_from_slice(&new.to_be_bytes());
        }
        SCTP if checksum == Some(L4Checksum::Full) && old_ports != new_ports => {
            l4[8..12].fill(0);
            let crc = crc32c::crc32c(l4);
            l4[8..12].copy_from_slice(&crc.to_le_bytes());
        }
        _ => {}
    }
}

/// Rewrite an ICMP error (`ipv4` starts at its IPv4 header), which
/// [`crate::flow::parse_error`] has read as `error`, as the kernel's NAT
/// does (`nf_nat_icmp_reply_translation`): the quoted packet becomes
/// `quoted` (its addresses and IPv4 header checksum, its ports, and its
/// TCP or UDP checksum when the quote holds it); the error's source, when
/// it is the quoted packet's destination (the host that refused it),
/// becomes the quoted packet's new destination, and its destination, when
/// it is the quoted packet's source, the quoted packet's new source. The
/// ICMP checksum is adjusted by the quote's changed words (RFC 1624), or,
/// under [`L4Checksum::Partial`], left to the device. `false`, and the
/// packet untouched, when its ICMP checksum does not verify (the receiver
/// would drop it; an adjusted one would still be wrong, and a recomputed
/// one would hide that).
pub fn apply_error(ipv4: &mut [u8], error: &IcmpError, quoted: &Nat, checksum: L4Checksum) -> bool {
    let icmp = error.icmp_offset..error.total_len;
    if checksum == L4Checksum::Full && sum(&ipv4[icmp.clone()]) != 0xffff {
        return false;
    }
    let inner = &mut ipv4[error.quoted_offset()..error.total_len];
    let inner_l4 = error.quoted_l4_offset - error.quoted_offset();
    let before = quote_words(inner, inner_l4, error.quoted.protocol);
    rewrite(inner, &error.quoted, inner_l4..inner.len(), quoted, None);
    let after = quote_words(inner, inner_l4, error.quoted.protocol);
    let src = if error.src == error.quoted.dst {
        quoted.dst.0
    } else {
        error.src
    };
    let dst = if error.dst == error.quoted.src {
        quoted.src.0
    } else {
        error.dst
    };
    readdress(ipv4, &words(error.src, error.dst), src, dst);
    if checksum == L4Checksum::Full {
        // The error's own addresses are in no ICMP checksum: only the
        // quote's changes are folded in.
        let field = &mut ipv4[icmp.start + 2..icmp.start + 4];
        let old = u16::from_be_bytes([field[0], field[1]]);
        let new = !combine(&[!old, !before, after]);
        field.copy_from_slice(&new.to_be_bytes());
    }
    true
}

/// Give a later fragment of a translated datagram (`ipv4` starts at its
/// IPv4 header, addresses `old` as source and destination) the addresses
/// `new`, its header checksum adjusted: it has no transport header, whose
/// checksum its first fragment's rewrite already adjusted.
pub fn readdress_fragment(ipv4: &mut [u8], old: (Ipv4Addr, Ipv4Addr), new: (Ipv4Addr, Ipv4Addr)) {
    readdress(ipv4, &words(old.0, old.1), new.0, new.1);
}

/// The folded sum of the words of a quoted packet (`quote`, its transport
/// header at `l4`, of `protocol`) that [`rewrite`] may change in it: its
/// IPv4 header checksum and addresses, its ports, and its TCP or UDP
/// checksum when the quote holds it (SCTP's CRC is left). Taken before and
/// after the rewrite, the two are what an ICMP checksum over the quote
/// changes by: each word sits at an even offset of the ICMP message (the
/// quote starts 8 bytes in, its transport header a multiple of 4 after).
fn quote_words(quote: &[u8], l4: usize, protocol: u8) -> u16 {
    let l4_checksum = transport_checksum_at(protocol)
        .and_then(|at| quote.get(l4 + at..l4 + at + 2))
        .map_or(0, |field| u16::from_be_bytes([field[0], field[1]]));
    combine(&[sum(&quote[10..20]), sum(&quote[l4..l4 + 4]), l4_checksum])
}

/// Give the IPv4 header at `ipv4`, whose addresses' words are `old`, the
/// addresses `src` and `dst`, its checksum adjusted.
fn readdress(ipv4: &mut [u8], old: &[u16; 4], src: Ipv4Addr, dst: Ipv4Addr) {
    let new = words(src, dst);
    if *old != new {
        let header = u16::from_be_bytes([ipv4[10], ipv4[11]]);
        let header = adjust_all(header, old, &new);
        ipv4[10..12].copy_from_slice(&header.to_be_bytes());
        ipv4[12..16].copy_from_slice(&src.octets());
        ipv4[16..20].copy_from_slice(&dst.octets());
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
    use crate::flow::tests::{checked, icmp, key, l4_verifies, packet};

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
        fn an_icmp_error_s_quote_and_checksums_are_rewritten((sent, nat) in a_case(), cut in 0usize..64) {
            let original = flow::parse(&sent).unwrap().key;
            // The refusing host answers the sender, quoting some of it.
            let quote = &sent[..sent.len().saturating_sub(cut).max(24)];
            let mut p = icmp(original.dst.octets(), original.src.octets(), 3, 0, quote);
            let error = flow::parse_error(&p).unwrap();
            prop_assert!(apply_error(&mut p, &error, &nat, L4Checksum::Full));
            prop_assert!(ipv4_header_ok(&p[..20]));
            prop_assert_eq!(sum(&p[20..]), 0xffff);
            prop_assert!(ipv4_header_ok(&p[28..48]));
            let quoted = flow::parse_error(&p).unwrap();
            prop_assert_eq!(
                (quoted.quoted.src, quoted.quoted.sport, quoted.quoted.dst, quoted.quoted.dport),
                (nat.src.0, nat.src.1, nat.dst.0, nat.dst.1)
            );
            prop_assert_eq!((quoted.src, quoted.dst), (nat.dst.0, nat.src.0));
            if cut == 0 {
                prop_assert!(l4_verifies(&p[28..]));
            }
        }

        #[test]
        fn an_error_s_adjusted_icmp_checksum_is_the_recomputed_one(
            (sent, nat) in a_case(),
            cut in 0usize..64,
            from_router in any::<bool>(),
        ) {
            let original = flow::parse(&sent).unwrap().key;
            let quote = &sent[..sent.len().saturating_sub(cut).max(24)];
            let from = if from_router { [10, 244, 2, 1] } else { original.dst.octets() };
            let mut p = icmp(from, original.src.octets(), 3, 0, quote);
            let error = flow::parse_error(&p).unwrap();
            prop_assert!(apply_error(&mut p, &error, &nat, L4Checksum::Full));
            let mut recomputed = p.clone();
            recomputed[22..24].fill(0);
            let full = !sum(&recomputed[20..]);
            prop_assert_eq!(u16::from_be_bytes([p[22], p[23]]), full);
        }

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
    fn an_icmp_error_from_a_router_keeps_its_source_and_a_bad_one_is_left_alone() {
        let sent = checked(key([10, 244, 1, 2], 5000, [10, 244, 2, 7], 8053, UDP), b"q");
        let router = [10, 244, 2, 1];
        let mut p = icmp(router, [10, 244, 1, 2], 3, 0, &sent);
        let error = flow::parse_error(&p).unwrap();
        let back = nat([10, 244, 1, 2], 5000, [10, 96, 0, 10], 53);
        let mut bad = p.clone();
        bad[40] ^= 1;
        let copy = bad.clone();
        assert!(!apply_error(&mut bad, &error, &back, L4Checksum::Full));
        assert_eq!(bad, copy);
        // Under NEEDS_CSUM the ICMP checksum is the device's.
        let mut partial = p.clone();
        assert!(apply_error(
            &mut partial,
            &error,
            &back,
            L4Checksum::Partial
        ));
        assert_eq!(partial[22..24], p[22..24]);
        assert!(apply_error(&mut p, &error, &back, L4Checksum::Full));
        assert_eq!(&p[12..20], &[10, 244, 2, 1, 10, 244, 1, 2]);
        assert_eq!(&p[40..48], &[10, 244, 1, 2, 10, 96, 0, 10]);
        assert_eq!(p[28..], partial[28..]);
        assert!(l4_verifies(&p[28..]) && sum(&p[20..]) == 0xffff);
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
