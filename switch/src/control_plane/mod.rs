//! The control plane: the I/O shell around the tables of ports, peers and
//! host routes ([`tables`]). Each request is checked and reserved in the
//! tables under their lock, carried out with no lock held (netlink calls,
//! opening sockets and devices, waiting for a worker), and its outcome
//! recorded under the lock again; every change is published to the workers
//! as new topology and FIB snapshots, and workers never wait for it.

pub mod tables;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use arc_swap::ArcSwap;
use crossbeam::channel::{Receiver, Sender, bounded};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nix::sys::eventfd::EventFd;

use crate::afxdp::{Umem, UmemShare, XskConfig, XskSocket, active_rx_queues};
use crate::capture::{CaptureFilter, CaptureTap, CapturedFrame};
use crate::config::PeerConfig;
use crate::control::protocol::{
    CaptureSpec, FrameReport, Info, MembershipReport, POD_GATEWAY6, PeerStatus, PortKind, PortSpec,
    PortStatus, RouteEntry, ServiceCounters, StatsReport,
};
use crate::control::{Handler, Request, Response};
use crate::fib::SharedFib;
use crate::frame_budget::{FillBudget, FramePlan};
use crate::frames::FrameLedger;
use crate::mac::MacAddr;
use crate::netlink::{LinkInfo, Netlink};
use crate::netns::Namespace;
use crate::packet_port::PacketDevice;
use crate::policy::Policies;
use crate::saved_state::{SavedState, state_file};
use crate::services::Services;
use crate::sources::CONTROL_SOURCE;
use crate::stats::{PortReport, WorkerStats, port_report, worker_report};
use crate::tap::TapDevice;
use crate::topology::{PeerId, PortId, PortRole, RouteTarget, Topology};
use crate::trace::Stages;
use crate::worker::{AfXdpPort, Command, PacketPort, Port, TapPort, WorkerPort};
use crate::xdp::{UplinkFilter, XdpProgram};
use podswitch_control::service::Service;
use podswitch_services::{NodeAddress, Pass};
pub use tables::{HOST_PORT, Node, TUNNEL_PORT, UPLINK_PORT};
use tables::{
    PeerRecord, PeerToResolve, PodDevice, PortRecord, PortViewRecord, Resolution, Tables,
};

/// How long a worker may take to start or stop polling a port.
const WORKER_TIMEOUT: Duration = Duration::from_secs(5);

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

    /// Send a command that answers, and wait for its answer (no lock may
    /// be held: the worker may take a while).
    fn ask<T>(&self, command: impl FnOnce(Sender<T>) -> Command, what: &str) -> Result<T> {
        let (done, answer) = bounded(1);
        self.send(command(done))?;
        answer
            .recv_timeout(WORKER_TIMEOUT)
            .with_context(|| format!("the worker did not {what} in time"))
    }
}

/// What the control plane was started with.
pub struct ControlPlaneParts {
    /// The node: its configuration and what the tables need of it.
    pub node: Node,
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
    /// The Service stage, with `service_translation = "switch"`.
    pub services: Option<Arc<Services>>,
    /// The NetworkPolicy stage.
    pub policies: Arc<Policies>,
    /// The workers.
    pub workers: Vec<WorkerHandle>,
    /// The uplink's index.
    pub uplink_index: u32,
    /// The host port's index (0 without one).
    pub host_index: u32,
    /// MTU given to pods.
    pub pod_mtu: u32,
    /// `gso_max_size` given to TAP pods (0: the kernel's default).
    pub pod_gso_max_size: u32,
    /// How the buffer frames are shared out.
    pub plan: FramePlan,
    /// The uplink program (for its counters).
    pub uplink_program: Arc<Mutex<XdpProgram>>,
}

/// The control plane.
pub struct ControlPlane {
    parts: ControlPlaneParts,
    tables: Mutex<Tables>,
    /// Held while the state file is computed and written, so a slower
    /// writer never replaces a newer file with an older state.
    saving: Mutex<()>,
    /// Requests carried out, by operation and outcome.
    requests: Mutex<BTreeMap<(String, bool), u64>>,
    /// Captures running, published with the topology.
    captures: Mutex<Vec<Arc<CaptureTap>>>,
    /// The membership source as it last reported.
    membership: Mutex<MembershipReport>,
}

/// How many control-socket requests of one operation had one outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestCount {
    /// The operation (`port_add`, `stats`, …).
    pub op: String,
    /// Whether they succeeded.
    pub ok: bool,
    /// How many.
    pub count: u64,
}

/// A membership source changes peers as `peer add`/`peer del` do, and the
/// state file follows.
impl crate::membership::PeerSet for ControlPlane {
    fn add(&self, peer: PeerConfig) -> Result<()> {
        self.add_peer(peer)?;
        self.save_state();
        Ok(())
    }

    fn remove(&self, node_ip: IpAddr) -> Result<()> {
        self.remove_peer(node_ip)?;
        self.save_state();
        Ok(())
    }
}

impl crate::membership::Plane for ControlPlane {
    fn report(&self, report: MembershipReport) {
        *self.membership.lock().unwrap_or_else(|e| e.into_inner()) = report;
    }
}

/// A pod port's I/O, opened, with what the port table says of it.
struct OpenedPort {
    port: Box<dyn Port>,
    device: Option<PodDevice>,
    xdp_mode: Option<String>,
    copy_mode: Option<String>,
    queues: u32,
}

impl ControlPlane {
    /// A control plane over `parts`, with the ports the daemon opened
    /// itself already running.
    pub fn new(parts: ControlPlaneParts, ports: DaemonPorts) -> Result<ControlPlane> {
        let tables = Tables::new(
            parts.node.clone(),
            ports.uplink.into_record(),
            ports.host.map(PortRecordSeed::into_record),
            ports.tunnel.map(PortRecordSeed::into_record),
        );
        let source = parts.node.config.membership.name().into();
        let plane = ControlPlane {
            parts,
            tables: Mutex::new(tables),
            saving: Mutex::new(()),
            requests: Mutex::new(BTreeMap::new()),
            captures: Mutex::new(Vec::new()),
            membership: Mutex::new(MembershipReport {
                source,
                ..MembershipReport::default()
            }),
        };
        plane.publish(&plane.lock());
        let config = &plane.parts.node.config;
        let gateway = Ipv4Net::new(config.gateway(), 32)?;
        plane.parts.fib.update(|fib| {
            fib.insert(gateway, RouteTarget::Host);
            for prefix in &config.host_routes {
                fib.insert(prefix.trunc(), RouteTarget::Host);
            }
        });
        for peer in config.peers.clone() {
            plane.add_peer(peer)?;
        }
        Ok(plane)
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publish the topology snapshot the tables describe, and the nodes
    /// the Service table serves NodePorts for.
    fn publish(&self, tables: &Tables) {
        let mut topology = tables.topology(self.parts.pod_mtu);
        topology.captures = self.running_captures().clone();
        self.parts.topology.store(Arc::new(topology));
        if let Some(services) = &self.parts.services {
            services.set_nodes(service_nodes(tables));
        }
    }

    fn running_captures(&self) -> MutexGuard<'_, Vec<Arc<CaptureTap>>> {
        self.captures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start capturing on the port `spec` names: the workers offer the
    /// tap its frames from the next pass on.
    pub fn start_capture(
        &self,
        spec: &CaptureSpec,
    ) -> Result<(Arc<CaptureTap>, Receiver<CapturedFrame>)> {
        let tables = self.lock();
        let (id, _) = tables
            .port_named(&spec.port)
            .with_context(|| format!("no port {} (see `podswitch ports`)", spec.port))?;
        let filter = CaptureFilter {
            host: spec.host,
            l4_port: spec.l4_port,
            tunnel_port: self.parts.node.config.tunnel_udp_port(),
            tunnel: self.parts.node.config.encap.into(),
        };
        let (tap, frames) = CaptureTap::new(id, filter);
        let tap = Arc::new(tap);
        self.running_captures().push(tap.clone());
        self.publish(&tables);
        tracing::info!(port = %spec.port, "capture started");
        Ok((tap, frames))
    }

    /// Stop a capture [`ControlPlane::start_capture`] started.
    pub fn end_capture(&self, tap: &Arc<CaptureTap>) {
        let tables = self.lock();
        self.running_captures().retain(|t| !Arc::ptr_eq(t, tap));
        self.publish(&tables);
        tracing::info!(missed = tap.missed(), "capture ended");
    }

    /// Carry out one request from the process `caller` (when this
    /// daemon's PID namespace shows it); after a change, save the state.
    fn dispatch(&self, request: Request, caller: Option<u32>) -> Result<serde_json::Value> {
        let changes = matches!(
            request,
            Request::PortAdd(_)
                | Request::PortDel { .. }
                | Request::PeerAdd(_)
                | Request::PeerDel { .. }
                | Request::RouteAdd { .. }
                | Request::RouteDel { .. }
        );
        let op = serde_json::to_value(&request)
            .ok()
            .and_then(|v| v["op"].as_str().map(String::from))
            .unwrap_or_default();
        let answer = self.carry_out(request, caller);
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((op, answer.is_ok()))
            .or_default() += 1;
        if changes {
            self.save_state();
        }
        answer
    }

    fn carry_out(&self, request: Request, caller: Option<u32>) -> Result<serde_json::Value> {
        Ok(match request {
            Request::Info => serde_json::to_value(self.info())?,
            Request::Ports => serde_json::to_value(self.ports())?,
            Request::PortAdd(spec) => {
                // The pod's namespace is a path in the caller's (the
                // runtime's) mounts; open it while the caller is there.
                let namespace = match (&spec.kind, &spec.netns) {
                    (PortKind::Tap, Some(netns)) => {
                        Some(Namespace::open_as_seen_by(netns, caller)?)
                    }
                    _ => None,
                };
                serde_json::to_value(self.add_port(spec, namespace)?)?
            }
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
            Request::Services => serde_json::to_value(self.services()?.status())?,
            Request::ServicesSet { services } => {
                self.set_services(CONTROL_SOURCE, services)?;
                serde_json::Value::Null
            }
            Request::Policy => serde_json::to_value(self.parts.policies.status())?,
            Request::PolicySet { cluster } => {
                self.parts
                    .policies
                    .set(CONTROL_SOURCE, cluster)
                    .map_err(anyhow::Error::msg)?;
                serde_json::Value::Null
            }
            Request::RouteAdd { prefix } => {
                self.add_host_route(prefix);
                serde_json::Value::Null
            }
            Request::RouteDel { prefix } => {
                self.remove_host_route(prefix)?;
                serde_json::Value::Null
            }
            Request::Stats => serde_json::to_value(self.stats())?,
            Request::Capture(_) => {
                bail!("a capture is a stream: only the control socket serves it")
            }
            Request::Trace(spec) => {
                let enforced = self.parts.policies.enforced();
                let services = self.parts.services.as_deref();
                let table = services.map(Services::table);
                let stages = Stages {
                    services: services
                        .zip(table.as_deref())
                        .map(|(services, table)| services.stage(table, Pass::DryRun)),
                    policy: self.parts.policies.stage(&enforced, Pass::DryRun),
                };
                serde_json::to_value(crate::trace::trace_spec(
                    &self.parts.topology.load(),
                    &self.parts.fib.load(),
                    stages,
                    &spec,
                )?)?
            }
        })
    }

    /// Write the state file; a failure is logged (the change itself has
    /// been made).
    fn save_state(&self) {
        let _saving = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        let state = self.lock().saved_state();
        let path = state_file(&self.parts.node.config.state_dir);
        if let Err(e) = state.save(&path) {
            tracing::error!("saving the state to {}: {e:#}", path.display());
        }
    }

    /// Restore what the state file holds, after a restart: peers and host
    /// routes, then every pod port whose interface still exists (the CNI
    /// plugin may have deleted a pod while the daemon was down). The
    /// file is then rewritten to what was restored.
    pub fn restore(&self) -> Result<()> {
        let path = state_file(&self.parts.node.config.state_dir);
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
        let links = netlink()?.links()?;
        let (mut restored, mut gone) = (0, 0);
        for spec in saved.ports {
            let name = spec.name.clone();
            let (exists, namespace) = match (&spec.kind, &spec.netns) {
                (PortKind::Tap, Some(netns)) => {
                    let found = match saved.namespaces.get(&name) {
                        Some(id) => Namespace::find(netns, *id).unwrap_or_else(|e| {
                            tracing::warn!(port = %name, "looking for its namespace: {e:#}");
                            None
                        }),
                        // Saved by a daemon that kept no identities.
                        None => Namespace::open_as_seen_by(netns, None).ok(),
                    };
                    (found.is_some(), found)
                }
                (PortKind::Tap, None) => (true, None),
                (PortKind::Afxdp | PortKind::Packet, _) => (links.contains_key(&name), None),
                // Only the daemon's own tunnel port is a socket.
                (PortKind::Socket, _) => (false, None),
            };
            if !exists {
                tracing::info!(port = %name, "not restored: its interface is gone");
                gone += 1;
                continue;
            }
            match self.add_port(spec, namespace) {
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
        let config = &self.parts.node.config;
        Info {
            node_ip: config.node_ip,
            pod_cidr: config.pod_cidr,
            gateway: config.gateway(),
            pod_cidr6: config.pod_cidr6,
            pod_mtu: self.parts.pod_mtu,
            pod_gso_max_size: self.parts.pod_gso_max_size,
            packet_ports: crate::packet_port::supported(),
            router_mac: config.router_mac(),
            encap: config.encap,
            vni: config.vni,
            udp_port: config.tunnel_udp_port(),
            uplink: config.uplink.clone(),
            host_port: (self.parts.host_index != 0).then(|| config.host_port.clone()),
            poll_mode: config.poll_mode,
            spin_us: config.spin_us,
            frame_count: self.parts.plan.frame_count,
            max_pods: self.parts.plan.max_pods,
            tunnel_port: self
                .lock()
                .port(TUNNEL_PORT)
                .filter(|p| p.record.view.role == PortRole::Tunnel)
                .map(|p| p.record.view.name.clone()),
            version: env!("CARGO_PKG_VERSION").to_string(),
            membership: self
                .membership
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// The workers.
    pub fn workers(&self) -> &[WorkerHandle] {
        &self.parts.workers
    }

    fn worker_stats(&self) -> Vec<&WorkerStats> {
        self.parts.workers.iter().map(|w| &*w.stats).collect()
    }

    /// A port's counters, with its interface's drops (a pod TAP device's,
    /// read in the pod's namespace: no lock may be held).
    fn port_counters(
        blocks: &[&WorkerStats],
        id: PortId,
        links: &HashMap<String, LinkInfo>,
        record: &PortRecord,
    ) -> PortReport {
        let mut report = port_report(blocks, id);
        report.interface_rx_dropped = links.get(&record.view.name).map_or(0, |l| l.rx_dropped);
        if let (Some(namespace), Some(ifname)) = (&record.namespace, &record.ifname) {
            report.tap_queue_dropped = tap_queue_dropped(namespace, ifname);
        }
        if let Some(PodDevice::Packet(device)) = &record.device {
            report.tap_queue_dropped = device.socket().dropped().unwrap_or(0);
        }
        report
    }

    /// Every port's record, taken under the lock.
    fn port_records(&self) -> Vec<(PortId, PortRecord)> {
        self.lock()
            .ports()
            .map(|(id, entry)| (id, entry.record.clone()))
            .collect()
    }

    fn link_table() -> HashMap<String, LinkInfo> {
        netlink().and_then(|n| n.links()).unwrap_or_default()
    }

    /// Every port.
    pub fn ports(&self) -> Vec<PortStatus> {
        let links = Self::link_table();
        let blocks = self.worker_stats();
        self.port_records()
            .into_iter()
            .map(|(id, p)| {
                let counters = Self::port_counters(&blocks, id, &links, &p);
                PortStatus {
                    id: id.0,
                    name: p.view.name.clone(),
                    role: p.view.role,
                    kind: p.kind,
                    xdp_mode: p.xdp_mode.clone(),
                    copy_mode: p.copy_mode.clone(),
                    queues: p.queues,
                    worker: p.view.worker,
                    ip: p.view.ip,
                    ip6: p.view.ip6,
                    mac: p.view.mac,
                    owner: p.owner.clone(),
                    counters,
                }
            })
            .collect()
    }

    /// Add a pod port: reserve it, open its I/O, hand it to a worker, and
    /// route the pod's address to it. A TAP port in a pod's namespace
    /// comes with that namespace open (`namespace`).
    pub fn add_port(&self, spec: PortSpec, namespace: Option<Namespace>) -> Result<PortStatus> {
        let namespace = namespace.map(Arc::new);
        let (id, worker) = {
            let mut tables = self.lock();
            let reserved = tables.reserve_port(&spec, namespace.clone())?;
            self.publish(&tables);
            reserved
        };
        if let Err(e) = self.start_port(id, worker, &spec, namespace.as_deref()) {
            let mut tables = self.lock();
            tables.port_gone(id);
            self.publish(&tables);
            return Err(e.context(format!("starting port {}", spec.name)));
        }
        self.lock().port_started(id);
        let host = Ipv4Net::new(spec.ip, 32)?;
        self.parts
            .fib
            .update(|fib| fib.insert(host, RouteTarget::Pod(id)));
        tracing::info!(port = %spec.name, ip = %spec.ip, "port added");
        self.ports()
            .into_iter()
            .find(|p| p.id == id.0)
            .context("the port vanished while being added")
    }

    /// Open the reserved port `id`'s I/O and have `worker` poll it.
    fn start_port(
        &self,
        id: PortId,
        worker: usize,
        spec: &PortSpec,
        namespace: Option<&Namespace>,
    ) -> Result<()> {
        if spec.kind == PortKind::Afxdp {
            let queues = active_rx_queues(&spec.name).unwrap_or(1).max(1);
            let mut tables = self.lock();
            tables.check_pod_sockets(queues)?;
            tables.port_queues(id, queues);
        }
        let OpenedPort {
            port,
            device,
            xdp_mode,
            copy_mode,
            queues,
        } = self.open_pod_port(spec, namespace)?;
        self.lock()
            .port_opened(id, xdp_mode, copy_mode, queues, device);
        self.parts.workers[worker].ask(
            |done| Command::Add(WorkerPort { id, port }, done),
            "take the port",
        )?
    }

    /// Open a pod port's I/O: AF_XDP sockets on every RX queue of an
    /// existing interface, or a TAP device (in `namespace`, a pod's).
    fn open_pod_port(&self, spec: &PortSpec, namespace: Option<&Namespace>) -> Result<OpenedPort> {
        let config = &self.parts.node.config;
        match spec.kind {
            PortKind::Tap => {
                let tap = match (spec.netns.as_ref().zip(namespace), &spec.ifname) {
                    (Some((netns, namespace)), Some(ifname)) => TapDevice::attach_in_netns(
                        namespace, ifname,
                    )
                    .with_context(|| {
                        format!(
                            "attaching to TAP device {ifname} in {} (the CNI plugin creates it)",
                            netns.display()
                        )
                    })?,
                    (None, None) => {
                        let tap = TapDevice::open_offloaded(&spec.name)
                            .with_context(|| format!("creating TAP device {}", spec.name))?;
                        let netlink = netlink()?;
                        let link = netlink.require_link(&spec.name)?;
                        netlink.set_link_up(link.index, Some(self.parts.pod_mtu), None)?;
                        tap
                    }
                    _ => bail!("a TAP port in a pod's namespace needs both netns and ifname"),
                };
                let port = TapPort::new(tap);
                Ok(OpenedPort {
                    device: Some(PodDevice::Tap(port.device())),
                    port: Box::new(port),
                    xdp_mode: None,
                    copy_mode: None,
                    queues: 1,
                })
            }
            PortKind::Packet => {
                let link = netlink()?.require_link(&spec.name)?;
                let port = PacketPort::new(PacketDevice::open(&spec.name, link.index)?);
                Ok(OpenedPort {
                    device: Some(PodDevice::Packet(port.device())),
                    port: Box::new(port),
                    xdp_mode: None,
                    copy_mode: None,
                    queues: 1,
                })
            }
            PortKind::Socket => {
                bail!(
                    "a pod's port is afxdp, tap or packet: socket is the daemon's own tunnel \
                     port's kind"
                )
            }
            PortKind::Afxdp => {
                let link = netlink()?.require_link(&spec.name)?;
                let queues = active_rx_queues(&spec.name).unwrap_or(1).max(1);
                let program = XdpProgram::attach_pod(&spec.name, config.xdp_mode)
                    .with_context(|| format!("attaching the pod XDP program to {}", spec.name))?;
                let sockets = self.bind_queues(&spec.name, link.index, 0..queues)?;
                let (xdp_mode, copy_mode, queues) = describe(&program, &sockets);
                let plan = &self.parts.plan;
                let fill = FillBudget::new(plan.pod_fill_min, plan.pod_fill_max);
                let program = Arc::new(Mutex::new(program));
                Ok(OpenedPort {
                    port: Box::new(AfXdpPort::new(program, sockets, fill)),
                    device: None,
                    xdp_mode: Some(xdp_mode),
                    copy_mode: Some(copy_mode),
                    queues,
                })
            }
        }
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
        let (id, record) = self.lock().begin_remove_port(name)?;
        let host = record.view.ip.map(|ip| Ipv4Net::new(ip, 32)).transpose()?;
        if let Some(host) = host {
            self.parts.fib.update(|fib| fib.remove(host));
        }
        let released = self.parts.workers[record.view.worker]
            .ask(|done| Command::Remove(id, done), "release the port");
        let mut tables = self.lock();
        if let Err(e) = released {
            // Still polled: route to it again.
            tables.port_started(id);
            if let Some(host) = host {
                self.parts
                    .fib
                    .update(|fib| fib.insert(host, RouteTarget::Pod(id)));
            }
            return Err(e);
        }
        tables.port_gone(id);
        self.running_captures().retain(|tap| {
            if tap.port == id {
                tap.end();
            }
            tap.port != id
        });
        self.publish(&tables);
        tracing::info!(port = %name, "port removed");
        Ok(())
    }

    /// Every peer.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.lock()
            .peers()
            .map(|(_, p)| PeerStatus {
                node_ip: p.config.node_ip,
                pod_cidr: p.config.pod_cidr,
                pod_cidr6: p.config.pod_cidr6,
                vtep_mac: p.vtep_mac,
                next_hop: p.resolution.next_hop.map(|h| h.neighbour),
                next_hop_mac: p.resolution.next_hop_mac,
            })
            .collect()
    }

    /// Add a peer, or replace the one with the same node IP.
    pub fn add_peer(&self, peer: PeerConfig) -> Result<()> {
        let mut record = {
            let tables = self.lock();
            tables.check_peer(&peer)?;
            tables.new_peer(peer)
        };
        record.resolution = self.resolve(&record, &neighbours(), true);
        let (node_ip, pod_cidr) = (record.config.node_ip, record.config.pod_cidr);
        let pod_cidr6 = record.config.pod_cidr6;
        let (id, replaced) = {
            let mut tables = self.lock();
            let inserted = tables.insert_peer(record)?;
            self.publish(&tables);
            inserted
        };
        if let Some(old) = replaced {
            self.parts.fib.update(|fib| fib.remove(old.pod_cidr));
            for cidr in pod_cidrs(old.pod_cidr, old.pod_cidr6) {
                self.unroute_on_host(cidr);
            }
        }
        self.parts
            .fib
            .update(|fib| fib.insert(pod_cidr, RouteTarget::Peer(id)));
        for cidr in pod_cidrs(pod_cidr, pod_cidr6) {
            self.route_on_host(cidr);
        }
        tracing::info!(peer = %node_ip, %pod_cidr, "peer added");
        Ok(())
    }

    /// Remove a peer and its routes.
    pub fn remove_peer(&self, node_ip: IpAddr) -> Result<()> {
        let peer = {
            let mut tables = self.lock();
            let peer = tables.remove_peer(node_ip)?;
            self.publish(&tables);
            peer
        };
        self.parts.fib.update(|fib| fib.remove(peer.pod_cidr));
        for cidr in pod_cidrs(peer.pod_cidr, peer.pod_cidr6) {
            self.unroute_on_host(cidr);
        }
        tracing::info!(peer = %node_ip, "peer removed");
        Ok(())
    }

    /// Resolve a peer's underlay next hop (looking its route up again if
    /// `reroute` or it has none) and its MAC in `neighbours`, and build its
    /// template; an unresolved peer keeps no template and is retried by
    /// [`Self::maintain`].
    fn resolve(
        &self,
        peer: &PeerRecord,
        neighbours: &HashMap<(IpAddr, u32), MacAddr>,
        reroute: bool,
    ) -> Resolution {
        let node_ip = peer.config.node_ip;
        let mut resolution = peer.resolution.clone();
        let netlink = match netlink() {
            Ok(netlink) => netlink,
            Err(e) => {
                tracing::warn!(peer = %node_ip, "{e:#}");
                return Resolution::default();
            }
        };
        let route = match resolution.next_hop {
            Some(hop) if !reroute => Ok(hop),
            _ => netlink.next_hop(node_ip),
        };
        let hop = match route {
            Ok(hop) if hop.ifindex == self.parts.uplink_index => hop,
            Ok(hop) => {
                tracing::warn!(
                    peer = %node_ip,
                    ifindex = hop.ifindex,
                    "the route to this peer does not leave through the uplink"
                );
                return Resolution::default();
            }
            Err(e) => {
                tracing::warn!(peer = %node_ip, "{e:#}");
                return Resolution::default();
            }
        };
        resolution.next_hop = Some(hop);
        let mac = neighbours.get(&(hop.neighbour, hop.ifindex)).copied();
        if mac.is_none() || resolution.template.is_none() {
            let _ = netlink.probe_neighbour(hop.neighbour, hop.ifindex);
        }
        if mac == resolution.next_hop_mac && resolution.template.is_some() {
            return resolution;
        }
        resolution.next_hop_mac = mac;
        resolution.template = mac.and_then(|mac| match self.parts.node.template(node_ip, mac) {
            Ok(template) => Some(template),
            Err(e) => {
                tracing::error!(peer = %node_ip, "{e:#}");
                None
            }
        });
        resolution
    }

    /// Follow the world, called once a second (`round` counts the calls):
    /// re-read every peer's next-hop MAC from the neighbour table (the
    /// kernel's entries go stale since the switch's traffic bypasses them,
    /// so missing ones are probed), every 10th round its route too; every
    /// 5th round, remove ports whose interface is gone and bind sockets
    /// on RX queues AF_XDP ports gained (an XDP program redirects by
    /// queue, so a queue without a socket loses its frames). Route lookups
    /// and the queue count cost milliseconds each here, and change only
    /// when an operator changes them.
    pub fn maintain(&self, round: u64) {
        if round.is_multiple_of(5) {
            self.prune_vanished_ports();
            self.follow_queues();
        }
        self.refresh_peers(round.is_multiple_of(10), |_| true);
        if let Some(services) = &self.parts.services {
            services.maintain();
        }
        self.parts.policies.maintain();
    }

    /// Remove the pod ports whose interface is gone (a pod whose namespace
    /// was deleted without a CNI DEL takes its veth with it): their
    /// sockets can never receive again, and they would keep the pod's
    /// address claimed.
    fn prune_vanished_ports(&self) {
        let links = match netlink().and_then(|n| n.links()) {
            Ok(links) => links,
            Err(e) => return tracing::warn!("reading the links: {e:#}"),
        };
        let gone: Vec<String> = self
            .lock()
            .ports()
            .map(|(_, p)| &p.record)
            .filter(|p| p.view.role == PortRole::Pod)
            .filter(|p| match &p.device {
                Some(PodDevice::Tap(tap)) => tap.is_detached(),
                _ => {
                    matches!(p.kind, PortKind::Afxdp | PortKind::Packet)
                        && !links.contains_key(&p.view.name)
                }
            })
            .map(|p| p.view.name.clone())
            .collect();
        for name in &gone {
            match self.remove_port(name) {
                Ok(()) => tracing::warn!(port = %name, "port removed: its interface is gone"),
                Err(e) => {
                    tracing::warn!(port = %name, "removing a port whose interface is gone: {e:#}")
                }
            }
        }
        if !gone.is_empty() {
            self.save_state();
        }
    }

    /// Bind sockets on the RX queues AF_XDP ports gained.
    fn follow_queues(&self) {
        let ports: Vec<(PortId, PortRecord)> = self
            .lock()
            .ports()
            .filter(|(_, p)| p.record.kind == PortKind::Afxdp && p.state == tables::PortState::Live)
            .map(|(id, p)| (id, p.record.clone()))
            .collect();
        for (id, record) in ports {
            let name = &record.view.name;
            let Ok(active) = active_rx_queues(name) else {
                continue;
            };
            if active <= record.queues {
                continue;
            }
            if record.view.role == PortRole::Pod
                && let Err(e) = self.lock().check_pod_sockets(active - record.queues)
            {
                tracing::warn!(port = %name, "not binding its new RX queues: {e:#}");
                continue;
            }
            let added = netlink()
                .and_then(|n| n.require_link(name))
                .and_then(|link| self.bind_queues(name, link.index, record.queues..active))
                .and_then(|sockets| {
                    self.parts.workers[record.view.worker].ask(
                        |done| Command::AddSockets(id, sockets, done),
                        "take the sockets",
                    )?
                });
            match added {
                Ok(()) => {
                    tracing::info!(port = %name, from = record.queues, to = active, "port gained RX queues");
                    self.lock().port_queues(id, active);
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
        let pending =
            |p: &PeerRecord| p.resolution.template.is_none() && p.resolution.next_hop.is_some();
        if self.lock().peers().all(|(_, p)| !pending(p)) {
            return false;
        }
        self.refresh_peers(false, pending)
    }

    /// Re-resolve the peers `which` selects; true if some of them are
    /// still unresolved.
    fn refresh_peers(&self, reroute: bool, which: impl Fn(&PeerRecord) -> bool) -> bool {
        let neighbours = neighbours();
        let asked: Vec<PeerToResolve> = self.lock().peers_to_resolve(which);
        let found: Vec<Resolution> = asked
            .iter()
            .map(|peer| self.resolve(&peer.record, &neighbours, reroute))
            .collect();
        let unresolved = found.iter().any(|r| r.template.is_none());
        let mut tables = self.lock();
        let mut changed = false;
        for (peer, resolution) in asked.iter().zip(found) {
            changed |= tables.resolved(peer, resolution);
        }
        if changed {
            self.publish(&tables);
        }
        unresolved
    }

    /// Route a pod CIDR to the host port in the node's own table, so the
    /// node reaches remote pods: see [`host_route_via`]. An IPv6 one only
    /// where the host port carries IPv6 (this node has a `pod_cidr6`).
    fn route_on_host(&self, cidr: IpNet) {
        if self.routes_on_host(cidr)
            && let Err(e) = netlink()
                .and_then(|n| n.replace_route(cidr, host_route_via(cidr), self.parts.host_index))
        {
            tracing::warn!("{e:#}");
        }
    }

    fn unroute_on_host(&self, cidr: IpNet) {
        if self.routes_on_host(cidr)
            && let Err(e) = netlink().and_then(|n| n.delete_route(cidr, self.parts.host_index))
        {
            tracing::warn!("{e:#}");
        }
    }

    /// Whether the node's table routes `cidr` through the host port: there
    /// is one, and it carries `cidr`'s family.
    fn routes_on_host(&self, cidr: IpNet) -> bool {
        self.parts.host_index != 0
            && (cidr.addr().is_ipv4() || self.parts.node.config.pod_cidr6.is_some())
    }

    /// The whole FIB, IPv4 then IPv6, described.
    pub fn routes(&self) -> Vec<RouteEntry> {
        let tables = self.lock();
        let fib = self.parts.fib.load();
        let fib6 = &self.parts.topology.load().fib6;
        let port_name = |id: PortId| {
            tables
                .port(id)
                .map_or("?".to_string(), |p| p.record.view.name.clone())
        };
        let peer_ip = |id: PeerId| {
            tables
                .peers()
                .find(|(i, _)| *i == id)
                .map_or("?".to_string(), |(_, p)| p.config.node_ip.to_string())
        };
        let v4 = fib
            .iter()
            .map(|(prefix, target)| (IpNet::V4(prefix), target));
        let v6 = fib6
            .iter()
            .map(|(prefix, target)| (IpNet::V6(prefix), target));
        v4.chain(v6)
            .map(|(prefix, target)| RouteEntry {
                prefix,
                target: match target {
                    RouteTarget::Host => "host".to_string(),
                    RouteTarget::Pod(id) => format!("pod {}", port_name(id)),
                    RouteTarget::Peer(id) => format!("peer {}", peer_ip(id)),
                },
            })
            .collect()
    }

    /// Route `prefix` to the host port.
    pub fn add_host_route(&self, prefix: Ipv4Net) {
        let prefix = prefix.trunc();
        self.lock().add_host_route(prefix);
        self.parts
            .fib
            .update(|fib| fib.insert(prefix, RouteTarget::Host));
    }

    /// Remove a host route.
    pub fn remove_host_route(&self, prefix: Ipv4Net) -> Result<()> {
        let prefix = prefix.trunc();
        self.lock().remove_host_route(prefix)?;
        self.parts.fib.update(|fib| {
            if fib.get(prefix) == Some(RouteTarget::Host) {
                fib.remove(prefix);
            }
        });
        Ok(())
    }

    /// Control-socket requests carried out so far, by operation and outcome.
    pub fn request_counts(&self) -> Vec<RequestCount> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((op, ok), count)| RequestCount {
                op: op.clone(),
                ok: *ok,
                count: *count,
            })
            .collect()
    }

    /// The Service stage, or an error saying how to turn it on.
    fn services(&self) -> Result<&Services> {
        self.parts.services.as_deref().context(
            "the switch does not translate Services: set service_translation = \"switch\" \
             in the config (kube-proxy translates them now)",
        )
    }

    /// Replace the Services `source` gives the switch (`control`, `file`,
    /// `kubernetes`; the others' stay); refused, saying what to fix, when
    /// the set is inconsistent or translation is off.
    pub fn set_services(&self, source: &str, services: Vec<Service>) -> Result<()> {
        self.services()?
            .set(source, services)
            .map_err(anyhow::Error::msg)
    }

    /// How many routes the FIB holds.
    pub fn fib_size(&self) -> usize {
        self.parts.fib.load().len()
    }

    /// All counters.
    pub fn stats(&self) -> StatsReport {
        let links = Self::link_table();
        let blocks = self.worker_stats();
        let ports: BTreeMap<String, _> = self
            .port_records()
            .into_iter()
            .map(|(id, p)| {
                let counters = Self::port_counters(&blocks, id, &links, &p);
                (p.view.name, counters)
            })
            .collect();
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
            uplink_to_kernel: counters.as_ref().map_or(0, |c| c.to_kernel),
            services: self
                .parts
                .services
                .as_ref()
                .map(|services| ServiceCounters {
                    connections_translated: services.translator.translated(),
                    connections_active: services.translator.conns.len() as u64,
                }),
        }
    }
}

impl Handler for ControlPlane {
    fn handle(&self, request: Request, caller: Option<u32>) -> Response {
        match self.dispatch(request, caller) {
            Ok(result) => Response::success(result),
            Err(e) => Response::failure(format!("{e:#}")),
        }
    }

    fn start_capture(
        &self,
        spec: &CaptureSpec,
    ) -> Result<(Arc<CaptureTap>, Receiver<CapturedFrame>)> {
        self.start_capture(spec)
    }

    fn end_capture(&self, tap: &Arc<CaptureTap>) {
        self.end_capture(tap)
    }
}

/// A netlink connection for one operation (each thread its own: no lock
/// is held across a call).
fn netlink() -> Result<Netlink> {
    Netlink::open()
}

/// The kernel's neighbour table, or an empty one (logged) if unreadable.
fn neighbours() -> HashMap<(IpAddr, u32), MacAddr> {
    netlink().and_then(|n| n.neighbours()).unwrap_or_else(|e| {
        tracing::warn!("{e:#}");
        HashMap::new()
    })
}

/// The ports the daemon opens itself, running before the control plane
/// starts.
pub struct DaemonPorts {
    /// The uplink.
    pub uplink: PortRecordSeed,
    /// The host port, if any.
    pub host: Option<PortRecordSeed>,
    /// The tunnel port, if the kernel cuts super-frames for the switch.
    pub tunnel: Option<PortRecordSeed>,
}

/// A running port the daemon opened itself (the uplink, the host port,
/// the tunnel port), described for the port table.
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
                ip6: None,
                worker: self.worker,
            },
            kind: self.kind,
            xdp_mode: self.xdp_mode,
            copy_mode: self.copy_mode,
            queues: self.queues,
            owner: None,
            netns: None,
            namespace: None,
            ifname: None,
            device: None,
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

/// The uplink program's filter for this configuration, passing VXLAN's
/// TCP to the kernel when `vxlan_tcp_to_kernel` (the node receives it
/// through the tunnel port).
pub fn uplink_filter(config: &crate::config::Config, vxlan_tcp_to_kernel: bool) -> UplinkFilter {
    UplinkFilter {
        vtep: config.node_ip,
        udp_port: config.tunnel_udp_port(),
        vxlan_tcp_to_kernel,
    }
}

/// The TX drops of the TAP device `ifname` in `namespace`: frames the
/// pod's kernel dropped because the device's queue was full (0 when they
/// cannot be read: the pod is going away).
fn tap_queue_dropped(namespace: &Namespace, ifname: &str) -> u64 {
    namespace
        .run(|| Ok(Netlink::open()?.link(ifname)?.map_or(0, |l| l.tx_dropped)))
        .unwrap_or(0)
}

/// Every node with an IPv4 address, this one first: NodePorts are served
/// at their addresses (Services are IPv4).
fn service_nodes(tables: &Tables) -> Vec<NodeAddress> {
    let config = &tables.node().config;
    let this = (config.node_ip, config.pod_cidr);
    let peers = tables
        .peers()
        .map(|(_, peer)| (peer.config.node_ip, peer.config.pod_cidr));
    std::iter::once(this)
        .chain(peers)
        .filter_map(|(address, pod_cidr)| match address {
            IpAddr::V4(address) => Some(NodeAddress { address, pod_cidr }),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// A node's pod CIDRs, of both families.
pub fn pod_cidrs(pod_cidr: Ipv4Net, pod_cidr6: Option<Ipv6Net>) -> impl Iterator<Item = IpNet> {
    std::iter::once(pod_cidr.into()).chain(pod_cidr6.map(IpNet::from))
}

/// How the node's table routes a pod CIDR through the host port: an
/// IPv4 one on-link (the switch answers ARP for every routed address),
/// an IPv6 one via the switch's link-local [`POD_GATEWAY6`], as pods
/// route theirs — one neighbour entry for every pod, where on-link
/// routes would take one per pod address the node talks to.
pub fn host_route_via(cidr: IpNet) -> Option<IpAddr> {
    match cidr {
        IpNet::V4(_) => None,
        IpNet::V6(_) => Some(POD_GATEWAY6.into()),
    }
}
