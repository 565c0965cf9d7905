//! The forwarding decision for one frame: where it goes, rewritten in
//! place, or why it is dropped. No I/O here — the workers move frames
//! between rings and call [`Forwarder::forward`] on each one of a batch.
//!
//! The switch is a router for IPv4, and for IPv6 between dual-stack pods
//! and their node (when the host port carries IPv6): pods send to the
//! router MAC (answered for their gateway and every routed address by
//! proxy ARP and neighbour advertisements), and every frame through the
//! switch has its MACs rewritten. Where the switch is the packet's IP hop
//! — pod to pod, pod to peer, tunnel to pod — it does what a kernel node
//! (bridge + routing + vxlan) does at that hop: it drops a packet whose
//! TTL (hop limit) would expire or whose options the kernel would refuse,
//! and decrements the TTL. A packet to or from the node's own stack (the
//! host port) has the node's kernel as its hop, which does all that
//! itself and answers with ICMP (time exceeded, parameter problem): the
//! switch leaves its TTL and options alone, as a Flannel node's bridge
//! does between a pod and the node's `cni0` address.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use podswitch_encap::DropReason;
use podswitch_encap::checksum::{adjust, ipv4_header_ok};
use podswitch_encap::neighbor::{
    ARP_REPLY_LEN, ArpRequest, NeighborSolicit, emit_arp_reply, emit_neighbor_advert,
};
use podswitch_encap::wire::{
    ETHERNET_HEADER_LEN, EthernetAddress, EthernetFrame, EthernetProtocol, IPV4_HEADER_LEN,
    IPV6_HEADER_LEN, IpProtocol, Ipv4Packet, Ipv6Packet,
};
use podswitch_encap::{icmp, ipv4_options};

use podswitch_control::protocol::POD_GATEWAY6;
use podswitch_services::{L4Checksum, Pass, ServiceTable, Translator, Verdict as ServiceVerdict};

use crate::drops::DropCause;
use crate::fib::Ipv4Lpm;
use crate::mac::MacAddr;
use crate::policy::PolicyStage;
use crate::topology::{PeerId, PortId, PortRole, PortView, RouteTarget, Topology};

/// What to do with a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send `frame` (offsets into the same buffer) out of `port`.
    Transmit {
        /// The output port.
        port: PortId,
        /// Where the frame now lies in its buffer (encapsulation and
        /// decapsulation move its start).
        frame: Range<usize>,
    },
    /// Send the routed frame at `frame` to `peer` through the tunnel. It
    /// is not encapsulated yet: the caller does that
    /// ([`Forwarder::encapsulate`]) — for a super-frame after cutting it
    /// into segments, or whole where the way out cuts it.
    ToPeer {
        /// The peer.
        peer: PeerId,
        /// Where the inner frame lies in its buffer.
        frame: Range<usize>,
    },
    /// Drop it, for this reason.
    Drop(DropCause),
    /// Drop it for `cause` and answer it: send the reply written in its
    /// place (`frame`, an ICMP port unreachable) back out of `port`, the
    /// port it came in by.
    Answer {
        /// Why the packet itself goes no further.
        cause: DropCause,
        /// The port the reply leaves by.
        port: PortId,
        /// Where the reply lies in the buffer.
        frame: Range<usize>,
    },
}

/// What is being routed: a frame, or a super-frame its caller cuts up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Size {
    /// A frame: checked against the MTU of the port it leaves by (the
    /// tunnel's, for a peer). Its checksums are complete.
    Frame,
    /// A TCP super-frame: cut into segments by the caller (each
    /// encapsulated then) wherever it cannot go whole; its TCP checksum
    /// field may hold the pseudo-header sum only (`NEEDS_CSUM`).
    SuperFrame(L4Checksum),
}

impl Size {
    /// What the frame's transport checksum field holds.
    fn checksum(self) -> L4Checksum {
        match self {
            Size::Frame => L4Checksum::Full,
            Size::SuperFrame(checksum) => checksum,
        }
    }
}

/// Who checked a tunnel packet's outer UDP checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checked {
    /// Nobody yet: it came off the uplink's socket.
    BySwitch,
    /// The node's kernel, which received it and handed it on through the
    /// tunnel port.
    ByKernel,
}

/// One batch's view of the switch: the topology and FIB snapshots.
pub struct Forwarder<'a> {
    /// Ports and peers.
    pub topology: &'a Topology,
    /// Routes.
    pub fib: &'a Ipv4Lpm<RouteTarget>,
    /// The Service stage, with `service_translation = "switch"`.
    pub services: Option<ServiceStage<'a>>,
    /// The NetworkPolicy stage, while a policy selects a local pod.
    pub policy: Option<PolicyStage<'a>>,
}

/// One batch's view of the Service stage: the Service table snapshot, the
/// shared connection table and the batch's clock.
#[derive(Clone, Copy)]
pub struct ServiceStage<'a> {
    /// The Services.
    pub table: &'a ServiceTable,
    /// The connections.
    pub translator: &'a Translator,
    /// The connection table's clock, read once per batch.
    pub now_ms: u64,
    /// [`Pass::DryRun`] for `podswitch trace`: the same rewrites, but no
    /// connection opened or noted and nothing counted.
    pub pass: Pass,
}

/// Where a routed frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A pod, which may only send from its own address.
    Pod {
        /// The pod's address.
        address: Ipv4Addr,
        /// Its port.
        port: PortId,
    },
    /// The node's own stack.
    Host,
    /// A peer, through the tunnel.
    Tunnel,
}

/// Offset of the TTL within an IPv4 header; the protocol follows it.
const IPV4_TTL: usize = 8;
/// Offset of the header checksum within an IPv4 header.
const IPV4_CHECKSUM: usize = 10;

impl Forwarder<'_> {
    /// Decide the fate of the frame at `buf[frame]`, received on `in_port`,
    /// rewriting it in place (MACs, TTL, encapsulation, ARP reply). `buf` is
    /// the frame's whole buffer: the space before `frame.start` is headroom.
    pub fn forward(&self, in_port: PortId, buf: &mut [u8], frame: Range<usize>) -> Verdict {
        self.decide(in_port, buf, frame, Size::Frame)
    }

    /// Decide the fate of a TCP super-frame (larger than the MTU, cut into
    /// segments on the way out where a port cannot take it whole) from a
    /// pod's TAP port, or encapsulated whole from the tunnel port: as
    /// [`Forwarder::forward`], without the MTU checks. `checksum` says what
    /// its TCP checksum field holds.
    pub fn forward_super_frame(
        &self,
        in_port: PortId,
        buf: &mut [u8],
        frame: Range<usize>,
        checksum: L4Checksum,
    ) -> Verdict {
        self.decide(in_port, buf, frame, Size::SuperFrame(checksum))
    }

    /// The decision for a packet of `size` on port `in_port`, by the
    /// port's role.
    fn decide(&self, in_port: PortId, buf: &mut [u8], frame: Range<usize>, size: Size) -> Verdict {
        let Some(port) = self.topology.port(in_port) else {
            return Verdict::Drop(DropCause::PortGone);
        };
        let result = match port.role {
            PortRole::Uplink => self.tunnel_frame(buf, frame, Checked::BySwitch, size),
            // What the node's kernel received from peers and handed on.
            PortRole::Tunnel => self.tunnel_frame(buf, frame, Checked::ByKernel, size),
            PortRole::Pod | PortRole::Host => self.local_frame(in_port, port, buf, frame, size),
        };
        result.unwrap_or_else(Verdict::Drop)
    }

    /// Encapsulate the routed frame at `buf[frame]` for `peer` (a frame
    /// the verdict sent to it, or one segment of a super-frame); the
    /// tunnel packet's place in `buf`.
    pub fn encapsulate(
        &self,
        peer: PeerId,
        buf: &mut [u8],
        frame: Range<usize>,
    ) -> Result<Range<usize>, DropCause> {
        let peer = self.topology.peer(peer).ok_or(DropCause::NoRoute)?;
        let template = peer.template.as_ref().ok_or(DropCause::PeerUnresolved)?;
        Ok(template.encapsulate(buf, frame)?)
    }

    /// A frame from a pod or the host port.
    fn local_frame(
        &self,
        in_port: PortId,
        port: &PortView,
        buf: &mut [u8],
        frame: Range<usize>,
        size: Size,
    ) -> Result<Verdict, DropCause> {
        let bytes = &buf[frame.clone()];
        if bytes.len() < ETHERNET_HEADER_LEN {
            return Err(DropCause::Runt);
        }
        let eth = EthernetFrame::new_unchecked(bytes);
        let (dst, src, ethertype) = (eth.dst_addr(), eth.src_addr(), eth.ethertype());
        if port.role == PortRole::Pod && MacAddr::from(src) != port.mac {
            return Err(DropCause::Spoofed);
        }
        if ethertype == EthernetProtocol::Arp {
            return self.answer_arp(in_port, port, buf, frame);
        }
        if ethertype == EthernetProtocol::Ipv6 {
            return self.local_ipv6(in_port, port, buf, frame, size);
        }
        self.check_unicast_to_router(dst)?;
        if ethertype != EthernetProtocol::Ipv4 {
            return Err(DropCause::NotIpv4);
        }
        let origin = match port.role {
            PortRole::Pod => Origin::Pod {
                address: port.ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                port: in_port,
            },
            _ => Origin::Host,
        };
        self.route(buf, frame, origin, size)
    }

    /// A tunnel packet from a peer: decapsulate, check the sender, route
    /// the inner frame.
    fn tunnel_frame(
        &self,
        buf: &mut [u8],
        frame: Range<usize>,
        checked: Checked,
        size: Size,
    ) -> Result<Verdict, DropCause> {
        let topology = self.topology;
        let decapsulator = &topology.decapsulator;
        let packet = &buf[frame.clone()];
        let decapsulated = match checked {
            Checked::BySwitch => match decapsulator.decapsulate(packet) {
                Err(DropReason::BadUdpChecksum) => {
                    decapsulator.decapsulate_unfinished(&mut buf[frame.clone()])
                }
                checked => checked,
            },
            Checked::ByKernel => decapsulator.decapsulate_from_kernel(packet),
        }?;
        if !topology.peer_by_vtep.contains_key(&decapsulated.sender) {
            return Err(DropCause::UnknownPeer);
        }
        let inner = frame.start + decapsulated.inner.start..frame.start + decapsulated.inner.end;
        let eth = EthernetFrame::new_unchecked(&buf[inner.clone()]);
        self.check_unicast_to_router(eth.dst_addr())?;
        match eth.ethertype() {
            EthernetProtocol::Ipv4 => self.route(buf, inner, Origin::Tunnel, size),
            EthernetProtocol::Ipv6 => self.route6(buf, inner, Origin::Tunnel, None, size),
            _ => Err(DropCause::NotIpv4),
        }
    }

    /// An IPv6 frame from a pod or the host port: a neighbour solicitation
    /// answered, a packet routed — if the pod has an IPv6 address, or the
    /// host port carries IPv6 ([`Topology::host_ipv6`]).
    fn local_ipv6(
        &self,
        in_port: PortId,
        port: &PortView,
        buf: &mut [u8],
        frame: Range<usize>,
        size: Size,
    ) -> Result<Verdict, DropCause> {
        let from_host = port.role == PortRole::Host;
        let ipv6 = if from_host {
            self.topology.host_ipv6
        } else {
            port.ip6.is_some()
        };
        let bytes = &buf[frame.clone()];
        if ipv6 && is_neighbor_solicit(bytes) {
            return self.answer_neighbor_solicit(in_port, port, buf, frame);
        }
        self.check_unicast_to_router(EthernetFrame::new_unchecked(bytes).dst_addr())?;
        if !ipv6 {
            return Err(DropCause::NotIpv4);
        }
        let origin = if from_host {
            Origin::Host
        } else {
            Origin::Pod {
                address: port.ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                port: in_port,
            }
        };
        self.route6(buf, frame, origin, port.ip6, size)
    }

    fn check_unicast_to_router(&self, dst: EthernetAddress) -> Result<(), DropCause> {
        if dst.is_broadcast() {
            Err(DropCause::Broadcast)
        } else if dst.is_multicast() {
            Err(DropCause::Multicast)
        } else if MacAddr::from(dst) != self.topology.router_mac {
            Err(DropCause::NotOurMac)
        } else {
            Ok(())
        }
    }

    /// Route an IPv4 frame: check its header (and, from a pod, its source),
    /// look up its destination, rewrite the MACs, and do the IP hop's work
    /// where the switch is the hop (TTL and options checked, TTL
    /// decremented).
    fn route(
        &self,
        buf: &mut [u8],
        frame: Range<usize>,
        origin: Origin,
        size: Size,
    ) -> Result<Verdict, DropCause> {
        let ip_start = frame.start + ETHERNET_HEADER_LEN;
        let header = ipv4_header(&buf[ip_start..frame.end])?;
        if let Origin::Pod { address, .. } = origin
            && Ipv4Packet::new_unchecked(header).src_addr() != address
        {
            return Err(DropCause::Spoofed);
        }
        let header_len = header.len();
        if let (Origin::Pod { port, .. }, Some(services)) = (origin, &self.services) {
            // Before the route lookup: the route follows the endpoint.
            let verdict = services.translator.outbound(
                services.table,
                &mut buf[ip_start..frame.end],
                size.checksum(),
                services.now_ms,
                services.pass,
            );
            if verdict == ServiceVerdict::NoEndpoints {
                // Refused as kube-proxy refuses it, so the client fails
                // at once rather than after its timeouts.
                return self.answer_unreachable(port, buf, frame, DropCause::ServiceNoEndpoints);
            }
            service_verdict(verdict)?;
        }
        let header = &buf[ip_start..ip_start + header_len];
        let packet = Ipv4Packet::new_unchecked(header);
        let total_len = packet.total_len();
        let target = self
            .fib
            .lookup(packet.dst_addr())
            .ok_or(DropCause::NoRoute)?;
        // To or from the node's stack, the node's kernel is the hop.
        let hop = origin != Origin::Host && target != RouteTarget::Host;
        if hop {
            check_hop(header)?;
        }
        if let Some(policy) = &self.policy {
            // After the Service stage: the rules are about the endpoint.
            let from_pod = matches!(origin, Origin::Pod { .. });
            let to_pod = matches!(target, RouteTarget::Pod(_));
            policy.check(&buf[ip_start..frame.end], from_pod, to_pod)?;
        }
        let next = self.next_hop(target, origin, frame.len(), total_len.into(), size)?;
        if let (RouteTarget::Pod(_), Some(services)) = (target, &self.services) {
            // Delivered to a pod: an endpoint's reply gets its ClusterIP back.
            service_verdict(services.translator.inbound(
                services.table,
                &mut buf[ip_start..frame.end],
                size.checksum(),
                services.now_ms,
                services.pass,
            ))?;
        }
        if hop {
            decrement_ttl(&mut buf[ip_start..frame.end]);
        }
        Ok(self.send(next, buf, frame))
    }

    /// Route an IPv6 frame as [`Forwarder::route`] routes IPv4: its
    /// source checked (a pod's own IPv6 address), its destination looked
    /// up in the topology's IPv6 routes, its hop limit checked and
    /// decremented where the switch is the hop (not to or from the host
    /// port: the node's kernel is). No Service stage (the switch
    /// translates IPv4 Services only); the policy stage as
    /// [`PolicyStage::check_ipv6`] says. `pod_ip6`: from a pod, its IPv6
    /// address as [`Forwarder::local_ipv6`] read it from its port.
    fn route6(
        &self,
        buf: &mut [u8],
        frame: Range<usize>,
        origin: Origin,
        pod_ip6: Option<Ipv6Addr>,
        size: Size,
    ) -> Result<Verdict, DropCause> {
        let ip_start = frame.start + ETHERNET_HEADER_LEN;
        let header = ipv6_header(&buf[ip_start..frame.end])?;
        let packet = Ipv6Packet::new_unchecked(header);
        let topology = self.topology;
        if let Origin::Pod { .. } = origin
            && pod_ip6 != Some(packet.src_addr())
        {
            return Err(DropCause::Spoofed);
        }
        let target = topology
            .fib6
            .lookup(packet.dst_addr())
            .ok_or(DropCause::NoRoute)?;
        // To or from the node's stack, the node's kernel is the hop.
        let hop = origin != Origin::Host && target != RouteTarget::Host;
        if hop && packet.hop_limit() <= 1 {
            return Err(DropCause::TtlExpired);
        }
        let ip_len = IPV6_HEADER_LEN as u32 + u32::from(packet.payload_len());
        if let Some(policy) = &self.policy {
            // The host port's IPv6 is no way around a policy: a
            // restricted pod's IPv6 is denied whichever way it goes.
            let sender = match origin {
                Origin::Pod { address, .. } => Some(address),
                _ => None,
            };
            let receiver = match target {
                RouteTarget::Pod(id) => topology.port(id).and_then(|p| p.ip),
                _ => None,
            };
            policy.check_ipv6(sender, receiver)?;
        }
        let next = self.next_hop(target, origin, frame.len(), ip_len, size)?;
        if hop {
            buf[ip_start + IPV6_HOP_LIMIT] -= 1;
        }
        Ok(self.send(next, buf, frame))
    }

    /// Where a routed packet (`frame_len` bytes of frame, `ip_len` of IP
    /// packet) to `target` goes next, checked against what that way takes.
    fn next_hop(
        &self,
        target: RouteTarget,
        origin: Origin,
        frame_len: usize,
        ip_len: u32,
        size: Size,
    ) -> Result<NextHop, DropCause> {
        let topology = self.topology;
        let port_mac = |id: PortId| -> Result<_, DropCause> {
            Ok((id, topology.port(id).ok_or(DropCause::PortGone)?.mac))
        };
        let (port, mac) = match target {
            RouteTarget::Pod(id) => port_mac(id)?,
            RouteTarget::Host => port_mac(topology.host.ok_or(DropCause::NoRoute)?)?,
            RouteTarget::Peer(id) => {
                if origin == Origin::Tunnel {
                    return Err(DropCause::TunnelHairpin);
                }
                let peer = topology.peer(id).ok_or(DropCause::NoRoute)?;
                let template = peer.template.as_ref().ok_or(DropCause::PeerUnresolved)?;
                if size == Size::Frame && frame_len > template.max_frame_len() {
                    return Err(DropCause::Wire(DropReason::Oversize));
                }
                return Ok(NextHop::Peer(id, peer.vtep_mac));
            }
        };
        // A super-frame is cut to the MTU on its way out; a frame bigger
        // than the pod interfaces take would be dropped by the kernel unseen.
        if size == Size::Frame && ip_len > topology.pod_mtu {
            return Err(DropCause::Wire(DropReason::Oversize));
        }
        Ok(NextHop::Port(port, mac))
    }

    /// Address the routed frame at `buf[frame]` to `next` and say so.
    fn send(&self, next: NextHop, buf: &mut [u8], frame: Range<usize>) -> Verdict {
        let (NextHop::Peer(_, mac) | NextHop::Port(_, mac)) = next;
        rewrite_macs(
            &mut buf[frame.clone()],
            mac.into(),
            self.topology.router_mac.into(),
        );
        match next {
            NextHop::Peer(peer, _) => Verdict::ToPeer { peer, frame },
            NextHop::Port(port, _) => Verdict::Transmit { port, frame },
        }
    }

    /// Answer an ARP request for the gateway or for any address the switch
    /// routes to a pod or a peer, by turning the request around in place.
    fn answer_arp(
        &self,
        in_port: PortId,
        port: &PortView,
        buf: &mut [u8],
        frame: Range<usize>,
    ) -> Result<Verdict, DropCause> {
        let request = ArpRequest::parse(&buf[frame.clone()]).map_err(|_| DropCause::BadArp)?;
        if port.role == PortRole::Pod
            && (Some(request.sender_ip) != port.ip || MacAddr::from(request.sender_mac) != port.mac)
        {
            return Err(DropCause::Spoofed);
        }
        let target = request.target_ip;
        let routed = matches!(
            self.fib.lookup(target),
            Some(RouteTarget::Pod(_) | RouteTarget::Peer(_))
        );
        if request.is_gratuitous() || !(target == self.topology.gateway || routed) {
            return Err(DropCause::ArpUnanswered);
        }
        let reply = frame.start..frame.start + ARP_REPLY_LEN;
        emit_arp_reply(
            &request,
            self.topology.router_mac.into(),
            &mut buf[reply.clone()],
        )
        .map_err(|_| DropCause::BadArp)?;
        Ok(Verdict::Transmit {
            port: in_port,
            frame: reply,
        })
    }

    /// Answer a neighbour solicitation from a pod or the host port for
    /// the IPv6 gateway ([`POD_GATEWAY6`]) or any address the switch
    /// routes to a pod or a peer, as [`Forwarder::answer_arp`] answers
    /// ARP; duplicate address detection (a solicitation from `::`) is
    /// never answered, so a pod never finds its own address taken.
    fn answer_neighbor_solicit(
        &self,
        in_port: PortId,
        port: &PortView,
        buf: &mut [u8],
        frame: Range<usize>,
    ) -> Result<Verdict, DropCause> {
        let solicit = NeighborSolicit::parse(&buf[frame.clone()])
            .map_err(|_| DropCause::BadNeighborSolicit)?;
        let sender = solicit.sender_ip;
        let own_source =
            sender.is_unspecified() || sender.is_unicast_link_local() || Some(sender) == port.ip6;
        let own_mac = solicit
            .sender_mac
            .is_none_or(|mac| MacAddr::from(mac) == port.mac);
        // The node's kernel may ask from any of its addresses.
        if port.role == PortRole::Pod && !(own_source && own_mac) {
            return Err(DropCause::Spoofed);
        }
        let target = solicit.target_ip;
        let routed = match self.topology.fib6.lookup(target) {
            Some(RouteTarget::Pod(id)) => id != in_port,
            Some(RouteTarget::Peer(_)) => true,
            _ => false,
        };
        if sender.is_unspecified() || !(target == POD_GATEWAY6 || routed) {
            return Err(DropCause::NeighborUnanswered);
        }
        let len = emit_neighbor_advert(
            &solicit,
            self.topology.router_mac.into(),
            &mut buf[frame.start..],
        )
        .map_err(|_| DropCause::BadNeighborSolicit)?;
        Ok(Verdict::Transmit {
            port: in_port,
            frame: frame.start..frame.start + len,
        })
    }

    /// Refuse the packet at `buf[frame]` from the pod on `port` for
    /// `cause` with an ICMP port unreachable written in its place; a
    /// buffer without room for it leaves a plain drop.
    fn answer_unreachable(
        &self,
        port: PortId,
        buf: &mut [u8],
        frame: Range<usize>,
        cause: DropCause,
    ) -> Result<Verdict, DropCause> {
        let router_mac = self.topology.router_mac.0;
        let len = icmp::port_unreachable_in_place(&mut buf[frame.start..], frame.len(), router_mac)
            .ok_or(cause)?;
        Ok(Verdict::Answer {
            cause,
            port,
            frame: frame.start..frame.start + len,
        })
    }
}

/// The Service stage's verdict as the route goes on or the drop it is.
fn service_verdict(verdict: ServiceVerdict) -> Result<(), DropCause> {
    match verdict {
        ServiceVerdict::Pass | ServiceVerdict::Translated { .. } => Ok(()),
        ServiceVerdict::NoEndpoints => Err(DropCause::ServiceNoEndpoints),
        ServiceVerdict::TableFull => Err(DropCause::ConntrackFull),
        ServiceVerdict::Clash => Err(DropCause::ConntrackClash),
        ServiceVerdict::FragmentUnknown => Err(DropCause::ServiceFragmentUnknown),
    }
}

/// The IPv4 header of `ip`, checked: version 4, IHL ≥ 5, Total Length
/// within the frame, checksum correct.
fn ipv4_header(ip: &[u8]) -> Result<&[u8], DropCause> {
    if ip.len() < IPV4_HEADER_LEN {
        return Err(DropCause::BadIpv4);
    }
    let packet = Ipv4Packet::new_unchecked(ip);
    let header_len = usize::from(packet.header_len());
    if packet.version() != 4
        || header_len < IPV4_HEADER_LEN
        || header_len > ip.len()
        || usize::from(packet.total_len()) < header_len
        || usize::from(packet.total_len()) > ip.len()
    {
        return Err(DropCause::BadIpv4);
    }
    let header = &ip[..header_len];
    if !ipv4_header_ok(header) {
        return Err(DropCause::BadIpv4);
    }
    Ok(header)
}

/// Where a routed packet goes next: a port and the MAC it is addressed
/// to there, or a peer and its VTEP MAC.
#[derive(Debug, Clone, Copy)]
enum NextHop {
    Port(PortId, MacAddr),
    Peer(PeerId, MacAddr),
}

/// Offset of the hop limit within an IPv6 header.
const IPV6_HOP_LIMIT: usize = 7;
/// The ICMPv6 type of a neighbour solicitation.
const NEIGHBOR_SOLICIT: u8 = 135;

/// Whether an Ethernet frame carrying IPv6 holds a neighbour solicitation
/// (ICMPv6 straight after the fixed header, as RFC 4861 sends it).
fn is_neighbor_solicit(frame: &[u8]) -> bool {
    let icmp = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN;
    frame.len() > icmp
        && frame[ETHERNET_HEADER_LEN + 6] == u8::from(IpProtocol::Icmpv6)
        && frame[icmp] == NEIGHBOR_SOLICIT
}

/// The IPv6 packet at the start of `ip` (an Ethernet payload, which may
/// be padded): version 6, and as long as its header says.
fn ipv6_header(ip: &[u8]) -> Result<&[u8], DropCause> {
    let packet = Ipv6Packet::new_checked(ip).map_err(|_| DropCause::BadIpv6)?;
    if packet.version() != 6 {
        return Err(DropCause::BadIpv6);
    }
    Ok(ip)
}

/// What a router checks before forwarding the packet of a checked IPv4
/// `header`: a TTL it can decrement, options the kernel takes.
fn check_hop(header: &[u8]) -> Result<(), DropCause> {
    if Ipv4Packet::new_unchecked(header).hop_limit() <= 1 {
        return Err(DropCause::TtlExpired);
    }
    ipv4_options::check_header(header).map_err(|_| DropReason::BadIpv4Options.into())
}

fn rewrite_macs(frame: &mut [u8], dst: EthernetAddress, src: EthernetAddress) {
    let mut eth = EthernetFrame::new_unchecked(frame);
    eth.set_dst_addr(dst);
    eth.set_src_addr(src);
}

/// Decrement the TTL of a checked IPv4 header (TTL > 1), updating the
/// checksum incrementally (RFC 1624).
fn decrement_ttl(ip: &mut [u8]) {
    let old = u16::from_be_bytes([ip[IPV4_TTL], ip[IPV4_TTL + 1]]);
    let new = old - 0x0100;
    let checksum = u16::from_be_bytes([ip[IPV4_CHECKSUM], ip[IPV4_CHECKSUM + 1]]);
    ip[IPV4_TTL] -= 1;
    ip[IPV4_CHECKSUM..IPV4_CHECKSUM + 2].copy_from_slice(&adjust(checksum, old, new).to_be_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv6Addr};

    use podswitch_control::service::{Endpoint, Service, ServicePort, ServiceProtocol};
    use podswitch_encap::checksum::ipv4_pseudo_header;
    use podswitch_encap::neighbor::NEIGHBOR_ADVERT_LEN;
    use podswitch_encap::wire::{
        ArpOperation, ArpPacket, ArpRepr, EthernetRepr, Icmpv6Packet, Icmpv6Repr, IpProtocol,
        Ipv4Repr, Ipv6Repr, NdiscNeighborFlags, NdiscRepr,
    };
    use podswitch_encap::{Decapsulator, DropReason, OuterTemplate, TunnelKind, TunnelSpec, Vni};
    use podswitch_lab::flood::with_ipv4_options;
    use podswitch_services::Timeouts;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::TcpPacket;

    use super::*;
    use crate::fib6::{Ipv6Lpm, Ipv6Net};
    use crate::topology::PeerView;
    use podswitch_encap::checksum::data;

    const HEADROOM: usize = 256;
    const ROUTER: MacAddr = MacAddr([0x0a, 0x70, 10, 1, 0, 11]);
    pub(crate) const POD_A_MAC: MacAddr = MacAddr([0x0a, 0x58, 10, 244, 1, 5]);
    const POD_B_MAC: MacAddr = MacAddr([0x0a, 0x58, 10, 244, 1, 6]);
    const HOST_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x99]);
    const PEER_VTEP_MAC: MacAddr = MacAddr([0x0a, 0x70, 10, 1, 0, 12]);
    pub(crate) const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
    pub(crate) const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 6);
    pub(crate) const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);
    pub(crate) const NODE: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 11);
    pub(crate) const PEER_NODE: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 12);
    const UPLINK: PortId = PortId(0);
    const HOST: PortId = PortId(1);
    pub(crate) const POD_A_PORT: PortId = PortId(2);
    const POD_B_PORT: PortId = PortId(3);
    const TUNNEL: PortId = PortId(4);

    /// The underlay MAC of the node at `ip`: 02:00:00:00:00 and its last byte.
    pub(crate) fn underlay_mac(ip: Ipv4Addr) -> EthernetAddress {
        EthernetAddress([2, 0, 0, 0, 0, ip.octets()[3]])
    }

    fn template(local: Ipv4Addr, remote: Ipv4Addr) -> OuterTemplate {
        OuterTemplate::new(&TunnelSpec {
            kind: TunnelKind::Vxlan,
            vni: Vni::new(1).unwrap(),
            udp_port: 4789,
            local_mac: underlay_mac(local),
            next_hop_mac: underlay_mac(remote),
            vlan: None,
            local_ip: IpAddr::V4(local),
            remote_ip: IpAddr::V4(remote),
            ttl: 64,
            geneve_options: &[],
            underlay_mtu: 1500,
        })
        .unwrap()
    }

    fn port(name: &str, role: PortRole, mac: MacAddr, ip: Option<Ipv4Addr>) -> Option<PortView> {
        Some(PortView {
            ip6: None,
            name: name.into(),
            role,
            mac,
            ip,
            worker: 0,
        })
    }

    /// Pod A's, pod B's and a pod's on the peer (its /64) IPv6 addresses.
    const POD_A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 5);
    const POD_B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 6);
    const REMOTE_POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 7);

    /// Dual-stack pods A and B, the peer's IPv6 pod CIDR routed to it.
    pub(crate) fn topology() -> Topology {
        let mut peer_by_vtep = HashMap::default();
        peer_by_vtep.insert(IpAddr::V4(PEER_NODE), PeerId(0));
        let mut fib6 = Ipv6Lpm::new();
        fib6.insert(POD_A6.into(), RouteTarget::Pod(POD_A_PORT));
        fib6.insert(POD_B6.into(), RouteTarget::Pod(POD_B_PORT));
        fib6.insert(
            "fd00:10:244:2::/64".parse().unwrap(),
            RouteTarget::Peer(PeerId(0)),
        );
        let dual_stack = |view: Option<PortView>, ip6| {
            view.map(|v| PortView {
                ip6: Some(ip6),
                ..v
            })
        };
        Topology {
            fib6,
            router_mac: ROUTER,
            gateway: Ipv4Addr::new(10, 244, 1, 1),
            pod_mtu: 1450,
            decapsulator: Decapsulator {
                local_mac: Some(underlay_mac(NODE)),
                ..Decapsulator::new(TunnelKind::Vxlan, IpAddr::V4(NODE), Vni::new(1).unwrap())
            },
            uplink: UPLINK,
            host: Some(HOST),
            tunnel: Some(TUNNEL),
            ports: vec![
                port("ul0", PortRole::Uplink, underlay_mac(NODE).into(), None),
                port("podsw0", PortRole::Host, HOST_MAC, None),
                dual_stack(
                    port("veth-a", PortRole::Pod, POD_A_MAC, Some(POD_A)),
                    POD_A6,
                ),
                dual_stack(
                    port("veth-b", PortRole::Pod, POD_B_MAC, Some(POD_B)),
                    POD_B6,
                ),
                port("podswt0", PortRole::Tunnel, HOST_MAC, None),
            ],
            peers: vec![Some(PeerView {
                node_ip: IpAddr::V4(PEER_NODE),
                vtep_mac: PEER_VTEP_MAC,
                template: Some(template(NODE, PEER_NODE)),
                tunnel_template: None,
            })],
            peer_by_vtep,
            captures: Vec::new(),
            host_ipv6: false,
        }
    }

    pub(crate) fn fib() -> Ipv4Lpm<RouteTarget> {
        let mut fib = Ipv4Lpm::new();
        fib.insert("0.0.0.0/0".parse().unwrap(), RouteTarget::Host);
        fib.insert("10.244.1.1/32".parse().unwrap(), RouteTarget::Host);
        fib.insert(
            "10.244.1.5/32".parse().unwrap(),
            RouteTarget::Pod(POD_A_PORT),
        );
        fib.insert(
            "10.244.1.6/32".parse().unwrap(),
            RouteTarget::Pod(POD_B_PORT),
        );
        fib.insert(
            "10.244.2.0/24".parse().unwrap(),
            RouteTarget::Peer(PeerId(0)),
        );
        fib
    }

    /// A buffer with HEADROOM, then an Ethernet + IPv4 + UDP frame.
    fn ipv4_frame(
        src_mac: MacAddr,
        dst_mac: MacAddr,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ttl: u8,
    ) -> (Vec<u8>, Range<usize>) {
        let payload = b"hello pods";
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Udp,
            payload_len: 8 + payload.len(),
            hop_limit: ttl,
        };
        let len = 14 + 20 + 8 + payload.len();
        let mut buf = vec![0u8; HEADROOM + len];
        let f = &mut buf[HEADROOM..];
        let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
        eth.set_dst_addr(dst_mac.into());
        eth.set_src_addr(src_mac.into());
        eth.set_ethertype(EthernetProtocol::Ipv4);
        ip.emit(
            &mut Ipv4Packet::new_unchecked(&mut f[14..]),
            &ChecksumCapabilities::default(),
        );
        f[34..36].copy_from_slice(&1234u16.to_be_bytes());
        f[36..38].copy_from_slice(&5678u16.to_be_bytes());
        f[38..40].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f[42..].copy_from_slice(payload);
        (buf, HEADROOM..HEADROOM + len)
    }

    fn forward(in_port: PortId, buf: &mut [u8], frame: Range<usize>) -> Verdict {
        forward_in(&topology(), in_port, buf, frame)
    }

    fn forward_in(
        topology: &Topology,
        in_port: PortId,
        buf: &mut [u8],
        frame: Range<usize>,
    ) -> Verdict {
        let fib = fib();
        Forwarder {
            topology,
            fib: &fib,
            services: None,
            policy: None,
        }
        .forward(in_port, buf, frame)
    }

    /// A buffer with HEADROOM, then an Ethernet + IPv6 + `icmp` frame.
    fn ipv6_frame(
        (src_mac, dst_mac): (MacAddr, EthernetAddress),
        (src, dst): (Ipv6Addr, Ipv6Addr),
        hop_limit: u8,
        icmp: &Icmpv6Repr,
    ) -> (Vec<u8>, Range<usize>) {
        let len = 14 + 40 + icmp.buffer_len();
        let mut buf = vec![0u8; HEADROOM + len.max(NEIGHBOR_ADVERT_LEN)];
        let f = &mut buf[HEADROOM..];
        EthernetRepr {
            src_addr: src_mac.into(),
            dst_addr: dst_mac,
            ethertype: EthernetProtocol::Ipv6,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
        Ipv6Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Icmpv6,
            payload_len: icmp.buffer_len(),
            hop_limit,
        }
        .emit(&mut Ipv6Packet::new_unchecked(&mut f[14..]));
        icmp.emit(
            &src,
            &dst,
            &mut Icmpv6Packet::new_unchecked(&mut f[54..len]),
            &ChecksumCapabilities::default(),
        );
        (buf, HEADROOM..HEADROOM + len)
    }

    const ECHO: Icmpv6Repr<'static> = Icmpv6Repr::EchoRequest {
        ident: 7,
        seq_no: 1,
        data: b"hello pods",
    };

    /// An echo request from pod A (its MAC) to the router MAC.
    fn echo6(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8) -> (Vec<u8>, Range<usize>) {
        ipv6_frame((POD_A_MAC, ROUTER.into()), (src, dst), hop_limit, &ECHO)
    }

    /// A neighbour solicitation from pod A, from `src`, for `target`,
    /// giving `lladdr` as its MAC.
    fn solicit(src: Ipv6Addr, target: Ipv6Addr, lladdr: MacAddr) -> (Vec<u8>, Range<usize>) {
        solicit_from(POD_A_MAC, src, target, lladdr)
    }

    /// A neighbour solicitation sent by `mac`, from `src`, for `target`,
    /// giving `lladdr` as its MAC.
    fn solicit_from(
        mac: MacAddr,
        src: Ipv6Addr,
        target: Ipv6Addr,
        lladdr: MacAddr,
    ) -> (Vec<u8>, Range<usize>) {
        let icmp = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
            target_addr: target,
            lladdr: Some(EthernetAddress::from(lladdr).into()),
        });
        let solicited_node = EthernetAddress([0x33, 0x33, 0xff, 0, 0, 1]);
        let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 1);
        ipv6_frame((mac, solicited_node), (src, dst), 255, &icmp)
    }

    /// [`topology`] with IPv6 on the host port, and its `::/0`.
    fn host_ipv6_topology() -> Topology {
        let mut topology = topology();
        topology.host_ipv6 = true;
        topology.fib6.insert(Ipv6Net::default(), RouteTarget::Host);
        topology
    }

    /// The node's address on the host port, the mirror of the IPv4
    /// gateway.
    const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 1);

    /// The hop limit of the routed IPv6 frame at `buf[frame]`, checked to
    /// be addressed to `dst_mac` from the router.
    fn routed6(buf: &[u8], frame: Range<usize>, dst_mac: MacAddr) -> u8 {
        let eth = EthernetFrame::new_checked(&buf[frame]).unwrap();
        assert_eq!(MacAddr::from(eth.dst_addr()), dst_mac);
        assert_eq!(MacAddr::from(eth.src_addr()), ROUTER);
        Ipv6Packet::new_checked(eth.payload()).unwrap().hop_limit()
    }

    #[test]
    fn ipv6_from_the_host_port_is_routed_and_its_hop_limit_left_alone() {
        let topology = host_ipv6_topology();
        let from_host =
            |dst, hop_limit| ipv6_frame((HOST_MAC, ROUTER.into()), (NODE6, dst), hop_limit, &ECHO);
        // To a local pod: the node's kernel was the hop.
        let (mut buf, frame) = from_host(POD_A6, 64);
        let verdict = forward_in(&topology, HOST, &mut buf, frame.clone());
        assert_eq!(
            verdict,
            Verdict::Transmit {
                port: POD_A_PORT,
                frame: frame.clone()
            }
        );
        assert_eq!(routed6(&buf, frame, POD_A_MAC), 64);
        // Even with the hop limit the kernel left at 1.
        let (mut buf, frame) = from_host(POD_B6, 1);
        let verdict = forward_in(&topology, HOST, &mut buf, frame.clone());
        assert!(matches!(
            verdict,
            Verdict::Transmit {
                port: POD_B_PORT,
                ..
            }
        ));
        assert_eq!(routed6(&buf, frame, POD_B_MAC), 1);
        // To a peer's pod (a Service packet DNATed to it).
        let (mut buf, frame) = from_host(REMOTE_POD6, 63);
        let verdict = forward_in(&topology, HOST, &mut buf, frame.clone());
        assert_eq!(
            verdict,
            Verdict::ToPeer {
                peer: PeerId(0),
                frame: frame.clone()
            }
        );
        assert_eq!(routed6(&buf, frame, PEER_VTEP_MAC), 63);
        // No source check: the node sends from any of its addresses.
        let (mut buf, frame) = ipv6_frame(
            (HOST_MAC, ROUTER.into()),
            ("2001:db8::7".parse().unwrap(), POD_A6),
            64,
            &ECHO,
        );
        let verdict = forward_in(&topology, HOST, &mut buf, frame);
        assert!(matches!(
            verdict,
            Verdict::Transmit {
                port: POD_A_PORT,
                ..
            }
        ));
        // Without IPv6 on the host port, none of it is routed.
        let (mut buf, frame) = from_host(POD_A6, 64);
        assert_eq!(
            forward(HOST, &mut buf, frame),
            Verdict::Drop(DropCause::NotIpv4)
        );
    }

    #[test]
    fn ipv6_a_pod_sends_outside_the_pod_network_goes_to_the_node() {
        let topology = host_ipv6_topology();
        for dst in [NODE6, "2001:db8::1".parse().unwrap()] {
            // The node's kernel is the hop: even a hop limit of 1 goes,
            // for the kernel to answer.
            for hop_limit in [64, 1] {
                let (mut buf, frame) = echo6(POD_A6, dst, hop_limit);
                let verdict = forward_in(&topology, POD_A_PORT, &mut buf, frame.clone());
                assert_eq!(
                    verdict,
                    Verdict::Transmit {
                        port: HOST,
                        frame: frame.clone()
                    },
                    "{dst}"
                );
                assert_eq!(routed6(&buf, frame, HOST_MAC), hop_limit);
            }
        }
        // Pod to pod, the switch is still the hop.
        let (mut buf, frame) = echo6(POD_A6, POD_B6, 1);
        assert_eq!(
            forward_in(&topology, POD_A_PORT, &mut buf, frame),
            Verdict::Drop(DropCause::TtlExpired)
        );
    }

    #[test]
    fn the_host_ports_ipv6_is_no_way_around_a_policy() {
        // Pod A (10.244.1.5) is isolated both ways.
        let policies = crate::policy::tests::web_isolated();
        let enforced = policies.enforced();
        let topology = host_ipv6_topology();
        let fib = fib();
        let forwarder = Forwarder {
            topology: &topology,
            fib: &fib,
            services: None,
            policy: policies.stage(&enforced, Pass::Live),
        };
        let outside: Ipv6Addr = "2001:db8::1".parse().unwrap();
        // From the node (or a Service through kube-proxy) to pod A.
        let (mut buf, frame) = ipv6_frame((HOST_MAC, ROUTER.into()), (NODE6, POD_A6), 64, &ECHO);
        assert_eq!(
            forwarder.forward(HOST, &mut buf, frame),
            Verdict::Drop(DropCause::PolicyDeniedIngress)
        );
        // From pod A to the node, or through it to the world.
        for dst in [NODE6, outside] {
            let (mut buf, frame) = echo6(POD_A6, dst, 64);
            assert_eq!(
                forwarder.forward(POD_A_PORT, &mut buf, frame),
                Verdict::Drop(DropCause::PolicyDeniedEgress)
            );
        }
        // A pod no policy selects goes its way.
        let (mut buf, frame) = ipv6_frame((POD_B_MAC, ROUTER.into()), (POD_B6, outside), 64, &ECHO);
        assert!(matches!(
            forwarder.forward(POD_B_PORT, &mut buf, frame),
            Verdict::Transmit { port: HOST, .. }
        ));
    }

    #[test]
    fn neighbor_solicitations_on_the_host_port() {
        let topology = host_ipv6_topology();
        let link_local = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0xff, 0xfe00, 0x99);
        // The gateway and routed pods' addresses, asked from the host
        // port's link-local address or from the node's global one.
        for (src, target) in [
            (link_local, POD_GATEWAY6),
            (link_local, POD_A6),
            (NODE6, REMOTE_POD6),
        ] {
            let (mut buf, frame) = solicit_from(HOST_MAC, src, target, HOST_MAC);
            let Verdict::Transmit {
                port,
                frame: answer,
            } = forward_in(&topology, HOST, &mut buf, frame)
            else {
                panic!("{target} not answered");
            };
            assert_eq!(port, HOST);
            let eth = EthernetFrame::new_checked(&buf[answer]).unwrap();
            assert_eq!(MacAddr::from(eth.dst_addr()), HOST_MAC);
        }
        // Not what the node itself is reached by.
        let (mut buf, frame) = solicit_from(HOST_MAC, link_local, NODE6, HOST_MAC);
        assert_eq!(
            forward_in(&topology, HOST, &mut buf, frame),
            Verdict::Drop(DropCause::NeighborUnanswered)
        );
        // Without IPv6 on the host port: a multicast frame, dropped.
        let (mut buf, frame) = solicit_from(HOST_MAC, link_local, POD_GATEWAY6, HOST_MAC);
        assert_eq!(
            forward(HOST, &mut buf, frame),
            Verdict::Drop(DropCause::Multicast)
        );
    }

    #[test]
    fn ipv6_pod_to_local_pod_and_to_a_peer() {
        let (mut buf, frame) = echo6(POD_A6, POD_B6, 64);
        let verdict = forward(POD_A_PORT, &mut buf, frame.clone());
        assert_eq!(
            verdict,
            Verdict::Transmit {
                port: POD_B_PORT,
                frame: frame.clone()
            }
        );
        let eth = EthernetFrame::new_checked(&buf[frame]).unwrap();
        assert_eq!(MacAddr::from(eth.dst_addr()), POD_B_MAC);
        assert_eq!(MacAddr::from(eth.src_addr()), ROUTER);
        assert_eq!(
            Ipv6Packet::new_checked(eth.payload()).unwrap().hop_limit(),
            63
        );

        let (mut buf, frame) = echo6(POD_A6, REMOTE_POD6, 64);
        let verdict = forward(POD_A_PORT, &mut buf, frame.clone());
        assert_eq!(
            verdict,
            Verdict::ToPeer {
                peer: PeerId(0),
                frame: frame.clone()
            }
        );
        let eth = EthernetFrame::new_checked(&buf[frame]).unwrap();
        assert_eq!(MacAddr::from(eth.dst_addr()), PEER_VTEP_MAC);
    }

    #[test]
    fn ipv6_from_the_tunnel_to_a_local_pod() {
        let (mut buf, frame) = ipv6_frame(
            (PEER_VTEP_MAC, ROUTER.into()),
            (REMOTE_POD6, POD_B6),
            63,
            &ECHO,
        );
        let packet = template(PEER_NODE, NODE)
            .encapsulate(&mut buf, frame.clone())
            .unwrap();
        let Verdict::Transmit { port, frame: inner } = forward(UPLINK, &mut buf, packet) else {
            panic!("not transmitted");
        };
        assert_eq!((port, inner.clone()), (POD_B_PORT, frame));
        let eth = EthernetFrame::new_checked(&buf[inner]).unwrap();
        assert_eq!(MacAddr::from(eth.dst_addr()), POD_B_MAC);
        assert_eq!(
            Ipv6Packet::new_checked(eth.payload()).unwrap().hop_limit(),
            62
        );
    }

    #[test]
    fn neighbor_solicitations_for_the_gateway_and_routed_addresses_are_answered() {
        let link_local = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x858, 0xaff, 0xfef4, 0x105);
        for target in [POD_GATEWAY6, POD_B6, REMOTE_POD6] {
            let (mut buf, frame) = solicit(link_local, target, POD_A_MAC);
            let Verdict::Transmit {
                port,
                frame: answer,
            } = forward(POD_A_PORT, &mut buf, frame.clone())
            else {
                panic!("{target} not answered");
            };
            assert_eq!(port, POD_A_PORT);
            let eth = EthernetFrame::new_checked(&buf[answer]).unwrap();
            assert_eq!(MacAddr::from(eth.dst_addr()), POD_A_MAC);
            let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
            assert_eq!((ip.src_addr(), ip.dst_addr()), (target, link_local));
            let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
            let repr = Icmpv6Repr::parse(
                &ip.src_addr(),
                &ip.dst_addr(),
                &icmp,
                &ChecksumCapabilities::default(),
            )
            .unwrap();
            let Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
                flags,
                target_addr,
                lladdr: Some(lladdr),
            }) = repr
            else {
                panic!("not an advertisement: {repr:?}");
            };
            assert_eq!(target_addr, target);
            assert_eq!(lladdr.as_bytes(), ROUTER.0);
            assert!(flags.contains(NdiscNeighborFlags::ROUTER | NdiscNeighborFlags::SOLICITED));
        }
    }

    #[test]
    fn neighbor_solicitations_not_answered() {
        let link_local = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x858, 0xaff, 0xfef4, 0x105);
        let cases = [
            // Duplicate address detection, for the pod's own address.
            (
                Ipv6Addr::UNSPECIFIED,
                POD_A6,
                POD_A_MAC,
                DropCause::NeighborUnanswered,
            ),
            // An address the switch does not route.
            (
                link_local,
                "fd00:99::1".parse().unwrap(),
                POD_A_MAC,
                DropCause::NeighborUnanswered,
            ),
            // The pod's own address, from itself.
            (POD_A6, POD_A6, POD_A_MAC, DropCause::NeighborUnanswered),
            // Another pod's address as the source, or another MAC.
            (POD_B6, POD_GATEWAY6, POD_A_MAC, DropCause::Spoofed),
            (link_local, POD_GATEWAY6, POD_B_MAC, DropCause::Spoofed),
        ];
        for (src, target, lladdr, cause) in cases {
            let (mut buf, frame) = solicit(src, target, lladdr);
            let verdict = forward(POD_A_PORT, &mut buf, frame);
            assert_eq!(verdict, Verdict::Drop(cause), "{src} asking for {target}");
        }
        // A hop limit other than 255 may come from off the link.
        let (mut buf, frame) = solicit(link_local, POD_GATEWAY6, POD_A_MAC);
        buf[frame.start + 14 + 7] = 254;
        assert_eq!(
            forward(POD_A_PORT, &mut buf, frame),
            Verdict::Drop(DropCause::BadNeighborSolicit)
        );
    }

    #[test]
    fn ipv6_drops() {
        let drop = |cause| Verdict::Drop(cause);
        let (mut buf, frame) = echo6("fd00:10:244:1::99".parse().unwrap(), POD_B6, 64);
        assert_eq!(
            forward(POD_A_PORT, &mut buf, frame),
            drop(DropCause::Spoofed)
        );
        let (mut buf, frame) = echo6(POD_A6, POD_B6, 1);
        assert_eq!(
            forward(POD_A_PORT, &mut buf, frame),
            drop(DropCause::TtlExpired)
        );
        let (mut buf, frame) = echo6(POD_A6, "2001:db8::1".parse().unwrap(), 64);
        assert_eq!(
            forward(POD_A_PORT, &mut buf, frame),
            drop(DropCause::NoRoute)
        );
        // Truncated: the header says more than the frame holds.
        let (mut buf, frame) = echo6(POD_A6, POD_B6, 64);
        let cut = frame.start..frame.end - 4;
        assert_eq!(forward(POD_A_PORT, &mut buf, cut), drop(DropCause::BadIpv6));
        // Multicast (an MLD report's address) is not routed.
        let mld = EthernetAddress([0x33, 0x33, 0, 0, 0, 0x16]);
        let (mut buf, frame) = ipv6_frame((POD_A_MAC, mld), (POD_A6, POD_B6), 1, &ECHO);
        assert_eq!(
            forward(POD_A_PORT, &mut buf, frame),
            drop(DropCause::Multicast)
        );
        // A pod without an IPv6 address gets no IPv6 routed.
        let mut single_stack = topology();
        if let Some(Some(port)) = single_stack.ports.get_mut(usize::from(POD_A_PORT.0)) {
            port.ip6 = None;
        }
        let (mut buf, frame) = echo6(POD_A6, POD_B6, 64);
        assert_eq!(
            forward_in(&single_stack, POD_A_PORT, &mut buf, frame),
            drop(DropCause::NotIpv4)
        );
        let (mut buf, frame) = solicit(POD_A6, POD_GATEWAY6, POD_A_MAC);
        assert_eq!(
            forward_in(&single_stack, POD_A_PORT, &mut buf, frame),
            drop(DropCause::Multicast)
        );
    }

    fn check_routed(bytes: &[u8], dst_mac: MacAddr, ttl: u8) {
        let eth = EthernetFrame::new_checked(bytes).unwrap();
        assert_eq!(MacAddr::from(eth.dst_addr()), dst_mac);
        assert_eq!(MacAddr::from(eth.src_addr()), ROUTER);
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert_eq!(ip.hop_limit(), ttl);
        assert!(
            ip.verify_checksum(),
            "TTL decrement keeps the checksum valid"
        );
    }

    #[test]
    fn pod_to_local_pod() {
        let (mut buf, frame) = ipv4_frame(POD_A_MAC, ROUTER, POD_A, POD_B, 64);
        let verdict = forward(POD_A_PORT, &mut buf, frame.clone());
        assert_eq!(
            verdict,
            Verdict::Transmit {
                port: POD_B_PORT,
                frame: frame.clone()
            }
        );
        check_routed(&buf[frame], POD_B_MAC, 63);
    }

    /// `frame` (as [`ipv4_frame`] makes it) with `options` after its IPv4
    /// header, its headroom kept.
    fn with_options(
        (buf, frame): (Vec<u8>, Range<usize>),
        options: &[u8],
    ) -> (Vec<u8>, Range<usize>) {
        let with = with_ipv4_options(&buf[frame.clone()], options);
        let end = frame.start + with.len();
        ([&buf[..frame.start], &with[..]].concat(), frame.start..end)
    }

    /// Options the kernel refuses: a length of 0, a length past the
    /// header, 40 bytes of garbage.
    const BAD_OPTIONS: [&[u8]; 3] = [&[130, 0, 0, 0], &[1, 7, 11, 4], &[0x6a; 40]];
    /// NOP, Router Alert, Record Route with a free slot, End of Option List.
    const GOOD_OPTIONS: [u8; 16] = [1, 148, 4, 0, 0, 7, 7, 4, 0, 0, 0, 0, 0, 0, 0, 0];

    /// For the gateway, the node and the world, the node's kernel is the
    /// hop: the switch hands it a pod's packet with its TTL (1 included)
    /// and options (bad ones included) as they came, for it to deliver,
    /// forward or answer (time exceeded, parameter problem).
    #[test]
    fn pod_to_host_and_world() {
        for dst in [
            Ipv4Addr::new(10, 244, 1, 1),
            NODE,
            Ipv4Addr::new(192, 0, 2, 1),
        ] {
            for ttl in [64, 1] {
                let (mut buf, frame) = ipv4_frame(POD_A_MAC, ROUTER, POD_A, dst, ttl);
                let verdict = forward(POD_A_PORT, &mut buf, frame.clone());
                assert_eq!(
                    verdict,
                    Verdict::Transmit {
                        port: HOST,
                        frame: frame.clone()
                    },
                    "{dst} TTL {ttl}"
                );
                check_routed(&buf[frame], HOST_MAC, ttl);
            }
            let (mut buf, frame) = with_options(
                ipv4_frame(POD_A_MAC, ROUTER, POD_A, dst, 64),
                BAD_OPTIONS[1],
            );
            assert!(matches!(
                forward(POD_A_PORT, &mut buf, frame),
                Verdict::Transmit { port: HOST, .. }
            ));
        }
    }

    /// From the node's stack, whose kernel routed the packet (and
    /// decremented its TTL if it forwarded it): to a pod and to a peer
    /// with its TTL as it came, 1 included.
    #[test]
    fn host_to_pods_keeps_the_ttl() {
        let (mut buf, frame) = ipv4_frame(HOST_MAC, ROUTER, NODE, POD_B, 1);
        assert_eq!(
            forward(HOST, &mut buf, frame.clone()),
            Verdict::Transmit {
                port: POD_B_PORT,
                frame: frame.clone()
            }
        );
        check_routed(&buf[frame], POD_B_MAC, 1);

        let (mut buf, frame) = ipv4_frame(HOST_MAC, ROUTER, NODE, REMOTE_POD, 1);
        let Verdict::ToPeer { frame: inner, .. } = forward(HOST, &mut buf, frame) else {
            panic!("not sent to the peer");
        };
        check_routed(&buf[inner], PEER_VTEP_MAC, 1);
    }

    /// Where the switch is the hop (pod to pod, pod to peer, tunnel to
    /// pod), options the kernel refuses are dropped; good ones pass
    /// unchanged.
    #[test]
    fn options_where_the_switch_is_the_hop() {
        let bad_options = Verdict::Drop(DropCause::Wire(DropReason::BadIpv4Options));
        for options in BAD_OPTIONS {
            for dst in [POD_B, REMOTE_POD] {
                let (mut buf, frame) =
                    with_options(ipv4_frame(POD_A_MAC, ROUTER, POD_A, dst, 64), options);
                assert_eq!(forward(POD_A_PORT, &mut buf, frame), bad_options, "{dst}");
            }
            let (mut buf, frame) = with_options(
                ipv4_frame(PEER_VTEP_MAC, ROUTER, REMOTE_POD, POD_B, 63),
                options,
            );
            let packet = template(PEER_NODE, NODE)
                .encapsulate(&mut buf, frame)
                .unwrap();
            assert_eq!(forward(UPLINK, &mut buf, packet), bad_options);
        }
        let (mut buf, frame) = with_options(
            ipv4_frame(POD_A_MAC, ROUTER, POD_A, POD_B, 64),
            &GOOD_OPTIONS,
        );
        assert_eq!(
            forward(POD_A_PORT, &mut buf, frame.clone()),
            Verdict::Transmit {
                port: POD_B_PORT,
                frame: frame.clone()
            }
        );
        check_routed(&buf[frame.clone()], POD_B_MAC, 63);
        assert_eq!(buf[frame.start + 34..frame.start + 50], GOOD_OPTIONS);
    }

    #[test]
    fn pod_to_remote_pod_is_encapsulated_and_decaps_at_the_peer() {
        let (topology, fib) = (topology(), fib());
        let forwarder = Forwarder {
            topology: &topology,
            fib: &fib,
            services: None,
            policy: None,
        };
        let (mut buf, frame) = ipv4_frame(POD_A_MAC, ROUTER, POD_A, REMOTE_POD, 64);
        let Verdict::ToPeer { peer, frame: inner } =
            forwarder.forward(POD_A_PORT, &mut buf, frame.clone())
        else {
            panic!("not sent to the peer");
        };
        assert_eq!(inner, frame);
        let packet = forwarder.encapsulate(peer, &mut buf, inner).unwrap();
        assert_eq!(packet, frame.start - 50..frame.end);
        let peer = Decapsulator::new(
            TunnelKind::Vxlan,
            IpAddr::V4(PEER_NODE),
            Vni::new(1).unwrap(),
        );
        let d = peer.decapsulate(&buf[packet.clone()]).unwrap();
        assert_eq!(d.sender, IpAddr::V4(NODE));
        check_routed(&buf[packet.start..][d.inner], PEER_VTEP_MAC, 63);
    }

    #[test]
    fn tunnel_to_local_pod() {
        // What the peer sends: a frame for POD_B addressed to our router MAC.
        let (mut buf, frame) = ipv4_frame(PEER_VTEP_MAC, ROUTER, REMOTE_POD, POD_B, 63);
        let packet = template(PEER_NODE, NODE)
            .encapsulate(&mut buf, frame.clone())
            .unwrap();
        let Verdict::Transmit { port, frame: inner } = forward(UPLINK, &mut buf, packet) else {
            panic!("not transmitted");
        };
        assert_eq!(port, POD_B_PORT);
        assert_eq!(inner, frame);
        check_routed(&buf[inner], POD_B_MAC, 62);
    }

    #[test]
    fn tunnel_packets_the_kernel_hands_on() {
        // The outer UDP checksum is wrong: the uplink's packet is dropped;
        // the tunnel port's was checked by the node's kernel (a GRO
        // super-packet's field holds only the pseudo-header sum).
        let encapsulated = || {
            let (mut buf, frame) = ipv4_frame(PEER_VTEP_MAC, ROUTER, REMOTE_POD, POD_B, 63);
            let packet = template(PEER_NODE, NODE)
                .encapsulate(&mut buf, frame.clone())
                .unwrap();
            let udp_checksum = packet.start + 14 + 20 + 6;
            buf[udp_checksum] ^= 0x5a;
            (buf, packet, frame)
        };
        let (mut buf, packet, _) = encapsulated();
        assert_eq!(
            forward(UPLINK, &mut buf, packet),
            Verdict::Drop(DropCause::Wire(DropReason::BadUdpChecksum))
        );
        let (mut buf, packet, frame) = encapsulated();
        let Verdict::Transmit { port, frame: inner } = forward(TUNNEL, &mut buf, packet) else {
            panic!("not transmitted");
        };
        assert_eq!((port, inner.clone()), (POD_B_PORT, frame));
        check_routed(&buf[inner], POD_B_MAC, 62);
        // A super-packet: no MTU check on the inner frame.
        let (mut buf, packet, frame) = encapsulated();
        let topology = topology();
        let fib = fib();
        let forwarder = Forwarder {
            topology: &topology,
            fib: &fib,
            services: None,
            policy: None,
        };
        assert_eq!(
            forwarder.forward_super_frame(TUNNEL, &mut buf, packet, L4Checksum::Partial),
            Verdict::Transmit {
                port: POD_B_PORT,
                frame
            }
        );
    }

    #[test]
    fn tunnel_drops() {
        let tunnel = |src_node: Ipv4Addr, dst_mac: MacAddr, dst: Ipv4Addr| {
            let (mut buf, frame) = ipv4_frame(PEER_VTEP_MAC, dst_mac, REMOTE_POD, dst, 63);
            let packet = template(src_node, NODE)
                .encapsulate(&mut buf, frame)
                .unwrap();
            forward(UPLINK, &mut buf, packet)
        };
        assert_eq!(
            tunnel(Ipv4Addr::new(10, 1, 0, 99), ROUTER, POD_B),
            Verdict::Drop(DropCause::UnknownPeer)
        );
        assert_eq!(
            tunnel(PEER_NODE, POD_B_MAC, POD_B),
            Verdict::Drop(DropCause::NotOurMac)
        );
        assert_eq!(
            tunnel(PEER_NODE, ROUTER, REMOTE_POD),
            Verdict::Drop(DropCause::TunnelHairpin)
        );
        // Routed here: a TTL that would expire.
        let (mut buf, frame) = ipv4_frame(PEER_VTEP_MAC, ROUTER, REMOTE_POD, POD_B, 1);
        let packet = template(PEER_NODE, NODE)
            .encapsulate(&mut buf, frame)
            .unwrap();
        assert_eq!(
            forward(UPLINK, &mut buf, packet),
            Verdict::Drop(DropCause::TtlExpired)
        );
        // Sent to another host's MAC.
        let (mut buf, frame) = ipv4_frame(PEER_VTEP_MAC, ROUTER, REMOTE_POD, POD_B, 63);
        let packet = template(PEER_NODE, NODE)
            .encapsulate(&mut buf, frame)
            .unwrap();
        buf[packet.start..packet.start + 6].copy_from_slice(&[2, 0, 0, 0, 0, 99]);
        assert_eq!(
            forward(UPLINK, &mut buf, packet),
            Verdict::Drop(DropCause::Wire(DropReason::NotOurUplinkMac))
        );
        // Not a tunnel packet, though addressed to the uplink.
        let uplink_mac = underlay_mac(NODE).into();
        let (mut buf, frame) = ipv4_frame(POD_A_MAC, uplink_mac, POD_A, POD_B, 64);
        assert_eq!(
            forward(UPLINK, &mut buf, frame),
            Verdict::Drop(DropCause::Wire(DropReason::NotForUs))
        );
    }

    #[test]
    fn local_drops() {
        let cases = [
            (
                ipv4_frame(POD_A_MAC, ROUTER, POD_A, POD_B, 1),
                DropCause::TtlExpired,
            ),
            (
                ipv4_frame(POD_A_MAC, ROUTER, POD_A, REMOTE_POD, 0),
                DropCause::TtlExpired,
            ),
            (
                ipv4_frame(POD_A_MAC, POD_B_MAC, POD_A, POD_B, 64),
                DropCause::NotOurMac,
            ),
            (
                ipv4_frame(POD_B_MAC, ROUTER, POD_A, POD_B, 64),
                DropCause::Spoofed,
            ),
            (
                ipv4_frame(POD_A_MAC, ROUTER, POD_B, POD_B, 64),
                DropCause::Spoofed,
            ),
            (
                ipv4_frame(POD_A_MAC, MacAddr([0xff; 6]), POD_A, POD_B, 64),
                DropCause::Broadcast,
            ),
            (
                ipv4_frame(
                    POD_A_MAC,
                    MacAddr([0x33, 0x33, 0, 0, 0, 1]),
                    POD_A,
                    POD_B,
                    64,
                ),
                DropCause::Multicast,
            ),
        ];
        for ((mut buf, frame), expected) in cases {
            assert_eq!(
                forward(POD_A_PORT, &mut buf, frame),
                Verdict::Drop(expected)
            );
        }

        let (mut buf, frame) = ipv4_frame(POD_A_MAC, ROUTER, POD_A, POD_B, 64);
        buf[frame.start + 14 + 10] ^= 1; // header checksum
        assert_eq!(
            forward(POD_A_PORT, &mut buf, frame),
            Verdict::Drop(DropCause::BadIpv4)
        );
        let (mut buf, frame) = ipv4_frame(POD_A_MAC, ROUTER, POD_A, POD_B, 64);
        buf[frame.start + 12] = 0x86; // EtherType 0x86dd: not an IPv6 header
        buf[frame.start + 13] = 0xdd;
        assert_eq!(
            forward(POD_A_PORT, &mut buf, frame),
            Verdict::Drop(DropCause::BadIpv6)
        );
        let (mut buf, frame) = ipv4_frame(POD_A_MAC, ROUTER, POD_A, POD_B, 64);
        buf[frame.start + 12] = 0x88; // EtherType 0x88b5, experimental
        buf[frame.start + 13] = 0xb5;
        assert_eq!(
            forward(POD_A_PORT, &mut buf, frame),
            Verdict::Drop(DropCause::NotIpv4)
        );
        let (mut buf, frame) = ipv4_frame(POD_A_MAC, ROUTER, POD_A, POD_B, 64);
        assert_eq!(
            forward(POD_A_PORT, &mut buf, frame.start..frame.start + 10),
            Verdict::Drop(DropCause::Runt)
        );
        let (mut buf, frame) = ipv4_frame(POD_A_MAC, ROUTER, POD_A, POD_B, 64);
        assert_eq!(
            forward(PortId(9), &mut buf, frame),
            Verdict::Drop(DropCause::PortGone)
        );
    }

    #[test]
    fn no_route_without_a_default() {
        let topology = topology();
        let mut fib = fib();
        fib.remove("0.0.0.0/0".parse().unwrap());
        let (mut buf, frame) =
            ipv4_frame(POD_A_MAC, ROUTER, POD_A, Ipv4Addr::new(192, 0, 2, 1), 64);
        let verdict = Forwarder {
            topology: &topology,
            fib: &fib,
            services: None,
            policy: None,
        }
        .forward(POD_A_PORT, &mut buf, frame);
        assert_eq!(verdict, Verdict::Drop(DropCause::NoRoute));
    }

    fn arp_request(
        sender_mac: MacAddr,
        sender: Ipv4Addr,
        target: Ipv4Addr,
    ) -> (Vec<u8>, Range<usize>) {
        let mut buf = vec![0u8; HEADROOM + 60];
        let f = &mut buf[HEADROOM..];
        let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
        eth.set_dst_addr(EthernetAddress::BROADCAST);
        eth.set_src_addr(sender_mac.into());
        eth.set_ethertype(EthernetProtocol::Arp);
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: sender_mac.into(),
            source_protocol_addr: sender,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target,
        }
        .emit(&mut ArpPacket::new_unchecked(&mut f[14..42]));
        (buf, HEADROOM..HEADROOM + 60)
    }

    #[test]
    fn proxy_arp_for_gateway_and_routed_addresses() {
        for target in [Ipv4Addr::new(10, 244, 1, 1), POD_B, REMOTE_POD] {
            let (mut buf, frame) = arp_request(POD_A_MAC, POD_A, target);
            let verdict = forward(POD_A_PORT, &mut buf, frame.clone());
            let reply = frame.start..frame.start + 42;
            assert_eq!(
                verdict,
                Verdict::Transmit {
                    port: POD_A_PORT,
                    frame: reply.clone()
                }
            );
            let eth = EthernetFrame::new_checked(&buf[reply]).unwrap();
            assert_eq!(MacAddr::from(eth.dst_addr()), POD_A_MAC);
            let Ok(ArpRepr::EthernetIpv4 {
                operation,
                source_hardware_addr,
                source_protocol_addr,
                ..
            }) = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap())
            else {
                panic!("no ARP reply");
            };
            assert_eq!(operation, ArpOperation::Reply);
            assert_eq!(MacAddr::from(source_hardware_addr), ROUTER);
            assert_eq!(source_protocol_addr, target);
        }
        // The node's kernel asks through the host port for a pod.
        let (mut buf, frame) = arp_request(HOST_MAC, Ipv4Addr::new(10, 244, 1, 1), POD_A);
        assert!(matches!(
            forward(HOST, &mut buf, frame),
            Verdict::Transmit { port: HOST, .. }
        ));
    }

    #[test]
    fn arp_not_answered() {
        let cases = [
            (
                arp_request(POD_A_MAC, POD_A, POD_A),
                DropCause::ArpUnanswered,
            ),
            (
                arp_request(POD_A_MAC, POD_A, Ipv4Addr::new(192, 0, 2, 1)),
                DropCause::ArpUnanswered,
            ),
            (arp_request(POD_A_MAC, POD_B, POD_B), DropCause::Spoofed),
        ];
        for ((mut buf, frame), expected) in cases {
            assert_eq!(
                forward(POD_A_PORT, &mut buf, frame),
                Verdict::Drop(expected)
            );
        }
        let (mut buf, frame) = arp_request(POD_A_MAC, POD_A, POD_B);
        buf[frame.start + 21] = 2; // a reply, not a request
        assert_eq!(
            forward(POD_A_PORT, &mut buf, frame),
            Verdict::Drop(DropCause::BadArp)
        );
    }

    /// A frame from pod A to `dst` of `len` bytes, its IPv4 header valid.
    fn frame_of_len(dst: Ipv4Addr, len: usize) -> (Vec<u8>, Range<usize>) {
        let (buf, frame) = ipv4_frame(POD_A_MAC, ROUTER, POD_A, dst, 64);
        let mut big = vec![0u8; HEADROOM];
        big.extend_from_slice(&buf[frame]);
        big.resize(HEADROOM + len, 0);
        // Total Length must cover the frame for the header to pass.
        let ip_len = (len - 14) as u16;
        big[HEADROOM + 16..HEADROOM + 18].copy_from_slice(&ip_len.to_be_bytes());
        big[HEADROOM + 24..HEADROOM + 26].fill(0);
        let sum = !data(&big[HEADROOM + 14..HEADROOM + 34]);
        big[HEADROOM + 24..HEADROOM + 26].copy_from_slice(&sum.to_be_bytes());
        (big, HEADROOM..HEADROOM + len)
    }

    #[test]
    fn frames_over_the_pod_mtu_are_dropped_unless_super_frames() {
        let (topology, fib) = (topology(), fib());
        let forwarder = Forwarder {
            topology: &topology,
            fib: &fib,
            services: None,
            policy: None,
        };
        let (mut buf, frame) = frame_of_len(POD_B, 14 + 1450);
        assert!(matches!(
            forwarder.forward(POD_A_PORT, &mut buf, frame),
            Verdict::Transmit {
                port: POD_B_PORT,
                ..
            }
        ));
        for dst in [POD_B, Ipv4Addr::new(192, 0, 2, 1)] {
            let (mut buf, frame) = frame_of_len(dst, 14 + 1451);
            assert_eq!(
                forwarder.forward(POD_A_PORT, &mut buf, frame.clone()),
                Verdict::Drop(DropCause::Wire(DropReason::Oversize)),
                "{dst}"
            );
            assert!(matches!(
                forwarder.forward_super_frame(POD_A_PORT, &mut buf, frame, L4Checksum::Partial),
                Verdict::Transmit { .. }
            ));
        }
    }

    #[test]
    fn oversize_and_unresolved_peer() {
        let mut topology = topology();
        let fib = fib();
        let (mut buf, frame) = ipv4_frame(POD_A_MAC, ROUTER, POD_A, REMOTE_POD, 64);
        let (mut big, big_frame) = frame_of_len(REMOTE_POD, 1465);
        let forwarder = Forwarder {
            topology: &topology,
            fib: &fib,
            services: None,
            policy: None,
        };
        assert_eq!(
            forwarder.forward(POD_A_PORT, &mut big, big_frame),
            Verdict::Drop(DropCause::Wire(DropReason::Oversize))
        );

        topology.peers[0].as_mut().unwrap().template = None;
        let forwarder = Forwarder {
            topology: &topology,
            fib: &fib,
            services: None,
            policy: None,
        };
        assert_eq!(
            forwarder.forward(POD_A_PORT, &mut buf, frame),
            Verdict::Drop(DropCause::PeerUnresolved)
        );
    }

    #[test]
    fn super_frames_are_routed_and_encapsulated_by_the_caller() {
        let topology = topology();
        let fib = fib();
        let forwarder = Forwarder {
            topology: &topology,
            fib: &fib,
            services: None,
            policy: None,
        };
        // To a local pod: as any frame.
        let (mut buf, frame) = ipv4_frame(POD_A_MAC, ROUTER, POD_A, POD_B, 64);
        assert_eq!(
            forwarder.forward_super_frame(POD_A_PORT, &mut buf, frame.clone(), L4Checksum::Partial),
            Verdict::Transmit {
                port: POD_B_PORT,
                frame: frame.clone()
            }
        );
        // To a peer: routed and rewritten, left unencapsulated ...
        let (mut buf, frame) = ipv4_frame(POD_A_MAC, ROUTER, POD_A, REMOTE_POD, 64);
        let Verdict::ToPeer { peer, frame: inner } =
            forwarder.forward_super_frame(POD_A_PORT, &mut buf, frame.clone(), L4Checksum::Partial)
        else {
            panic!("not sent to the peer");
        };
        assert_eq!(inner, frame);
        check_routed(&buf[inner.clone()], PEER_VTEP_MAC, 63);
        // ... for the caller to encapsulate each segment.
        let packet = forwarder.encapsulate(peer, &mut buf, inner).unwrap();
        assert_eq!(packet, frame.start - 50..frame.end);
    }

    pub(crate) const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

    /// A TCP frame from a pod (or, with `src_mac` a peer's, from a peer)
    /// to the router, with correct checksums.
    fn tcp_frame(
        src_mac: MacAddr,
        (src, sport): (Ipv4Addr, u16),
        (dst, dport): (Ipv4Addr, u16),
    ) -> (Vec<u8>, Range<usize>) {
        let payload = b"GET / HTTP/1.1";
        let len = 14 + 20 + 20 + payload.len();
        let mut buf = vec![0u8; HEADROOM + len];
        let f = &mut buf[HEADROOM..];
        let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
        eth.set_dst_addr(ROUTER.into());
        eth.set_src_addr(src_mac.into());
        eth.set_ethertype(EthernetProtocol::Ipv4);
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: 20 + payload.len(),
            hop_limit: 64,
        };
        ip.emit(
            &mut Ipv4Packet::new_unchecked(&mut f[14..]),
            &ChecksumCapabilities::default(),
        );
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f[46] = 0x50;
        f[47] = 0x18; // PSH, ACK
        f[54..].copy_from_slice(payload);
        TcpPacket::new_unchecked(&mut f[34..]).fill_checksum(&src.into(), &dst.into());
        (buf, HEADROOM..HEADROOM + len)
    }

    /// A TCP packet's source and destination address and port.
    type Tuple = ((Ipv4Addr, u16), (Ipv4Addr, u16));

    /// The TCP tuple of a routed frame, its checksums checked.
    fn tcp_tuple(frame: &[u8]) -> Tuple {
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        assert!(ip.verify_checksum());
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(&src.into(), &dst.into()));
        ((src, tcp.src_port()), (dst, tcp.dst_port()))
    }

    /// A Service at VIP:80 (TCP) served on port 8080 of `endpoints`.
    pub(crate) fn web(endpoints: &[Ipv4Addr]) -> ServiceTable {
        let endpoints = endpoints
            .iter()
            .map(|&a| Endpoint::ready(a, 8080))
            .collect();
        let port = ServicePort::new(ServiceProtocol::Tcp, 80, endpoints);
        ServiceTable::new(
            vec![Service::new("default/web", VIP, vec![port])],
            &podswitch_services::Nodes::default(),
        )
    }

    /// Forward on the test topology with the Service stage on `table`.
    fn forward_with(
        table: &ServiceTable,
        translator: &Translator,
        in_port: PortId,
        buf: &mut [u8],
        frame: Range<usize>,
        size: Size,
    ) -> Verdict {
        let (topology, fib) = (topology(), fib());
        let forwarder = Forwarder {
            topology: &topology,
            fib: &fib,
            policy: None,
            services: Some(ServiceStage {
                table,
                translator,
                now_ms: 0,
                pass: Pass::Live,
            }),
        };
        forwarder.decide(in_port, buf, frame, size)
    }

    /// A TCP frame from a pod through the stage: the verdict (with the
    /// frame's range replaced by 0..0 when it stayed where it was) and the
    /// frame's tuple then.
    fn send(
        (table, translator): (&ServiceTable, &Translator),
        (in_port, mac): (PortId, MacAddr),
        from: (Ipv4Addr, u16),
        to: (Ipv4Addr, u16),
    ) -> (Verdict, Tuple) {
        let (mut buf, frame) = tcp_frame(mac, from, to);
        let verdict = match forward_with(
            table,
            translator,
            in_port,
            &mut buf,
            frame.clone(),
            Size::Frame,
        ) {
            Verdict::Transmit { port, frame: out } if out == frame => {
                Verdict::Transmit { port, frame: 0..0 }
            }
            Verdict::ToPeer { peer, frame: out } if out == frame => {
                Verdict::ToPeer { peer, frame: 0..0 }
            }
            other => other,
        };
        (verdict, tcp_tuple(&buf[frame]))
    }

    fn to_port(port: PortId) -> Verdict {
        Verdict::Transmit { port, frame: 0..0 }
    }

    #[test]
    fn a_service_endpoint_on_a_peer_is_routed_to_and_its_reply_translated_back() {
        let (table, translator) = (web(&[REMOTE_POD]), Translator::new(16, Timeouts::default()));
        let client = (POD_A, 40000);
        let request = send(
            (&table, &translator),
            (POD_A_PORT, POD_A_MAC),
            client,
            (VIP, 80),
        );
        let to_peer = Verdict::ToPeer {
            peer: PeerId(0),
            frame: 0..0,
        };
        assert_eq!(request, (to_peer, (client, (REMOTE_POD, 8080))));

        // The reply, off the wire and (a GRO super-packet whose checksum
        // field holds the pseudo-header sum) from the kernel.
        for (in_port, size) in [
            (UPLINK, Size::Frame),
            (TUNNEL, Size::SuperFrame(L4Checksum::Partial)),
        ] {
            let (mut buf, frame) = tcp_frame(PEER_VTEP_MAC, (REMOTE_POD, 8080), client);
            let tcp_checksum = frame.start + 14 + 20 + 16;
            if size != Size::Frame {
                let pseudo = ipv4_pseudo_header(REMOTE_POD.octets(), POD_A.octets(), 6, 34);
                buf[tcp_checksum..tcp_checksum + 2].copy_from_slice(&pseudo.to_be_bytes());
            }
            let packet = template(PEER_NODE, NODE)
                .encapsulate(&mut buf, frame.clone())
                .unwrap();
            let verdict = forward_with(&table, &translator, in_port, &mut buf, packet, size);
            assert_eq!(
                verdict,
                Verdict::Transmit {
                    port: POD_A_PORT,
                    frame: frame.clone()
                }
            );
            if size == Size::Frame {
                assert_eq!(tcp_tuple(&buf[frame]), ((VIP, 80), client));
            } else {
                let pseudo = ipv4_pseudo_header(VIP.octets(), POD_A.octets(), 6, 34);
                assert_eq!(buf[tcp_checksum..tcp_checksum + 2], pseudo.to_be_bytes());
                assert_eq!(buf[frame.start + 26..frame.start + 30], VIP.octets());
            }
        }
        assert_eq!(translator.translated(), 1);
        assert_eq!(translator.conns.len(), 1);
    }

    #[test]
    fn a_local_endpoint_and_a_hairpin_client_get_their_replies_from_the_cluster_ip() {
        let translator = Translator::new(16, Timeouts::default());
        let (pod_a, pod_b) = ((POD_A_PORT, POD_A_MAC), (POD_B_PORT, POD_B_MAC));
        let (client, endpoint) = ((POD_A, 40000), (POD_B, 8080));
        let stage = (&web(&[POD_B]), &translator);
        let request = send(stage, pod_a, client, (VIP, 80));
        assert_eq!(request, (to_port(POD_B_PORT), (client, endpoint)));
        let reply = send(stage, pod_b, endpoint, client);
        assert_eq!(reply, (to_port(POD_A_PORT), ((VIP, 80), client)));

        // Hairpin: pod A is the endpoint it reaches; it sees the ClusterIP
        // as the client and answers it.
        let (client, endpoint) = ((POD_A, 40001), (POD_A, 8080));
        let stage = (&web(&[POD_A]), &translator);
        let request = send(stage, pod_a, client, (VIP, 80));
        assert_eq!(request, (to_port(POD_A_PORT), ((VIP, 40001), endpoint)));
        let reply = send(stage, pod_a, endpoint, (VIP, 40001));
        assert_eq!(reply, (to_port(POD_A_PORT), ((VIP, 80), client)));
    }

    #[test]
    fn services_the_table_does_not_know_go_to_the_host_port_and_empty_ones_are_dropped() {
        let translator = Translator::new(16, Timeouts::default());
        let pod_a = (POD_A_PORT, POD_A_MAC);
        let client = (POD_A, 40000);
        // No endpoint: refused with a port unreachable back to the pod —
        // or, in a buffer without room for it, dropped.
        let (verdict, _) = send((&web(&[]), &translator), pod_a, client, (VIP, 80));
        assert_eq!(verdict, Verdict::Drop(DropCause::ServiceNoEndpoints));
        let (mut buf, frame) = tcp_frame(POD_A_MAC, client, (VIP, 80));
        buf.resize(buf.len() + 64, 0);
        let verdict = forward_with(
            &web(&[]),
            &translator,
            POD_A_PORT,
            &mut buf,
            frame.clone(),
            Size::Frame,
        );
        let Verdict::Answer {
            cause: DropCause::ServiceNoEndpoints,
            port: POD_A_PORT,
            frame: reply,
        } = verdict
        else {
            panic!("{verdict:?}")
        };
        let eth = EthernetFrame::new_checked(&buf[reply]).unwrap();
        assert_eq!(MacAddr::from(eth.dst_addr()), POD_A_MAC);
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (VIP, POD_A));
        assert_eq!(ip.next_header(), IpProtocol::Icmp);
        assert_eq!(&ip.payload()[..2], &[3, 3], "port unreachable");
        let other = (Ipv4Addr::new(10, 96, 0, 11), 80);
        let passed = send((&web(&[POD_B]), &translator), pod_a, client, other);
        assert_eq!(passed, (to_port(HOST), (client, other)));
        // Without the stage (kube-proxy's translation) the ClusterIP goes
        // to the host port too.
        let (mut buf, frame) = tcp_frame(POD_A_MAC, client, (VIP, 80));
        let verdict = forward(POD_A_PORT, &mut buf, frame.clone());
        assert_eq!(verdict, Verdict::Transmit { port: HOST, frame });
        assert!(translator.conns.is_empty());
    }
}
