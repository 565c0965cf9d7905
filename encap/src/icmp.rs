//! ICMPv4 errors the switch answers with (RFC 792): Destination
//! Unreachable, port unreachable, built in place of the packet it refuses,
//! as a router's `REJECT` does — what kube-proxy answers a connection to a
//! Service without endpoints with, so that the client fails at once
//! (`ECONNREFUSED`) instead of waiting for its timeouts.

use crate::checksum;

const ETHERNET_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const ICMP_HEADER_LEN: usize = 8;
/// ICMP type 3, Destination Unreachable.
const DESTINATION_UNREACHABLE: u8 = 3;
/// Its code 3, port unreachable.
const PORT_UNREACHABLE: u8 = 3;
const IPPROTO_ICMP: u8 = 1;
/// The bytes of the refused packet past its IP header an error quotes
/// (RFC 792: the first 64 bits of the datagram's data).
const QUOTED_DATA: usize = 8;

/// Turn the frame at the start of `buf` — `len` bytes of Ethernet and a
/// checked IPv4 header — into an ICMP port unreachable to its sender:
/// Ethernet from `router_mac` back to the sender's MAC, IPv4 from the
/// packet's destination address (the address that refused it) to its
/// source, quoting its IP header and first 8 bytes of data. Returns the
/// reply's length; `None`, changing nothing, when the frame is too short
/// to be an IPv4 packet or `buf` has no room for the reply.
pub fn port_unreachable_in_place(buf: &mut [u8], len: usize, router_mac: [u8; 6]) -> Option<usize> {
    let ip = buf.get(ETHERNET_LEN..len)?;
    let header_len = usize::from(*ip.first()? & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    if header_len < IPV4_LEN || ip.len() < header_len {
        return None;
    }
    let quoted = (header_len + QUOTED_DATA).min(total_len).min(ip.len());
    let reply_len = ETHERNET_LEN + IPV4_LEN + ICMP_HEADER_LEN + quoted;
    if buf.len() < reply_len || quoted < header_len {
        return None;
    }
    let (mut src, mut dst) = ([0u8; 4], [0u8; 4]);
    src.copy_from_slice(&ip[12..16]);
    dst.copy_from_slice(&ip[16..20]);
    let quote_start = ETHERNET_LEN + IPV4_LEN + ICMP_HEADER_LEN;
    buf.copy_within(ETHERNET_LEN..ETHERNET_LEN + quoted, quote_start);

    buf.copy_within(6..12, 0);
    buf[6..12].copy_from_slice(&router_mac);
    buf[12..14].copy_from_slice(&[0x08, 0x00]);

    let ip = &mut buf[ETHERNET_LEN..ETHERNET_LEN + IPV4_LEN];
    let ip_len = (IPV4_LEN + ICMP_HEADER_LEN + quoted) as u16;
    ip[0] = 0x45;
    // Precedence "internetwork control", as Linux sends its ICMP errors.
    ip[1] = 0xc0;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[4..8].fill(0);
    ip[8] = 64;
    ip[9] = IPPROTO_ICMP;
    ip[12..16].copy_from_slice(&dst);
    ip[16..20].copy_from_slice(&src);
    checksum::fill_ipv4_header(ip);

    let icmp = &mut buf[ETHERNET_LEN + IPV4_LEN..reply_len];
    icmp[..ICMP_HEADER_LEN].copy_from_slice(&[
        DESTINATION_UNREACHABLE,
        PORT_UNREACHABLE,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
    let sum = !checksum::sum(icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    Some(reply_len)
}

#[cfg(test)]
mod tests {
    use smoltcp::wire::{
        EthernetFrame, Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, Ipv4Packet,
    };

    use super::*;

    const ROUTER: [u8; 6] = [0x0a, 0x70, 10, 1, 0, 11];
    const POD: [u8; 6] = [0x0a, 0x58, 10, 244, 1, 2];

    /// A UDP frame from the pod 10.244.1.2:40000 to 10.96.0.10:53 with
    /// `payload`, in a buffer of `room` bytes.
    fn udp_frame(payload: &[u8], room: usize) -> (Vec<u8>, usize) {
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2(POD, ROUTER)
            .ipv4([10, 244, 1, 2], [10, 96, 0, 10], 64)
            .udp(40000, 53)
            .write(&mut frame, payload)
            .unwrap();
        let len = frame.len();
        frame.resize(room.max(len), 0);
        (frame, len)
    }

    #[test]
    fn a_refused_datagram_becomes_a_port_unreachable_to_its_sender() {
        let (mut buf, len) = udp_frame(b"a DNS question", 256);
        let original = buf[..len].to_vec();
        let reply = port_unreachable_in_place(&mut buf, len, ROUTER).unwrap();
        assert_eq!(reply, 14 + 20 + 8 + 20 + 8);
        let eth = EthernetFrame::new_checked(&buf[..reply]).unwrap();
        assert_eq!(eth.dst_addr().0, POD);
        assert_eq!(eth.src_addr().0, ROUTER);
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.src_addr().octets(), [10, 96, 0, 10]);
        assert_eq!(ip.dst_addr().octets(), [10, 244, 1, 2]);
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.msg_type(), Icmpv4Message::DstUnreachable);
        assert_eq!(
            icmp.msg_code(),
            u8::from(Icmpv4DstUnreachable::PortUnreachable)
        );
        // The quote: the datagram's IP header and UDP header.
        assert_eq!(icmp.data(), &original[14..14 + 28]);
    }

    #[test]
    fn a_short_datagram_is_quoted_whole_and_a_full_buffer_refused() {
        // A UDP datagram with no payload: 28 bytes quoted, all of it.
        let (mut buf, len) = udp_frame(b"", 128);
        let reply = port_unreachable_in_place(&mut buf, len, ROUTER).unwrap();
        assert_eq!(reply, 14 + 28 + 28);
        // No room after the frame for the reply.
        let (mut tight, len) = udp_frame(b"", 0);
        let before = tight.clone();
        assert_eq!(port_unreachable_in_place(&mut tight, len, ROUTER), None);
        assert_eq!(tight, before);
        // Not an IPv4 header.
        for len in [0, 14, 20] {
            let mut junk = vec![0u8; 128];
            assert_eq!(port_unreachable_in_place(&mut junk, len, ROUTER), None);
        }
    }
}
