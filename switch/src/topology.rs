//! What the workers need to know about ports and peers, published by the
//! control plane as one immutable snapshot (swapped atomically, read
//! without locks) beside the FIB.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use foldhash::fast::RandomState;
use podswitch_encap::{Decapsulator, OuterTemplate};
use serde::{Deserialize, Serialize};

use crate::capture::CaptureTap;
use crate::fib6::Ipv6Lpm;
use crate::mac::MacAddr;

pub use podswitch_control::protocol::PortRole;

/// A port's index in the port table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortId(pub u16);

/// A peer's index in the peer table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerId(pub u16);

/// Where a route sends a packet: the FIB's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteTarget {
    /// A local pod, on its port.
    Pod(PortId),
    /// A remote node, through the tunnel.
    Peer(PeerId),
    /// The node's own stack, through the host port.
    Host,
}

/// A port as the forwarding code sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortView {
    /// Interface name.
    pub name: String,
    /// Pod, uplink or host.
    pub role: PortRole,
    /// The MAC frames to this port are addressed to: the pod's, or the
    /// host port's kernel side.
    pub mac: MacAddr,
    /// A pod's address, the only source it may send from.
    pub ip: Option<Ipv4Addr>,
    /// A dual-stack pod's IPv6 address: with link-local ones, the only
    /// IPv6 source it may send from.
    pub ip6: Option<Ipv6Addr>,
    /// Index of the worker that owns the port.
    pub worker: usize,
}

/// A peer as the forwarding code sees it.
#[derive(Debug, Clone)]
pub struct PeerView {
    /// The peer's VTEP address.
    pub node_ip: IpAddr,
    /// The MAC inner frames to it are addressed to.
    pub vtep_mac: MacAddr,
    /// Its outer header, once the underlay next hop is resolved.
    pub template: Option<OuterTemplate>,
    /// Its outer header through the tunnel port (addressed to that
    /// device, for the node's kernel to route), when there is one.
    pub tunnel_template: Option<OuterTemplate>,
}

/// One consistent view of the switch's ports and peers.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The MAC pods use for their gateway, and kernel peers for our VTEP.
    pub router_mac: MacAddr,
    /// The pods' gateway address.
    pub gateway: Ipv4Addr,
    /// The MTU of pod interfaces and the host port: the largest IP packet
    /// the switch hands them (a larger one is dropped as `oversize`, where
    /// the kernel would drop it unseen).
    pub pod_mtu: u32,
    /// Checks for tunnel packets arriving on the uplink.
    pub decapsulator: Decapsulator,
    /// The uplink port.
    pub uplink: PortId,
    /// The host port, if there is one.
    pub host: Option<PortId>,
    /// The tunnel port, if the kernel cuts super-frames for the switch.
    pub tunnel: Option<PortId>,
    /// Ports by [`PortId`].
    pub ports: Vec<Option<PortView>>,
    /// Peers by [`PeerId`].
    pub peers: Vec<Option<PeerView>>,
    /// Peers by VTEP address, for checking who sent a tunnel packet.
    pub peer_by_vtep: HashMap<IpAddr, PeerId, RandomState>,
    /// Captures running (`podswitch capture`); usually none.
    pub captures: Vec<Arc<CaptureTap>>,
    /// IPv6 routes: local pods' addresses, peers' IPv6 pod CIDRs and,
    /// with [`Topology::host_ipv6`], `::/0` to the host port. They change
    /// only with ports and peers, so they are published with them.
    pub fib6: Ipv6Lpm<RouteTarget>,
    /// Whether the host port carries IPv6 (the node has a `pod_cidr6`):
    /// its IPv6 frames are routed and its neighbour solicitations
    /// answered. Set exactly when `fib6` holds `::/0` to the host port;
    /// kept as a flag so that a host port frame needs no trie lookup to
    /// know.
    pub host_ipv6: bool,
}

impl Topology {
    /// A topology with no ports and no peers yet.
    pub fn empty(
        router_mac: MacAddr,
        gateway: Ipv4Addr,
        pod_mtu: u32,
        decapsulator: Decapsulator,
    ) -> Topology {
        Topology {
            router_mac,
            gateway,
            pod_mtu,
            decapsulator,
            uplink: PortId(0),
            host: None,
            tunnel: None,
            ports: Vec::new(),
            peers: Vec::new(),
            peer_by_vtep: HashMap::default(),
            captures: Vec::new(),
            fib6: Ipv6Lpm::new(),
            host_ipv6: false,
        }
    }

    /// The capture running on port `id`, if any.
    pub fn capture(&self, id: PortId) -> Option<&CaptureTap> {
        self.captures.iter().find(|c| c.port == id).map(Arc::as_ref)
    }

    /// The port `id`, if it exists.
    pub fn port(&self, id: PortId) -> Option<&PortView> {
        self.ports.get(usize::from(id.0)).and_then(Option::as_ref)
    }

    /// The peer `id`, if it exists.
    pub fn peer(&self, id: PeerId) -> Option<&PeerView> {
        self.peers.get(usize::from(id.0)).and_then(Option::as_ref)
    }
}
