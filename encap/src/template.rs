//! Encapsulation in place from per-peer precomputed outer headers, in the
//! manner of OVS's `tnl_push`: the outer Ethernet, IP, UDP and tunnel
//! headers are built once per peer; per frame they are copied into the
//! buffer's headroom and only the lengths, the IPv4 checksum (incrementally),
//! the UDP source port (and IPv6 flow label and UDP checksum) are patched.
//! The frame itself is never copied.
//!
//! [`OuterTemplate::encapsulate_offloaded`] does the same for a frame the
//! node's kernel is to finish: a TCP super-frame of up to 64 KB from a
//! pod's TAP device, handed whole to a TAP device opened for UDP tunnel
//! GSO with the header [`TunnelOffload`] describes, for the kernel (or the
//! NIC) to cut into encapsulated segments of the underlay MTU.

use core::fmt;
use core::net::IpAddr;
use core::ops::Range;

use smoltcp::wire::{
    ETHERNET_HEADER_LEN, EthernetAddress, EthernetFrame, EthernetProtocol, IPV4_HEADER_LEN,
    IPV6_HEADER_LEN, IpProtocol, Ipv4Packet, Ipv6Packet, UDP_HEADER_LEN, UdpPacket,
};

use crate::checksum::{combine, data, finish_udp, ipv4_pseudo_header, sum};
use crate::drop_reason::DropReason;
use crate::error::WireError;
use crate::ethernet::{VLAN_TAG_LEN, emit_vlan_tag};
use crate::flow::{flow_hash, source_port};
use crate::geneve::{self, GeneveOptionRepr};
use crate::segment::{TcpIpv4, ipv4_addresses};
use crate::virtio_net::{Checksum, GsoKind, Offload, OuterHeaders, TunnelOffload};
use crate::vni::Vni;
use crate::vxlan;

/// Longest outer header: Ethernet + VLAN tag + IPv6 + UDP + Geneve with the
/// longest options area.
pub const MAX_TEMPLATE_LEN: usize = ETHERNET_HEADER_LEN
    + VLAN_TAG_LEN
    + IPV6_HEADER_LEN
    + UDP_HEADER_LEN
    + geneve::HEADER_LEN
    + geneve::MAX_OPTIONS_LEN;

/// The template area: [`MAX_TEMPLATE_LEN`] rounded up to a copy width.
const AREA_LEN: usize = 384;
const _: () = assert!(AREA_LEN >= MAX_TEMPLATE_LEN);

/// The smallest IPv4 MTU an inner packet may be left with (RFC 791).
const MIN_INNER_MTU: usize = 68;

/// The largest IPv4 Total Length and IPv6 Payload Length.
const MAX_IP_LEN: usize = 65535;

/// Which tunnel header carries the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelKind {
    /// VXLAN (RFC 7348).
    Vxlan,
    /// Geneve (RFC 8926).
    Geneve,
}

impl TunnelKind {
    /// The IANA-assigned UDP port of the tunnel.
    pub const fn default_udp_port(self) -> u16 {
        match self {
            TunnelKind::Vxlan => vxlan::UDP_PORT,
            TunnelKind::Geneve => geneve::UDP_PORT,
        }
    }

    /// The length of this tunnel's header at the start of `datagram` (a
    /// UDP payload): VXLAN's 8 bytes, Geneve's 8 and its options; `None`
    /// when the datagram is too short to hold it.
    pub fn header_len(self, datagram: &[u8]) -> Option<usize> {
        match self {
            TunnelKind::Vxlan => (datagram.len() >= vxlan::HEADER_LEN).then_some(vxlan::HEADER_LEN),
            TunnelKind::Geneve => geneve::Packet::new_checked(datagram)
                .ok()
                .map(|g| g.header_len()),
        }
    }

    /// The tunnel's lowercase name, as configuration spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            TunnelKind::Vxlan => "vxlan",
            TunnelKind::Geneve => "geneve",
        }
    }
}

impl fmt::Display for TunnelKind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything an outer header is built from: the tunnel, both VTEPs and the
/// underlay next hop toward the remote one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelSpec<'a> {
    /// VXLAN or Geneve.
    pub kind: TunnelKind,
    /// The network identifier put in every packet.
    pub vni: Vni,
    /// Destination UDP port (4789 VXLAN, 6081 Geneve, or configured).
    pub udp_port: u16,
    /// This node's uplink MAC.
    pub local_mac: EthernetAddress,
    /// The underlay next hop's MAC toward the remote VTEP.
    pub next_hop_mac: EthernetAddress,
    /// An 802.1Q tag for the underlay, if it is tagged.
    pub vlan: Option<u16>,
    /// This node's VTEP address.
    pub local_ip: IpAddr,
    /// The remote VTEP address; same family as `local_ip`.
    pub remote_ip: IpAddr,
    /// Outer IPv4 TTL / IPv6 hop limit.
    pub ttl: u8,
    /// Geneve options sent with every packet (ignored for VXLAN).
    pub geneve_options: &'a [GeneveOptionRepr<'a>],
    /// The underlay's IP MTU: the longest outer IP packet allowed.
    pub underlay_mtu: u16,
}

/// Why a [`TunnelSpec`] cannot make a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The local and remote VTEP addresses are of different families.
    #[error("local VTEP {local} and remote VTEP {remote} are not the same IP family")]
    MixedFamilies {
        /// This node's VTEP.
        local: IpAddr,
        /// The peer's VTEP.
        remote: IpAddr,
    },
    /// The underlay MTU leaves no room for a frame after the outer headers.
    #[error(
        "underlay MTU {mtu} is too small: the outer headers take {overhead} bytes, \
         leaving less than the minimum {MIN_INNER_MTU}-byte inner MTU"
    )]
    MtuTooSmall {
        /// The configured underlay MTU.
        mtu: u16,
        /// Outer IP + UDP + tunnel header + inner Ethernet header.
        overhead: usize,
    },
    /// A header field cannot be expressed (VLAN id, Geneve options).
    #[error(transparent)]
    Wire(#[from] WireError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// Sum of the IPv4 header words with Total Length and checksum zero.
    V4 { header_sum: u16 },
    /// Sum of the UDP pseudo-header addresses and protocol, the destination
    /// port and the tunnel header: everything constant in the UDP checksum.
    V6 { udp_sum: u16 },
}

/// A peer's outer header, precomputed: copy, patch a few fields, done.
#[derive(Clone, PartialEq, Eq)]
pub struct OuterTemplate {
    /// The header, right-aligned: it occupies the last `len` bytes, so a
    /// fixed-size copy of the area's tail ends exactly where the frame starts.
    area: [u8; AREA_LEN],
    len: usize,
    ip_offset: usize,
    udp_offset: usize,
    family: Family,
    /// Sum of the UDP pseudo-header's addresses and protocol.
    pseudo_sum: u16,
    max_frame_len: usize,
    max_super_frame_len: usize,
    kind: TunnelKind,
    remote_ip: IpAddr,
}

impl OuterTemplate {
    /// Build the outer header for `spec`.
    pub fn new(spec: &TunnelSpec) -> Result<OuterTemplate, TemplateError> {
        let mut bytes = [0u8; MAX_TEMPLATE_LEN];
        let ip_ethertype = match spec.local_ip {
            IpAddr::V4(_) => EthernetProtocol::Ipv4,
            IpAddr::V6(_) => EthernetProtocol::Ipv6,
        };

        let mut eth = EthernetFrame::new_unchecked(&mut bytes[..]);
        eth.set_dst_addr(spec.next_hop_mac);
        eth.set_src_addr(spec.local_mac);
        let ip_offset = match spec.vlan {
            Some(vlan) => {
                eth.set_ethertype(EthernetProtocol::Unknown(0x8100));
                emit_vlan_tag(vlan, ip_ethertype, &mut bytes[ETHERNET_HEADER_LEN..])?;
                ETHERNET_HEADER_LEN + VLAN_TAG_LEN
            }
            None => {
                eth.set_ethertype(ip_ethertype);
                ETHERNET_HEADER_LEN
            }
        };

        let udp_offset = match (spec.local_ip, spec.remote_ip) {
            (IpAddr::V4(local), IpAddr::V4(remote)) => {
                let mut ip = Ipv4Packet::new_unchecked(&mut bytes[ip_offset..]);
                ip.set_version(4);
                ip.set_header_len(IPV4_HEADER_LEN as u8);
                ip.set_dscp(0);
                ip.set_ecn(0);
                ip.set_total_len(0);
                ip.set_ident(0);
                ip.clear_flags();
                ip.set_dont_frag(true);
                ip.set_frag_offset(0);
                ip.set_hop_limit(spec.ttl);
                ip.set_next_header(IpProtocol::Udp);
                ip.set_src_addr(local);
                ip.set_dst_addr(remote);
                ip.set_checksum(0);
                ip_offset + IPV4_HEADER_LEN
            }
            (IpAddr::V6(local), IpAddr::V6(remote)) => {
                let mut ip = Ipv6Packet::new_unchecked(&mut bytes[ip_offset..]);
                ip.set_version(6);
                ip.set_traffic_class(0);
                ip.set_flow_label(0);
                ip.set_payload_len(0);
                ip.set_next_header(IpProtocol::Udp);
                ip.set_hop_limit(spec.ttl);
                ip.set_src_addr(local);
                ip.set_dst_addr(remote);
                ip_offset + IPV6_HEADER_LEN
            }
            (local, remote) => return Err(TemplateError::MixedFamilies { local, remote }),
        };

        let mut udp = UdpPacket::new_unchecked(&mut bytes[udp_offset..]);
        udp.set_src_port(0);
        udp.set_dst_port(spec.udp_port);
        udp.set_len(0);
        udp.set_checksum(0);

        let tunnel_offset = udp_offset + UDP_HEADER_LEN;
        let tunnel_len = match spec.kind {
            TunnelKind::Vxlan => {
                let repr = vxlan::Repr { vni: spec.vni };
                repr.emit(&mut vxlan::Packet::new_unchecked(
                    &mut bytes[tunnel_offset..],
                ));
                repr.buffer_len()
            }
            TunnelKind::Geneve => {
                let mut options = [0u8; geneve::MAX_OPTIONS_LEN];
                let options_len = geneve::emit_options(spec.geneve_options, &mut options)?;
                let repr = geneve::Repr {
                    vni: spec.vni,
                    protocol_type: geneve::PROTOCOL_ETHERNET,
                    oam: false,
                    critical: spec.geneve_options.iter().any(GeneveOptionRepr::critical),
                    options: &options[..options_len],
                };
                repr.emit(&mut geneve::Packet::new_unchecked(
                    &mut bytes[tunnel_offset..],
                ))?;
                repr.buffer_len()
            }
        };
        let len = tunnel_offset + tunnel_len;

        let overhead = len - ip_offset + ETHERNET_HEADER_LEN;
        let mtu = usize::from(spec.underlay_mtu);
        if mtu < overhead + MIN_INNER_MTU {
            return Err(TemplateError::MtuTooSmall {
                mtu: spec.underlay_mtu,
                overhead,
            });
        }

        let family = match spec.local_ip {
            IpAddr::V4(_) => Family::V4 {
                header_sum: data(&bytes[ip_offset..udp_offset]),
            },
            IpAddr::V6(_) => Family::V6 {
                udp_sum: combine(&[
                    data(&bytes[ip_offset + 8..udp_offset]), // both addresses
                    u16::from(u8::from(IpProtocol::Udp)),
                    data(&bytes[udp_offset..len]), // UDP header (dst port) + tunnel header
                ]),
            },
        };

        // The addresses are the last 8 (IPv4) or 32 (IPv6) bytes of the IP header.
        let (addresses, ip_len_counted) = match spec.local_ip {
            IpAddr::V4(_) => (&bytes[udp_offset - 8..udp_offset], ip_offset),
            IpAddr::V6(_) => (&bytes[udp_offset - 32..udp_offset], udp_offset),
        };
        let pseudo_sum = combine(&[data(addresses), u16::from(u8::from(IpProtocol::Udp))]);

        let mut area = [0u8; AREA_LEN];
        area[AREA_LEN - len..].copy_from_slice(&bytes[..len]);
        Ok(OuterTemplate {
            area,
            len,
            ip_offset,
            udp_offset,
            family,
            pseudo_sum,
            max_frame_len: mtu - (len - ip_offset),
            max_super_frame_len: MAX_IP_LEN - (len - ip_len_counted),
            kind: spec.kind,
            remote_ip: spec.remote_ip,
        })
    }

    /// Length of the outer headers: the headroom a frame needs.
    pub fn header_len(&self) -> usize {
        self.len
    }

    /// The longest frame (inner Ethernet header included) that fits the
    /// underlay MTU once encapsulated.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// The IP MTU to give pods: [`max_frame_len`](Self::max_frame_len) less
    /// the inner Ethernet header (1450 for VXLAN over IPv4 on a 1500 underlay).
    pub fn pod_mtu(&self) -> usize {
        self.max_frame_len - ETHERNET_HEADER_LEN
    }

    /// The longest frame (inner Ethernet header included) that
    /// [`encapsulate_offloaded`](Self::encapsulate_offloaded) takes as a
    /// super-frame: the outer IP packet may not pass 65535 bytes (IPv4
    /// Total Length, IPv6 Payload Length).
    pub fn max_super_frame_len(&self) -> usize {
        self.max_super_frame_len
    }

    /// The `gso_max_size` to give a pod whose super-frames go through
    /// [`encapsulate_offloaded`](Self::encapsulate_offloaded):
    /// [`max_super_frame_len`](Self::max_super_frame_len) less the inner
    /// Ethernet header (65485 for VXLAN or Geneve over IPv4), so that the
    /// pod's kernel never hands over one too long to encapsulate.
    pub fn pod_gso_max_size(&self) -> usize {
        self.max_super_frame_len - ETHERNET_HEADER_LEN
    }

    /// Where the outer headers put things, for [`TunnelOffload::encapsulated`].
    pub fn outer_headers(&self) -> OuterHeaders {
        OuterHeaders {
            ip: match self.family {
                Family::V4 { .. } => smoltcp::wire::IpVersion::Ipv4,
                Family::V6 { .. } => smoltcp::wire::IpVersion::Ipv6,
            },
            udp_offset: self.udp_offset as u16,
            len: self.len as u16,
        }
    }

    /// The tunnel this template speaks.
    pub fn kind(&self) -> TunnelKind {
        self.kind
    }

    /// The remote VTEP the template sends to.
    pub fn remote_ip(&self) -> IpAddr {
        self.remote_ip
    }

    /// The outer header bytes as they are before per-frame patching.
    pub fn as_bytes(&self) -> &[u8] {
        &self.area[AREA_LEN - self.len..]
    }

    /// Point the template at a new underlay next hop (the neighbour changed).
    pub fn set_next_hop_mac(&mut self, mac: EthernetAddress) {
        EthernetFrame::new_unchecked(&mut self.area[AREA_LEN - self.len..]).set_dst_addr(mac);
    }

    /// Encapsulate the frame at `buf[frame]` in place: write the outer
    /// headers into the headroom before it and return the range of the
    /// encapsulated packet. The outer source port comes from the inner
    /// flow's hash. The whole headroom `buf[..frame.start]` is the call's
    /// to write: it may fill up to 384 bytes before the packet with zeros
    /// (a fixed-size copy is cheaper than an exact one).
    pub fn encapsulate(
        &self,
        buf: &mut [u8],
        frame: Range<usize>,
    ) -> Result<Range<usize>, DropReason> {
        let hash = buf.get(frame.clone()).map_or(0, flow_hash);
        self.encapsulate_with_hash(buf, frame, hash)
    }

    /// As [`encapsulate`](Self::encapsulate), with the inner flow hash
    /// already known (from [`flow_hash`] or a NIC's RSS hash).
    pub fn encapsulate_with_hash(
        &self,
        buf: &mut [u8],
        frame: Range<usize>,
        hash: u32,
    ) -> Result<Range<usize>, DropReason> {
        let start = self.check_room(buf, &frame, self.max_frame_len)?;
        let udp_len = self.prepend(buf, &frame, hash);
        if let Family::V6 { udp_sum } = self.family {
            let (head, rest) = buf[start..frame.end].split_at_mut(self.len);
            let mut udp = UdpPacket::new_unchecked(&mut head[self.udp_offset..]);
            let sum = combine(&[udp_sum, udp_len, udp_len, udp.src_port(), data(rest)]);
            udp.set_checksum(finish_udp(sum));
        }
        Ok(start..frame.end)
    }

    /// Encapsulate the frame at `buf[frame]` in place, as
    /// [`encapsulate`](Self::encapsulate) does, for a TAP device opened
    /// for UDP tunnel GSO, through which the node's kernel routes the
    /// packet and finishes it; `offload` is what the pod's TAP device said
    /// of the frame. Returns the packet's range and the tunnel-form
    /// virtio-net header to write before it ([`TunnelOffload::encapsulated`]).
    ///
    /// - A super-frame may be up to
    ///   [`max_super_frame_len`](Self::max_super_frame_len) long, each of
    ///   its segments up to [`max_frame_len`](Self::max_frame_len); the
    ///   outer UDP checksum field gets the pseudo-header sum for the
    ///   kernel to finish per segment (the kernel's UDP GRO on the
    ///   receiver refuses datagrams without a checksum). A TCP/IPv4
    ///   super-frame with complete checksums is given a partial one (its
    ///   field set to the pseudo-header sum), as the kernel's segmentation
    ///   needs.
    /// - A plain frame may be up to `max_frame_len` long. With a partial
    ///   checksum, the outer UDP checksum is computed from the headers
    ///   alone (local checksum offload: the inner checksum, once the
    ///   kernel completes it, makes the bytes it covers sum to the
    ///   complement of the pseudo-header sum it holds now); with complete
    ///   checksums the kernel computes the outer one.
    ///
    /// Refuses as [`encapsulate`](Self::encapsulate) does (`oversize`
    /// past these lengths), `bad_vnet_header` for a super-frame whose
    /// inner EtherType is not its GSO type's or whose header Linux would
    /// refuse ([`TunnelOffload::check`]), and `not_tcp_ipv4` for a
    /// super-frame with complete checksums that is not TCP/IPv4. A refused
    /// frame is left untouched.
    pub fn encapsulate_offloaded(
        &self,
        buf: &mut [u8],
        frame: Range<usize>,
        offload: &Offload,
    ) -> Result<(Range<usize>, TunnelOffload), DropReason> {
        let limit = match offload.gso {
            Some(_) => self.max_super_frame_len,
            None => self.max_frame_len,
        };
        let start = self.check_room(buf, &frame, limit)?;
        let frame_len = frame.end - frame.start;
        if let Checksum::Partial { start, offset } = offload.checksum
            && usize::from(start) + usize::from(offset) + 2 > frame_len
        {
            return Err(DropReason::BadVnetHeader);
        }
        let mut offload = *offload;
        // A field to set once nothing can refuse the frame any more.
        let mut partial_field = None;
        if let Some(gso) = offload.gso {
            if frame_len < ETHERNET_HEADER_LEN {
                return Err(DropReason::TruncatedInner);
            }
            let inner = &buf[frame.clone()];
            let ethertype = u16::from_be_bytes([inner[12], inner[13]]);
            let ethertype_ok = match gso.kind {
                GsoKind::TcpV4 => ethertype == 0x0800,
                GsoKind::TcpV6 => ethertype == 0x86dd,
                GsoKind::UdpL4 => ethertype == 0x0800 || ethertype == 0x86dd,
            };
            if !ethertype_ok {
                return Err(DropReason::BadVnetHeader);
            }
            if !matches!(offload.checksum, Checksum::Partial { .. }) {
                let (checksum, field, value) = tcp_partial_checksum(inner)?;
                offload.checksum = checksum;
                partial_field = Some((frame.start + field, value));
            }
            if segment_frame_len(inner, &offload) > self.max_frame_len {
                return Err(DropReason::Oversize);
            }
        }
        let header = TunnelOffload::encapsulated(&offload, self.outer_headers())?;
        // What the kernel would refuse (a super-frame whose checksum starts
        // inside its own IP header) is refused here.
        header.check(self.len + frame_len)?;
        if let Some((field, value)) = partial_field {
            buf[field..field + 2].copy_from_slice(&value.to_be_bytes());
        }
        let hash = flow_hash(&buf[frame.clone()]);
        let udp_len = self.prepend(buf, &frame, hash);
        let udp_start = start + self.udp_offset;
        let pseudo = combine(&[self.pseudo_sum, udp_len]);
        let udp_checksum = match (offload.gso, offload.checksum) {
            (
                None,
                Checksum::Partial {
                    start: inner_start,
                    offset,
                },
            ) => {
                // Everything from the UDP header to the inner checksum's
                // coverage, then what that coverage will sum to.
                let covered_start = frame.start + usize::from(inner_start);
                let field = covered_start + usize::from(offset);
                let partial = u16::from_be_bytes([buf[field], buf[field + 1]]);
                let covered = if (covered_start - udp_start).is_multiple_of(2) {
                    !partial
                } else {
                    (!partial).swap_bytes()
                };
                finish_udp(combine(&[
                    pseudo,
                    sum(&buf[udp_start..covered_start]),
                    covered,
                ]))
            }
            _ => pseudo,
        };
        UdpPacket::new_unchecked(&mut buf[udp_start..frame.end]).set_checksum(udp_checksum);
        Ok((start..frame.end, header))
    }
}

/// Where the bytes of a super-frame's first segment end: the inner headers
/// (through the transport header, as the frame's own TCP data offset says)
/// and one `gso_size` of payload.
fn segment_frame_len(frame: &[u8], offload: &Offload) -> usize {
    let (Checksum::Partial { start, .. }, Some(gso)) = (offload.checksum, offload.gso) else {
        return frame.len();
    };
    let start = usize::from(start);
    let transport_len = match gso.kind {
        GsoKind::UdpL4 => UDP_HEADER_LEN,
        GsoKind::TcpV4 | GsoKind::TcpV6 => frame
            .get(start + 12)
            .map_or(20, |&offset| usize::from(offset >> 4) * 4),
    };
    start + transport_len + usize::from(gso.size)
}

/// The partial checksum a TCP/IPv4 super-frame with complete checksums is
/// to be given, as Linux leaves one: the checksum state, and where the
/// field is (from the frame's start) and the pseudo-header sum to put there.
fn tcp_partial_checksum(frame: &[u8]) -> Result<(Checksum, usize, u16), DropReason> {
    let headers = TcpIpv4::parse(frame)?;
    let tcp_start = headers.tcp_start();
    let (src, dst) = ipv4_addresses(frame);
    let tcp_len = (headers.ip_len - headers.ip_header_len) as u16;
    let checksum = Checksum::Partial {
        start: tcp_start as u16,
        offset: 16,
    };
    Ok((
        checksum,
        tcp_start + 16,
        ipv4_pseudo_header(src, dst, 6, tcp_len),
    ))
}

impl OuterTemplate {
    /// Check that `buf[frame]` exists, is at most `limit` long and has
    /// room for the outer headers before it; where the packet will start.
    fn check_room(
        &self,
        buf: &[u8],
        frame: &Range<usize>,
        limit: usize,
    ) -> Result<usize, DropReason> {
        if frame.end > buf.len() || frame.start > frame.end {
            return Err(DropReason::TruncatedInner);
        }
        if frame.end - frame.start > limit {
            return Err(DropReason::Oversize);
        }
        frame
            .start
            .checked_sub(self.len)
            .ok_or(DropReason::NoHeadroom)
    }

    /// Write the outer headers before `buf[frame]` (checked by
    /// [`check_room`](Self::check_room)): lengths, the UDP source port
    /// from `hash`, the IPv4 header checksum or the IPv6 flow label; the
    /// UDP checksum field is left as the template has it (zero). Returns
    /// the UDP length.
    fn prepend(&self, buf: &mut [u8], frame: &Range<usize>, hash: u32) -> u16 {
        self.copy_header(&mut buf[..frame.start]);
        let head = &mut buf[frame.start - self.len..frame.start];
        let frame_len = frame.end - frame.start;
        // Both fit in 16 bits: check_room's limits keep ip_len within the
        // MTU or the IP maximum.
        let ip_len = (self.len - self.ip_offset + frame_len) as u16;
        let udp_len = (self.len - self.udp_offset + frame_len) as u16;
        let mut udp = UdpPacket::new_unchecked(&mut head[self.udp_offset..]);
        udp.set_src_port(source_port(hash));
        udp.set_len(udp_len);
        match self.family {
            Family::V4 { header_sum } => {
                let mut ip = Ipv4Packet::new_unchecked(&mut head[self.ip_offset..]);
                ip.set_total_len(ip_len);
                ip.set_checksum(!combine(&[header_sum, ip_len]));
            }
            Family::V6 { .. } => {
                let mut ip = Ipv6Packet::new_unchecked(&mut head[self.ip_offset..]);
                ip.set_payload_len(udp_len);
                ip.set_flow_label(hash & 0x000f_ffff);
            }
        }
        udp_len
    }

    /// Write the header at the end of `headroom`: a fixed 64- or 128-byte
    /// copy of the area's tail where the headroom allows (no `memcpy`
    /// call), the exact bytes otherwise.
    fn copy_header(&self, headroom: &mut [u8]) {
        fn tail_copy<const N: usize>(area: &[u8; AREA_LEN], headroom: &mut [u8]) -> bool {
            match (area.last_chunk::<N>(), headroom.last_chunk_mut::<N>()) {
                (Some(src), Some(dst)) => {
                    *dst = *src;
                    true
                }
                _ => false,
            }
        }
        let done = match self.len {
            0..=64 => tail_copy::<64>(&self.area, headroom),
            65..=128 => tail_copy::<128>(&self.area, headroom),
            _ => false,
        };
        if !done {
            let start = headroom.len() - self.len;
            headroom[start..].copy_from_slice(self.as_bytes());
        }
    }
}

impl fmt::Debug for OuterTemplate {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("OuterTemplate")
            .field("kind", &self.kind)
            .field("remote_ip", &self.remote_ip)
            .field("header_len", &self.len)
            .field("max_frame_len", &self.max_frame_len)
            .field("bytes", &self.as_bytes())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use core::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn tunnel_header_lengths() {
        let vxlan = [0x08, 0, 0, 0, 0, 0, 1, 0, 0xaa];
        assert_eq!(TunnelKind::Vxlan.header_len(&vxlan), Some(8));
        assert_eq!(TunnelKind::Vxlan.header_len(&vxlan[..7]), None);
        // Geneve, Opt Len 2 (8 bytes of options).
        let mut geneve = vec![0x02, 0, 0x65, 0x58, 0, 0, 1, 0];
        geneve.extend_from_slice(&[0; 8]);
        assert_eq!(TunnelKind::Geneve.header_len(&geneve), Some(16));
        assert_eq!(TunnelKind::Geneve.header_len(&geneve[..15]), None);
    }
    use crate::segment::complete_checksum;
    use crate::segment::tests::{Spec, checksums_valid, tcp_frame};
    use crate::virtio_net::Gso;

    const LOCAL_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x0b]);
    const NEXT_HOP: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x0c]);

    fn spec_v4(kind: TunnelKind) -> TunnelSpec<'static> {
        TunnelSpec {
            kind,
            vni: Vni::new(42).unwrap(),
            udp_port: kind.default_udp_port(),
            local_mac: LOCAL_MAC,
            next_hop_mac: NEXT_HOP,
            vlan: None,
            local_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 11)),
            remote_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 12)),
            ttl: 64,
            geneve_options: &[],
            underlay_mtu: 1500,
        }
    }

    /// An inner frame: Ethernet + IPv4 + UDP + payload, at offset `headroom`.
    fn buffer_with_frame(headroom: usize, payload: usize) -> (Vec<u8>, Range<usize>) {
        let len = 14 + 20 + 8 + payload;
        let mut buf = vec![0u8; headroom + len];
        let f = &mut buf[headroom..];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 9] = 17;
        f[34..36].copy_from_slice(&1234u16.to_be_bytes());
        (buf, headroom..headroom + len)
    }

    #[test]
    fn vxlan_ipv4_golden_header() {
        let template = OuterTemplate::new(&spec_v4(TunnelKind::Vxlan)).unwrap();
        assert_eq!(template.header_len(), 50);
        assert_eq!(template.pod_mtu(), 1450);
        let (mut buf, frame) = buffer_with_frame(64, 100 - 42);
        let out = template.encapsulate_with_hash(&mut buf, frame, 0).unwrap();
        assert_eq!(out, 14..164);
        #[rustfmt::skip]
        let expected: [u8; 50] = [
            // Ethernet: next hop, local, IPv4
            0x02, 0, 0, 0, 0, 0x0c, 0x02, 0, 0, 0, 0, 0x0b, 0x08, 0x00,
            // IPv4: 20 + 8 + 8 + 100 = 136 bytes, DF, TTL 64, UDP
            0x45, 0x00, 0x00, 0x88, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00,
            10, 1, 0, 11, 10, 1, 0, 12,
            // UDP: source port 49152 (hash 0), 4789, length 116, no checksum
            0xc0, 0x00, 0x12, 0xb5, 0x00, 0x74, 0x00, 0x00,
            // VXLAN: I flag, VNI 42
            0x08, 0, 0, 0, 0, 0, 42, 0,
        ];
        let mut header = buf[out.start..out.start + 50].to_vec();
        let checksum = u16::from_be_bytes([header[24], header[25]]);
        header[24..26].fill(0);
        assert_eq!(header, expected);
        // The incrementally patched checksum equals a full recompute.
        assert_eq!(checksum, !data(&expected[14..34]));
    }

    #[test]
    fn ipv4_checksum_verifies_for_every_length() {
        let template = OuterTemplate::new(&spec_v4(TunnelKind::Vxlan)).unwrap();
        for payload in [0, 1, 17, 500, 1408] {
            let (mut buf, frame) = buffer_with_frame(64, payload);
            let out = template.encapsulate(&mut buf, frame).unwrap();
            let ip = Ipv4Packet::new_checked(&buf[out.start + 14..out.end]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(usize::from(ip.total_len()), out.len() - 14);
        }
    }

    #[test]
    fn ipv6_udp_checksum_verifies() {
        let spec = TunnelSpec {
            local_ip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 11)),
            remote_ip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 12)),
            ..spec_v4(TunnelKind::Geneve)
        };
        let template = OuterTemplate::new(&spec).unwrap();
        assert_eq!(template.header_len(), 14 + 40 + 8 + 8);
        for payload in [0, 1, 3, 999] {
            let (mut buf, frame) = buffer_with_frame(128, payload);
            let out = template.encapsulate(&mut buf, frame).unwrap();
            let ip = Ipv6Packet::new_checked(&buf[out.start + 14..out.end]).unwrap();
            assert_eq!(usize::from(ip.payload_len()), out.len() - 54);
            let udp = UdpPacket::new_checked(ip.payload()).unwrap();
            assert_ne!(udp.checksum(), 0);
            assert!(udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        }
    }

    #[test]
    fn ipv6_flow_label_carries_the_flow_hash() {
        let spec = TunnelSpec {
            local_ip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 11)),
            remote_ip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 12)),
            ..spec_v4(TunnelKind::Vxlan)
        };
        let template = OuterTemplate::new(&spec).unwrap();
        let (mut buf, frame) = buffer_with_frame(128, 10);
        let out = template
            .encapsulate_with_hash(&mut buf, frame, 0xabcd_ef12)
            .unwrap();
        let ip = Ipv6Packet::new_checked(&buf[out.start + 14..out.end]).unwrap();
        assert_eq!(ip.flow_label(), 0xd_ef12);
        assert_eq!(ip.traffic_class(), 0);
        assert_eq!(ip.version(), 6);
    }

    #[test]
    fn refuses_oversize_and_short_headroom() {
        let template = OuterTemplate::new(&spec_v4(TunnelKind::Vxlan)).unwrap();
        let (mut buf, frame) = buffer_with_frame(64, 1464 - 42 + 1);
        assert_eq!(
            template.encapsulate(&mut buf, frame),
            Err(DropReason::Oversize)
        );
        let (mut buf, frame) = buffer_with_frame(64, 1464 - 42);
        assert!(template.encapsulate(&mut buf, frame).is_ok());

        let (mut buf, frame) = buffer_with_frame(49, 10);
        let before = buf.clone();
        assert_eq!(
            template.encapsulate(&mut buf, frame),
            Err(DropReason::NoHeadroom)
        );
        assert_eq!(buf, before, "a refused frame is left untouched");

        // Headroom between the header length and the copy width: exact copy.
        for headroom in [50, 63, 64, 100, 128, 200] {
            let (mut buf, frame) = buffer_with_frame(headroom, 10);
            let out = template.encapsulate(&mut buf, frame).unwrap();
            assert_eq!(out.start, headroom - 50);
            assert_eq!(&buf[out.start..headroom][..14], &template.as_bytes()[..14]);
        }

        let (mut buf, _) = buffer_with_frame(64, 10);
        let len = buf.len();
        assert_eq!(
            template.encapsulate(&mut buf, 64..len + 1),
            Err(DropReason::TruncatedInner)
        );
    }

    #[test]
    fn vlan_tagged_underlay_and_geneve_options() {
        let data = [1u8, 2, 3, 4];
        let options = [GeneveOptionRepr {
            class: 0x0105,
            option_type: 0x80,
            data: &data,
        }];
        let spec = TunnelSpec {
            vlan: Some(100),
            geneve_options: &options,
            ..spec_v4(TunnelKind::Geneve)
        };
        let template = OuterTemplate::new(&spec).unwrap();
        assert_eq!(template.header_len(), 18 + 20 + 8 + 8 + 8);
        assert_eq!(template.pod_mtu(), 1500 - 20 - 8 - 16 - 14);
        let bytes = template.as_bytes();
        assert_eq!(&bytes[12..18], &[0x81, 0x00, 0x00, 100, 0x08, 0x00]);
        let geneve = geneve::Packet::new_checked(&bytes[46..]).unwrap();
        assert!(geneve.critical(), "C bit follows the critical option");
        assert_eq!(geneve.options_len(), 8);
    }

    #[test]
    fn refuses_bad_specs() {
        let spec = TunnelSpec {
            remote_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
            ..spec_v4(TunnelKind::Vxlan)
        };
        assert!(matches!(
            OuterTemplate::new(&spec),
            Err(TemplateError::MixedFamilies { .. })
        ));
        let spec = TunnelSpec {
            underlay_mtu: 100,
            ..spec_v4(TunnelKind::Vxlan)
        };
        let err = OuterTemplate::new(&spec).unwrap_err();
        assert_eq!(
            err,
            TemplateError::MtuTooSmall {
                mtu: 100,
                overhead: 50
            }
        );
        assert!(err.to_string().contains("underlay MTU 100 is too small"));
        let spec = TunnelSpec {
            vlan: Some(5000),
            ..spec_v4(TunnelKind::Vxlan)
        };
        assert!(matches!(
            OuterTemplate::new(&spec),
            Err(TemplateError::Wire(WireError::BadField {
                field: "VLAN id",
                ..
            }))
        ));
    }

    /// A TCP/IPv4 super-frame of `payload` bytes as a pod's kernel hands
    /// it over, at `headroom`: the TCP field holds the pseudo-header sum,
    /// and the offload says so.
    fn pod_super_frame(headroom: usize, payload: usize) -> (Vec<u8>, Range<usize>, Offload) {
        let bytes: Vec<u8> = (0..payload).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut frame = tcp_frame(&Spec::default(), &bytes);
        let tcp_len = (frame.len() - 34) as u16;
        let pseudo = ipv4_pseudo_header([10, 244, 1, 5], [10, 244, 2, 7], 6, tcp_len);
        frame[50..52].copy_from_slice(&pseudo.to_be_bytes());
        let mut buf = vec![0u8; headroom];
        buf.extend_from_slice(&frame);
        let offload = Offload {
            checksum: Checksum::Partial {
                start: 34,
                offset: 16,
            },
            gso: Some(Gso {
                kind: GsoKind::TcpV4,
                ecn: false,
                size: 1410,
                hdr_len: 54,
            }),
        };
        (buf, headroom..headroom + frame.len(), offload)
    }

    /// Finish what the kernel finishes: the checksum at `start + offset`
    /// of `packet`, the inner one first; then whether the outer UDP and
    /// the inner TCP checksums verify.
    fn finished_checksums_verify(packet: &mut [u8], partial: &[(usize, usize)]) -> bool {
        for &(start, offset) in partial {
            complete_checksum(packet, start, offset).unwrap();
        }
        let outer = Ipv4Packet::new_checked(&packet[14..]).unwrap();
        let udp = UdpPacket::new_checked(outer.payload()).unwrap();
        let udp_ok = udp.checksum() != 0
            && udp.verify_checksum(&outer.src_addr().into(), &outer.dst_addr().into());
        let inner_at = 14 + 20 + 8 + 8;
        outer.verify_checksum() && udp_ok && checksums_valid(&packet[inner_at..])
    }

    #[test]
    fn offloaded_super_frame_vxlan_ipv4() {
        let template = OuterTemplate::new(&spec_v4(TunnelKind::Vxlan)).unwrap();
        assert_eq!(template.max_super_frame_len(), 65535 - 36);
        assert_eq!(template.pod_gso_max_size(), 65485);
        let (mut buf, frame, offload) = pod_super_frame(128, 60000);
        let frame_len = frame.len();
        let (out, header) = template
            .encapsulate_offloaded(&mut buf, frame, &offload)
            .unwrap();
        assert_eq!(out, 78..buf.len());
        assert_eq!(
            header,
            TunnelOffload::encapsulated(&offload, template.outer_headers()).unwrap()
        );
        assert_eq!(header.to_bytes()[..2], [0x09, 0x21]);
        let packet = &mut buf[out];
        let outer = Ipv4Packet::new_checked(&packet[14..]).unwrap();
        assert_eq!(usize::from(outer.total_len()), 36 + frame_len);
        assert!(outer.dont_frag() && outer.verify_checksum());
        let udp = UdpPacket::new_checked(outer.payload()).unwrap();
        assert_eq!(usize::from(udp.len()), 16 + frame_len);
        // The pseudo-header sum, for the kernel to finish per segment.
        let pseudo = ipv4_pseudo_header([10, 1, 0, 11], [10, 1, 0, 12], 17, udp.len());
        assert_eq!(udp.checksum(), pseudo);
        assert!(udp.src_port() >= 49152);
        assert!(finished_checksums_verify(packet, &[(84, 16), (34, 6)]));
    }

    #[test]
    fn offloaded_super_frame_over_ipv6_and_geneve() {
        let spec = TunnelSpec {
            local_ip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 11)),
            remote_ip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 12)),
            ..spec_v4(TunnelKind::Geneve)
        };
        let template = OuterTemplate::new(&spec).unwrap();
        assert_eq!(template.max_super_frame_len(), 65535 - 16);
        let (mut buf, frame, mut offload) = pod_super_frame(128, 5000);
        // Segments fit 1444 bytes (1500 less the outer IPv6, UDP, Geneve headers).
        offload.gso.as_mut().unwrap().size = 1390;
        let frame_len = frame.len();
        let (out, header) = template
            .encapsulate_offloaded(&mut buf, frame, &offload)
            .unwrap();
        let tunnel = header.tunnel.unwrap();
        assert_eq!(
            (tunnel.outer, tunnel.outer_th_offset, tunnel.inner_nh_offset),
            (smoltcp::wire::IpVersion::Ipv6, 54, 84)
        );
        assert_eq!(header.to_bytes()[1], 0x41);
        let packet = &mut buf[out];
        let ip = Ipv6Packet::new_checked(&packet[14..]).unwrap();
        assert_eq!(usize::from(ip.payload_len()), 16 + frame_len);
        let udp_len = ip.payload_len();
        let pseudo = combine(&[data(&packet[22..54]), 17, udp_len]);
        assert_eq!(u16::from_be_bytes([packet[60], packet[61]]), pseudo);
        complete_checksum(packet, 104, 16).unwrap();
        complete_checksum(packet, 54, 6).unwrap();
        let ip = Ipv6Packet::new_checked(&packet[14..]).unwrap();
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        assert!(checksums_valid(&packet[70..]));
    }

    #[test]
    fn offloaded_super_frame_limits() {
        let template = OuterTemplate::new(&spec_v4(TunnelKind::Vxlan)).unwrap();
        // The longest super-frame makes a 65535-byte outer IPv4 packet.
        let longest = template.max_super_frame_len() - 54;
        let (mut buf, frame, offload) = pod_super_frame(64, longest);
        let (out, _) = template
            .encapsulate_offloaded(&mut buf, frame, &offload)
            .unwrap();
        assert_eq!(out.len(), 14 + 65535);
        let (mut buf, frame, offload) = pod_super_frame(64, longest + 1);
        let before = buf.clone();
        assert_eq!(
            template.encapsulate_offloaded(&mut buf, frame, &offload),
            Err(DropReason::Oversize)
        );
        assert_eq!(buf, before, "a refused frame is left untouched");
        // Segments of 14 + 20 + 20 + gso_size bytes fit 1464 (1500 less
        // the outer IPv4, UDP and VXLAN headers) up to gso_size 1410.
        let (mut buf, frame, offload) = pod_super_frame(64, 3000);
        let mut bigger = offload;
        bigger.gso.as_mut().unwrap().size = 1411;
        assert_eq!(
            template.encapsulate_offloaded(&mut buf, frame.clone(), &bigger),
            Err(DropReason::Oversize)
        );
        // A TCPv6 super-frame that is IPv4 inside, headroom short.
        let mut v6 = offload;
        v6.gso.as_mut().unwrap().kind = GsoKind::TcpV6;
        assert_eq!(
            template.encapsulate_offloaded(&mut buf, frame.clone(), &v6),
            Err(DropReason::BadVnetHeader)
        );
        assert_eq!(
            template.encapsulate_offloaded(&mut buf, 49..frame.end - 15, &offload),
            Err(DropReason::NoHeadroom)
        );
        // A checksum that starts inside the inner IP header.
        let mut early = offload;
        early.checksum = Checksum::Partial {
            start: 20,
            offset: 16,
        };
        assert_eq!(
            template.encapsulate_offloaded(&mut buf, frame.clone(), &early),
            Err(DropReason::BadVnetHeader)
        );
        // A checksum field past the frame; a frame past the buffer.
        let mut far = offload;
        far.checksum = Checksum::Partial {
            start: 3040,
            offset: 16,
        };
        assert_eq!(
            template.encapsulate_offloaded(&mut buf, frame.clone(), &far),
            Err(DropReason::BadVnetHeader)
        );
        assert_eq!(
            template.encapsulate_offloaded(&mut buf, 64..frame.end + 1, &offload),
            Err(DropReason::TruncatedInner)
        );
        assert!(
            template
                .encapsulate_offloaded(&mut buf, frame, &offload)
                .is_ok()
        );
    }

    #[test]
    fn offloaded_super_frame_with_complete_checksums_made_partial() {
        let template = OuterTemplate::new(&spec_v4(TunnelKind::Vxlan)).unwrap();
        let (mut buf, frame, offload) = pod_super_frame(64, 4000);
        let partial_field = buf[frame.start + 50..frame.start + 52].to_vec();
        complete_checksum(&mut buf[frame.clone()], 34, 16).unwrap();
        let complete = Offload {
            checksum: Checksum::Complete,
            ..offload
        };
        let (out, header) = template
            .encapsulate_offloaded(&mut buf, frame.clone(), &complete)
            .unwrap();
        assert_eq!(
            header.offload.checksum,
            Checksum::Partial {
                start: 84,
                offset: 16
            }
        );
        assert_eq!(buf[frame.start + 50..frame.start + 52], partial_field[..]);
        assert!(finished_checksums_verify(
            &mut buf[out],
            &[(84, 16), (34, 6)]
        ));
        // Only TCP/IPv4 can be made partial.
        let (mut buf, frame, _) = pod_super_frame(64, 4000);
        buf[frame.start + 23] = 17;
        assert_eq!(
            template.encapsulate_offloaded(&mut buf, frame, &complete),
            Err(DropReason::NotTcpIpv4)
        );
    }

    #[test]
    fn offloaded_plain_frames() {
        for kind in [TunnelKind::Vxlan, TunnelKind::Geneve] {
            let template = OuterTemplate::new(&spec_v4(kind)).unwrap();
            // A partial inner checksum stays for the kernel; the outer UDP
            // checksum is complete already (local checksum offload).
            let (mut buf, frame, offload) = pod_super_frame(64, 1000);
            let partial = Offload {
                gso: None,
                ..offload
            };
            let (out, header) = template
                .encapsulate_offloaded(&mut buf, frame.clone(), &partial)
                .unwrap();
            assert_eq!(header.tunnel, None);
            assert_eq!(
                header.offload.checksum,
                Checksum::Partial {
                    start: 84,
                    offset: 16
                }
            );
            assert!(finished_checksums_verify(&mut buf[out], &[(84, 16)]));
            // Complete checksums: the kernel does the outer UDP one.
            let (mut buf, frame, _) = pod_super_frame(64, 1000);
            complete_checksum(&mut buf[frame.clone()], 34, 16).unwrap();
            let (out, header) = template
                .encapsulate_offloaded(&mut buf, frame, &Offload::NONE)
                .unwrap();
            assert_eq!(
                header.offload.checksum,
                Checksum::Partial {
                    start: 34,
                    offset: 6
                }
            );
            assert!(finished_checksums_verify(&mut buf[out], &[(34, 6)]));
            // Whatever the coverage's alignment in the datagram.
            for start in [34, 35, 36, 37] {
                let mut buf = vec![0u8; 64];
                buf.extend((0..200u32).map(|i| (i * 37 + 11) as u8));
                let end = buf.len();
                let partial = Offload {
                    checksum: Checksum::Partial { start, offset: 6 },
                    gso: None,
                };
                let (out, _) = template
                    .encapsulate_offloaded(&mut buf, 64..end, &partial)
                    .unwrap();
                let packet = &mut buf[out];
                let covered = usize::from(start) + template.header_len();
                complete_checksum(packet, covered, 6).unwrap();
                let ip = Ipv4Packet::new_checked(&packet[14..]).unwrap();
                let udp = UdpPacket::new_checked(ip.payload()).unwrap();
                assert!(
                    udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()),
                    "{kind} coverage from {start}"
                );
            }
            // Plain frames keep to the underlay MTU.
            let (mut buf, frame, _) = pod_super_frame(64, 1411);
            assert_eq!(
                template.encapsulate_offloaded(&mut buf, frame, &partial),
                Err(DropReason::Oversize)
            );
        }
    }

    #[test]
    fn next_hop_change_patches_only_the_mac() {
        let mut template = OuterTemplate::new(&spec_v4(TunnelKind::Vxlan)).unwrap();
        let before = template.as_bytes().to_vec();
        let mac = EthernetAddress([0x02, 1, 2, 3, 4, 5]);
        template.set_next_hop_mac(mac);
        assert_eq!(&template.as_bytes()[..6], &mac.0);
        assert_eq!(&template.as_bytes()[6..], &before[6..]);
    }
}
