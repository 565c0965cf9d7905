//! Decapsulation: validate a tunnel packet's outer headers and find the
//! frame it carries, or say why it must be dropped.

use core::net::IpAddr;
use core::ops::Range;

use smoltcp::wire::checksum::pseudo_header;
use smoltcp::wire::{
    EthernetAddress, IPV4_HEADER_LEN, IPV6_HEADER_LEN, IpAddress as SmolAddress, IpProtocol,
    Ipv4Packet, Ipv6Packet, UDP_HEADER_LEN, UdpPacket,
};

use crate::checksum::{ipv4_header_ok, transport_checksum_at};
use crate::drop_reason::DropReason;
use crate::error::WireError;
use crate::ethernet::{LinkHeader, is_vlan_tpid};
use crate::geneve;
use crate::ipv4_options;
use crate::segment::complete_checksum;
use crate::template::TunnelKind;
use crate::vni::Vni;
use crate::vxlan;

const ETHERNET_HEADER_LEN: usize = smoltcp::wire::ETHERNET_HEADER_LEN;

/// What a valid tunnel packet carries, with offsets into the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decapsulated {
    /// Where the inner Ethernet frame lies in the packet.
    pub inner: Range<usize>,
    /// The packet's network identifier (the configured one).
    pub vni: Vni,
    /// The sending VTEP: the outer source address.
    pub sender: IpAddr,
    /// The outer UDP source port (the sender's flow hash).
    pub source_port: u16,
    /// Where the Geneve options lie (empty for VXLAN).
    pub options: Range<usize>,
}

/// The checks a node applies to tunnel packets arriving on its uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decapsulator {
    /// VXLAN or Geneve.
    pub kind: TunnelKind,
    /// This node's VTEP address: the only outer destination accepted.
    pub local_vtep: IpAddr,
    /// The tunnel's UDP destination port.
    pub udp_port: u16,
    /// The uplink's MAC: a packet addressed to another unicast MAC is
    /// dropped, as the kernel drops frames for another host; broadcast and
    /// multicast destinations pass, as the kernel lets them (its
    /// `drop_unicast_in_l2_multicast` is off by default). `None` takes any
    /// destination, for packets that did not come off a NIC.
    pub local_mac: Option<EthernetAddress>,
    /// The only network identifier accepted.
    pub vni: Vni,
    /// Verify UDP checksums that are present (IPv4) and required (IPv6).
    pub verify_udp_checksum: bool,
    /// Take checksums a sender's kernel left for its device to finish
    /// ([`decapsulate_unfinished`](Self::decapsulate_unfinished)): for an
    /// uplink on a virtual device (a veth), which hands them across so. A
    /// NIC finishes every checksum before the wire.
    pub unfinished_checksums: bool,
    /// Critical Geneve options (class, type with its critical bit) this node
    /// understands; a packet with any other critical option is dropped.
    pub known_critical_options: Vec<(u16, u8)>,
}

impl Decapsulator {
    /// A decapsulator for `kind` on its IANA port, any destination MAC
    /// taken, checksums verified, no critical Geneve options understood.
    pub fn new(kind: TunnelKind, local_vtep: IpAddr, vni: Vni) -> Decapsulator {
        Decapsulator {
            kind,
            local_vtep,
            udp_port: kind.default_udp_port(),
            local_mac: None,
            vni,
            verify_udp_checksum: true,
            unfinished_checksums: false,
            known_critical_options: Vec::new(),
        }
    }

    /// Validate the outer headers of `packet` and return where its inner
    /// frame is, or the reason to drop it. Reads only; allocates nothing.
    pub fn decapsulate(&self, packet: &[u8]) -> Result<Decapsulated, DropReason> {
        self.decapsulate_checking(packet, self.verify_udp_checksum)
    }

    /// As [`decapsulate`](Self::decapsulate), leaving the outer UDP
    /// checksum unverified: for a packet the node's kernel received and
    /// handed on, which either verified it (GRO does before it merges) or
    /// made it on this node and left it for the device to finish. A
    /// super-packet's field then holds only the pseudo-header sum.
    pub fn decapsulate_from_kernel(&self, packet: &[u8]) -> Result<Decapsulated, DropReason> {
        self.decapsulate_checking(packet, false)
    }

    /// As [`decapsulate`](Self::decapsulate), for a packet it dropped as
    /// [`DropReason::BadUdpChecksum`]: accepts the checksums a sender's
    /// kernel left for its device to finish, which a virtual device such
    /// as a veth hands across unfinished (a receiving kernel trusts them on
    /// the skb's word; an XDP program sees the bytes). Either the outer
    /// UDP field holds just its pseudo-header sum (`udp_set_csum` leaving
    /// the datagram to the device), or the inner TCP or UDP field holds
    /// its own pseudo-header sum and the outer checksum was computed as if
    /// it were finished (local checksum offload): the inner checksum is
    /// then finished in `packet`, and the packet accepted if the outer one
    /// verifies with it. Anything else is still `BadUdpChecksum`, `packet`
    /// unchanged, as is everything without
    /// [`unfinished_checksums`](Self::unfinished_checksums). Off the hot
    /// path: only dropped packets come here.
    pub fn decapsulate_unfinished(&self, packet: &mut [u8]) -> Result<Decapsulated, DropReason> {
        if !self.unfinished_checksums {
            return Err(DropReason::BadUdpChecksum);
        }
        let outer = self.outer(packet)?;
        let found = self.decapsulate_outer(packet, &outer)?;
        let datagram = UdpPacket::new_unchecked(&packet[outer.udp.clone()]);
        let length = u32::try_from(outer.udp.len()).map_err(|_| DropReason::BadUdpLength)?;
        let (sender, destination) = (outer.sender.into(), outer.destination.into());
        if datagram.checksum() == pseudo_header(&sender, &destination, IpProtocol::Udp, length) {
            return Ok(found);
        }
        let Some((field, segment)) = unfinished_transport_checksum(&packet[found.inner.clone()])
        else {
            return Err(DropReason::BadUdpChecksum);
        };
        let field = found.inner.start + field;
        let segment = found.inner.start + segment.start..found.inner.start + segment.end;
        let unfinished = [packet[field], packet[field + 1]];
        complete_checksum(&mut packet[segment.clone()], 0, field - segment.start)
            .map_err(|_| DropReason::BadUdpChecksum)?;
        let datagram = UdpPacket::new_unchecked(&packet[outer.udp.clone()]);
        if datagram.verify_checksum(&sender, &destination) {
            Ok(found)
        } else {
            packet[field..field + 2].copy_from_slice(&unfinished);
            Err(DropReason::BadUdpChecksum)
        }
    }

    fn decapsulate_checking(
        &self,
        packet: &[u8],
        verify_udp_checksum: bool,
    ) -> Result<Decapsulated, DropReason> {
        let outer = self.outer(packet)?;
        let datagram = UdpPacket::new_unchecked(&packet[outer.udp.clone()]);
        // A zero UDP checksum means "none" over IPv4 but is not allowed over IPv6.
        let unchecked_ok = datagram.checksum() == 0 && outer.sender.is_ipv4();
        if verify_udp_checksum
            && !unchecked_ok
            && (datagram.checksum() == 0
                || !datagram.verify_checksum(&outer.sender.into(), &outer.destination.into()))
        {
            return Err(DropReason::BadUdpChecksum);
        }
        self.decapsulate_outer(packet, &outer)
    }

    /// Check the link, IP and UDP headers of `packet` (all but the UDP
    /// checksum): where its UDP datagram lies, and who sent it to whom.
    fn outer(&self, packet: &[u8]) -> Result<Outer, DropReason> {
        let (ip_offset, ethertype) = link_payload(packet)?;
        if let Some(mac) = self.local_mac {
            let destination = EthernetAddress::from_bytes(&packet[..6]);
            if destination.is_unicast() && destination != mac {
                return Err(DropReason::NotOurUplinkMac);
            }
        }
        let ip = &packet[ip_offset..];
        let (udp_range, sender, destination) = match ethertype {
            ETHERTYPE_IPV4 => outer_ipv4(ip)?,
            ETHERTYPE_IPV6 => outer_ipv6(ip)?,
            _ => return Err(DropReason::NotIp),
        };
        if destination != self.local_vtep {
            return Err(DropReason::NotForUs);
        }
        let udp_offset = ip_offset + udp_range.start;
        let udp = &ip[udp_range];
        if udp.len() < UDP_HEADER_LEN {
            return Err(DropReason::TruncatedUdp);
        }
        let datagram = UdpPacket::new_unchecked(udp);
        if datagram.dst_port() != self.udp_port {
            return Err(DropReason::WrongUdpPort);
        }
        let udp_len = usize::from(datagram.len());
        if udp_len < UDP_HEADER_LEN || udp_len > udp.len() {
            return Err(DropReason::BadUdpLength);
        }
        Ok(Outer {
            udp: udp_offset..udp_offset + udp_len,
            sender,
            destination,
        })
    }

    /// The tunnel header of a packet whose outer headers `outer` passed.
    fn decapsulate_outer(&self, packet: &[u8], outer: &Outer) -> Result<Decapsulated, DropReason> {
        let tunnel_offset = outer.udp.start + UDP_HEADER_LEN;
        let tunnel = &packet[tunnel_offset..outer.udp.end];
        let source_port = UdpPacket::new_unchecked(&packet[outer.udp.clone()]).src_port();
        let found = self.decapsulate_datagram(tunnel, outer.sender, source_port)?;
        Ok(Decapsulated {
            inner: tunnel_offset + found.inner.start..tunnel_offset + found.inner.end,
            options: tunnel_offset + found.options.start..tunnel_offset + found.options.end,
            ..found
        })
    }

    /// Validate the tunnel header of a datagram that a UDP socket on the
    /// tunnel port received from `sender`'s `source_port` (the kernel has
    /// checked the outer headers and the UDP checksum) and return where
    /// its inner frame is, offsets from the datagram's start. Reads only.
    pub fn decapsulate_datagram(
        &self,
        datagram: &[u8],
        sender: IpAddr,
        source_port: u16,
    ) -> Result<Decapsulated, DropReason> {
        let (header_len, vni, options) = match self.kind {
            TunnelKind::Vxlan => self.vxlan(datagram)?,
            TunnelKind::Geneve => self.geneve(datagram)?,
        };
        if vni != self.vni {
            return Err(DropReason::UnknownVni);
        }
        if datagram.len() - header_len < ETHERNET_HEADER_LEN {
            return Err(DropReason::TruncatedInner);
        }
        Ok(Decapsulated {
            inner: header_len..datagram.len(),
            vni,
            sender,
            source_port,
            options,
        })
    }

    fn vxlan(&self, tunnel: &[u8]) -> Result<(usize, Vni, Range<usize>), DropReason> {
        let header = vxlan::Packet::new_checked(tunnel).map_err(|_| DropReason::TruncatedTunnel)?;
        if !header.vni_valid() {
            return Err(DropReason::VxlanBadFlags);
        }
        Ok((
            vxlan::HEADER_LEN,
            header.vni(),
            vxlan::HEADER_LEN..vxlan::HEADER_LEN,
        ))
    }

    fn geneve(&self, tunnel: &[u8]) -> Result<(usize, Vni, Range<usize>), DropReason> {
        let header =
            geneve::Packet::new_checked(tunnel).map_err(|_| DropReason::TruncatedTunnel)?;
        if header.version() != geneve::VERSION {
            return Err(DropReason::GeneveBadVersion);
        }
        if header.protocol_type() != geneve::PROTOCOL_ETHERNET {
            return Err(DropReason::GeneveBadProtocol);
        }
        if header.oam() {
            return Err(DropReason::GeneveOam);
        }
        for option in header.option_iter() {
            let option = option.map_err(|_| DropReason::GeneveBadOptions)?;
            if option.critical()
                && !self
                    .known_critical_options
                    .contains(&(option.class(), option.option_type()))
            {
                return Err(DropReason::GeneveCriticalOption);
            }
        }
        Ok((
            header.header_len(),
            header.vni(),
            geneve::HEADER_LEN..header.header_len(),
        ))
    }
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPV4_PROTOCOL: usize = 9;
const IPPROTO_UDP: u8 = 17;

/// Where the outer IP header starts and its EtherType. Untagged frames, the
/// usual case, take a fast path; tagged ones go through [`LinkHeader`].
fn link_payload(packet: &[u8]) -> Result<(usize, u16), DropReason> {
    let Some(&[high, low]) = packet.get(12..14) else {
        return Err(DropReason::TruncatedEthernet);
    };
    let ethertype = u16::from_be_bytes([high, low]);
    if !is_vlan_tpid(ethertype) {
        return Ok((ETHERNET_HEADER_LEN, ethertype));
    }
    match LinkHeader::parse(packet) {
        Ok(link) => Ok((link.header_len, link.ethertype.into())),
        Err(WireError::Truncated { .. }) => Err(DropReason::TruncatedEthernet),
        // More tags than 802.1ad allows: not an IP packet we can take.
        Err(WireError::BadField { .. }) => Err(DropReason::NotIp),
    }
}

/// Check an outer IPv4 header; return the UDP datagram's range within
/// `ip`, the source and the destination.
fn outer_ipv4(ip: &[u8]) -> Result<(Range<usize>, IpAddr, IpAddr), DropReason> {
    if ip.len() < IPV4_HEADER_LEN {
        return Err(DropReason::TruncatedIpv4);
    }
    let packet = Ipv4Packet::new_unchecked(ip);
    let header_len = usize::from(packet.header_len());
    let total_len = usize::from(packet.total_len());
    if packet.version() != 4 || header_len < IPV4_HEADER_LEN || total_len < header_len {
        return Err(DropReason::BadIpv4Header);
    }
    if header_len > ip.len() || total_len > ip.len() {
        return Err(DropReason::TruncatedIpv4);
    }
    if !ipv4_header_ok(&ip[..header_len]) {
        return Err(DropReason::BadIpv4Checksum);
    }
    if ipv4_options::check_header(&ip[..header_len]).is_err() {
        return Err(DropReason::BadIpv4Options);
    }
    if packet.more_frags() || packet.frag_offset() != 0 {
        return Err(DropReason::Ipv4Fragment);
    }
    // The raw byte: smoltcp's `next_header()` maps it through an enum first.
    if ip[IPV4_PROTOCOL] != IPPROTO_UDP {
        return Err(DropReason::NotUdp);
    }
    Ok((
        header_len..total_len,
        IpAddr::V4(packet.src_addr()),
        IpAddr::V4(packet.dst_addr()),
    ))
}

/// Check an outer IPv6 header, as [`outer_ipv4`]. Extension headers are
/// not walked: a tunnel packet's next header must be UDP.
fn outer_ipv6(ip: &[u8]) -> Result<(Range<usize>, IpAddr, IpAddr), DropReason> {
    if ip.len() < IPV6_HEADER_LEN {
        return Err(DropReason::TruncatedIpv6);
    }
    let packet = Ipv6Packet::new_unchecked(ip);
    if packet.version() != 6 {
        return Err(DropReason::BadIpv6Header);
    }
    let end = IPV6_HEADER_LEN + usize::from(packet.payload_len());
    if end > ip.len() {
        return Err(DropReason::TruncatedIpv6);
    }
    if packet.next_header() != IpProtocol::Udp {
        return Err(DropReason::NotUdp);
    }
    Ok((
        IPV6_HEADER_LEN..end,
        IpAddr::V6(packet.src_addr()),
        IpAddr::V6(packet.dst_addr()),
    ))
}

/// A tunnel packet's outer headers, checked (see [`Decapsulator::outer`]).
struct Outer {
    /// The UDP datagram, header included, within the packet.
    udp: Range<usize>,
    sender: IpAddr,
    destination: IpAddr,
}

/// Where, in an inner frame, a TCP or UDP checksum field lies that holds
/// only its pseudo-header sum, as a sender's kernel leaves it for the
/// device, and the segment it covers: an untagged IPv4 frame that is no
/// fragment, or IPv6 with the transport header next, whole within the
/// frame. `None` otherwise.
fn unfinished_transport_checksum(frame: &[u8]) -> Option<(usize, Range<usize>)> {
    let ip = frame.get(ETHERNET_HEADER_LEN..)?;
    let (header_len, protocol, length, src, dst) = match frame.get(12..14)? {
        [0x08, 0x00] => {
            let packet = Ipv4Packet::new_checked(ip).ok()?;
            let header_len = usize::from(packet.header_len());
            if packet.version() != 4
                || header_len < IPV4_HEADER_LEN
                || packet.more_frags()
                || packet.frag_offset() != 0
            {
                return None;
            }
            (
                header_len,
                ip[IPV4_PROTOCOL],
                usize::from(packet.total_len()).checked_sub(header_len)?,
                SmolAddress::Ipv4(packet.src_addr()),
                SmolAddress::Ipv4(packet.dst_addr()),
            )
        }
        [0x86, 0xdd] => {
            let packet = Ipv6Packet::new_checked(ip).ok()?;
            if packet.version() != 6 {
                return None;
            }
            (
                IPV6_HEADER_LEN,
                u8::from(packet.next_header()),
                usize::from(packet.payload_len()),
                SmolAddress::Ipv6(packet.src_addr()),
                SmolAddress::Ipv6(packet.dst_addr()),
            )
        }
        _ => return None,
    };
    let transport = ETHERNET_HEADER_LEN + header_len;
    let field = transport + transport_checksum_at(protocol)?;
    let segment = transport..transport + length;
    if segment.end > frame.len() || field + 2 > segment.end {
        return None;
    }
    let length = u32::try_from(length).ok()?;
    let pseudo = pseudo_header(&src, &dst, IpProtocol::from(protocol), length);
    (u16::from_be_bytes([frame[field], frame[field + 1]]) == pseudo).then_some((field, segment))
}

#[cfg(test)]
mod tests {
    use core::net::{Ipv4Addr, Ipv6Addr};

    use podswitch_lab::flood::with_ipv4_options;
    use smoltcp::wire::EthernetAddress;

    use super::*;
    use crate::checksum::data;
    use crate::geneve::GeneveOptionRepr;
    use crate::template::{OuterTemplate, TunnelSpec};

    const HEADROOM: usize = 128;
    const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 12);
    const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 11);

    fn spec(
        kind: TunnelKind,
        options: &'static [GeneveOptionRepr<'static>],
    ) -> TunnelSpec<'static> {
        TunnelSpec {
            kind,
            vni: Vni::new(7).unwrap(),
            udp_port: kind.default_udp_port(),
            local_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            next_hop_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            vlan: None,
            local_ip: IpAddr::V4(REMOTE),
            remote_ip: IpAddr::V4(LOCAL),
            ttl: 64,
            geneve_options: options,
            underlay_mtu: 1500,
        }
    }

    /// A tunnel packet as the peer at REMOTE would send it to LOCAL.
    fn packet(spec: &TunnelSpec) -> (Vec<u8>, Vec<u8>) {
        let inner: Vec<u8> = (0..60u8).collect();
        (packet_carrying(spec, &inner), inner)
    }

    /// A tunnel packet from REMOTE to LOCAL carrying `inner`.
    fn packet_carrying(spec: &TunnelSpec, inner: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; HEADROOM];
        buf.extend_from_slice(inner);
        let end = buf.len();
        let out = OuterTemplate::new(spec)
            .unwrap()
            .encapsulate(&mut buf, HEADROOM..end)
            .unwrap();
        buf[out].to_vec()
    }

    /// A pod's UDP/IPv4 frame, every checksum finished.
    fn inner_udp() -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[..14].copy_from_slice(&[2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 0, 8, 0x08, 0x00]);
        f.extend(b"a datagram of 29 bytes".iter());
        let ip_len = (f.len() - 14) as u16;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[22] = 64;
        f[23] = IPPROTO_UDP;
        f[26..30].copy_from_slice(&[10, 244, 1, 2]);
        f[30..34].copy_from_slice(&[10, 244, 2, 2]);
        crate::checksum::fill_ipv4_header(&mut f[14..34]);
        f[34..36].copy_from_slice(&5353u16.to_be_bytes());
        f[36..38].copy_from_slice(&53u16.to_be_bytes());
        f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
        let (src, dst) = (
            SmolAddress::Ipv4(Ipv4Addr::new(10, 244, 1, 2)),
            SmolAddress::Ipv4(Ipv4Addr::new(10, 244, 2, 2)),
        );
        let pseudo = pseudo_header(&src, &dst, IpProtocol::Udp, u32::from(ip_len - 20));
        f[40..42].copy_from_slice(&pseudo.to_be_bytes());
        complete_checksum(&mut f[34..], 0, 6).unwrap();
        f
    }

    /// What a sender's kernel leaves for its device when a veth carries
    /// the packet on unfinished: either the outer UDP checksum (the field
    /// holding its pseudo-header sum) or, with local checksum offload, the
    /// inner one. Both are taken, the inner one finished in place; other
    /// wrong checksums are still dropped, the packet left as it came.
    #[test]
    fn checksums_left_for_the_device_are_finished() {
        let strict = decapsulator(TunnelKind::Vxlan);
        let decap = Decapsulator {
            unfinished_checksums: true,
            ..strict.clone()
        };
        let inner = inner_udp();
        let mut good = packet_carrying(&spec(TunnelKind::Vxlan, &[]), &inner);
        let inner_at = 50..50 + inner.len();
        let outer_field = 14 + 20 + 6;
        // As a kernel sends it: with an outer UDP checksum (the template
        // leaves IPv4's out).
        UdpPacket::new_unchecked(&mut good[34..])
            .fill_checksum(&SmolAddress::Ipv4(REMOTE), &SmolAddress::Ipv4(LOCAL));
        assert_ne!(good[outer_field..outer_field + 2], [0, 0]);
        assert!(decap.decapsulate(&good).is_ok());
        let udp_len = (good.len() - 34) as u32;
        let pseudo = pseudo_header(
            &SmolAddress::Ipv4(REMOTE),
            &SmolAddress::Ipv4(LOCAL),
            IpProtocol::Udp,
            udp_len,
        );

        let mut outer_unfinished = good.clone();
        outer_unfinished[outer_field..outer_field + 2].copy_from_slice(&pseudo.to_be_bytes());
        assert_eq!(
            decap.decapsulate(&outer_unfinished),
            Err(DropReason::BadUdpChecksum)
        );
        let before = outer_unfinished.clone();
        assert_eq!(
            strict.decapsulate_unfinished(&mut outer_unfinished),
            Err(DropReason::BadUdpChecksum)
        );
        assert_eq!(outer_unfinished, before);
        let d = decap.decapsulate_unfinished(&mut outer_unfinished).unwrap();
        assert_eq!(outer_unfinished[d.inner], inner[..]);

        // Local checksum offload: the outer checksum counts the inner one
        // as finished, the inner field holds its pseudo-header sum.
        let inner_field = inner_at.start + 34 + 6;
        let mut inner_unfinished = good.clone();
        let inner_pseudo = pseudo_header(
            &SmolAddress::Ipv4(Ipv4Addr::new(10, 244, 1, 2)),
            &SmolAddress::Ipv4(Ipv4Addr::new(10, 244, 2, 2)),
            IpProtocol::Udp,
            (inner.len() - 34) as u32,
        );
        inner_unfinished[inner_field..inner_field + 2].copy_from_slice(&inner_pseudo.to_be_bytes());
        assert_eq!(
            decap.decapsulate(&inner_unfinished),
            Err(DropReason::BadUdpChecksum)
        );
        let d = decap.decapsulate_unfinished(&mut inner_unfinished).unwrap();
        assert_eq!(d.inner, inner_at);
        assert_eq!(inner_unfinished, good);

        // A wrong checksum is no unfinished one: dropped, nothing changed.
        // (An unfinished checksum covers no data: a virtual device has no
        // wire to damage it, and a NIC finishes every checksum.)
        let mut wrong_outer = good.clone();
        wrong_outer[inner_field..inner_field + 2].copy_from_slice(&inner_pseudo.to_be_bytes());
        wrong_outer[outer_field] ^= 0x40;
        let mut wrong_inner = good.clone();
        wrong_inner[inner_field] ^= 0x40;
        for mut damaged in [wrong_outer, wrong_inner] {
            let before = damaged.clone();
            assert_eq!(
                decap.decapsulate_unfinished(&mut damaged),
                Err(DropReason::BadUdpChecksum)
            );
            assert_eq!(damaged, before);
        }
    }

    fn decapsulator(kind: TunnelKind) -> Decapsulator {
        Decapsulator::new(kind, IpAddr::V4(LOCAL), Vni::new(7).unwrap())
    }

    fn fix_ipv4_checksum(p: &mut [u8]) {
        p[24..26].fill(0);
        let sum = !data(&p[14..34]);
        p[24..26].copy_from_slice(&sum.to_be_bytes());
    }

    #[test]
    fn accepts_vxlan_and_returns_inner_frame() {
        let (p, inner) = packet(&spec(TunnelKind::Vxlan, &[]));
        let d = decapsulator(TunnelKind::Vxlan).decapsulate(&p).unwrap();
        assert_eq!(&p[d.inner.clone()], &inner[..]);
        assert_eq!(d.inner, 50..110);
        assert_eq!(d.vni.get(), 7);
        assert_eq!(d.sender, IpAddr::V4(REMOTE));
        assert!(d.source_port >= 49152);
        assert_eq!(d.options, 50..50);
    }

    #[test]
    fn accepts_geneve_with_known_critical_option() {
        static OPTIONS: [GeneveOptionRepr<'static>; 1] = [GeneveOptionRepr {
            class: 0x0105,
            option_type: 0x81,
            data: &[9, 9, 9, 9],
        }];
        let (p, inner) = packet(&spec(TunnelKind::Geneve, &OPTIONS));
        let mut decap = decapsulator(TunnelKind::Geneve);
        assert_eq!(decap.decapsulate(&p), Err(DropReason::GeneveCriticalOption));
        decap.known_critical_options.push((0x0105, 0x81));
        let d = decap.decapsulate(&p).unwrap();
        assert_eq!(&p[d.inner], &inner[..]);
        assert_eq!(&p[d.options], &[0x01, 0x05, 0x81, 0x01, 9, 9, 9, 9]);
    }

    #[test]
    fn datagrams_from_a_udp_socket() {
        static OPTIONS: [GeneveOptionRepr<'static>; 1] = [GeneveOptionRepr {
            class: 0x0105,
            option_type: 0x01,
            data: &[9, 9, 9, 9],
        }];
        let sender = IpAddr::V4(REMOTE);
        for (kind, options) in [
            (TunnelKind::Vxlan, &[][..]),
            (TunnelKind::Geneve, &OPTIONS[..]),
        ] {
            let (p, inner) = packet(&spec(kind, options));
            let decap = decapsulator(kind);
            let whole = decap.decapsulate(&p).unwrap();
            // What a UDP socket hands over: the datagram after the UDP header.
            let datagram = &p[42..];
            let d = decap.decapsulate_datagram(datagram, sender, 50000).unwrap();
            assert_eq!(&datagram[d.inner.clone()], &inner[..]);
            assert_eq!(d.inner.start + 42, whole.inner.start);
            assert_eq!(&datagram[d.options.clone()], &p[whole.options]);
            assert_eq!((d.sender, d.source_port, d.vni), (sender, 50000, whole.vni));
            assert_eq!(
                decap.decapsulate_datagram(&datagram[..d.inner.start + 13], sender, 1),
                Err(DropReason::TruncatedInner)
            );
            assert_eq!(
                decap.decapsulate_datagram(&datagram[..7], sender, 1),
                Err(DropReason::TruncatedTunnel)
            );
        }
        let (p, _) = packet(&spec(TunnelKind::Vxlan, &[]));
        let other_vni =
            Decapsulator::new(TunnelKind::Vxlan, IpAddr::V4(LOCAL), Vni::new(8).unwrap());
        assert_eq!(
            other_vni.decapsulate_datagram(&p[42..], IpAddr::V4(REMOTE), 1),
            Err(DropReason::UnknownVni)
        );
    }

    #[test]
    fn drop_reasons_for_outer_headers() {
        let (good, _) = packet(&spec(TunnelKind::Vxlan, &[]));
        let decap = decapsulator(TunnelKind::Vxlan);
        let reason = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut p = good.clone();
            edit(&mut p);
            decap.decapsulate(&p).unwrap_err()
        };
        assert_eq!(reason(&|p| p.truncate(13)), DropReason::TruncatedEthernet);
        assert_eq!(reason(&|p| p[12] = 0x88), DropReason::NotIp);
        assert_eq!(reason(&|p| p.truncate(30)), DropReason::TruncatedIpv4);
        assert_eq!(reason(&|p| p[14] = 0x44), DropReason::BadIpv4Header);
        assert_eq!(reason(&|p| p.truncate(100)), DropReason::TruncatedIpv4);
        assert_eq!(reason(&|p| p[22] = 1), DropReason::BadIpv4Checksum);
        let fragment = |p: &mut Vec<u8>| {
            p[20] |= 0x20;
            fix_ipv4_checksum(p);
        };
        assert_eq!(reason(&fragment), DropReason::Ipv4Fragment);
        let tcp = |p: &mut Vec<u8>| {
            p[23] = 6;
            fix_ipv4_checksum(p);
        };
        assert_eq!(reason(&tcp), DropReason::NotUdp);
        let other_dst = |p: &mut Vec<u8>| {
            p[33] = 99;
            fix_ipv4_checksum(p);
        };
        assert_eq!(reason(&other_dst), DropReason::NotForUs);
        assert_eq!(
            reason(&|p| p[36..38].copy_from_slice(&[0, 53])),
            DropReason::WrongUdpPort
        );
        assert_eq!(
            reason(&|p| p[38..40].copy_from_slice(&[0, 7])),
            DropReason::BadUdpLength
        );
        assert_eq!(
            reason(&|p| p[38..40].copy_from_slice(&[9, 0])),
            DropReason::BadUdpLength
        );
        assert_eq!(
            reason(&|p| p[40..42].copy_from_slice(&[0, 1])),
            DropReason::BadUdpChecksum
        );
        assert_eq!(reason(&|p| p[42] = 0), DropReason::VxlanBadFlags);
        assert_eq!(reason(&|p| p[48] = 8), DropReason::UnknownVni);
        let short_inner = |p: &mut Vec<u8>| {
            // UDP length covering only 8 + 8 + 13 bytes: inner frame too short.
            let udp_len: u16 = 8 + 8 + 13;
            p[38..40].copy_from_slice(&udp_len.to_be_bytes());
        };
        assert_eq!(reason(&short_inner), DropReason::TruncatedInner);
        let short_tunnel = |p: &mut Vec<u8>| p[38..40].copy_from_slice(&12u16.to_be_bytes());
        assert_eq!(reason(&short_tunnel), DropReason::TruncatedTunnel);
    }

    #[test]
    fn drop_reasons_for_geneve() {
        let (good, _) = packet(&spec(TunnelKind::Geneve, &[]));
        let decap = decapsulator(TunnelKind::Geneve);
        let reason = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut p = good.clone();
            edit(&mut p);
            decap.decapsulate(&p).unwrap_err()
        };
        assert_eq!(reason(&|p| p[42] = 0x40), DropReason::GeneveBadVersion);
        assert_eq!(
            reason(&|p| p[44..46].copy_from_slice(&[0x08, 0x00])),
            DropReason::GeneveBadProtocol
        );
        assert_eq!(reason(&|p| p[43] = 0x80), DropReason::GeneveOam);
        // Opt Len 1 makes the first inner bytes an option whose length overruns.
        let bad_options = |p: &mut Vec<u8>| {
            p[42] = 0x01;
            p[50..54].copy_from_slice(&[0, 1, 2, 0x1f]);
        };
        assert_eq!(reason(&bad_options), DropReason::GeneveBadOptions);
        let too_long = |p: &mut Vec<u8>| p[42] = 0x3f; // 252 option bytes, 60 present
        assert_eq!(reason(&too_long), DropReason::TruncatedTunnel);
        assert_eq!(
            reason(&|p| p[36..38].copy_from_slice(&4789u16.to_be_bytes())),
            DropReason::WrongUdpPort
        );
    }

    #[test]
    fn ipv6_outer_and_its_checksum() {
        let local = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 12);
        let s = TunnelSpec {
            local_ip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 11)),
            remote_ip: IpAddr::V6(local),
            ..spec(TunnelKind::Vxlan, &[])
        };
        let (good, inner) = packet(&s);
        let decap = Decapsulator::new(TunnelKind::Vxlan, IpAddr::V6(local), Vni::new(7).unwrap());
        let d = decap.decapsulate(&good).unwrap();
        assert_eq!(&good[d.inner], &inner[..]);

        let mut zero = good.clone();
        zero[60..62].fill(0); // UDP checksum at 14 + 40 + 6
        assert_eq!(decap.decapsulate(&zero), Err(DropReason::BadUdpChecksum));
        let mut corrupt = good.clone();
        *corrupt.last_mut().unwrap() ^= 0xff;
        assert_eq!(decap.decapsulate(&corrupt), Err(DropReason::BadUdpChecksum));
        let lenient = Decapsulator {
            verify_udp_checksum: false,
            ..decap.clone()
        };
        assert!(lenient.decapsulate(&corrupt).is_ok());

        let mut short = good.clone();
        short.truncate(50);
        assert_eq!(decap.decapsulate(&short), Err(DropReason::TruncatedIpv6));
        let mut v = good.clone();
        v[14] = 0x40;
        assert_eq!(decap.decapsulate(&v), Err(DropReason::BadIpv6Header));
        let mut hop_by_hop = good.clone();
        hop_by_hop[20] = 0;
        assert_eq!(decap.decapsulate(&hop_by_hop), Err(DropReason::NotUdp));
    }

    #[test]
    fn ethernet_padding_is_not_part_of_the_inner_frame() {
        let (mut p, inner) = packet(&spec(TunnelKind::Vxlan, &[]));
        p.extend_from_slice(&[0u8; 6]);
        let d = decapsulator(TunnelKind::Vxlan).decapsulate(&p).unwrap();
        assert_eq!(&p[d.inner], &inner[..]);
    }

    #[test]
    fn outer_destination_mac() {
        let uplink = EthernetAddress([2, 0, 0, 0, 0, 2]);
        let decap = Decapsulator {
            local_mac: Some(uplink),
            ..decapsulator(TunnelKind::Vxlan)
        };
        let tagged = TunnelSpec {
            vlan: Some(30),
            ..spec(TunnelKind::Vxlan, &[])
        };
        for (good, _) in [packet(&spec(TunnelKind::Vxlan, &[])), packet(&tagged)] {
            assert!(decap.decapsulate(&good).is_ok());
            let to = |mac: [u8; 6]| {
                let mut p = good.clone();
                p[..6].copy_from_slice(&mac);
                decap.decapsulate(&p)
            };
            // Another host's unicast MAC: dropped, tagged or not.
            assert_eq!(to([2, 0, 0, 0, 0, 9]), Err(DropReason::NotOurUplinkMac));
            // Broadcast and multicast: taken, as the kernel takes them.
            for group in [
                [0xff; 6],
                [0x01, 0x00, 0x5e, 0, 0, 1],
                [0x33, 0x33, 0, 0, 0, 1],
            ] {
                assert!(to(group).is_ok(), "{group:02x?}");
            }
            // Without the uplink's MAC, any destination.
            let mut other = good.clone();
            other[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
            assert!(decapsulator(TunnelKind::Vxlan).decapsulate(&other).is_ok());
        }
    }

    #[test]
    fn outer_ipv4_options() {
        let (good, inner) = packet(&spec(TunnelKind::Vxlan, &[]));
        let decap = decapsulator(TunnelKind::Vxlan);
        // Router Alert and a Record Route with a free slot: taken, and the
        // inner frame is where the longer header puts it.
        let p = with_ipv4_options(&good, &[148, 4, 0, 0, 7, 7, 4, 0, 0, 0, 0, 0]);
        let d = decap.decapsulate(&p).unwrap();
        assert_eq!(&p[d.inner], &inner[..]);
        for bad in [
            &[130, 0, 0, 0][..],
            &[1, 7, 11, 4][..],
            &[0x6a; 40][..],
            &[7, 3, 4, 7, 3, 4, 0, 0][..],
        ] {
            assert_eq!(
                decap.decapsulate(&with_ipv4_options(&good, bad)),
                Err(DropReason::BadIpv4Options),
                "{bad:02x?}"
            );
        }
    }

    #[test]
    fn vlan_tagged_underlay() {
        let s = TunnelSpec {
            vlan: Some(30),
            ..spec(TunnelKind::Vxlan, &[])
        };
        let (p, inner) = packet(&s);
        let d = decapsulator(TunnelKind::Vxlan).decapsulate(&p).unwrap();
        assert_eq!(&p[d.inner], &inner[..]);
    }
}
