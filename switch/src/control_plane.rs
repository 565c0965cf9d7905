//! The control plane: the table of ports, peers and host routes behind the
//! control socket. Every change is applied to a private copy and published
//! to the workers as new topology and FIB snapshots; workers never wait
//! for it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use arc_swap::ArcSwap;
use crossbeam::channel::{Sender, bounded};
use ipnet::Ipv4Net;
use nix::sys::eventfd::EventFd;
use podswitch_encap::wire::EthernetAddress;
use podswitch_encap::{OuterTemplate, TunnelKind, TunnelSpec};
use serde::{Deserialize, Serialize};

use crate::afxdp::{Umem, UmemShare, XskConfig, XskSocket, active_rx_queues};
use crate::config::{Config, PeerConfig};
use crate::control::protocol::{
    FrameReport, Info, PeerStatus, PortKind, PortSpec, PortStatus, RouteEntry, StatsReport,
};
use crate::control::{Handler, Request, Response};
use crate::fib::SharedFib;
use crate::frames::FrameLedger;
use crate::mac::MacAddr;
use crate::netlink::{LinkInfo, Netlink, NextHop};
use crate::saved_state::{SavedState, state_file};
use crate::stats::{MAX_PORTS, PortReport, WorkerStats, port_report, worker_report};
use crate::tap::TapDevice;
use crate::topology::{PeerId, PeerView, PortId, PortRole, PortView, RouteTarget, Topology};
use crate::worker::{AfXdpPort, Command, FILL_MIN, FillBudget, PortIo, TapPort, WorkerPort};
use crate::xdp::{UplinkFilter, XdpProgram};

/// The uplink's port id.
pub const UPLINK_PORT: PortId = PortId(0);
/// The host port's id.
pub const HOST_PORT: PortId = PortId(1);
/// How long a worker may take to start or stop polling a port.
const WORKER_TIMEOUT: Duration = Duration::from_secs(5);
/// Outer TTL of tunnel packets.
const OUTER_TTL: u8 = 64;

/// A worker as the control plane drives it.
pub struct WorkerHandle {
    /// Where its commands go.
    pub commands: Sender<Command>,
    /// Written to wake it.
    pub wake: Arc<EventFd>,
    /// Its counters.
    pub stats: Arc<WorkerStats>,
}

impl WorkerHandle {
    /// Send a command and wake the worker to read it.
    pub fn send(&self, command: Command) -> Result<()> {
        self.commands
            .send(command)
            .map_err(|_| anyhow::anyhow!("a worker has stopped"))?;
        let _ = self.wake.write(1);
        Ok(())
    }
}

/// A port's record: what the workers see, and what `ports` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PortRecord {
    view: PortViewRecord,
    kind: PortKind,
    xdp_mode: Option<String>,
    copy_mode: Option<String>,
    queues: u32,
    owner: Option<String>,
    /// A pod TAP port's namespace and device name there.
    netns: Option<PathBuf>,
    ifname: Option<String>,
    /// A TAP port's device (shared with its worker), to see it vanish.
    #[serde(skip)]
    tap: Option<Arc<TapDevice>>,
}

/// [`PortView`] in a form that can be saved.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PortViewRecord {
    name: String,
    role: PortRole,
    mac: MacAddr,
    ip: Option<Ipv4Addr>,
    worker: usize,
}

impl From<&PortViewRecord> for PortView {
    fn from(r: &PortViewRecord) -> PortView {
        PortView {
            name: r.name.clone(),
            role: r.role,
            mac: r.mac,
            ip: r.ip,
            worker: r.worker,
        }
    }
}

/// A peer's record.
#[derive(Debug, Clone)]
struct PeerRecord {
    config: PeerConfig,
    vtep_mac: MacAddr,
    next_hop: Option<NextHop>,
    next_hop_mac: Option<MacAddr>,
    template: Option<OuterTemplate>,
}

/// Everything the control plane owns, behind one lock.
struct State {
    ports: Vec<Option<PortRecord>>,
    peers: Vec<Option<PeerRecord>>,
    host_routes: BTreeSet<Ipv4Net>,
    next_worker: usize,
}

/// What the control plane was started with.
pub struct ControlPlaneParts {
    /// The configuration.
    pub config: Config,
    /// The buffer area.
    pub umem: Arc<Umem>,
    /// Where every frame is.
    pub ledger: Arc<FrameLedger>,
    /// How sockets join the UMEM the uplink's first socket registered.
    pub umem_owner: UmemShare,
    /// Topology snapshots for the workers.
    pub topology: Arc<ArcSwap<Topology>>,
    /// The FIB.
    pub fib: Arc<SharedFib<RouteTarget>>,
    /// The workers.
    pub workers: Vec<WorkerHandle>,
    /// The uplink's MAC, the source of every tunnel packet.
    pub uplink_mac: MacAddr,
    /// The uplink's index.
    pub uplink_index: u32,
    /// The host port's index (0 without one).
    pub host_index: u32,
    /// MTU given to pods.
    pub pod_mtu: u32,
    /// The uplink program (for its counters).
    pub uplink_program: Arc<Mutex<XdpProgram>>,
}

/// The control plane.
pub struct ControlPlane {
    parts: ControlPlaneParts,
    state: Mutex<State>,
    netlink: Mutex<Netlink>,
}

impl ControlPlane {
    /// A control plane over `parts`, with the uplink (and host port, if
    /// `host` is given) already running.
    pub fn new(
        parts: ControlPlaneParts,
        uplink: PortRecordSeed,
        host: Option<PortRecordSeed>,
    ) -> Result<ControlPlane> {
        let mut ports = vec![None; MAX_PORTS];
        ports[usize::from(UPLINK_PORT.0)] = Some(uplink.into_record());
        if let Some(host) = host {
            ports[usize::from(HOST_PORT.0)] = Some(host.into_record());
        }
        let state = State {
            ports,
            peers: Vec::new(),
            host_routes: parts.config.host_routes.iter().copied().collect(),
            next_worker: 0,
        };
        let plane = ControlPlane {
            parts,
            state: Mutex::new(state),
            netlink: Mutex::new(Netlink::open()?),
        };
        {
            let state = plane.lock();
            plane.publish_topology(&state);
        }
        let gateway = Ipv4Net::new(plane.parts.config.gateway(), 32)?;
        plane.parts.fib.update(|fib| {
            fib.insert(gateway, RouteTarget::Host);
            for prefix in &plane.parts.config.host_routes {
                fib.insert(*prefix, RouteTarget::Host);
            }
        });
        for peer in plane.parts.config.peers.clone() {
            plane.add_peer(peer)?;
        }
        Ok(plane)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn netlink(&self) -> MutexGuard<'_, Netlink> {
        self.netlink.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Build and publish the topology snapshot from `state`.
    fn publish_topology(&self, state: &State) {
        let config = &self.parts.config;
        let decapsulator = config.decapsulator(self.parts.uplink_mac);
        let mut peer_by_vtep = HashMap::default();
        let peers = state
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                p.as_ref().map(|p| {
                    peer_by_vtep.insert(p.config.node_ip, PeerId(i as u16));
                    PeerView {
                        node_ip: p.config.node_ip,
                        vtep_mac: p.vtep_mac,
                        template: p.template.clone(),
                    }
                })
            })
            .collect();
        let topology = Topology {
            router_mac: config.router_mac(),
            gateway: config.gateway(),
            pod_mtu: self.parts.pod_mtu,
            decapsulator,
            uplink: UPLINK_PORT,
            host: state.ports[usize::from(HOST_PORT.0)]
                .as_ref()
                .map(|_| HOST_PORT),
            ports: state
                .ports
                .iter()
                .map(|p| p.as_ref().map(|p| PortView::from(&p.view)))
                .collect(),
            peers,
            peer_by_vtep,
        };
        self.parts.topology.store(Arc::new(topology));
    }

    /// Carry out one request; after a change, save the state.
    fn dispatch(&self, request: Request) -> Result<serde_json::Value> {
        let changes = matches!(
            request,
            Request::PortAdd(_)
                | Request::PortDel { .. }
                | Request::PeerAdd(_)
                | Request::PeerDel { .. }
                | Request::RouteAdd { .. }
                | Request::RouteDel { .. }
        );
        let answer = self.carry_out(request);
        if changes {
            self.save_state();
        }
        answer
    }

    fn carry_out(&self, request: Request) -> Result<serde_json::Value> {
        Ok(match request {
            Request::Info => serde_json::to_value(self.info())?,
            Request::Ports => serde_json::to_value(self.ports())?,
            Request::PortAdd(spec) => serde_json::to_value(self.add_port(spec)?)?,
            Request::PortDel { name } => {
                self.remove_port(&name)?;
                serde_json::Value::Null
            }
            Request::Peers => serde_json::to_value(self.peers())?,
            Request::PeerAdd(peer) => {
                self.add_peer(peer)?;
                serde_json::Value::Null
            }
            Request::PeerDel { node_ip } => {
                self.remove_peer(node_ip)?;
                serde_json::Value::Null
            }
            Request::Routes => serde_json::to_value(self.routes())?,
            Request::RouteAdd { prefix } => {
                self.add_host_route(prefix);
                serde_json::Value::Null
            }
            Request::RouteDel { prefix } => {
                self.remove_host_route(prefix)?;
                serde_json::Value::Null
            }
            Request::Stats => serde_json::to_value(self.stats())?,
        })
    }

    /// What a restarted daemon should restore: the pod ports, and the
    /// peers and host routes that are not the configuration file's.
    fn saved_state(&self) -> SavedState {
        let config = &self.parts.config;
        let state = self.lock();
        SavedState {
            ports: state
                .ports
                .iter()
                .flatten()
                .filter(|p| p.view.role == PortRole::Pod)
                .filter_map(|p| {
                    Some(PortSpec {
                        name: p.view.name.clone(),
                        ip: p.view.ip?,
                        mac: p.view.mac,
                        kind: p.kind,
                        owner: p.owner.clone(),
                        netns: p.netns.clone(),
                        ifname: p.ifname.clone(),
                    })
                })
                .collect(),
            peers: state
                .peers
                .iter()
                .flatten()
                .map(|p| p.config.clone())
                .filter(|p| {
                    !config.peers.iter().any(|c| {
                        c.node_ip == p.node_ip
                            && c.pod_cidr.trunc() == p.pod_cidr
                            && c.vtep_mac == p.vtep_mac
                    })
                })
                .collect(),
            host_routes: state
                .host_routes
                .iter()
                .filter(|r| !config.host_routes.iter().any(|c| c.trunc() == **r))
                .copied()
                .collect(),
            ..SavedState::new()
        }
    }

    /// Write the state file; a failure is logged (the change itself has
    /// been made).
    fn save_state(&self) {
        let path = state_file(&self.parts.config.state_dir);
        if let Err(e) = self.saved_state().save(&path) {
            tracing::error!("saving the state to {}: {e:#}", path.display());
        }
    }

    /// Restore what the state file holds, after a restart: peers and host
    /// routes, then every pod port whose interface still exists (the CNI
    /// plugin may have deleted a pod while the daemon was down). The
    /// file is then rewritten to what was restored.
    pub fn restore(&self) -> Result<()> {
        let path = state_file(&self.parts.config.state_dir);
        let Some(saved) = SavedState::load(&path)? else {
            return Ok(());
        };
        for peer in saved.peers {
            let node_ip = peer.node_ip;
            if let Err(e) = self.add_peer(peer) {
                tracing::warn!(peer = %node_ip, "not restored: {e:#}");
            }
        }
        for prefix in saved.host_routes {
            self.add_host_route(prefix);
        }
        let (mut restored, mut gone) = (0, 0);
        for spec in saved.ports {
            let name = spec.name.clone();
            let exists = match (&spec.kind, &spec.netns) {
                (PortKind::Tap, Some(netns)) => netns.exists(),
                (PortKind::Tap, None) => true,
                (PortKind::Afxdp, _) => self.netlink().link(&name).is_ok_and(|l| l.is_some()),
            };
            if !exists {
                tracing::info!(port = %name, "not restored: its interface is gone");
                gone += 1;
                continue;
            }
            match self.add_port(spec) {
                Ok(_) => restored += 1,
                Err(e) => tracing::warn!(port = %name, "not restored: {e:#}"),
            }
        }
        tracing::info!(restored, gone, file = %path.display(), "state restored");
        self.save_state();
        Ok(())
    }

    /// The node's network parameters.
    pub fn info(&self) -> Info {
        let config = &self.parts.config;
        Info {
            node_ip: config.node_ip,
            pod_cidr: config.pod_cidr,
            gateway: config.gateway(),
            pod_mtu: self.parts.pod_mtu,
            router_mac: config.router_mac(),
            encap: config.encap,
            vni: config.vni,
            udp_port: config.tunnel_udp_port(),
            uplink: config.uplink.clone(),
            host_port: (self.parts.host_index != 0).then(|| config.host_port.clone()),
            poll_mode: config.poll_mode,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// The workers.
    pub fn workers(&self) -> &[WorkerHandle] {
        &self.parts.workers
    }

    fn worker_stats(&self) -> Vec<&WorkerStats> {
        self.parts.workers.iter().map(|w| &*w.stats).collect()
    }

    /// A port's counters, with its interface's drops.
    fn port_counters(
        &self,
        blocks: &[&WorkerStats],
        id: PortId,
        links: &HashMap<String, LinkInfo>,
        name: &str,
    ) -> PortReport {
        let mut report = port_report(blocks, id);
        report.interface_rx_dropped = links.get(name).map_or(0, |l| l.rx_dropped);
        report
    }

    fn link_table(&self) -> HashMap<String, LinkInfo> {
        self.netlink().links().unwrap_or_default()
    }

    /// Every port.
    pub fn ports(&self) -> Vec<PortStatus> {
        let links = self.link_table();
        let state = self.lock();
        let blocks = self.worker_stats();
        state
            .ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let p = p.as_ref()?;
                let id = PortId(i as u16);
                Some(PortStatus {
                    id: id.0,
                    name: p.view.name.clone(),
                    role: p.view.role,
                    kind: p.kind,
                    xdp_mode: p.xdp_mode.clone(),
                    copy_mode: p.copy_mode.clone(),
                    queues: p.queues,
                    worker: p.view.worker,
                    ip: p.view.ip,
                    mac: p.view.mac,
                    owner: p.owner.clone(),
                    counters: self.port_counters(&blocks, id, &links, &p.view.name),
                })
            })
            .collect()
    }

    /// Add a pod port: validate it, open its I/O, hand it to a worker, and
    /// route the pod's address to it.
    pub fn add_port(&self, spec: PortSpec) -> Result<PortStatus> {
        let config = &self.parts.config;
        let mut state = self.lock();
        ensure!(
            !spec.name.is_empty() && spec.name.len() <= 15,
            "port name {:?} is not an interface name (1 to 15 bytes)",
            spec.name
        );
        ensure!(
            state
                .ports
                .iter()
                .flatten()
                .all(|p| p.view.name != spec.name),
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
        if let Some(other) = state
            .ports
            .iter()
            .flatten()
            .find(|p| p.view.ip == Some(spec.ip))
        {
            bail!(
                "pod address {} is already used by port {}",
                spec.ip,
                other.view.name
            );
        }
        ensure!(
            !spec.mac.is_multicast() && spec.mac != MacAddr::default(),
            "pod MAC {} must be a unicast address",
            spec.mac
        );
        let slot = (2..MAX_PORTS)
            .find(|&i| state.ports[i].is_none())
            .context("the switch has no room for another port")?;
        let id = PortId(slot as u16);
        let worker = state.next_worker % self.parts.workers.len();
        state.next_worker += 1;

        let (io, xdp_mode, copy_mode, queues) = self.open_pod_port(&spec)?;
        let tap = match &io {
            PortIo::Tap(port) => Some(port.device()),
            PortIo::AfXdp(_) => None,
        };
        let record = PortRecord {
            view: PortViewRecord {
                name: spec.name.clone(),
                role: PortRole::Pod,
                mac: spec.mac,
                ip: Some(spec.ip),
                worker,
            },
            kind: spec.kind,
            xdp_mode,
            copy_mode,
            queues,
            owner: spec.owner.clone(),
            netns: spec.netns.clone(),
            ifname: spec.ifname.clone(),
            tap,
        };
        state.ports[slot] = Some(record);
        self.publish_topology(&state);
        let (done, answer) = bounded(1);
        let started = self.parts.workers[worker]
            .send(Command::Add(WorkerPort { id, io }, done))
            .and_then(|()| {
                answer
                    .recv_timeout(WORKER_TIMEOUT)
                    .context("the worker did not take the port in time")?
            });
        if let Err(e) = started {
            state.ports[slot] = None;
            self.publish_topology(&state);
            return Err(e.context(format!("starting port {}", spec.name)));
        }
        let host = Ipv4Net::new(spec.ip, 32)?;
        self.parts
            .fib
            .update(|fib| fib.insert(host, RouteTarget::Pod(id)));
        drop(state);
        tracing::info!(port = %spec.name, ip = %spec.ip, "port added");
        self.ports()
            .into_iter()
            .find(|p| p.id == id.0)
            .context("the port vanished while being added")
    }

    /// Open a pod port's I/O: AF_XDP sockets on every RX queue of an
    /// existing interface, or a new TAP device.
    fn open_pod_port(
        &self,
        spec: &PortSpec,
    ) -> Result<(PortIo, Option<String>, Option<String>, u32)> {
        let config = &self.parts.config;
        match spec.kind {
            PortKind::Tap => {
                let tap = match (&spec.netns, &spec.ifname) {
                    (Some(netns), Some(ifname)) => TapDevice::attach_in_netns(netns, ifname)
                        .with_context(|| {
                            format!(
                                "attaching to TAP device {ifname} in {} (the CNI plugin creates it)",
                                netns.display()
                            )
                        })?,
                    (None, None) => {
                        let tap = TapDevice::open_offloaded(&spec.name)
                            .with_context(|| format!("creating TAP device {}", spec.name))?;
                        let netlink = self.netlink();
                        let link = netlink.require_link(&spec.name)?;
                        netlink.set_link_up(link.index, Some(self.parts.pod_mtu), None)?;
                        tap
                    }
                    _ => bail!("a TAP port in a pod's namespace needs both netns and ifname"),
                };
                Ok((PortIo::Tap(TapPort::new(tap)), None, None, 1))
            }
            PortKind::Afxdp => {
                let link = self.netlink().require_link(&spec.name)?;
                let program = XdpProgram::attach_pod(&spec.name, config.xdp_mode)
                    .with_context(|| format!("attaching the pod XDP program to {}", spec.name))?;
                let sockets = self.bind_sockets(&spec.name, link.index)?;
                let (xdp_mode, copy_mode, queues) = describe(&program, &sockets);
                // A pod's largest frame takes this many chunks: its fill
                // ring keeps as many packets' worth as a 1500-byte pod's.
                let umem = &self.parts.umem;
                let chunks = (self.parts.pod_mtu + 18)
                    .div_ceil(umem.frame_size() - umem.rx_data_offset())
                    .max(1);
                let fill = FillBudget::new(
                    FILL_MIN * chunks,
                    fill_max_for(self.parts.ledger.frame_count()),
                );
                let program = Arc::new(Mutex::new(program));
                Ok((
                    PortIo::AfXdp(AfXdpPort::new(program, sockets, fill)),
                    Some(xdp_mode),
                    Some(copy_mode),
                    queues,
                ))
            }
        }
    }

    /// Bind a socket on every active RX queue of `ifname`, sharing the UMEM.
    fn bind_sockets(&self, ifname: &str, ifindex: u32) -> Result<Vec<XskSocket>> {
        let queues = active_rx_queues(ifname).unwrap_or(1).max(1);
        self.bind_queues(ifname, ifindex, 0..queues)
    }

    /// Bind a socket on each of `queues` of `ifname`, sharing the UMEM.
    fn bind_queues(
        &self,
        ifname: &str,
        ifindex: u32,
        queues: std::ops::Range<u32>,
    ) -> Result<Vec<XskSocket>> {
        queues
            .map(|queue| {
                XskSocket::bind(
                    &self.parts.umem,
                    ifindex,
                    queue,
                    &XskConfig::default(),
                    Some(&self.parts.umem_owner),
                )
                .with_context(|| format!("binding an AF_XDP socket to {ifname} queue {queue}"))
            })
            .collect()
    }

    /// Remove a pod port: unroute it, then have its worker stop polling it
    /// and return its frames.
    pub fn remove_port(&self, name: &str) -> Result<()> {
        self.remove_port_locked(&mut self.lock(), name)
    }

    fn remove_port_locked(&self, state: &mut State, name: &str) -> Result<()> {
        let slot = state
            .ports
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.view.name == name))
            .with_context(|| format!("no port named {name}"))?;
        let record = state.ports[slot].clone().context("no such port")?;
        ensure!(
            record.view.role == PortRole::Pod,
            "{name} is the {:?} port; only pod ports can be removed",
            record.view.role
        );
        let id = PortId(slot as u16);
        if let Some(ip) = record.view.ip {
            let host = Ipv4Net::new(ip, 32)?;
            self.parts.fib.update(|fib| fib.remove(host));
        }
        let (done, answer) = bounded(1);
        self.parts.workers[record.view.worker].send(Command::Remove(id, done))?;
        answer
            .recv_timeout(WORKER_TIMEOUT)
            .context("the worker did not release the port in time")?;
        state.ports[slot] = None;
        self.publish_topology(state);
        tracing::info!(port = %name, "port removed");
        Ok(())
    }

    /// Every peer.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.lock()
            .peers
            .iter()
            .flatten()
            .map(|p| PeerStatus {
                node_ip: p.config.node_ip,
                pod_cidr: p.config.pod_cidr,
                vtep_mac: p.vtep_mac,
                next_hop: p.next_hop.map(|h| h.neighbour),
                next_hop_mac: p.next_hop_mac,
            })
            .collect()
    }

    /// Add a peer, or replace the one with the same node IP.
    pub fn add_peer(&self, peer: PeerConfig) -> Result<()> {
        let config = &self.parts.config;
        let mut state = self.lock();
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
        if let Some(other) = state.peers.iter().flatten().find(|p| {
            p.config.node_ip != peer.node_ip
                && (p.config.pod_cidr.contains(&pod_cidr) || pod_cidr.contains(&p.config.pod_cidr))
        }) {
            bail!(
                "peer pod CIDR {pod_cidr} overlaps {} of peer {}",
                other.config.pod_cidr,
                other.config.node_ip
            );
        }
        let existing = state
            .peers
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.config.node_ip == peer.node_ip));
        let slot = match existing {
            Some(i) => i,
            None => match state.peers.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    ensure!(state.peers.len() < usize::from(u16::MAX), "too many peers");
                    state.peers.push(None);
                    state.peers.len() - 1
                }
            },
        };
        if let Some(old) = existing.and_then(|i| state.peers[i].as_ref()) {
            let old_cidr = old.config.pod_cidr;
            self.parts.fib.update(|fib| fib.remove(old_cidr));
            self.unroute_on_host(old_cidr);
        }
        let vtep_mac = peer
            .vtep_mac
            .unwrap_or_else(|| MacAddr::derived_from(peer.node_ip));
        let mut record = PeerRecord {
            config: PeerConfig { pod_cidr, ..peer },
            vtep_mac,
            next_hop: None,
            next_hop_mac: None,
            template: None,
        };
        self.resolve(&mut record, &self.neighbours(), true);
        state.peers[slot] = Some(record);
        self.publish_topology(&state);
        let id = PeerId(slot as u16);
        self.parts
            .fib
            .update(|fib| fib.insert(pod_cidr, RouteTarget::Peer(id)));
        self.route_on_host(pod_cidr);
        tracing::info!(peer = %peer.node_ip, %pod_cidr, "peer added");
        Ok(())
    }

    /// Remove a peer and its routes.
    pub fn remove_peer(&self, node_ip: IpAddr) -> Result<()> {
        let mut state = self.lock();
        let slot = state
            .peers
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.config.node_ip == node_ip))
            .with_context(|| format!("no peer {node_ip}"))?;
        let cidr = state.peers[slot].as_ref().map(|p| p.config.pod_cidr);
        if let Some(cidr) = cidr {
            self.parts.fib.update(|fib| fib.remove(cidr));
            self.unroute_on_host(cidr);
        }
        state.peers[slot] = None;
        self.publish_topology(&state);
        tracing::info!(peer = %node_ip, "peer removed");
        Ok(())
    }

    /// Resolve a peer's underlay next hop (looking its route up again if
    /// `reroute` or it has none) and its MAC in `neighbours`, and build its
    /// template; an unresolved peer keeps no template and is retried by
    /// [`Self::maintain`].
    fn resolve(
        &self,
        peer: &mut PeerRecord,
        neighbours: &HashMap<(IpAddr, u32), MacAddr>,
        reroute: bool,
    ) {
        let netlink = self.netlink();
        let route = match peer.next_hop {
            Some(hop) if !reroute => Ok(hop),
            _ => netlink.next_hop(peer.config.node_ip),
        };
        let hop = match route {
            Ok(hop) if hop.ifindex == self.parts.uplink_index => hop,
            Ok(hop) => {
                tracing::warn!(
                    peer = %peer.config.node_ip,
                    ifindex = hop.ifindex,
                    "the route to this peer does not leave through the uplink"
                );
                peer.template = None;
                return;
            }
            Err(e) => {
                tracing::warn!(peer = %peer.config.node_ip, "{e:#}");
                peer.template = None;
                return;
            }
        };
        peer.next_hop = Some(hop);
        let mac = neighbours.get(&(hop.neighbour, hop.ifindex)).copied();
        if mac.is_none() || peer.template.is_none() {
            let _ = netlink.probe_neighbour(hop.neighbour, hop.ifindex);
        }
        if mac == peer.next_hop_mac && peer.template.is_some() {
            return;
        }
        peer.next_hop_mac = mac;
        peer.template = mac.and_then(|mac| match self.template(&peer.config, mac) {
            Ok(template) => Some(template),
            Err(e) => {
                tracing::error!(peer = %peer.config.node_ip, "{e:#}");
                None
            }
        });
    }

    fn template(&self, peer: &PeerConfig, next_hop_mac: MacAddr) -> Result<OuterTemplate> {
        let config = &self.parts.config;
        let underlay_mtu = config
            .underlay_mtu
            .map(u32::from)
            .unwrap_or(self.parts.pod_mtu + overhead(config));
        Ok(OuterTemplate::new(&TunnelSpec {
            kind: config.encap.into(),
            vni: config.vni(),
            udp_port: config.tunnel_udp_port(),
            local_mac: EthernetAddress::from(self.parts.uplink_mac),
            next_hop_mac: next_hop_mac.into(),
            vlan: None,
            local_ip: config.node_ip,
            remote_ip: peer.node_ip,
            ttl: OUTER_TTL,
            geneve_options: &[],
            underlay_mtu: u16::try_from(underlay_mtu).unwrap_or(u16::MAX),
        })?)
    }

    /// Follow the world, called once a second (`round` counts the calls):
    /// re-read every peer's next-hop MAC from the neighbour table (the
    /// kernel's entries go stale since the switch's traffic bypasses them,
    /// so missing ones are probed), every 10th round its route too; every
    /// 5th round, remove ports whose interface is gone and bind sockets
    /// on RX queues AF_XDP ports gained (an XDP program redirects by
    /// queue, so a queue without a socket loses its frames). Route lookups and the queue count cost milliseconds each
    /// here, and change only when an operator changes them.
    pub fn maintain(&self, round: u64) {
        if round.is_multiple_of(5) {
            self.prune_vanished_ports();
            self.follow_queues();
        }
        self.refresh_peers(round.is_multiple_of(10), |_| true);
    }

    fn neighbours(&self) -> HashMap<(IpAddr, u32), MacAddr> {
        self.netlink().neighbours().unwrap_or_else(|e| {
            tracing::warn!("{e:#}");
            HashMap::new()
        })
    }

    /// Remove the AF_XDP pod ports whose interface is gone (a pod whose
    /// namespace was deleted without a CNI DEL takes its veth with it):
    /// their sockets can never receive again, and they would keep the
    /// pod's address claimed. Holds the state lock throughout, so no port
    /// can be added or removed between the look at the links and the
    /// removal.
    fn prune_vanished_ports(&self) {
        let mut state = self.lock();
        let links = match self.netlink().links() {
            Ok(links) => links,
            Err(e) => return tracing::warn!("reading the links: {e:#}"),
        };
        let gone: Vec<String> = state
            .ports
            .iter()
            .flatten()
            .filter(|p| p.view.role == PortRole::Pod)
            .filter(|p| match &p.tap {
                Some(tap) => tap.is_detached(),
                None => !links.contains_key(&p.view.name),
            })
            .map(|p| p.view.name.clone())
            .collect();
        for name in &gone {
            match self.remove_port_locked(&mut state, name) {
                Ok(()) => tracing::warn!(port = %name, "port removed: its interface is gone"),
                Err(e) => {
                    tracing::warn!(port = %name, "removing a port whose interface is gone: {e:#}")
                }
            }
        }
        drop(state);
        if !gone.is_empty() {
            self.save_state();
        }
    }

    fn follow_queues(&self) {
        let mut state = self.lock();
        for (slot, record) in state.ports.iter_mut().enumerate() {
            let Some(record) = record.as_mut().filter(|r| r.kind == PortKind::Afxdp) else {
                continue;
            };
            let name = record.view.name.clone();
            let Ok(active) = active_rx_queues(&name) else {
                continue;
            };
            if active <= record.queues {
                continue;
            }
            let added = self.netlink().require_link(&name).and_then(|link| {
                let sockets = self.bind_queues(&name, link.index, record.queues..active)?;
                let (done, answer) = bounded(1);
                self.parts.workers[record.view.worker].send(Command::AddSockets(
                    PortId(slot as u16),
                    sockets,
                    done,
                ))?;
                answer
                    .recv_timeout(WORKER_TIMEOUT)
                    .context("the worker did not take the sockets in time")?
            });
            match added {
                Ok(()) => {
                    tracing::info!(port = %name, from = record.queues, to = active, "port gained RX queues");
                    record.queues = active;
                }
                Err(e) => tracing::warn!(port = %name, "binding new RX queues: {e:#}"),
            }
        }
    }

    /// Retry the peers whose route is known but whose next hop's MAC is
    /// not yet (a new peer, or one whose neighbour was lost); true while
    /// some remain. Called every few milliseconds while it returns true, so
    /// a new peer carries traffic as soon as the kernel has resolved it
    /// rather than at the next [`Self::maintain`].
    pub fn resolve_pending(&self) -> bool {
        let pending = |p: &PeerRecord| p.template.is_none() && p.next_hop.is_some();
        if !self.lock().peers.iter().flatten().any(pending) {
            return false;
        }
        self.refresh_peers(false, pending)
    }

    /// Re-resolve the peers `which` selects; true if some of them are
    /// still unresolved.
    fn refresh_peers(&self, reroute: bool, which: impl Fn(&PeerRecord) -> bool) -> bool {
        let neighbours = self.neighbours();
        let mut state = self.lock();
        let mut changed = false;
        let mut unresolved = false;
        for peer in state.peers.iter_mut().flatten().filter(|p| which(p)) {
            let before = (peer.next_hop_mac, peer.template.is_some());
            self.resolve(peer, &neighbours, reroute);
            changed |= before != (peer.next_hop_mac, peer.template.is_some());
            unresolved |= peer.template.is_none();
        }
        if changed {
            self.publish_topology(&state);
        }
        unresolved
    }

    /// Route a pod CIDR to the host port in the node's own table, so the
    /// node reaches remote pods.
    fn route_on_host(&self, cidr: Ipv4Net) {
        if self.parts.host_index != 0
            && let Err(e) = self.netlink().replace_route(cidr, self.parts.host_index)
        {
            tracing::warn!("{e:#}");
        }
    }

    fn unroute_on_host(&self, cidr: Ipv4Net) {
        if self.parts.host_index != 0
            && let Err(e) = self.netlink().delete_route(cidr, self.parts.host_index)
        {
            tracing::warn!("{e:#}");
        }
    }

    /// The whole FIB, described.
    pub fn routes(&self) -> Vec<RouteEntry> {
        let state = self.lock();
        let fib = self.parts.fib.load();
        fib.iter()
            .map(|(prefix, target)| RouteEntry {
                prefix,
                target: match target {
                    RouteTarget::Host => "host".to_string(),
                    RouteTarget::Pod(id) => format!(
                        "pod {}",
                        state.ports[usize::from(id.0)]
                            .as_ref()
                            .map_or("?", |p| p.view.name.as_str())
                    ),
                    RouteTarget::Peer(id) => format!(
                        "peer {}",
                        state
                            .peers
                            .get(usize::from(id.0))
                            .and_then(Option::as_ref)
                            .map_or("?".to_string(), |p| p.config.node_ip.to_string())
                    ),
                },
            })
            .collect()
    }

    /// Route `prefix` to the host port.
    pub fn add_host_route(&self, prefix: Ipv4Net) {
        let prefix = prefix.trunc();
        self.lock().host_routes.insert(prefix);
        self.parts
            .fib
            .update(|fib| fib.insert(prefix, RouteTarget::Host));
    }

    /// Remove a host route.
    pub fn remove_host_route(&self, prefix: Ipv4Net) -> Result<()> {
        let prefix = prefix.trunc();
        ensure!(
            self.lock().host_routes.remove(&prefix),
            "{prefix} is not a host route (see `podswitch routes`)"
        );
        self.parts.fib.update(|fib| {
            if fib.get(prefix) == Some(RouteTarget::Host) {
                fib.remove(prefix);
            }
        });
        Ok(())
    }

    /// All counters.
    pub fn stats(&self) -> StatsReport {
        let links = self.link_table();
        let blocks = self.worker_stats();
        let state = self.lock();
        let ports: BTreeMap<String, _> = state
            .ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let p = p.as_ref()?;
                let counters = self.port_counters(&blocks, PortId(i as u16), &links, &p.view.name);
                Some((p.view.name.clone(), counters))
            })
            .collect();
        drop(state);
        let workers: Vec<_> = blocks.iter().map(|b| worker_report(b)).collect();
        let rx: u64 = workers.iter().map(|w| w.rings.rx).sum();
        let completion: u64 = workers.iter().map(|w| w.rings.completion).sum();
        let ledger = &self.parts.ledger;
        let frames = FrameReport::new(
            ledger.census(),
            rx,
            completion,
            ledger.violations(),
            ledger.checking(),
        );
        let counters = self
            .parts
            .uplink_program
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .uplink_counters()
            .ok();
        StatsReport {
            ports,
            workers,
            frames,
            uplink_redirected: counters.as_ref().map_or(0, |c| c.redirected),
            uplink_passed: counters.as_ref().map_or(0, |c| c.passed),
        }
    }
}

impl Handler for ControlPlane {
    fn handle(&self, request: Request) -> Response {
        match self.dispatch(request) {
            Ok(result) => Response::success(result),
            Err(e) => Response::failure(format!("{e:#}")),
        }
    }
}

/// A running port the daemon opened itself (the uplink, the host port),
/// described for the port table.
pub struct PortRecordSeed {
    /// Interface name.
    pub name: String,
    /// Uplink or host.
    pub role: PortRole,
    /// AF_XDP or TAP.
    pub kind: PortKind,
    /// Its MAC.
    pub mac: MacAddr,
    /// The worker polling it.
    pub worker: usize,
    /// XDP attach mode, for AF_XDP.
    pub xdp_mode: Option<String>,
    /// Copy or zero-copy, for AF_XDP.
    pub copy_mode: Option<String>,
    /// Sockets bound.
    pub queues: u32,
}

impl PortRecordSeed {
    fn into_record(self) -> PortRecord {
        PortRecord {
            view: PortViewRecord {
                name: self.name,
                role: self.role,
                mac: self.mac,
                ip: None,
                worker: self.worker,
            },
            kind: self.kind,
            xdp_mode: self.xdp_mode,
            copy_mode: self.copy_mode,
            queues: self.queues,
            owner: None,
            netns: None,
            ifname: None,
            tap: None,
        }
    }
}

/// XDP mode, copy mode and queue count of an AF_XDP port, as reported.
pub fn describe(program: &XdpProgram, sockets: &[XskSocket]) -> (String, String, u32) {
    let copy = if sockets.first().is_some_and(XskSocket::is_zero_copy) {
        "zero-copy"
    } else {
        "copy"
    };
    (
        program.mode().to_string(),
        copy.to_string(),
        sockets.len() as u32,
    )
}

/// The most frames one socket's fill ring may hold in a switch of
/// `frame_count` frames: a quarter of them, at most the ring's size.
pub fn fill_max_for(frame_count: u32) -> u32 {
    (frame_count / 4).min(XskConfig::default().fill_size)
}

/// Bytes the tunnel adds before the inner IP header: outer IP, UDP, the
/// tunnel header and the inner Ethernet header.
pub fn overhead(config: &Config) -> u32 {
    let ip = if config.node_ip.is_ipv4() { 20 } else { 40 };
    let tunnel = match TunnelKind::from(config.encap) {
        TunnelKind::Vxlan => podswitch_encap::vxlan::HEADER_LEN,
        TunnelKind::Geneve => podswitch_encap::geneve::HEADER_LEN,
    };
    (ip + 8 + tunnel + 14) as u32
}

/// The uplink program's filter for this configuration.
pub fn uplink_filter(config: &Config) -> UplinkFilter {
    UplinkFilter {
        vtep: config.node_ip,
        udp_port: config.tunnel_udp_port(),
    }
}
