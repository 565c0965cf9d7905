//! The outer UDP source port (and IPv6 flow label) from a hash of the inner
//! flow, so that ECMP in the underlay spreads flows and every packet of one
//! flow takes the same path.

use core::hash::{BuildHasher, Hasher};

use foldhash::fast::FixedState;

use crate::ethernet::{VLAN_TAG_LEN, is_vlan_tpid};

/// Lowest outer source port: the start of the dynamic range (RFC 6335).
pub const SOURCE_PORT_MIN: u16 = 49152;
/// How many source ports the hash spreads over (49152–65535).
pub const SOURCE_PORT_COUNT: u32 = 16384;

/// Fixed so that every node maps a flow to the same port.
const SEED: u64 = 0x706f_6473_7769_7463; // "podswitc"

/// The IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;

fn has_ports(protocol: u8) -> bool {
    matches!(protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP)
}

/// Hash the flow of an Ethernet frame: addresses, protocol and ports for
/// TCP, UDP and SCTP (IPv4 fragments after the first carry no ports, so
/// every fragment hashes on addresses and protocol alone); addresses and
/// protocol for other IP; MACs and EtherType for everything else. A frame
/// too short for a header hashes on what it has. Never fails, never panics.
pub fn flow_hash(frame: &[u8]) -> u32 {
    let mut hasher = FixedState::with_seed(SEED).build_hasher();
    let (ethertype, l3) = network_header(frame);
    let hashed_ip = match ethertype {
        Some(0x0800) => hash_ipv4(frame, l3, &mut hasher),
        Some(0x86dd) => hash_ipv6(frame, l3, &mut hasher),
        _ => false,
    };
    if !hashed_ip {
        hasher.write(&frame[..frame.len().min(12)]);
        hasher.write_u16(ethertype.unwrap_or(0));
    }
    (hasher.finish() >> 32) as u32
}

/// The IP protocol of an Ethernet frame (IPv6: the first next header),
/// past up to two VLAN tags; `None` for a frame that is not IP or too
/// short for its IP header. Fixed for every packet of a flow, fragments
/// included.
pub fn ip_protocol(frame: &[u8]) -> Option<u8> {
    match network_header(frame) {
        (Some(0x0800), l3) => frame.get(l3 + 9).filter(|_| frame.len() >= l3 + 20),
        (Some(0x86dd), l3) => frame.get(l3 + 6).filter(|_| frame.len() >= l3 + 40),
        _ => None,
    }
    .copied()
}

/// A frame's EtherType past up to two VLAN tags, and where its network
/// header starts.
fn network_header(frame: &[u8]) -> (Option<u16>, usize) {
    let mut offset = 12;
    let mut ethertype = read_u16(frame, offset);
    while ethertype.is_some_and(is_vlan_tpid) && offset < 12 + 2 * VLAN_TAG_LEN {
        offset += VLAN_TAG_LEN;
        ethertype = read_u16(frame, offset);
    }
    (ethertype, offset + 2)
}

fn hash_ipv4(frame: &[u8], l3: usize, hasher: &mut impl Hasher) -> bool {
    let Some(header) = frame.get(l3..l3 + 20) else {
        return false;
    };
    let protocol = header[9];
    let addresses = u64::from_ne_bytes([
        header[12], header[13], header[14], header[15], header[16], header[17], header[18],
        header[19],
    ]);
    let fragment = u16::from_be_bytes([header[6], header[7]]) & 0x3fff != 0;
    let ihl = usize::from(header[0] & 0x0f) * 4;
    let ports = match frame.get(l3 + ihl..l3 + ihl + 4) {
        Some(&[a, b, c, d]) if has_ports(protocol) && !fragment => u32::from_ne_bytes([a, b, c, d]),
        _ => 0,
    };
    hasher.write_u64(addresses);
    hasher.write_u64(u64::from(ports) << 8 | u64::from(protocol));
    true
}

fn hash_ipv6(frame: &[u8], l3: usize, hasher: &mut impl Hasher) -> bool {
    let Some(header) = frame.get(l3..l3 + 40) else {
        return false;
    };
    let protocol = header[6];
    for addresses in header[8..40].chunks_exact(8) {
        hasher.write_u64(u64::from_ne_bytes(addresses.try_into().unwrap_or_default()));
    }
    let ports = match frame.get(l3 + 40..l3 + 44) {
        Some(&[a, b, c, d]) if has_ports(protocol) => u32::from_ne_bytes([a, b, c, d]),
        _ => 0,
    };
    hasher.write_u64(u64::from(ports) << 8 | u64::from(protocol));
    true
}

fn read_u16(frame: &[u8], offset: usize) -> Option<u16> {
    frame
        .get(offset..offset + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// Map a flow hash onto 49152–65535 by multiply-and-shift, which keeps the
/// hash's high bits (as the kernel's `udp_flow_src_port` does).
pub const fn source_port(hash: u32) -> u16 {
    SOURCE_PORT_MIN + ((hash as u64 * SOURCE_PORT_COUNT as u64) >> 32) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_tcp(src_port: u16, dst_port: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 9] = IPPROTO_TCP;
        f[14 + 12..14 + 16].copy_from_slice(&[10, 244, 1, 2]);
        f[14 + 16..14 + 20].copy_from_slice(&[10, 244, 2, 3]);
        f[34..36].copy_from_slice(&src_port.to_be_bytes());
        f[36..38].copy_from_slice(&dst_port.to_be_bytes());
        f
    }

    #[test]
    fn port_range_is_dynamic_range() {
        assert_eq!(source_port(0), 49152);
        assert_eq!(source_port(u32::MAX), 65535);
    }

    #[test]
    fn same_flow_same_hash_other_flow_other_hash() {
        let a = ipv4_tcp(40000, 5201);
        let mut a_payload = a.clone();
        a_payload.extend_from_slice(b"different payload, same flow");
        assert_eq!(flow_hash(&a), flow_hash(&a_payload));
        assert_ne!(flow_hash(&a), flow_hash(&ipv4_tcp(40001, 5201)));
    }

    #[test]
    fn fragments_hash_without_ports() {
        let mut first = ipv4_tcp(40000, 5201);
        first[14 + 6] = 0x20; // MF set: ports are ignored for every fragment
        let mut other = ipv4_tcp(1, 2);
        other[14 + 6] = 0x20;
        assert_eq!(flow_hash(&first), flow_hash(&other));
    }

    #[test]
    fn vlan_tagged_frame_hashes_like_untagged() {
        let plain = ipv4_tcp(1000, 2000);
        let mut tagged = plain[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        tagged.extend_from_slice(&plain[12..]);
        assert_eq!(flow_hash(&plain), flow_hash(&tagged));
    }

    #[test]
    fn spreads_over_the_range() {
        let mut seen = std::collections::HashSet::new();
        for port in 0..1000u16 {
            seen.insert(source_port(flow_hash(&ipv4_tcp(port, 80))) / 1024);
        }
        // 1000 flows over 16 buckets of 1024 ports: every bucket is hit.
        assert_eq!(seen.len(), 16);
    }

    #[test]
    fn short_and_odd_frames_do_not_panic() {
        for len in 0..60 {
            let f = ipv4_tcp(1, 2);
            flow_hash(&f[..len.min(f.len())]);
            flow_hash(&vec![0x81; len]);
            ip_protocol(&f[..len.min(f.len())]);
            ip_protocol(&vec![0x81; len]);
        }
    }

    #[test]
    fn ip_protocol_of_plain_tagged_and_non_ip_frames() {
        let tcp = ipv4_tcp(1000, 2000);
        assert_eq!(ip_protocol(&tcp), Some(IPPROTO_TCP));
        let mut udp = tcp.clone();
        udp[14 + 9] = IPPROTO_UDP;
        assert_eq!(ip_protocol(&udp), Some(IPPROTO_UDP));
        let mut tagged = tcp[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        tagged.extend_from_slice(&tcp[12..]);
        assert_eq!(ip_protocol(&tagged), Some(IPPROTO_TCP));
        let mut v6 = vec![0u8; 14 + 40];
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        v6[14 + 6] = IPPROTO_UDP;
        assert_eq!(ip_protocol(&v6), Some(IPPROTO_UDP));
        let mut arp = tcp.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(ip_protocol(&arp), None);
        assert_eq!(ip_protocol(&tcp[..14 + 19]), None, "IPv4 header cut short");
    }
}
