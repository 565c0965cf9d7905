//! Answers for the addresses the switch stands in for (the pod gateway):
//! ARP replies (RFC 826) and IPv6 neighbour advertisements (RFC 4861).
//!
//! Parse the request, then emit the answer into any buffer — the request's
//! own buffer included, since the parsed request is a small copy.

use core::net::{Ipv4Addr, Ipv6Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, ETHERNET_HEADER_LEN, EthernetAddress, EthernetFrame,
    EthernetProtocol, EthernetRepr, IPV6_HEADER_LEN, Icmpv6Packet, Icmpv6Repr, IpProtocol,
    Ipv6Packet, Ipv6Repr, NdiscNeighborFlags, NdiscRepr,
};

use crate::error::{Header, WireError, need};

/// Length of an ARP reply frame (Ethernet + ARP for IPv4, unpadded).
pub const ARP_REPLY_LEN: usize = ETHERNET_HEADER_LEN + 28;
/// Length of a neighbour advertisement frame with a target link-layer
/// address option.
pub const NEIGHBOR_ADVERT_LEN: usize = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + 24 + 8;

/// The Ethernet payload of `frame` if its EtherType is `ethertype`.
fn payload_of(
    frame: &[u8],
    ethertype: EthernetProtocol,
    header: Header,
) -> Result<(EthernetAddress, &[u8]), WireError> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| WireError::Truncated {
        header: Header::Ethernet,
        needed: ETHERNET_HEADER_LEN,
        available: frame.len(),
    })?;
    if eth.ethertype() != ethertype {
        return Err(WireError::BadField {
            header: Header::Ethernet,
            field: "EtherType",
            value: u16::from(eth.ethertype()).into(),
            expected: match header {
                Header::Arp => "0x0806 (ARP)",
                _ => "0x86dd (IPv6)",
            },
        });
    }
    Ok((eth.src_addr(), &frame[ETHERNET_HEADER_LEN..]))
}

fn malformed(header: Header, field: &'static str, value: u32, expected: &'static str) -> WireError {
    WireError::BadField {
        header,
        field,
        value,
        expected,
    }
}

/// An ARP request for an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRequest {
    /// Ethernet source of the frame.
    pub frame_source: EthernetAddress,
    /// Sender hardware address in the ARP body.
    pub sender_mac: EthernetAddress,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// The address asked about.
    pub target_ip: Ipv4Addr,
}

impl ArpRequest {
    /// Parse an Ethernet frame carrying an ARP request (Ethernet/IPv4).
    pub fn parse(frame: &[u8]) -> Result<ArpRequest, WireError> {
        let (frame_source, payload) = payload_of(frame, EthernetProtocol::Arp, Header::Arp)?;
        let packet = ArpPacket::new_checked(payload).map_err(|_| WireError::Truncated {
            header: Header::Arp,
            needed: 28,
            available: payload.len(),
        })?;
        let Ok(ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        }) = ArpRepr::parse(&packet)
        else {
            return Err(malformed(
                Header::Arp,
                "hardware/protocol type",
                u16::from(packet.hardware_type()).into(),
                "Ethernet (1) with IPv4 (0x0800)",
            ));
        };
        if operation != ArpOperation::Request {
            return Err(malformed(
                Header::Arp,
                "operation",
                u16::from(operation).into(),
                "1 (request)",
            ));
        }
        Ok(ArpRequest {
            frame_source,
            sender_mac: source_hardware_addr,
            sender_ip: source_protocol_addr,
            target_ip: target_protocol_addr,
        })
    }

    /// Whether the request is a gratuitous announcement of the sender's own
    /// address, which is not answered.
    pub fn is_gratuitous(&self) -> bool {
        self.sender_ip == self.target_ip
    }
}

/// Write the reply to `request` — "`target_ip` is at `answer`" — as an
/// Ethernet frame into `out`; return its length, [`ARP_REPLY_LEN`].
pub fn emit_arp_reply(
    request: &ArpRequest,
    answer: EthernetAddress,
    out: &mut [u8],
) -> Result<usize, WireError> {
    need(Header::Ethernet, ARP_REPLY_LEN, out.len())?;
    let eth = EthernetRepr {
        src_addr: answer,
        dst_addr: request.sender_mac,
        ethertype: EthernetProtocol::Arp,
    };
    eth.emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: answer,
        source_protocol_addr: request.target_ip,
        target_hardware_addr: request.sender_mac,
        target_protocol_addr: request.sender_ip,
    };
    arp.emit(&mut ArpPacket::new_unchecked(
        &mut out[ETHERNET_HEADER_LEN..ARP_REPLY_LEN],
    ));
    Ok(ARP_REPLY_LEN)
}

/// An IPv6 neighbour solicitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborSolicit {
    /// Ethernet source of the frame.
    pub frame_source: EthernetAddress,
    /// IPv6 source: unspecified (`::`) for duplicate address detection.
    pub sender_ip: Ipv6Addr,
    /// The source link-layer address option, when present.
    pub sender_mac: Option<EthernetAddress>,
    /// The address asked about.
    pub target_ip: Ipv6Addr,
}

impl NeighborSolicit {
    /// Parse an Ethernet frame carrying a neighbour solicitation, checking
    /// the hop limit (255) and the ICMPv6 checksum as RFC 4861 requires.
    pub fn parse(frame: &[u8]) -> Result<NeighborSolicit, WireError> {
        let (frame_source, payload) = payload_of(frame, EthernetProtocol::Ipv6, Header::Ipv6)?;
        let ip = Ipv6Packet::new_checked(payload).map_err(|_| WireError::Truncated {
            header: Header::Ipv6,
            needed: IPV6_HEADER_LEN,
            available: payload.len(),
        })?;
        if ip.next_header() != IpProtocol::Icmpv6 {
            return Err(malformed(
                Header::Ipv6,
                "next header",
                u8::from(ip.next_header()).into(),
                "58 (ICMPv6)",
            ));
        }
        if ip.hop_limit() != 255 {
            return Err(malformed(
                Header::Ipv6,
                "hop limit",
                ip.hop_limit().into(),
                "255 for neighbour discovery",
            ));
        }
        let icmp = Icmpv6Packet::new_checked(ip.payload()).map_err(|_| WireError::Truncated {
            header: Header::Icmpv6,
            needed: 24,
            available: ip.payload().len(),
        })?;
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        match Icmpv6Repr::parse(&src, &dst, &icmp, &ChecksumCapabilities::default()) {
            Ok(Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
                target_addr,
                lladdr,
            })) => Ok(NeighborSolicit {
                frame_source,
                sender_ip: src,
                sender_mac: lladdr
                    .filter(|raw| raw.len() == 6)
                    .map(|raw| EthernetAddress::from_bytes(raw.as_bytes())),
                target_ip: target_addr,
            }),
            _ => Err(malformed(
                Header::Icmpv6,
                "type/code/checksum",
                u8::from(icmp.msg_type()).into(),
                "a neighbour solicitation (135, code 0) with a valid checksum",
            )),
        }
    }
}

/// Write the advertisement answering `solicit` — "`target_ip` is at
/// `answer`, a router" — into `out`; return its length,
/// [`NEIGHBOR_ADVERT_LEN`]. A solicitation from `::` (duplicate address
/// detection) is answered to all nodes, unsolicited, as RFC 4861 §7.2.4 says.
pub fn emit_neighbor_advert(
    solicit: &NeighborSolicit,
    answer: EthernetAddress,
    out: &mut [u8],
) -> Result<usize, WireError> {
    need(Header::Ethernet, NEIGHBOR_ADVERT_LEN, out.len())?;
    let dad = solicit.sender_ip.is_unspecified();
    let (dst_ip, dst_mac, flags) = if dad {
        (
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            EthernetAddress([0x33, 0x33, 0, 0, 0, 1]),
            NdiscNeighborFlags::ROUTER | NdiscNeighborFlags::OVERRIDE,
        )
    } else {
        (
            solicit.sender_ip,
            solicit.sender_mac.unwrap_or(solicit.frame_source),
            NdiscNeighborFlags::ROUTER
                | NdiscNeighborFlags::SOLICITED
                | NdiscNeighborFlags::OVERRIDE,
        )
    };
    let icmp = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
        flags,
        target_addr: solicit.target_ip,
        lladdr: Some(answer.into()),
    });
    let ip = Ipv6Repr {
        src_addr: solicit.target_ip,
        dst_addr: dst_ip,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp.buffer_len(),
        hop_limit: 255,
    };
    EthernetRepr {
        src_addr: answer,
        dst_addr: dst_mac,
        ethertype: EthernetProtocol::Ipv6,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
    let ip_bytes = &mut out[ETHERNET_HEADER_LEN..NEIGHBOR_ADVERT_LEN];
    ip.emit(&mut Ipv6Packet::new_unchecked(&mut ip_bytes[..]));
    icmp.emit(
        &ip.src_addr,
        &ip.dst_addr,
        &mut Icmpv6Packet::new_unchecked(&mut ip_bytes[IPV6_HEADER_LEN..]),
        &ChecksumCapabilities::default(),
    );
    Ok(NEIGHBOR_ADVERT_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD_MAC: EthernetAddress = EthernetAddress([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]);
    const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x02, 0x70, 0x73, 0, 0, 1]);

    #[rustfmt::skip]
    fn arp_request() -> Vec<u8> {
        vec![
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05, 0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01, // Ethernet/IPv4, request
            0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05, 10, 244, 1, 5, // sender
            0, 0, 0, 0, 0, 0, 10, 244, 1, 1, // target: the gateway
        ]
    }

    #[test]
    fn arp_request_is_answered_in_place() {
        let mut frame = arp_request();
        let request = ArpRequest::parse(&frame).unwrap();
        assert_eq!(request.sender_ip, Ipv4Addr::new(10, 244, 1, 5));
        assert_eq!(request.target_ip, Ipv4Addr::new(10, 244, 1, 1));
        assert!(!request.is_gratuitous());
        assert_eq!(emit_arp_reply(&request, GATEWAY_MAC, &mut frame), Ok(42));
        #[rustfmt::skip]
        let expected = [
            0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05, 0x02, 0x70, 0x73, 0, 0, 1, 0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x02, // reply
            0x02, 0x70, 0x73, 0, 0, 1, 10, 244, 1, 1, // the gateway is at GATEWAY_MAC
            0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05, 10, 244, 1, 5, // to the asker
        ];
        assert_eq!(frame, expected);
    }

    #[test]
    fn arp_refusals_name_the_problem() {
        let mut reply = arp_request();
        reply[21] = 2;
        assert!(matches!(
            ArpRequest::parse(&reply),
            Err(WireError::BadField {
                field: "operation",
                value: 2,
                ..
            })
        ));
        let mut ip = arp_request();
        ip[12..14].copy_from_slice(&[0x08, 0x00]);
        assert!(matches!(
            ArpRequest::parse(&ip),
            Err(WireError::BadField {
                field: "EtherType",
                value: 0x0800,
                ..
            })
        ));
        assert!(matches!(
            ArpRequest::parse(&arp_request()[..30]),
            Err(WireError::Truncated {
                header: Header::Arp,
                ..
            })
        ));
        assert!(matches!(
            emit_arp_reply(
                &ArpRequest::parse(&arp_request()).unwrap(),
                GATEWAY_MAC,
                &mut [0; 41]
            ),
            Err(WireError::Truncated { .. })
        ));
    }

    fn solicit_frame(src: Ipv6Addr, with_lladdr: bool, hop_limit: u8) -> Vec<u8> {
        let target = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 1);
        let icmp = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
            target_addr: target,
            lladdr: with_lladdr.then(|| POD_MAC.into()),
        });
        let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 1);
        let ip = Ipv6Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Icmpv6,
            payload_len: icmp.buffer_len(),
            hop_limit,
        };
        let mut frame = vec![0u8; 14 + 40 + icmp.buffer_len()];
        EthernetRepr {
            src_addr: POD_MAC,
            dst_addr: EthernetAddress([0x33, 0x33, 0xff, 0, 0, 1]),
            ethertype: EthernetProtocol::Ipv6,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
        ip.emit(&mut Ipv6Packet::new_unchecked(&mut frame[14..]));
        icmp.emit(
            &src,
            &dst,
            &mut Icmpv6Packet::new_unchecked(&mut frame[54..]),
            &ChecksumCapabilities::default(),
        );
        frame
    }

    fn parse_advert(
        frame: &[u8],
    ) -> (
        EthernetAddress,
        Ipv6Repr,
        NdiscNeighborFlags,
        EthernetAddress,
    ) {
        let eth = EthernetFrame::new_checked(frame).unwrap();
        let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
        let ip_repr = Ipv6Repr::parse(&ip).unwrap();
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        let repr = Icmpv6Repr::parse(
            &ip_repr.src_addr,
            &ip_repr.dst_addr,
            &icmp,
            &ChecksumCapabilities::default(),
        )
        .expect("advertisement parses with a valid checksum");
        let Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert { flags, lladdr, .. }) = repr else {
            panic!("not an advertisement: {repr:?}");
        };
        let lladdr = EthernetAddress::from_bytes(lladdr.unwrap().as_bytes());
        (eth.dst_addr(), ip_repr, flags, lladdr)
    }

    #[test]
    fn solicitation_is_answered_with_router_advert() {
        let pod_ip = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 5);
        let mut frame = solicit_frame(pod_ip, true, 255);
        let solicit = NeighborSolicit::parse(&frame).unwrap();
        assert_eq!(solicit.sender_mac, Some(POD_MAC));
        frame.resize(NEIGHBOR_ADVERT_LEN, 0);
        assert_eq!(
            emit_neighbor_advert(&solicit, GATEWAY_MAC, &mut frame),
            Ok(86)
        );
        let (dst_mac, ip, flags, lladdr) = parse_advert(&frame);
        assert_eq!(dst_mac, POD_MAC);
        assert_eq!(ip.dst_addr, pod_ip);
        assert_eq!(ip.src_addr, solicit.target_ip);
        assert_eq!(ip.hop_limit, 255);
        assert!(flags.contains(NdiscNeighborFlags::ROUTER | NdiscNeighborFlags::SOLICITED));
        assert_eq!(lladdr, GATEWAY_MAC);
    }

    #[test]
    fn duplicate_address_detection_is_answered_to_all_nodes() {
        let frame = solicit_frame(Ipv6Addr::UNSPECIFIED, false, 255);
        let solicit = NeighborSolicit::parse(&frame).unwrap();
        assert_eq!(solicit.sender_mac, None);
        let mut out = [0u8; NEIGHBOR_ADVERT_LEN];
        emit_neighbor_advert(&solicit, GATEWAY_MAC, &mut out).unwrap();
        let (dst_mac, ip, flags, _) = parse_advert(&out);
        assert_eq!(dst_mac, EthernetAddress([0x33, 0x33, 0, 0, 0, 1]));
        assert_eq!(ip.dst_addr, Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1));
        assert!(!flags.contains(NdiscNeighborFlags::SOLICITED));
    }

    #[test]
    fn solicitation_refusals() {
        let pod_ip = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5);
        assert!(matches!(
            NeighborSolicit::parse(&solicit_frame(pod_ip, true, 64)),
            Err(WireError::BadField {
                field: "hop limit",
                ..
            })
        ));
        let mut bad_sum = solicit_frame(pod_ip, true, 255);
        bad_sum[56] ^= 1;
        assert!(matches!(
            NeighborSolicit::parse(&bad_sum),
            Err(WireError::BadField {
                header: Header::Icmpv6,
                ..
            })
        ));
        assert!(NeighborSolicit::parse(&arp_request()).is_err());
    }
}
