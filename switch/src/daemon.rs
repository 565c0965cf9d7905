//! `podswitch daemon`: bring the switch up from its configuration, serve
//! the control socket, and on SIGTERM or SIGINT take everything down again
//! — XDP programs detached, sockets closed, every frame returned — and
//! exit 0. The host port stays (it is persistent) for the next daemon.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use crossbeam::channel::{RecvTimeoutError, Sender, bounded, unbounded};
use ipnet::{IpNet, Ipv6Net};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{SigSet, Signal};

use crate::afxdp::{CopyMode, Umem, UmemConfig, XskConfig, XskSocket, active_rx_queues};
use crate::config::{Config, PeerConfig, ServiceTranslation, TunnelOffloadMode, TunnelReceiveMode};
use crate::control::ControlServer;
use crate::control::protocol::{Encap, PortKind, pod_address6};
use crate::control_plane::{
    ControlPlane, ControlPlaneParts, DaemonPorts, HOST_PORT, Node, PortRecordSeed, TUNNEL_PORT,
    UPLINK_PORT, WorkerHandle, describe, host_route_via, pod_cidrs, uplink_filter,
};
use crate::external_services;
use crate::fib::SharedFib;
use crate::frame_budget::{FillBudget, FillGrowth, FramePlan};
use crate::frames::FrameLedger;
use crate::kernel_receive::{self, KernelReceive};
use crate::mac::MacAddr;
use crate::membership::{self, MembershipSource};
use crate::netlink::{Netlink, disable_ipv6, enable_static_ipv6};
use crate::node_nat::{self, NatRules};
use crate::policy::Policies;
use crate::services::{DEFAULT_CONNECTIONS, Services};
use crate::sources::KUBERNETES_SOURCE;
use crate::stats::WorkerStats;
use crate::tap::TapDevice;
use crate::topology::{PortRole, Topology};
use crate::tunnel_socket::TunnelSocket;
use crate::tunnel_tap::{TunnelTap, TunnelTapError, apply_node_sysctls};
use crate::worker::{
    AfXdpPort, Command, INBOX_CAPACITY, Inbox, MAX_PACKET_CHUNKS, Port, TapPort, TunnelDevice,
    TunnelPort, Worker, WorkerContext, WorkerPort,
};
use crate::xdp::{XdpMode, XdpModeChoice, XdpProgram};
use podswitch_encap::wire::IpVersion;
use podswitch_netdev::ethtool::{self, Offload as EthtoolOffload};

/// Size of a buffer frame: a page (the kernel refuses larger chunks, with
/// hugetlb pages too), which holds a 1500-byte frame with room for any
/// outer header in front of it. Larger frames (a jumbo underlay) span
/// several, as multi-buffer packets.
pub const FRAME_SIZE: u32 = 4096;
/// How often peers' underlay next hops are re-resolved.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);
/// How often peers waiting for their next hop's MAC are looked at again.
const RESOLVE_RETRY: Duration = Duration::from_millis(20);

/// Run the daemon until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<()> {
    // Block the stop signals in every thread; the main thread waits for them.
    let mut stop_signals = SigSet::empty();
    stop_signals.add(Signal::SIGTERM);
    stop_signals.add(Signal::SIGINT);
    stop_signals
        .thread_block()
        .context("blocking SIGTERM/SIGINT")?;

    let netlink = Netlink::open()?;
    let uplink = netlink.require_link(&config.uplink)?;
    let uplink_mac = uplink
        .mac
        .with_context(|| format!("uplink {} has no MAC address", config.uplink))?;
    let underlay_mtu = config.underlay_mtu.map_or(uplink.mtu, u32::from);
    check_underlay_mtu(underlay_mtu, config.underlay_mtu.is_some(), &config.uplink)?;
    let tunnel = open_tunnel(&netlink, &config, uplink_mac)?;
    let kernel_receive = match &tunnel {
        Some(tunnel) if tunnel.kind == PortKind::Tap => receive_through_kernel(&netlink, &config),
        _ => None,
    };
    if kernel_receive.is_none() {
        kernel_receive::clear_leftovers(&config.uplink, &config.state_dir);
    }
    let receives_through_tunnel = kernel_receive.is_some();
    let veth_uplink = ethtool::driver(&config.uplink).is_ok_and(|driver| driver == "veth");
    let node = Node {
        config: config.clone(),
        uplink_mac,
        underlay_mtu,
        max_pods: config.max_pods,
        workers: config.cores.len(),
        tunnel_mac: tunnel.as_ref().map(|tunnel| tunnel.mac),
        veth_uplink,
    };
    let pod_mtu = node.pod_mtu()?;
    let pod_gso_max_size = node.pod_gso_max_size()?;
    let uplink_queues = active_rx_queues(&config.uplink).unwrap_or(1).max(1);
    let plan = FramePlan::new(
        config.frame_count,
        config.max_pods,
        uplink_queues,
        chunks_per_packet(pod_mtu),
    )?;
    let server = ControlServer::bind(&config.control_socket)?;
    let metrics_server = config
        .metrics_address
        .map(crate::metrics::MetricsServer::bind)
        .transpose()?;

    let umem = Arc::new(
        Umem::new(&UmemConfig {
            frame_count: plan.frame_count,
            frame_size: FRAME_SIZE,
            headroom: 0,
        })
        .with_context(|| {
            format!(
                "allocating the buffer area (UMEM): {} frames, {} MiB",
                plan.frame_count,
                plan.bytes(FRAME_SIZE) >> 20
            )
        })?,
    );
    let ledger = Arc::new(FrameLedger::new(
        plan.frame_count,
        FRAME_SIZE,
        config.check_frames,
    ));
    let growth = Arc::new(FillGrowth::new(plan.growth));

    // The uplink: its XDP program passes the node's own traffic to the
    // kernel and redirects tunnel packets to a socket per RX queue; the
    // first socket registers the buffer area that every other shares.
    let uplink_program = XdpProgram::attach_uplink(
        &config.uplink,
        uplink_xdp_mode(
            &config.uplink,
            veth_uplink,
            receives_through_tunnel,
            config.xdp_mode,
        ),
        &uplink_filter(&config, receives_through_tunnel),
    )
    .with_context(|| format!("attaching the uplink XDP program to {}", config.uplink))?;
    if veth_uplink && uplink_program.mode() == XdpMode::Native {
        complete_checksums_on_a_veth_uplink(&config.uplink);
    }
    let uplink_sockets = bind_uplink(&umem, &config.uplink, uplink.index)?;
    let umem_owner = uplink_sockets[0].umem_share().context("sharing the UMEM")?;
    let (xdp_mode, copy_mode, queues) = describe(&uplink_program, &uplink_sockets);
    let uplink_program = Arc::new(Mutex::new(uplink_program));
    let uplink_seed = PortRecordSeed {
        name: config.uplink.clone(),
        role: PortRole::Uplink,
        kind: PortKind::Afxdp,
        mac: uplink_mac,
        worker: 0,
        xdp_mode: Some(xdp_mode),
        copy_mode: Some(copy_mode),
        queues,
    };

    // The host port: a TAP device carrying the gateway address, so the
    // node reaches its pods and pods reach the node. It is persistent: a
    // restarted daemon attaches to the device the last one left, and what
    // the node set on it — portmap's route_localnet, the routes to remote
    // pods, its MAC — lives through the restart.
    let host_tap = TapDevice::create(&config.host_port)
        .and_then(|tap| tap.persist().map(|()| tap))
        .with_context(|| format!("creating the host port {}", config.host_port))?;
    let host = netlink.require_link(&config.host_port)?;
    // The host port carries IPv6 where the node has pods of that family,
    // IPv4 only otherwise.
    if config.pod_cidr6.is_some() {
        enable_static_ipv6(&config.host_port).context("IPv6 on the host port")?;
    } else if let Err(e) = disable_ipv6(&config.host_port) {
        tracing::debug!("{e:#}");
    }
    netlink.set_link_up(host.index, Some(pod_mtu), None)?;
    netlink.add_address(
        host.index,
        config.gateway().into(),
        config.pod_cidr.prefix_len(),
    )?;
    if let Some(cidr6) = config.pod_cidr6 {
        host_port_ipv6(&netlink, &config, cidr6, host.index)?;
    }
    let host_mac = netlink
        .require_link(&config.host_port)?
        .mac
        .context("the host port has no MAC")?;
    apply_masquerade(&config)?;
    let host_seed = PortRecordSeed {
        name: config.host_port.clone(),
        role: PortRole::Host,
        kind: PortKind::Tap,
        mac: host_mac,
        worker: 0,
        xdp_mode: None,
        copy_mode: None,
        queues: 1,
    };

    let topology = Arc::new(ArcSwap::from_pointee(Topology::empty(
        config.router_mac(),
        config.gateway(),
        pod_mtu,
        config.decapsulator(uplink_mac, veth_uplink),
    )));
    let fib = Arc::new(SharedFib::new());
    let services = serve_services(&config)?;
    if let (Some(services), Some(path)) = (&services, &config.services_file) {
        services
            .watch_file(path)
            .context("config key `services_file`")?;
    }
    let policies = Arc::new(Policies::new(
        config.pod_cidr,
        config.node_addresses(),
        DEFAULT_CONNECTIONS,
    ));
    if let Some(path) = &config.policy_file {
        policies
            .watch_file(path)
            .context("config key `policy_file`")?;
    }

    let mut handles = Vec::new();
    let mut receivers = Vec::new();
    for _ in &config.cores {
        let (commands, receiver) = unbounded();
        handles.push(WorkerHandle {
            commands,
            wake: Arc::new(EventFd::from_flags(EfdFlags::EFD_NONBLOCK).context("eventfd")?),
            stats: Arc::new(WorkerStats::new()),
        });
        receivers.push(receiver);
    }
    let inboxes: Arc<[Inbox]> = handles
        .iter()
        .map(|h| Inbox::new(INBOX_CAPACITY, h.wake.clone()))
        .collect();
    let worker_contexts: Vec<WorkerContext> = handles
        .iter()
        .enumerate()
        .map(|(index, h)| WorkerContext {
            umem: umem.clone(),
            ledger: ledger.clone(),
            topology: topology.clone(),
            fib: fib.clone(),
            services: services.clone(),
            policies: policies.clone(),
            inboxes: inboxes.clone(),
            stats: h.stats.clone(),
            wake: h.wake.clone(),
            growth: growth.clone(),
            poll_mode: config.poll_mode,
            spin: config.spin(),
            overload_nice: config.overload_nice,
            index,
            core: config.cores[index],
            sleep_on_any_cpu: config.sleep_on_any_cpu,
        })
        .collect();

    let parts = ControlPlaneParts {
        node,
        umem: umem.clone(),
        ledger: ledger.clone(),
        umem_owner,
        topology,
        fib,
        services: services.clone(),
        policies: policies.clone(),
        workers: handles,
        uplink_index: uplink.index,
        host_index: host.index,
        pod_mtu,
        pod_gso_max_size,
        plan,
        uplink_program: uplink_program.clone(),
    };
    let tunnel_seed = tunnel.as_ref().map(|tunnel| PortRecordSeed {
        name: tunnel.name.clone(),
        role: PortRole::Tunnel,
        kind: tunnel.kind,
        mac: tunnel.mac,
        worker: 0,
        xdp_mode: None,
        copy_mode: None,
        queues: 1,
    });
    let daemon_ports = DaemonPorts {
        uplink: uplink_seed,
        host: Some(host_seed),
        tunnel: tunnel_seed,
    };
    let plane = Arc::new(ControlPlane::new(parts, daemon_ports)?);

    let workers: Vec<JoinHandle<()>> = worker_contexts
        .into_iter()
        .zip(receivers)
        .map(|(ctx, receiver)| spawn_worker(ctx, receiver))
        .collect::<Result<_>>()?;

    // The uplink carries every node's traffic: its fill rings stay full.
    // Its RX queues are shared out among the workers (a flow's queue is
    // the sender's choice, so flows spread as RSS spreads them), and each
    // worker with one sends on its own; the tunnel port has a queue for
    // every worker.
    let uplink_fill = FillBudget::new(plan.uplink_fill, plan.uplink_fill);
    for (worker, sockets) in share_out(uplink_sockets, config.cores.len())
        .into_iter()
        .enumerate()
    {
        let port = AfXdpPort::new(uplink_program.clone(), sockets, uplink_fill);
        start_port(&plane, worker, UPLINK_PORT, Box::new(port))?;
    }
    start_port(&plane, 0, HOST_PORT, Box::new(TapPort::new(host_tap)))?;
    for (worker, queue) in tunnel
        .into_iter()
        .flat_map(|tunnel| tunnel.queues)
        .enumerate()
    {
        start_port(
            &plane,
            worker,
            TUNNEL_PORT,
            Box::new(TunnelPort::new(queue, receives_through_tunnel)),
        )?;
    }
    plane.restore().context("restoring the saved state")?;
    let peers = plane.peers();
    let peer_cidrs = peers
        .iter()
        .flat_map(|p| pod_cidrs(p.pod_cidr, p.pod_cidr6));
    let wanted: Vec<IpNet> = pod_cidrs(config.pod_cidr, config.pod_cidr6)
        .chain(peer_cidrs)
        .collect();
    remove_stale_host_routes(&netlink, host.index, &wanted);

    // The restored peers the file does not list: the source's own.
    let from_file: Vec<_> = config.peers.iter().map(|p| p.node_ip).collect();
    let owned: Vec<PeerConfig> = plane
        .peers()
        .into_iter()
        .filter(|p| !from_file.contains(&p.node_ip))
        .map(|p| PeerConfig {
            node_ip: p.node_ip,
            pod_cidr: p.pod_cidr,
            pod_cidr6: p.pod_cidr6,
            vtep_mac: Some(p.vtep_mac),
        })
        .collect();
    let services_watch = match (&services, config.membership) {
        (Some(services), MembershipSource::Kubernetes) => {
            Some(follow_kubernetes_services(&config, services.clone())?)
        }
        _ => None,
    };
    let policy_watch = match config.membership {
        MembershipSource::Kubernetes => Some(follow_kubernetes_policy(&config, policies)?),
        _ => None,
    };
    let membership = match config.membership {
        MembershipSource::Static => None,
        MembershipSource::Etcd => Some(membership::etcd::start(&config, plane.clone(), owned)?),
        MembershipSource::Kubernetes => Some(membership::kubernetes::start(
            &config,
            plane.clone(),
            owned,
        )?),
    };

    let stop = Arc::new(AtomicBool::new(false));
    let (maintenance, stop_maintenance) = spawn_maintenance(plane.clone())?;
    let control = server.serve(plane.clone(), stop.clone());
    let metrics = metrics_server
        .map(|server| server.serve(plane.clone(), stop.clone()))
        .transpose()?;

    tracing::info!(
        frames = plan.frame_count,
        buffer_mib = plan.bytes(FRAME_SIZE) >> 20,
        max_pods = plan.max_pods,
        node_ip = %config.node_ip,
        uplink = %config.uplink,
        pod_cidr = %config.pod_cidr,
        pod_mtu,
        router_mac = %config.router_mac(),
        encap = ?config.encap,
        workers = config.cores.len(),
        poll_mode = ?config.poll_mode,
        socket = %config.control_socket.display(),
        "podswitch is running"
    );

    let signal = stop_signals.wait().context("waiting for a signal")?;
    tracing::info!(?signal, "stopping");
    if let Some(membership) = membership {
        membership.stop();
    }
    drop(services_watch);
    drop(policy_watch);
    stop.store(true, Ordering::Relaxed);
    drop(stop_maintenance);
    for handle in plane.workers() {
        let _ = handle.send(Command::Stop);
    }
    for worker in workers {
        let _ = worker.join();
    }
    let _ = maintenance.join();
    let _ = control.join();
    if let Some(metrics) = metrics {
        let _ = metrics.join();
    }
    if masquerade_rules(&config).any()
        && let Err(e) = node_nat::remove()
    {
        tracing::warn!("{e:#}");
    }
    if services.is_some()
        && let Err(e) = external_services::remove()
    {
        tracing::warn!("{e:#}");
    }
    if let Some(kernel_receive) = kernel_receive {
        kernel_receive.remove();
    }
    let census = ledger.census();
    tracing::info!(
        free = census.free,
        total = census.total(),
        violations = ledger.violations(),
        "stopped; every port closed and its frames returned"
    );
    Ok(())
}

/// The switch's own Service translation, when the configuration asks for
/// it (`service_translation = "switch"`), with the node's table for
/// traffic from outside the pod network to Services (and the forwarding
/// it needs); otherwise nothing, and such a table an earlier daemon left
/// removed.
fn serve_services(config: &Config) -> Result<Option<Arc<Services>>> {
    if config.service_translation != ServiceTranslation::Switch {
        if let Err(e) = external_services::remove() {
            tracing::debug!("{e:#}");
        }
        return Ok(None);
    }
    node_nat::enable_forwarding(false)?;
    let services = Services::new(config.pod_cidr, DEFAULT_CONNECTIONS).serve_external();
    tracing::info!(
        table = external_services::TABLE,
        "Services translated by the switch; from outside the pod network by the node's netfilter"
    );
    Ok(Some(Arc::new(services)))
}

/// What the configuration has the daemon's table masquerade.
fn masquerade_rules(config: &Config) -> NatRules {
    NatRules {
        services: config.service_masquerade,
        egress: config.egress_masquerade,
        pod_cidr: config.pod_cidr.trunc(),
        pod_cidr6: config.pod_cidr6.map(|cidr6| cidr6.trunc()),
    }
}

/// Install the masquerade table (`service_masquerade`,
/// `egress_masquerade`, with the forwarding they need), or, when both are
/// off, remove one an earlier daemon left (a failure there, such as no
/// `nft` at all, is only logged).
fn apply_masquerade(config: &Config) -> Result<()> {
    let rules = masquerade_rules(config);
    if !rules.any() {
        if let Err(e) = node_nat::remove() {
            tracing::warn!("service_masquerade and egress_masquerade are off: {e:#}");
        }
        return Ok(());
    }
    node_nat::enable_forwarding(rules.ipv6())?;
    node_nat::install(&config.host_port, rules)?;
    tracing::info!(
        table = node_nat::TABLE,
        host_port = %config.host_port,
        services = rules.services,
        egress = rules.egress,
        ipv6 = rules.ipv6(),
        "pods' connections through the node are masqueraded"
    );
    Ok(())
}

/// IPv6 on the host port (the node has `cidr6`): the node's address there,
/// the mirror of the pods' IPv4 gateway in `cidr6` (so the node has an
/// IPv6 address its pods always reach, and sends to them from it), and
/// `cidr6` routed via the switch ([`host_route_via`]). The routes to
/// peers' IPv6 pod CIDRs come with the peers.
fn host_port_ipv6(netlink: &Netlink, config: &Config, cidr6: Ipv6Net, index: u32) -> Result<()> {
    let node6 = pod_address6(config.pod_cidr, cidr6, config.gateway())
        .context("the node's IPv6 address on the host port")?;
    netlink.add_address(index, node6.into(), 128)?;
    let cidr6 = IpNet::from(cidr6);
    netlink.replace_route(cidr6, host_route_via(cidr6), index)
}

/// Remove the routes through the host port (interface `host_index`) to
/// pod CIDRs that are neither this node's nor a peer's (`pod_cidrs`): the
/// host port outlives the daemon with its routes, and a peer dropped from
/// the configuration while the daemon was down must not keep one. Only
/// routes the daemon makes are candidates ([`host_route_via`]: IPv4 ones
/// with no gateway, IPv6 ones via `fe80::1`); others stay.
fn remove_stale_host_routes(netlink: &Netlink, host_index: u32, pod_cidrs: &[IpNet]) {
    let routes = match netlink.ip_routes() {
        Ok(routes) => routes,
        Err(e) => {
            tracing::warn!("{e:#}");
            return;
        }
    };
    for stale in stale_host_routes(&routes, host_index, pod_cidrs) {
        match netlink.delete_route(stale, host_index) {
            Ok(()) => tracing::info!(%stale, "removed a host port route no peer has"),
            Err(e) => tracing::warn!("{e:#}"),
        }
    }
}

/// Which of `routes` (destination, gateway, interface) [`remove_stale_host_routes`] removes.
fn stale_host_routes(
    routes: &[(IpNet, Option<IpAddr>, u32)],
    host_index: u32,
    pod_cidrs: &[IpNet],
) -> Vec<IpNet> {
    let wanted = |destination: &IpNet| pod_cidrs.iter().any(|cidr| cidr.trunc() == *destination);
    routes
        .iter()
        .filter(|&&(destination, gateway, oif)| {
            oif == host_index && gateway == host_route_via(destination) && !wanted(&destination)
        })
        .map(|&(destination, _, _)| destination)
        .collect()
}

/// The tunnel port as the daemon opened it: a queue for every worker.
struct TunnelQueues {
    queues: Vec<TunnelDevice>,
    /// The port's name: the TAP device's, or [`TUNNEL_SOCKET_PORT`].
    name: String,
    kind: PortKind,
    /// The outer destination MAC of what the switch writes into it.
    mac: MacAddr,
}

/// The name the tunnel port has when it is a UDP socket.
pub const TUNNEL_SOCKET_PORT: &str = "tunnel-udp";

/// Open the tunnel port `tunnel_offload` asks for: with `auto`, the TAP
/// device with UDP tunnel GSO where the kernel has it and the UDP socket
/// elsewhere; with `udp-segment`, the socket; with `off` (or a kernel
/// without `UDP_SEGMENT`) none, and the switch sends TAP pods' segments on
/// the uplink.
fn open_tunnel(
    netlink: &Netlink,
    config: &Config,
    uplink_mac: MacAddr,
) -> Result<Option<TunnelQueues>> {
    let workers = config.cores.len();
    if config.tunnel_offload == TunnelOffloadMode::Auto
        && let Some((taps, mac)) = open_tunnel_port(netlink, config, workers)?
    {
        return Ok(Some(TunnelQueues {
            queues: taps.into_iter().map(TunnelDevice::Tap).collect(),
            name: config.tunnel_port.clone(),
            kind: PortKind::Tap,
            mac,
        }));
    }
    if config.tunnel_offload == TunnelOffloadMode::Off {
        return Ok(None);
    }
    let sockets: std::io::Result<Vec<TunnelDevice>> = (0..workers)
        .map(|_| TunnelSocket::open(config.node_ip, config.encap.into()).map(TunnelDevice::Socket))
        .collect();
    match sockets {
        Ok(queues) => {
            tracing::info!(
                port = TUNNEL_SOCKET_PORT,
                queues = queues.len(),
                "the switch cuts TAP pods' super-frames and the kernel sends each one's \
                 datagrams in one go (UDP_SEGMENT)"
            );
            Ok(Some(TunnelQueues {
                queues,
                name: TUNNEL_SOCKET_PORT.to_string(),
                kind: PortKind::Socket,
                // Any: the socket sends the UDP payload only.
                mac: uplink_mac,
            }))
        }
        Err(e) => {
            tracing::warn!(
                "a UDP socket with UDP_SEGMENT on {}: {e}; TAP pods' super-frames are cut by the \
                 switch and sent on the uplink",
                config.node_ip
            );
            Ok(None)
        }
    }
}

/// Open the tunnel port's TAP device with UDP tunnel GSO, a queue for
/// each of `workers` workers, set what the node's kernel needs to forward
/// what is written into it, and bring it up: the queues and its MAC.
/// `None`, with a warning, where the kernel cannot (before Linux 6.17, or
/// a `/proc/sys` that cannot be written): the switch then cuts TAP pods'
/// super-frames itself.
fn open_tunnel_port(
    netlink: &Netlink,
    config: &Config,
    workers: usize,
) -> Result<Option<(Vec<TunnelTap>, MacAddr)>> {
    let name = &config.tunnel_port;
    let family = if config.node_ip.is_ipv4() {
        IpVersion::Ipv4
    } else {
        IpVersion::Ipv6
    };
    let device = match TunnelTap::open(name) {
        Ok(device) => device,
        Err(e @ TunnelTapError::Unavailable { .. }) => {
            tracing::warn!("{e}");
            return Ok(None);
        }
        Err(e) => return Err(e).context("opening the tunnel port"),
    };
    if let Err(e) = apply_node_sysctls(name, family) {
        tracing::warn!(
            "the tunnel port {name} needs the node to forward what the switch writes into it: \
             {e}; TAP pods' super-frames are cut by the switch instead"
        );
        return Ok(None);
    }
    let link = netlink.require_link(name)?;
    netlink.set_link_up(link.index, None, None)?;
    let mac = MacAddr(device.mac().context("reading the tunnel port's MAC")?);
    let mut queues = vec![device];
    for _ in 1..workers {
        queues.push(TunnelTap::open(name).context("opening a queue of the tunnel port")?);
    }
    tracing::info!(port = %name, %mac, queues = queues.len(), "the kernel cuts TAP pods' super-frames (UDP tunnel GSO)");
    Ok(Some((queues, mac)))
}

/// Follow the cluster's Services and EndpointSlices through the
/// Kubernetes API and give each resolved list to the switch's table
/// (source `kubernetes`); the watch stops when the handle is dropped.
fn follow_kubernetes_services(
    config: &Config,
    services: Arc<Services>,
) -> Result<membership::kubernetes_services::ServicesWatch> {
    membership::kubernetes_services::watch_services(&config.kubernetes, move |list| {
        let count = list.len();
        match services.set(KUBERNETES_SOURCE, list) {
            Ok(()) => tracing::info!(services = count, "Services from the Kubernetes API"),
            Err(e) => tracing::warn!("Services from the Kubernetes API refused: {e}"),
        }
    })
    .context("following Services and EndpointSlices in the Kubernetes API")
}

/// Follow the cluster's namespaces, pods and NetworkPolicies through the
/// Kubernetes API and put each set in force (source `kubernetes`); the
/// watch stops when the handle is dropped.
fn follow_kubernetes_policy(
    config: &Config,
    policies: Arc<Policies>,
) -> Result<membership::kubernetes_policy::PolicyWatch> {
    membership::kubernetes_policy::watch_policies(&config.kubernetes, move |cluster| {
        let count = cluster.policies.len();
        match policies.set(KUBERNETES_SOURCE, cluster) {
            Ok(()) => tracing::info!(policies = count, "NetworkPolicies from the Kubernetes API"),
            Err(e) => tracing::warn!("NetworkPolicies from the Kubernetes API refused: {e}"),
        }
    })
    .context("following namespaces, pods and NetworkPolicies in the Kubernetes API")
}

/// Packets a receiving tunnel port's TAP device queues for the switch:
/// a burst of GRO's super-packets waits there, not dropped.
const TUNNEL_PORT_QUEUE_LEN: u32 = 4096;

/// Have the node's kernel receive peers' TCP and hand it to the tunnel
/// port merged by GRO ([`KernelReceive`]), where the configuration asks
/// (`tunnel_receive = "auto"`) and it can: VXLAN over an IPv4 underlay.
/// `None` otherwise, or with a warning when installing fails: every
/// tunnel packet then comes through the uplink's AF_XDP socket.
fn receive_through_kernel(netlink: &Netlink, config: &Config) -> Option<KernelReceive> {
    let IpAddr::V4(vtep) = config.node_ip else {
        return None;
    };
    if config.tunnel_receive != TunnelReceiveMode::Auto || config.encap != Encap::Vxlan {
        return None;
    }
    let install = || -> Result<KernelReceive> {
        let tunnel = netlink.require_link(&config.tunnel_port)?;
        netlink.set_tx_queue_len(tunnel.index, TUNNEL_PORT_QUEUE_LEN)?;
        KernelReceive::install(
            &config.uplink,
            vtep,
            config.tunnel_udp_port(),
            config.vni,
            &config.tunnel_port,
            &config.state_dir,
        )
    };
    match install() {
        Ok(installed) => {
            tracing::info!(
                uplink = %config.uplink,
                tunnel_port = %config.tunnel_port,
                gro_device = kernel_receive::GRO_DEVICE,
                "peers' TCP is received through the node's kernel (GRO) and the tunnel port"
            );
            Some(installed)
        }
        Err(e) => {
            tracing::warn!(
                "receiving peers' TCP through the kernel: {e:#}; every tunnel packet comes \
                 through the uplink's AF_XDP socket instead"
            );
            None
        }
    }
}

/// The mode to attach the uplink's program in: with `xdp_mode = "auto"`,
/// generic on a veth uplink (`veth`) with TSO on whose node receives
/// peers' TCP through the kernel (`through_kernel`) — a native program on a
/// veth turns TSO off on its peer, a generic one lets the tunnel port's
/// super-frames cross such an underlay whole, and only the kernel's path
/// takes them whole: the AF_XDP socket (Geneve, an IPv6 underlay,
/// `tunnel_receive = "afxdp"`) has room for one MTU-sized frame — and the
/// configured choice otherwise (a NIC keeps its TSO beside a native
/// program, and native mode keeps the uplink's GRO, which the kernel skips
/// beside a generic one).
fn uplink_xdp_mode(
    uplink: &str,
    veth: bool,
    through_kernel: bool,
    configured: XdpModeChoice,
) -> XdpModeChoice {
    let tso = || ethtool::is_on(uplink, EthtoolOffload::Tso).unwrap_or(false);
    if configured == XdpModeChoice::Auto && veth && through_kernel && tso() {
        tracing::info!(
            uplink,
            "veth uplink with TSO on: its XDP program runs in generic mode, so that segments \
             cross the underlay whole (xdp_mode = \"native\" keeps the uplink's GRO instead)"
        );
        return XdpModeChoice::Generic;
    }
    configured
}

/// Turn TX checksum offload off on a veth uplink (the caller checks)
/// whose XDP program runs natively: a veth hands its peer a packet's
/// checksum unfinished, and the peer — another podswitch node, whose XDP
/// program takes the packet before any checksum is finished — would find
/// the tunnel packets the node's kernel sends (through the tunnel port, or
/// its own) with a partial outer UDP checksum and drop them; and the
/// peer's native program has taken this side's TSO, the one thing the
/// offload would be for. With a generic program the offload stays as the
/// operator set it: TSO, which needs it, lets super-frames cross whole
/// (decisions, "The uplink in generic mode"). A NIC finishes checksums
/// before the wire, so other uplinks keep theirs. A failure is logged: the
/// switch's own AF_XDP packets carry complete checksums either way.
fn complete_checksums_on_a_veth_uplink(uplink: &str) {
    match ethtool::turn_off(uplink, &[EthtoolOffload::TxChecksum]) {
        Ok(()) => tracing::info!(
            uplink,
            "TX checksum offload turned off on the veth uplink: its peer gets finished checksums"
        ),
        Err(e) => tracing::warn!(uplink, "{e}"),
    }
}

/// Bind a socket on every active RX queue of the uplink; the first one
/// registers the buffer area, in copy mode: the UMEM is all copy or all
/// zero-copy, and veth and TAP pod ports have no zero-copy.
fn bind_uplink(umem: &Umem, ifname: &str, ifindex: u32) -> Result<Vec<XskSocket>> {
    let queues = active_rx_queues(ifname).unwrap_or(1).max(1);
    let owner_config = XskConfig {
        copy_mode: CopyMode::Copy,
        ..XskConfig::default()
    };
    let owner = XskSocket::bind(umem, ifindex, 0, &owner_config, None)
        .with_context(|| format!("binding an AF_XDP socket to {ifname} queue 0"))?;
    let share = owner.umem_share()?;
    let mut sockets = vec![owner];
    for queue in 1..queues {
        sockets.push(
            XskSocket::bind(umem, ifindex, queue, &XskConfig::default(), Some(&share))
                .with_context(|| format!("binding an AF_XDP socket to {ifname} queue {queue}"))?,
        );
    }
    Ok(sockets)
}

/// How many buffer frames the largest frame of a pod (MTU `pod_mtu`, an
/// Ethernet header and an 802.1Q tag) spans.
pub fn chunks_per_packet(pod_mtu: u32) -> u32 {
    (pod_mtu + 18)
        .div_ceil(FRAME_SIZE - crate::afxdp::XDP_PACKET_HEADROOM)
        .max(1)
}

/// The largest underlay MTU the switch carries: a frame of it (with an
/// Ethernet header and an 802.1Q tag) must fit in the buffer frames one
/// multi-buffer packet may span.
pub const MAX_UNDERLAY_MTU: u32 = 9216;

const _: () =
    assert!((MAX_UNDERLAY_MTU as usize + 18).div_ceil(FRAME_SIZE as usize) <= MAX_PACKET_CHUNKS);

/// Refuse an underlay MTU the switch cannot carry, saying what to change:
/// `configured` when it came from `underlay_mtu`, else it is the uplink's.
fn check_underlay_mtu(underlay_mtu: u32, configured: bool, uplink: &str) -> Result<()> {
    if underlay_mtu <= MAX_UNDERLAY_MTU {
        return Ok(());
    }
    if configured {
        anyhow::bail!(
            "underlay_mtu {underlay_mtu} is more than the switch carries ({MAX_UNDERLAY_MTU}): \
             lower underlay_mtu in the configuration"
        );
    }
    anyhow::bail!(
        "the uplink {uplink} has MTU {underlay_mtu}, more than the switch carries \
         ({MAX_UNDERLAY_MTU}): set underlay_mtu (576 to {MAX_UNDERLAY_MTU}) in the \
         configuration, or lower the uplink's MTU"
    )
}

/// Hand a port the daemon opened itself to `worker` and wait until it
/// runs.
fn start_port(
    plane: &ControlPlane,
    worker: usize,
    id: crate::topology::PortId,
    port: Box<dyn Port>,
) -> Result<()> {
    let (done, answer) = bounded(1);
    plane.workers()[worker].send(Command::Add(WorkerPort { id, port }, done))?;
    answer
        .recv_timeout(Duration::from_secs(5))
        .with_context(|| format!("worker {worker} did not start"))?
}

/// Share `sockets` (one per RX queue, in queue order) out among
/// `workers`: queue q to worker q mod workers. Workers past the queue
/// count get none (they hand what they send to the uplink to worker 0).
fn share_out<T>(sockets: Vec<T>, workers: usize) -> Vec<Vec<T>> {
    let mut shares: Vec<Vec<T>> = (0..workers.clamp(1, sockets.len().max(1)))
        .map(|_| Vec::new())
        .collect();
    let count = shares.len();
    for (queue, socket) in sockets.into_iter().enumerate() {
        shares[queue % count].push(socket);
    }
    shares
}

/// Start a worker thread (it pins itself to its core).
fn spawn_worker(
    ctx: WorkerContext,
    receiver: crossbeam::channel::Receiver<Command>,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("worker-{}", ctx.index))
        .spawn(move || Worker::new(ctx, receiver).run())
        .context("spawning a worker thread")
}

/// Run [`ControlPlane::maintain`] every [`MAINTENANCE_INTERVAL`], and
/// [`ControlPlane::resolve_pending`] every [`RESOLVE_RETRY`] while peers
/// wait for their next hop's MAC, until the returned sender is dropped.
fn spawn_maintenance(plane: Arc<ControlPlane>) -> Result<(JoinHandle<()>, Sender<()>)> {
    let (stop, stopped) = bounded::<()>(0);
    let thread = std::thread::Builder::new()
        .name("maintenance".into())
        .spawn(move || {
            let mut round = 0u64;
            let mut next_round = Instant::now() + MAINTENANCE_INTERVAL;
            loop {
                let wake = if plane.resolve_pending() {
                    next_round.min(Instant::now() + RESOLVE_RETRY)
                } else {
                    next_round
                };
                if let Ok(()) | Err(RecvTimeoutError::Disconnected) = stopped.recv_deadline(wake) {
                    break;
                }
                if Instant::now() >= next_round {
                    round += 1;
                    plane.maintain(round);
                    next_round = Instant::now() + MAINTENANCE_INTERVAL;
                }
            }
        })
        .context("spawning the maintenance thread")?;
    Ok((thread, stop))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_queues_are_shared_out_round_robin() {
        assert_eq!(share_out(vec![0, 1, 2, 3], 2), [vec![0, 2], vec![1, 3]]);
        assert_eq!(share_out(vec![0, 1, 2], 4), [vec![0], vec![1], vec![2]]);
        assert_eq!(share_out(vec![0], 1), [vec![0]]);
        assert_eq!(share_out(vec![0, 1], 1), [vec![0, 1]]);
    }

    #[test]
    fn underlay_mtus_over_what_the_switch_carries_are_refused_with_the_fix() {
        assert!(check_underlay_mtu(9000, true, "eth0").is_ok());
        assert!(check_underlay_mtu(MAX_UNDERLAY_MTU, false, "eth0").is_ok());
        let configured = check_underlay_mtu(9300, true, "eth0").unwrap_err();
        assert!(configured.to_string().contains("lower underlay_mtu"));
        let from_uplink = check_underlay_mtu(65535, false, "eth0").unwrap_err();
        assert!(from_uplink.to_string().contains("set underlay_mtu"));
        assert!(from_uplink.to_string().contains("eth0"));
    }

    #[test]
    fn only_the_daemons_host_port_routes_to_unknown_cidrs_are_stale() {
        let net = |text: &str| text.parse::<IpNet>().unwrap();
        let ip = |text: &str| Some(text.parse::<IpAddr>().unwrap());
        let pod_cidrs = [
            net("10.244.1.0/24"),
            net("10.244.2.0/24"),
            net("fd00:10:244:1::/64"),
            net("fd00:10:244:2::/64"),
        ];
        let routes = [
            (net("10.244.1.0/24"), None, 7),
            (net("10.244.2.0/24"), None, 7),
            (net("10.244.3.0/24"), None, 7),
            (net("10.244.4.0/24"), ip("10.244.1.9"), 7),
            (net("10.244.5.0/24"), None, 3),
            (net("0.0.0.0/0"), ip("10.1.0.1"), 3),
            (net("fd00:10:244:1::/64"), ip("fe80::1"), 7),
            (net("fd00:10:244:2::/64"), ip("fe80::1"), 7),
            (net("fd00:10:244:3::/64"), ip("fe80::1"), 7),
            // The kernel's own link-local route, and someone else's.
            (net("fe80::/64"), None, 7),
            (net("fd00:99::/64"), ip("fe80::9"), 7),
            (net("fd00:10:244:4::/64"), ip("fe80::1"), 3),
        ];
        assert_eq!(
            stale_host_routes(&routes, 7, &pod_cidrs),
            [net("10.244.3.0/24"), net("fd00:10:244:3::/64")]
        );
    }
}
