//! The control plane's tables — ports, peers and host routes — with every
//! rule about them, as plain data: no sockets, no netlink, no workers.
//! The I/O shell (`mod.rs`) asks the tables whether a change may be made,
//! does the I/O with no lock held, then records the outcome here; the
//! topology snapshot the workers read is built from the tables alone.
//!
//! A port's slot is reserved before its I/O is opened and kept until its
//! worker has let it go, so no two requests can take one name, address or
//! slot, and a port id is never reused while a worker still holds it.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use ipnet::{Ipv4Net, Ipv6Net};
use podswitch_encap::wire::EthernetAddress;
use podswitch_encap::{OuterTemplate, TunnelSpec};
use serde::{Deserialize, Serialize};

use crate::config::{Config, PeerConfig};
use crate::control::protocol::{PortKind, PortSpec};
use crate::fib6::Ipv6Lpm;
use crate::mac::MacAddr;
use crate::netlink::NextHop;
use crate::netns::Namespace;
use crate::packet_port::PacketDevice;
use crate::saved_state::SavedState;
use crate::stats::MAX_PORTS;
use crate::tap::TapDevice;
use crate::topology::{PeerId, PeerView, PortId, PortRole, PortView, RouteTarget, Topology};

/// The uplink's port id.
pub const UPLINK_PORT: PortId = PortId(0);
/// The host port's id.
pub const HOST_PORT: PortId = PortId(1);
/// The tunnel port's id, when there is one (else the first pod's).
pub const TUNNEL_PORT: PortId = PortId(2);
/// Outer TTL of tunnel packets.
const OUTER_TTL: u8 = 64;

/// What the tables need to know about the node itself.
#[derive(Debug, Clone)]
pub struct Node {
    /// The configuration.
    pub config: Config,
    /// The uplink's MAC, the source of every tunnel packet.
    pub uplink_mac: MacAddr,
    /// The underlay IP MTU.
    pub underlay_mtu: u32,
    /// Pod sockets the buffer frames are planned for.
    pub max_pods: u32,
    /// How many workers there are.
    pub workers: usize,
    /// The tunnel port's MAC, when the kernel cuts super-frames for the
    /// switch: the outer destination of what is written into it.
    pub tunnel_mac: Option<MacAddr>,
    /// The uplink is a veth (a lab's underlay, or a container's).
    pub veth_uplink: bool,
}

impl Node {
    /// The tunnel header toward `remote` through a next hop with
    /// `next_hop_mac`.
    fn tunnel_spec(&self, remote: IpAddr, next_hop_mac: MacAddr) -> TunnelSpec<'static> {
        let config = &self.config;
        TunnelSpec {
            kind: config.encap.into(),
            vni: config.vni(),
            udp_port: config.tunnel_udp_port(),
            local_mac: EthernetAddress::from(self.uplink_mac),
            next_hop_mac: next_hop_mac.into(),
            vlan: None,
            local_ip: config.node_ip,
            remote_ip: remote,
            ttl: OUTER_TTL,
            geneve_options: &[],
            underlay_mtu: u16::try_from(self.underlay_mtu).unwrap_or(u16::MAX),
        }
    }

    /// The outer header template for a peer at `remote`.
    pub fn template(&self, remote: IpAddr, next_hop_mac: MacAddr) -> Result<OuterTemplate> {
        Ok(OuterTemplate::new(&self.tunnel_spec(remote, next_hop_mac))?)
    }

    /// The MTU pods get: the underlay MTU less what the tunnel adds, as
    /// every peer's template computes it (the one formula).
    pub fn pod_mtu(&self) -> Result<u32> {
        Ok(self.own_template()?.pod_mtu() as u32)
    }

    /// The `gso_max_size` TAP pods get when the kernel cuts their
    /// super-frames (the tunnel port): the most that fits a 64 KB outer
    /// packet; 0 (the kernel's default) without a tunnel port.
    pub fn pod_gso_max_size(&self) -> Result<u32> {
        Ok(match self.tunnel_mac {
            Some(_) => self.own_template()?.pod_gso_max_size() as u32,
            None => 0,
        })
    }

    /// A template as every peer's is built, its lengths the same.
    fn own_template(&self) -> Result<OuterTemplate> {
        self.template(self.config.node_ip, MacAddr::default())
            .with_context(|| {
                format!(
                    "underlay MTU {} leaves no room for pod frames",
                    self.underlay_mtu
                )
            })
    }
}

/// Where a port is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    /// Reserved: its I/O is being opened and handed to a worker.
    Starting,
    /// Polled by its worker, routed to.
    Live,
    /// Being let go by its worker.
    Stopping,
}

/// A port's record: what the workers see, and what `ports` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortRecord {
    /// What the forwarding code sees.
    pub view: PortViewRecord,
    /// AF_XDP or TAP.
    pub kind: PortKind,
    /// XDP attach mode, for AF_XDP.
    pub xdp_mode: Option<String>,
    /// Copy or zero-copy, for AF_XDP.
    pub copy_mode: Option<String>,
    /// Sockets bound (RX queues).
    pub queues: u32,
    /// Who asked for it (the CNI's container id).
    pub owner: Option<String>,
    /// A pod TAP port's namespace, as the CNI plugin named it.
    pub netns: Option<PathBuf>,
    /// That namespace, held open (its path may be a mount the daemon
    /// cannot see).
    #[serde(skip)]
    pub namespace: Option<Arc<Namespace>>,
    /// A pod TAP port's device name in its namespace.
    pub ifname: Option<String>,
    /// A TAP or packet port's device (shared with its worker), to see it
    /// vanish and read its queue's drops.
    #[serde(skip)]
    pub device: Option<PodDevice>,
}

/// The kernel side of a pod port that reads a frame per system call.
#[derive(Debug, Clone)]
pub enum PodDevice {
    /// A TAP device.
    Tap(Arc<TapDevice>),
    /// A packet socket on a veth's host end.
    Packet(Arc<PacketDevice>),
}

/// [`PortView`] in a form that can be saved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortViewRecord {
    /// Interface name.
    pub name: String,
    /// Pod, uplink or host.
    pub role: PortRole,
    /// The MAC frames to the port are addressed to.
    pub mac: MacAddr,
    /// A pod's address.
    pub ip: Option<Ipv4Addr>,
    /// A dual-stack pod's IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    /// The worker polling it.
    pub worker: usize,
}

impl From<&PortViewRecord> for PortView {
    fn from(r: &PortViewRecord) -> PortView {
        PortView {
            name: r.name.clone(),
            role: r.role,
            mac: r.mac,
            ip: r.ip,
            ip6: r.ip6,
            worker: r.worker,
        }
    }
}

/// A port in the table.
#[derive(Debug, Clone)]
pub struct PortEntry {
    /// What it is.
    pub record: PortRecord,
    /// Where it is in its life.
    pub state: PortState,
}

/// What resolving a peer's underlay next hop found.
#[derive(Debug, Clone, Default)]
pub struct Resolution {
    /// The route's next hop, once looked up.
    pub next_hop: Option<NextHop>,
    /// Its MAC, once the kernel knows it.
    pub next_hop_mac: Option<MacAddr>,
    /// The outer header, once both are known.
    pub template: Option<OuterTemplate>,
}

/// A peer's record.
#[derive(Debug, Clone)]
pub struct PeerRecord {
    /// As configured (pod CIDR normalised).
    pub config: PeerConfig,
    /// The MAC inner frames to it are addressed to.
    pub vtep_mac: MacAddr,
    /// Its underlay next hop and outer header.
    pub resolution: Resolution,
    /// Bumped on every replacement, so a resolution made for an older
    /// record is not applied to a newer one.
    pub generation: u64,
}

/// A peer to (re)resolve: its record as it was when asked.
#[derive(Debug, Clone)]
pub struct PeerToResolve {
    /// Its slot.
    pub id: PeerId,
    /// Its record then.
    pub record: PeerRecord,
}

/// The control plane's tables.
pub struct Tables {
    node: Node,
    ports: Vec<Option<PortEntry>>,
    peers: Vec<Option<PeerRecord>>,
    host_routes: BTreeSet<Ipv4Net>,
    next_worker: usize,
    next_generation: u64,
}

impl Tables {
    /// Tables holding the ports the daemon runs itself — the uplink, and
    /// the host and tunnel ports if given — and the configuration's host
    /// routes.
    pub fn new(
        node: Node,
        uplink: PortRecord,
        host: Option<PortRecord>,
        tunnel: Option<PortRecord>,
    ) -> Tables {
        let mut ports = vec![None; MAX_PORTS];
        let live = |record| {
            Some(PortEntry {
                record,
                state: PortState::Live,
            })
        };
        ports[usize::from(UPLINK_PORT.0)] = live(uplink);
        if let Some(host) = host {
            ports[usize::from(HOST_PORT.0)] = live(host);
        }
        if let Some(tunnel) = tunnel {
            ports[usize::from(TUNNEL_PORT.0)] = live(tunnel);
        }
        Tables {
            host_routes: node.config.host_routes.iter().map(|r| r.trunc()).collect(),
            node,
            ports,
            peers: Vec::new(),
            next_worker: 0,
            next_generation: 0,
        }
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Every port with its id.
    pub fn ports(&self) -> impl Iterator<Item = (PortId, &PortEntry)> {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((PortId(i as u16), p.as_ref()?)))
    }

    /// The port `id`.
    pub fn port(&self, id: PortId) -> Option<&PortEntry> {
        self.ports.get(usize::from(id.0)).and_then(Option::as_ref)
    }

    /// The live port named `name`.
    pub fn port_named(&self, name: &str) -> Option<(PortId, &PortEntry)> {
        self.ports().find(|(_, p)| p.record.view.name == name)
    }

    /// Every peer with its id.
    pub fn peers(&self) -> impl Iterator<Item = (PeerId, &PeerRecord)> {
        self.peers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((PeerId(i as u16), p.as_ref()?)))
    }

    /// The host routes.
    pub fn host_routes(&self) -> &BTreeSet<Ipv4Net> {
        &self.host_routes
    }

    /// Check a pod port request against the table and reserve a slot and
    /// a worker for it: its id and worker.
    pub fn reserve_port(
        &mut self,
        spec: &PortSpec,
        namespace: Option<Arc<Namespace>>,
    ) -> Result<(PortId, usize)> {
        let config = &self.node.config;
        ensure!(
            !spec.name.is_empty() && spec.name.len() <= 15,
            "port name {:?} is not an interface name (1 to 15 bytes)",
            spec.name
        );
        ensure!(
            self.port_named(&spec.name).is_none(),
            "port {} already exists; remove it first (port del)",
            spec.name
        );
        let gateway = config.gateway();
        ensure!(
            config.pod_cidr.contains(&spec.ip)
                && spec.ip != gateway
                && spec.ip != config.pod_cidr.network()
                && spec.ip != config.pod_cidr.broadcast(),
            "pod address {} is not a usable address of this node's pod CIDR {} (the gateway is {gateway})",
            spec.ip,
            config.pod_cidr
        );
        if let Some((_, other)) = self
            .ports()
            .find(|(_, p)| p.record.view.ip == Some(spec.ip))
        {
            bail!(
                "pod address {} is already used by port {}",
                spec.ip,
                other.record.view.name
            );
        }
        if let Some(ip6) = spec.ip6 {
            let cidr6 = config.pod_cidr6.with_context(|| {
                format!("pod IPv6 address {ip6} given, but this node has no pod_cidr6")
            })?;
            ensure!(
                cidr6.contains(&ip6) && ip6 != cidr6.network(),
                "pod IPv6 address {ip6} is not a usable address of this node's pod_cidr6 {cidr6}"
            );
            if let Some((_, other)) = self.ports().find(|(_, p)| p.record.view.ip6 == Some(ip6)) {
                bail!(
                    "pod IPv6 address {ip6} is already used by port {}",
                    other.record.view.name
                );
            }
        }
        ensure!(
            !spec.mac.is_multicast() && spec.mac != MacAddr::default(),
            "pod MAC {} must be a unicast address",
            spec.mac
        );
        let slot = (2..MAX_PORTS)
            .find(|&i| self.ports[i].is_none())
            .context("the switch has no room for another port")?;
        let worker = self.next_worker % self.node.workers.max(1);
        self.next_worker += 1;
        self.ports[slot] = Some(PortEntry {
            record: PortRecord {
                view: PortViewRecord {
                    name: spec.name.clone(),
                    role: PortRole::Pod,
                    mac: spec.mac,
                    ip: Some(spec.ip),
                    ip6: spec.ip6,
                    worker,
                },
                kind: spec.kind,
                xdp_mode: None,
                copy_mode: None,
                queues: 0,
                owner: spec.owner.clone(),
                netns: spec.netns.clone(),
                namespace,
                ifname: spec.ifname.clone(),
                device: None,
            },
            state: PortState::Starting,
        });
        Ok((PortId(slot as u16), worker))
    }

    /// AF_XDP sockets of pod ports: each holds its minimum fill.
    pub fn pod_sockets(&self) -> u32 {
        self.ports()
            .filter(|(_, p)| {
                p.record.view.role == PortRole::Pod && p.record.kind == PortKind::Afxdp
            })
            .map(|(_, p)| p.record.queues)
            .sum()
    }

    /// Refuse `more` pod sockets when those bound already hold the
    /// minimum fill of every pod the frame plan has room for.
    pub fn check_pod_sockets(&self, more: u32) -> Result<()> {
        let bound = self.pod_sockets();
        ensure!(
            bound + more <= self.node.max_pods,
            "no buffer frames set aside for another pod socket: {bound} pod sockets hold \
             their minimum fill, and max_pods = {}; raise max_pods in the configuration and \
             restart the daemon",
            self.node.max_pods
        );
        Ok(())
    }

    /// The reserved port `id`'s I/O is open: record what it is.
    pub fn port_opened(
        &mut self,
        id: PortId,
        xdp_mode: Option<String>,
        copy_mode: Option<String>,
        queues: u32,
        device: Option<PodDevice>,
    ) {
        if let Some(entry) = self.entry_mut(id) {
            let record = &mut entry.record;
            (record.xdp_mode, record.copy_mode) = (xdp_mode, copy_mode);
            (record.queues, record.device) = (queues, device);
        }
    }

    /// Port `id`'s worker polls it now.
    pub fn port_started(&mut self, id: PortId) {
        if let Some(entry) = self.entry_mut(id) {
            entry.state = PortState::Live;
        }
    }

    /// Port `id` is gone: its reservation failed, or its worker let it go.
    pub fn port_gone(&mut self, id: PortId) {
        if let Some(slot) = self.ports.get_mut(usize::from(id.0)) {
            *slot = None;
        }
    }

    /// Begin removing the live pod port `name`: its id and record.
    pub fn begin_remove_port(&mut self, name: &str) -> Result<(PortId, PortRecord)> {
        let (id, entry) = self
            .port_named(name)
            .with_context(|| format!("no port named {name}"))?;
        ensure!(
            entry.record.view.role == PortRole::Pod,
            "{name} is the {:?} port; only pod ports can be removed",
            entry.record.view.role
        );
        ensure!(
            entry.state == PortState::Live,
            "port {name} is being added or removed; try again"
        );
        let record = entry.record.clone();
        if let Some(entry) = self.entry_mut(id) {
            entry.state = PortState::Stopping;
        }
        Ok((id, record))
    }

    /// An AF_XDP port bound sockets on more RX queues: `queues` in all.
    pub fn port_queues(&mut self, id: PortId, queues: u32) {
        if let Some(entry) = self.entry_mut(id) {
            entry.record.queues = queues;
        }
    }

    fn entry_mut(&mut self, id: PortId) -> Option<&mut PortEntry> {
        self.ports
            .get_mut(usize::from(id.0))
            .and_then(Option::as_mut)
    }

    /// Check a peer against this node and the other peers.
    pub fn check_peer(&self, peer: &PeerConfig) -> Result<()> {
        let config = &self.node.config;
        ensure!(
            peer.node_ip.is_ipv4() == config.node_ip.is_ipv4(),
            "peer {} is not the same IP family as this node ({})",
            peer.node_ip,
            config.node_ip
        );
        ensure!(
            peer.node_ip != config.node_ip,
            "{} is this node's own address",
            peer.node_ip
        );
        let pod_cidr = peer.pod_cidr.trunc();
        ensure!(
            !pod_cidr.contains(&config.pod_cidr) && !config.pod_cidr.contains(&pod_cidr),
            "peer pod CIDR {pod_cidr} overlaps this node's pod CIDR {}",
            config.pod_cidr
        );
        if let Some((_, other)) = self.peers().find(|(_, p)| {
            p.config.node_ip != peer.node_ip
                && (p.config.pod_cidr.contains(&pod_cidr) || pod_cidr.contains(&p.config.pod_cidr))
        }) {
            bail!(
                "peer pod CIDR {pod_cidr} overlaps {} of peer {}",
                other.config.pod_cidr,
                other.config.node_ip
            );
        }
        if let Some(cidr6) = peer.pod_cidr6.map(|c| c.trunc()) {
            let overlaps = |other: Ipv6Net| other.contains(&cidr6) || cidr6.contains(&other);
            if let Some(own) = config.pod_cidr6.filter(|&own| overlaps(own)) {
                bail!("peer IPv6 pod CIDR {cidr6} overlaps this node's pod_cidr6 {own}");
            }
            if let Some((_, other)) = self.peers().find(|(_, p)| {
                p.config.node_ip != peer.node_ip && p.config.pod_cidr6.is_some_and(overlaps)
            }) {
                bail!(
                    "peer IPv6 pod CIDR {cidr6} overlaps that of peer {}",
                    other.config.node_ip
                );
            }
        }
        Ok(())
    }

    /// A new peer's record, not yet resolved.
    pub fn new_peer(&self, peer: PeerConfig) -> PeerRecord {
        let vtep_mac = peer
            .vtep_mac
            .unwrap_or_else(|| MacAddr::derived_from(peer.node_ip));
        PeerRecord {
            config: PeerConfig {
                pod_cidr: peer.pod_cidr.trunc(),
                pod_cidr6: peer.pod_cidr6.map(|c| c.trunc()),
                ..peer
            },
            vtep_mac,
            resolution: Resolution::default(),
            generation: 0,
        }
    }

    /// Add a peer, or replace the one with the same node IP (checked
    /// again: the table may have changed since). Its id, and the
    /// configuration of the peer it replaced.
    pub fn insert_peer(&mut self, mut record: PeerRecord) -> Result<(PeerId, Option<PeerConfig>)> {
        self.check_peer(&record.config)?;
        let node_ip = record.config.node_ip;
        let existing = self
            .peers
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.config.node_ip == node_ip));
        let slot = match existing.or_else(|| self.peers.iter().position(Option::is_none)) {
            Some(i) => i,
            None => {
                ensure!(self.peers.len() < usize::from(u16::MAX), "too many peers");
                self.peers.push(None);
                self.peers.len() - 1
            }
        };
        let replaced = existing.and_then(|i| self.peers[i].as_ref().map(|p| p.config.clone()));
        self.next_generation += 1;
        record.generation = self.next_generation;
        self.peers[slot] = Some(record);
        Ok((PeerId(slot as u16), replaced))
    }

    /// Remove the peer at `node_ip`: its configuration.
    pub fn remove_peer(&mut self, node_ip: IpAddr) -> Result<PeerConfig> {
        let slot = self
            .peers
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.config.node_ip == node_ip))
            .with_context(|| format!("no peer {node_ip}"))?;
        let peer = self.peers[slot].take().context("no such peer")?;
        Ok(peer.config)
    }

    /// The peers `which` selects, as they are now, to resolve again.
    pub fn peers_to_resolve(&self, which: impl Fn(&PeerRecord) -> bool) -> Vec<PeerToResolve> {
        self.peers()
            .filter(|(_, p)| which(p))
            .map(|(id, record)| PeerToResolve {
                id,
                record: record.clone(),
            })
            .collect()
    }

    /// Record what resolving `peer` found, unless the peer was replaced or
    /// removed meanwhile; whether anything the workers see changed.
    pub fn resolved(&mut self, peer: &PeerToResolve, resolution: Resolution) -> bool {
        let Some(Some(record)) = self.peers.get_mut(usize::from(peer.id.0)) else {
            return false;
        };
        if record.generation != peer.record.generation {
            return false;
        }
        let before = (
            record.resolution.next_hop_mac,
            record.resolution.template.is_some(),
        );
        let after = (resolution.next_hop_mac, resolution.template.is_some());
        record.resolution = resolution;
        before != after
    }

    /// Add a host route; false if it was there.
    pub fn add_host_route(&mut self, prefix: Ipv4Net) -> bool {
        self.host_routes.insert(prefix.trunc())
    }

    /// Remove a host route.
    pub fn remove_host_route(&mut self, prefix: Ipv4Net) -> Result<()> {
        let prefix = prefix.trunc();
        ensure!(
            self.host_routes.remove(&prefix),
            "{prefix} is not a host route (see `podswitch routes`)"
        );
        Ok(())
    }

    /// The snapshot the workers read: ports (starting, live and stopping:
    /// a frame for a port its worker still polls is still forwarded) and
    /// peers.
    pub fn topology(&self, pod_mtu: u32) -> Topology {
        let config = &self.node.config;
        let decapsulator = config.decapsulator(self.node.uplink_mac, self.node.veth_uplink);
        let mut peer_by_vtep = HashMap::default();
        let mut fib6 = Ipv6Lpm::new();
        // The host port carries IPv6 where the node has pods of that
        // family: what no pod or peer route takes goes to the node.
        let host_ipv6 = config.pod_cidr6.is_some() && self.port(HOST_PORT).is_some();
        if host_ipv6 {
            fib6.insert(Ipv6Net::default(), RouteTarget::Host);
        }
        for (id, port) in self.ports() {
            if let Some(ip6) = port.record.view.ip6 {
                fib6.insert(Ipv6Net::from(ip6), RouteTarget::Pod(id));
            }
        }
        let peers = self
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                p.as_ref().map(|p| {
                    peer_by_vtep.insert(p.config.node_ip, PeerId(i as u16));
                    if let Some(cidr6) = p.config.pod_cidr6 {
                        fib6.insert(cidr6, RouteTarget::Peer(PeerId(i as u16)));
                    }
                    PeerView {
                        node_ip: p.config.node_ip,
                        vtep_mac: p.vtep_mac,
                        template: p.resolution.template.clone(),
                        tunnel_template: self
                            .node
                            .tunnel_mac
                            .and_then(|mac| self.node.template(p.config.node_ip, mac).ok()),
                    }
                })
            })
            .collect();
        Topology {
            router_mac: config.router_mac(),
            gateway: config.gateway(),
            pod_mtu,
            decapsulator,
            uplink: UPLINK_PORT,
            host: self.port(HOST_PORT).map(|_| HOST_PORT),
            tunnel: self
                .port(TUNNEL_PORT)
                .filter(|p| p.record.view.role == PortRole::Tunnel)
                .map(|_| TUNNEL_PORT),
            ports: self
                .ports
                .iter()
                .map(|p| p.as_ref().map(|p| PortView::from(&p.record.view)))
                .collect(),
            peers,
            peer_by_vtep,
            captures: Vec::new(),
            fib6,
            host_ipv6,
        }
    }

    /// What a restarted daemon should restore: the pod ports, and the
    /// peers and host routes that are not the configuration file's.
    pub fn saved_state(&self) -> SavedState {
        let config = &self.node.config;
        SavedState {
            ports: self
                .ports()
                .map(|(_, p)| &p.record)
                .filter(|p| p.view.role == PortRole::Pod)
                .filter_map(|p| {
                    Some(PortSpec {
                        name: p.view.name.clone(),
                        ip: p.view.ip?,
                        ip6: p.view.ip6,
                        mac: p.view.mac,
                        kind: p.kind,
                        owner: p.owner.clone(),
                        netns: p.netns.clone(),
                        ifname: p.ifname.clone(),
                    })
                })
                .collect(),
            namespaces: self
                .ports()
                .filter_map(|(_, p)| {
                    Some((
                        p.record.view.name.clone(),
                        p.record.namespace.as_ref()?.id(),
                    ))
                })
                .collect(),
            peers: self
                .peers()
                .map(|(_, p)| p.config.clone())
                .filter(|p| {
                    !config.peers.iter().any(|c| {
                        c.node_ip == p.node_ip
                            && c.pod_cidr.trunc() == p.pod_cidr
                            && c.vtep_mac == p.vtep_mac
                    })
                })
                .collect(),
            host_routes: self
                .host_routes
                .iter()
                .filter(|r| !config.host_routes.iter().any(|c| c.trunc() == **r))
                .copied()
                .collect(),
            ..SavedState::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const CONFIG: &str = r#"
node_ip = "10.1.0.11"
uplink = "ul0"
pod_cidr = "10.244.1.0/24"
[[peers]]
node_ip = "10.1.0.12"
pod_cidr = "10.244.2.0/24"
"#;

    fn node(max_pods: u32) -> Node {
        Node {
            config: Config::parse(CONFIG).unwrap(),
            uplink_mac: MacAddr([2, 0, 0, 0, 0, 11]),
            underlay_mtu: 1500,
            max_pods,
            workers: 2,
            tunnel_mac: None,
            veth_uplink: false,
        }
    }

    fn seed(name: &str, role: PortRole) -> PortRecord {
        PortRecord {
            view: PortViewRecord {
                ip6: None,
                name: name.into(),
                role,
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
                ip: None,
                worker: 0,
            },
            kind: PortKind::Afxdp,
            xdp_mode: None,
            copy_mode: None,
            queues: 1,
            owner: None,
            netns: None,
            namespace: None,
            ifname: None,
            device: None,
        }
    }

    fn tables() -> Tables {
        Tables::new(
            node(110),
            seed("ul0", PortRole::Uplink),
            Some(seed("podsw0", PortRole::Host)),
            None,
        )
    }

    fn spec(name: &str, ip: [u8; 4]) -> PortSpec {
        PortSpec {
            ip6: None,
            name: name.into(),
            ip: ip.into(),
            mac: MacAddr([0x0a, 0x58, ip[0], ip[1], ip[2], ip[3]]),
            kind: PortKind::Afxdp,
            owner: Some("container-1".into()),
            netns: None,
            ifname: None,
        }
    }

    fn peer(ip: [u8; 4], cidr: &str) -> PeerConfig {
        PeerConfig {
            pod_cidr6: None,
            node_ip: IpAddr::V4(ip.into()),
            pod_cidr: cidr.parse().unwrap(),
            vtep_mac: None,
        }
    }

    #[test]
    fn the_host_port_takes_ipv6_default_traffic_only_on_a_dual_stack_node() {
        let outside: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let single = tables().topology(1450);
        assert!(!single.host_ipv6);
        assert_eq!(single.fib6.lookup(outside), None);
        let mut dual = node(110);
        dual.config.pod_cidr6 = Some("fd00:10:244:1::/64".parse().unwrap());
        let with_host = |host: Option<PortRecord>| {
            Tables::new(dual.clone(), seed("ul0", PortRole::Uplink), host, None).topology(1450)
        };
        let topology = with_host(Some(seed("podsw0", PortRole::Host)));
        assert!(topology.host_ipv6);
        assert_eq!(topology.fib6.lookup(outside), Some(RouteTarget::Host));
        // No host port, no way out.
        let topology = with_host(None);
        assert!(!topology.host_ipv6);
        assert_eq!(topology.fib6.lookup(outside), None);
    }

    #[test]
    fn one_pod_mtu_formula_for_pods_and_templates() {
        let node = node(110);
        assert_eq!(node.pod_mtu().unwrap(), 1450);
        let template = node
            .template("10.1.0.12".parse().unwrap(), MacAddr([2, 0, 0, 0, 0, 12]))
            .unwrap();
        assert_eq!(template.pod_mtu() as u32, node.pod_mtu().unwrap());
        let jumbo = Node {
            underlay_mtu: 9000,
            ..node.clone()
        };
        assert_eq!(jumbo.pod_mtu().unwrap(), 8950);
        let tiny = Node {
            underlay_mtu: 100,
            ..node
        };
        assert!(tiny.pod_mtu().unwrap_err().to_string().contains("no room"));
    }

    #[test]
    fn ports_are_reserved_started_and_removed_in_order() {
        let mut t = tables();
        let (id, worker) = t
            .reserve_port(&spec("veth-a", [10, 244, 1, 5]), None)
            .unwrap();
        assert_eq!((id, worker), (PortId(2), 0));
        assert_eq!(t.port(id).unwrap().state, PortState::Starting);
        let err = t.begin_remove_port("veth-a").unwrap_err();
        assert!(err.to_string().contains("being added"), "{err}");
        t.port_opened(id, Some("native".into()), Some("copy".into()), 1, None);
        t.port_started(id);
        // The next port goes to the next worker, in a new slot.
        let (id_b, worker_b) = t
            .reserve_port(&spec("veth-b", [10, 244, 1, 6]), None)
            .unwrap();
        assert_eq!((id_b, worker_b), (PortId(3), 1));
        let (removed, record) = t.begin_remove_port("veth-a").unwrap();
        assert_eq!((removed, record.queues), (id, 1));
        // Its slot stays taken until the worker lets it go.
        let (id_c, _) = t
            .reserve_port(&spec("veth-c", [10, 244, 1, 7]), None)
            .unwrap();
        assert_eq!(id_c, PortId(4));
        t.port_gone(id);
        let (id_d, _) = t
            .reserve_port(&spec("veth-d", [10, 244, 1, 8]), None)
            .unwrap();
        assert_eq!(id_d, id, "the slot is free again");
        assert!(
            t.begin_remove_port("ul0")
                .unwrap_err()
                .to_string()
                .contains("Uplink")
        );
        assert!(
            t.begin_remove_port("nope")
                .unwrap_err()
                .to_string()
                .contains("no port")
        );
    }

    #[test]
    fn port_requests_are_checked_against_the_node_and_the_table() {
        let mut t = tables();
        t.reserve_port(&spec("veth-a", [10, 244, 1, 5]), None)
            .unwrap();
        let cases = [
            (spec("", [10, 244, 1, 9]), "not an interface name"),
            (spec("veth-a", [10, 244, 1, 9]), "already exists"),
            (
                spec("veth-b", [10, 244, 1, 5]),
                "already used by port veth-a",
            ),
            (spec("veth-b", [10, 244, 1, 1]), "the gateway is 10.244.1.1"),
            (spec("veth-b", [10, 244, 2, 5]), "not a usable address"),
            (spec("veth-b", [10, 244, 1, 255]), "not a usable address"),
        ];
        for (request, expected) in cases {
            let err = t.reserve_port(&request, None).unwrap_err().to_string();
            assert!(err.contains(expected), "{request:?}: {err}");
        }
        let multicast = PortSpec {
            mac: MacAddr([1, 0, 0x5e, 0, 0, 1]),
            ..spec("veth-b", [10, 244, 1, 9])
        };
        assert!(
            t.reserve_port(&multicast, None)
                .unwrap_err()
                .to_string()
                .contains("unicast")
        );
    }

    #[test]
    fn pod_sockets_past_max_pods_are_refused() {
        let mut t = Tables::new(node(2), seed("ul0", PortRole::Uplink), None, None);
        for (name, ip) in [("a", 5), ("b", 6)] {
            let (id, _) = t.reserve_port(&spec(name, [10, 244, 1, ip]), None).unwrap();
            t.check_pod_sockets(1).unwrap();
            t.port_opened(id, None, None, 1, None);
            t.port_started(id);
        }
        let err = t.check_pod_sockets(1).unwrap_err().to_string();
        assert!(err.contains("raise max_pods"), "{err}");
        assert!(err.contains("max_pods = 2"), "{err}");
    }

    #[test]
    fn peers_are_checked_replaced_and_resolved_only_while_current() {
        let mut t = tables();
        let own = peer([10, 1, 0, 11], "10.244.9.0/24");
        assert!(
            t.check_peer(&own)
                .unwrap_err()
                .to_string()
                .contains("own address")
        );
        let overlapping = peer([10, 1, 0, 13], "10.244.0.0/16");
        assert!(
            t.check_peer(&overlapping)
                .unwrap_err()
                .to_string()
                .contains("overlaps this node")
        );
        let v6 = PeerConfig {
            node_ip: "fd00::12".parse().unwrap(),
            ..peer([0; 4], "10.244.2.0/24")
        };
        assert!(
            t.check_peer(&v6)
                .unwrap_err()
                .to_string()
                .contains("family")
        );

        let record = t.new_peer(peer([10, 1, 0, 12], "10.244.2.9/24"));
        assert_eq!(record.config.pod_cidr, "10.244.2.0/24".parse().unwrap());
        assert_eq!(
            record.vtep_mac,
            MacAddr::derived_from(record.config.node_ip)
        );
        let (id, replaced) = t.insert_peer(record).unwrap();
        assert_eq!((id, replaced), (PeerId(0), None));
        let clash = t.new_peer(peer([10, 1, 0, 13], "10.244.2.128/25"));
        assert!(
            t.insert_peer(clash)
                .unwrap_err()
                .to_string()
                .contains("of peer 10.1.0.12")
        );

        // A resolution made for the record as it was applies...
        let asked = t.peers_to_resolve(|_| true);
        let mac = MacAddr([2, 0, 0, 0, 0, 12]);
        let template = t
            .node()
            .template(asked[0].record.config.node_ip, mac)
            .unwrap();
        let found = Resolution {
            next_hop: None,
            next_hop_mac: Some(mac),
            template: Some(template),
        };
        assert!(t.resolved(&asked[0], found.clone()));
        assert!(!t.resolved(&asked[0], found.clone()), "nothing changed");
        assert!(
            t.topology(1450).peers[0]
                .as_ref()
                .unwrap()
                .template
                .is_some()
        );
        // ... but not once the peer was replaced meanwhile.
        let newer = t.new_peer(peer([10, 1, 0, 12], "10.244.3.0/24"));
        let (same, replaced) = t.insert_peer(newer).unwrap();
        assert_eq!(
            (same, replaced.map(|p| p.pod_cidr)),
            (id, Some("10.244.2.0/24".parse().unwrap()))
        );
        assert!(!t.resolved(&asked[0], found));
        assert!(
            t.topology(1450).peers[0]
                .as_ref()
                .unwrap()
                .template
                .is_none()
        );
        assert_eq!(
            t.remove_peer("10.1.0.12".parse().unwrap())
                .unwrap()
                .pod_cidr,
            "10.244.3.0/24".parse::<Ipv4Net>().unwrap()
        );
        assert!(t.remove_peer("10.1.0.12".parse().unwrap()).is_err());
    }

    #[test]
    fn the_saved_state_holds_what_the_configuration_does_not() {
        let mut t = tables();
        let (id, _) = t
            .reserve_port(&spec("veth-a", [10, 244, 1, 5]), None)
            .unwrap();
        t.port_started(id);
        // The configuration's peer is not saved; one added at run time is.
        let configured = t.new_peer(peer([10, 1, 0, 12], "10.244.2.0/24"));
        t.insert_peer(configured).unwrap();
        let added = t.new_peer(peer([10, 1, 0, 13], "10.244.3.0/24"));
        t.insert_peer(added).unwrap();
        assert!(
            !t.add_host_route("0.0.0.0/0".parse().unwrap()),
            "configured already"
        );
        assert!(t.add_host_route("192.0.2.0/24".parse().unwrap()));
        let saved = t.saved_state();
        assert_eq!(saved.ports.len(), 1);
        assert_eq!(saved.ports[0].name, "veth-a");
        assert_eq!(saved.peers.len(), 1);
        assert_eq!(
            saved.peers[0].node_ip,
            "10.1.0.13".parse::<IpAddr>().unwrap()
        );
        assert_eq!(saved.host_routes, vec!["192.0.2.0/24".parse().unwrap()]);
        t.remove_host_route("192.0.2.0/24".parse().unwrap())
            .unwrap();
        assert!(
            t.remove_host_route("192.0.2.0/24".parse().unwrap())
                .is_err()
        );
    }

    #[test]
    fn the_topology_shows_every_port_the_workers_may_hold() {
        let mut t = tables();
        let (id, _) = t
            .reserve_port(&spec("veth-a", [10, 244, 1, 5]), None)
            .unwrap();
        let topology = t.topology(1450);
        assert_eq!(topology.port(id).unwrap().name, "veth-a", "starting");
        assert_eq!(topology.host, Some(HOST_PORT));
        assert_eq!(topology.pod_mtu, 1450);
        t.port_started(id);
        t.begin_remove_port("veth-a").unwrap();
        assert!(t.topology(1450).port(id).is_some(), "stopping");
        t.port_gone(id);
        assert!(t.topology(1450).port(id).is_none());
    }
}
