//! The kernel-offload path toward peers through the real kernel, as a
//! tunnel port will use it. A relay stands in for the switch on node 1: it
//! reads super-frames from a TAP pod, routes them trivially (fixed MACs),
//! encapsulates them in place (`OuterTemplate::encapsulate_offloaded`) and
//! writes them whole into a node-side TAP device opened for UDP tunnel GSO
//! (`TunnelTap`), and node 1's kernel routes and cuts them. What comes back
//! arrives on a plain UDP socket in node 1 and is decapsulated and written
//! to the pod.
//!
//! Node 2 is a Flannel-style kernel VXLAN node (VXLAN), or a second relay
//! (Geneve: this kernel has no Geneve module). Both underlay models the lab
//! has: offloads on, so 64 KB segments cross the veth whole (as a NIC with
//! TSO and GRO lets them), and off, so node 1's kernel cuts them before
//! the underlay. Checked: TCP carries data with next to no retransmits;
//! a capture on node 2's underlay shows valid outer IPv4 headers with DF,
//! outer UDP checksums that are never zero and either verify or (for
//! segments crossing whole) hold the pseudo-header sum the receiving
//! kernel finishes, inner IPv4 and TCP checksums likewise, frames of at
//! most the MTU on the wire-size underlay, and no hole in any TCP sequence;
//! tshark reads the same capture. Needs root.
//!
//! `cargo test --release -p podswitch --test tunnel_gso -- --ignored
//! --nocapture measure` compares the relay with the kernel's own path.

use std::fs::File;
use std::io::{self, IoSlice};
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::socket::{setsockopt, sockopt};
use podswitch::tap::{MAX_SUPER_FRAME, TapDevice};
use podswitch::tunnel_tap::{
    SendError, TUN_F_UDP_TUNNEL_GSO, TUN_F_UDP_TUNNEL_GSO_CSUM, TunnelTap, TunnelTapError,
    apply_node_sysctls,
};
use podswitch_encap::checksum::ipv4_pseudo_header;
use podswitch_encap::geneve::GeneveOptionRepr;
use podswitch_encap::virtio_net::{
    Checksum, Gso, GsoKind, HEADER_LEN as VNET_HEADER_LEN, Header as VnetHeader, Offload,
};
use podswitch_encap::wire::{EthernetAddress, IpProtocol, IpVersion, Ipv4Packet, TcpPacket};
use podswitch_encap::{Decapsulator, DropReason, OuterTemplate, TunnelKind, TunnelSpec, Vni};
use podswitch_lab::cluster::{
    KernelNode, Pod, UPLINK, VNI, add_underlay_ipv6, connect_underlay, expect_iperf, expect_pings,
    kernel_vtep_mac, node_ip, node_ip6, pod_cidr, pod_gateway, router_mac,
};
use podswitch_lab::cpu::{CpuMeter, thread_cpu_seconds};
use podswitch_lab::host::{MachineMeter, on_cpu, pin_current_thread};
use podswitch_lab::traffic::{IperfClient, IperfResult, iperf_server};
use podswitch_lab::tunnel_capture::{TunnelCapture, Underlay, checksum_errors};
use podswitch_lab::{Lab, Netns, Process, parse_mac};

/// The underlay's MTU.
const UNDERLAY_MTU: usize = 1500;
/// The node-side TAP device's name in every node.
const TUNNEL_TAP: &str = "tnl0";
/// Room before a frame in a relay's buffer: the outer headers (whose
/// copy may write 128 bytes) and the virtio-net header a read puts there.
const HEADROOM: usize = 256;
/// The UDP port of the kernel node's VXLAN device (the lab's).
const VXLAN_PORT: u16 = 4789;
/// A Geneve option every relay sends (not critical), so the tunnel header
/// is longer than VXLAN's.
const GENEVE_OPTIONS: [GeneveOptionRepr<'static>; 1] = [GeneveOptionRepr {
    class: 0x0105,
    option_type: 0x01,
    data: &[1, 2, 3, 4],
}];

/// The retransmits a TCP run may count: one in 10,000 segments of
/// 1448 bytes, at least 10. They are spurious (the receiver counts them as
/// duplicates of what it had; the capture shows no segment lost): a late
/// ACK, the relay on one CPU carrying both directions.
fn few_retransmits(result: &IperfResult, seconds: u32) -> u64 {
    let segments = result.bits_per_second * f64::from(seconds) / 8.0 / 1448.0;
    ((segments / 10_000.0) as u64).max(10)
}

/// Lab tests push real traffic: one at a time on a 2-core machine.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether this kernel has UDP tunnel GSO on TAP devices (Linux 6.17+):
/// a tunnel TAP device opens in a namespace of its own. On a kernel
/// without it (Debian 12's 6.1), the refusal is the one a caller falls
/// back on, said once, and the tests that need the path pass without it.
fn kernel_has_tunnel_gso() -> Result<bool> {
    let mut lab = Lab::new("tgso-probe")?;
    let ns = lab.netns("probe")?;
    match ns.enter(|| Ok(TunnelTap::open(TUNNEL_TAP)))? {
        Ok(_) => Ok(true),
        Err(error @ TunnelTapError::Unavailable { .. }) => {
            eprintln!("skipped, as a switch would fall back: {error}");
            Ok(false)
        }
        Err(error) => Err(error.into()),
    }
}

/// Join nodes 1 and 2 by the lab's underlay, in the `underlay` model,
/// with VTEP addresses of `family`.
fn connect(underlay: Underlay, n1: &Netns, n2: &Netns, family: IpVersion) -> Result<()> {
    connect_underlay(n1, 1, n2, 2, UNDERLAY_MTU as u32)?;
    if family == IpVersion::Ipv6 {
        for (ns, index) in [(n1, 1), (n2, 2)] {
            add_underlay_ipv6(ns, index)?;
        }
    }
    if underlay == Underlay::Whole {
        for ns in [n1, n2] {
            ns.run(
                "ethtool",
                &["-K", UPLINK, "tx", "on", "tso", "on", "gso", "on"],
            )?;
        }
    }
    Ok(())
}

/// Node `index`'s VTEP address of `family`: the lab's IPv4 or IPv6 one.
fn vtep(index: u8, family: IpVersion) -> IpAddr {
    match family {
        IpVersion::Ipv4 => node_ip(index).into(),
        IpVersion::Ipv6 => node_ip6(index).into(),
    }
}

fn udp_port(kind: TunnelKind) -> u16 {
    match kind {
        TunnelKind::Vxlan => VXLAN_PORT,
        TunnelKind::Geneve => kind.default_udp_port(),
    }
}

/// What a relay carries its pod's traffic with, in node `index`: the
/// tunnel TAP device and the tunnel socket there, and the pod
/// (10.244.<index>.2) on a TAP device with offloads, as the CNI plugin
/// makes TAP pods.
struct RelayNode {
    index: u8,
    family: IpVersion,
    tunnel: TunnelTap,
    socket: UdpSocket,
    pod: Pod,
    pod_tap: TapDevice,
}

impl RelayNode {
    /// Set up node `index` (namespace `ns`, underlay connected) for a
    /// relay of `kind` whose outer headers `template` makes.
    fn create(
        lab: &mut Lab,
        ns: &Netns,
        index: u8,
        kind: TunnelKind,
        template: &OuterTemplate,
    ) -> Result<RelayNode> {
        let family = template.outer_headers().ip;
        let tunnel = ns.enter(|| {
            let tunnel = TunnelTap::open(TUNNEL_TAP)?;
            apply_node_sysctls(TUNNEL_TAP, family)?;
            Ok(tunnel)
        })?;
        ns.ip(&["link", "set", TUNNEL_TAP, "up"])?;
        let socket = ns.enter(|| {
            let socket = UdpSocket::bind((vtep(index, family), udp_port(kind)))?;
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            setsockopt(&socket, sockopt::RcvBufForce, &(8 << 20))?;
            Ok(socket)
        })?;
        let pod_ns = lab.netns(&format!("pod{index}2"))?;
        let pod_tap = pod_ns.enter(|| Ok(TapDevice::open_offloaded("eth0")?))?;
        let ip = Ipv4Addr::new(10, 244, index, 2);
        pod_ns.sh(&format!(
            "sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1
             ip link set eth0 mtu {mtu} gso_max_size {gso} up
             ip addr add {ip}/24 dev eth0
             ip neigh replace {gateway} lladdr {router} dev eth0 nud permanent
             ip route add default via {gateway} dev eth0",
            mtu = template.pod_mtu(),
            gso = template.pod_gso_max_size(),
            gateway = pod_gateway(index),
            router = router_mac(index),
        ))?;
        let pod = Pod {
            mac: podswitch_lab::format_mac(pod_ns.mac("eth0")?),
            ns: pod_ns,
            ip,
            port: String::new(),
        };
        Ok(RelayNode {
            index,
            family,
            tunnel,
            socket,
            pod,
            pod_tap,
        })
    }
}

/// The outer headers from node `index` toward node `peer` over `family`
/// through the tunnel TAP device whose MAC is `tap_mac`.
fn template(
    kind: TunnelKind,
    family: IpVersion,
    index: u8,
    peer: u8,
    tap_mac: [u8; 6],
) -> Result<OuterTemplate> {
    Ok(OuterTemplate::new(&TunnelSpec {
        kind,
        vni: template_vni()?,
        udp_port: udp_port(kind),
        local_mac: EthernetAddress(parse_mac(&router_mac(index))?),
        next_hop_mac: EthernetAddress(tap_mac),
        vlan: None,
        local_ip: vtep(index, family),
        remote_ip: vtep(peer, family),
        ttl: 64,
        geneve_options: match kind {
            TunnelKind::Vxlan => &[],
            TunnelKind::Geneve => &GENEVE_OPTIONS,
        },
        underlay_mtu: UNDERLAY_MTU as u16,
    })?)
}

/// What a relay did.
#[derive(Debug, Default)]
struct RelayStats {
    /// Super-frames handed to the kernel whole.
    super_frames: AtomicU64,
    /// Plain frames handed to the kernel.
    plain_frames: AtomicU64,
    /// The longest frame a super-frame's segments make on the wire.
    longest_segment: AtomicUsize,
    /// Datagrams from the peer written to the pod.
    datagrams: AtomicU64,
    /// Those longer than the pod MTU (super-frames that crossed whole).
    super_datagrams: AtomicU64,
    /// Why frames were dropped, either way.
    drops: Mutex<Vec<DropReason>>,
    /// CPU time (user and system) of the pod-to-peer thread, milliseconds.
    send_cpu_ms: AtomicU64,
    /// The same of the peer-to-pod thread.
    receive_cpu_ms: AtomicU64,
}

impl RelayStats {
    fn dropped(&self, reason: DropReason) {
        self.drops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(reason);
    }

    fn drops(&self) -> Vec<DropReason> {
        self.drops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A relay standing in for the switch on one node.
struct Relay<'a> {
    node: &'a RelayNode,
    template: OuterTemplate,
    decap: Decapsulator,
    /// The inner destination MAC toward the peer (its VTEP or router MAC).
    peer_mac: [u8; 6],
    /// This node's router MAC: the pod's gateway.
    router_mac: [u8; 6],
    pod_mac: [u8; 6],
    stats: RelayStats,
}

impl<'a> Relay<'a> {
    fn new(
        node: &'a RelayNode,
        template: OuterTemplate,
        kind: TunnelKind,
        peer_mac: [u8; 6],
    ) -> Result<Relay<'a>> {
        let local = vtep(node.index, node.family);
        let mut decap = Decapsulator::new(kind, local, template_vni()?);
        decap.udp_port = udp_port(kind);
        Ok(Relay {
            node,
            template,
            decap,
            peer_mac,
            router_mac: parse_mac(&router_mac(node.index))?,
            pod_mac: parse_mac(&node.pod.mac)?,
            stats: RelayStats::default(),
        })
    }

    /// Pod to peer: read a frame (a super-frame, mostly) after its
    /// virtio-net header into the buffer with room for the outer headers
    /// before it, rewrite its MACs, encapsulate it in place and write it
    /// into the tunnel TAP device. Until `stop`.
    fn pod_to_peer(&self, stop: &AtomicBool) -> Result<()> {
        let mut buf = vec![0u8; HEADROOM + MAX_SUPER_FRAME];
        let read_at = HEADROOM - VNET_HEADER_LEN;
        while !stop.load(Ordering::Relaxed) {
            let mut fds = [PollFd::new(self.node.pod_tap.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, 100u16)?;
            while let Some(n) = self.node.pod_tap.recv(&mut buf[read_at..])? {
                let offload =
                    match Offload::parse(&VnetHeader::new_unchecked(&buf[read_at..read_at + n])) {
                        Ok(offload) => offload,
                        Err(reason) => {
                            self.stats.dropped(reason);
                            continue;
                        }
                    };
                let frame = HEADROOM..read_at + n;
                // IPv4 only: the pods have IPv6 off.
                if frame.len() < 14 || buf[frame.start + 12..frame.start + 14] != [0x08, 0x00] {
                    continue;
                }
                buf[frame.start..frame.start + 6].copy_from_slice(&self.peer_mac);
                buf[frame.start + 6..frame.start + 12].copy_from_slice(&self.router_mac);
                let segment = segment_on_wire(&buf[frame.clone()], &offload, &self.template);
                match self
                    .node
                    .tunnel
                    .send_encapsulated(&self.template, &mut buf, frame, &offload)
                {
                    Ok(_) if offload.gso.is_some() => {
                        self.stats.super_frames.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .longest_segment
                            .fetch_max(segment, Ordering::Relaxed);
                    }
                    Ok(_) => {
                        self.stats.plain_frames.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(SendError::Dropped(reason)) => self.stats.dropped(reason),
                    Err(SendError::Io(e)) => return Err(e).context("writing to the tunnel TAP"),
                }
            }
        }
        Ok(())
    }

    /// Peer to pod: a datagram from the tunnel socket, decapsulated, its
    /// MACs rewritten, written to the pod with the virtio-net header that
    /// says what it is ([`received_offload`]). Until `stop`.
    fn peer_to_pod(&self, stop: &AtomicBool) -> Result<()> {
        let mut buf = vec![0u8; 65536];
        let pod_mtu = self.template.pod_mtu();
        while !stop.load(Ordering::Relaxed) {
            let (n, from) = match self.node.socket.recv_from(&mut buf) {
                Ok(received) => received,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e).context("receiving from the tunnel socket"),
            };
            let found = match self
                .decap
                .decapsulate_datagram(&buf[..n], from.ip(), from.port())
            {
                Ok(found) => found,
                Err(reason) => {
                    self.stats.dropped(reason);
                    continue;
                }
            };
            let frame = &mut buf[found.inner];
            frame[..6].copy_from_slice(&self.pod_mac);
            frame[6..12].copy_from_slice(&self.router_mac);
            let offload = received_offload(frame, pod_mtu);
            self.stats.datagrams.fetch_add(1, Ordering::Relaxed);
            if offload.gso.is_some() {
                self.stats.super_datagrams.fetch_add(1, Ordering::Relaxed);
            }
            let header = offload.to_bytes();
            self.node
                .pod_tap
                .send_parts(&[IoSlice::new(&header), IoSlice::new(frame)])
                .context("writing to the pod")?;
        }
        Ok(())
    }

    /// Fail if the relay dropped anything or sent nothing whole.
    fn check(&self, what: &str) -> Result<()> {
        let stats = &self.stats;
        eprintln!(
            "{what}: relay on node {}: {} super-frames and {} plain frames to the kernel, \
             longest segment {} bytes; {} datagrams to the pod ({} super); drops {:?}",
            self.node.index,
            stats.super_frames.load(Ordering::Relaxed),
            stats.plain_frames.load(Ordering::Relaxed),
            stats.longest_segment.load(Ordering::Relaxed),
            stats.datagrams.load(Ordering::Relaxed),
            stats.super_datagrams.load(Ordering::Relaxed),
            stats.drops(),
        );
        ensure!(
            stats.drops().is_empty(),
            "{what}: the relay dropped {:?}",
            stats.drops()
        );
        ensure!(
            stats.super_frames.load(Ordering::Relaxed) > 0,
            "{what}: no super-frame went to the kernel whole"
        );
        let longest = stats.longest_segment.load(Ordering::Relaxed);
        ensure!(
            longest <= UNDERLAY_MTU + 14,
            "{what}: segments of {longest} bytes would not fit the underlay"
        );
        Ok(())
    }
}

fn template_vni() -> Result<Vni> {
    Vni::new(VNI).context("VNI")
}

/// The frame length on the underlay of a super-frame's first segment:
/// outer headers, inner headers (to the end of the TCP header) and one
/// `gso_size` of payload.
fn segment_on_wire(frame: &[u8], offload: &Offload, template: &OuterTemplate) -> usize {
    match (offload.checksum, offload.gso) {
        (Checksum::Partial { start, .. }, Some(gso)) => {
            let start = usize::from(start);
            let tcp_header = frame
                .get(start + 12)
                .map_or(20, |&b| usize::from(b >> 4) * 4);
            template.header_len() + start + tcp_header + usize::from(gso.size)
        }
        _ => template.header_len() + frame.len(),
    }
}

/// What to tell the pod of a frame that came out of a tunnel datagram: a
/// TCP/IPv4 frame whose checksum field holds the pseudo-header sum has a
/// partial checksum (it crossed the underlay whole, or with its checksum
/// left to the receiver; a complete checksum that happens to equal the
/// sum is completed to itself); one longer than the pod MTU is a
/// super-frame, to be cut at the MSS the pod MTU gives.
fn received_offload(frame: &[u8], pod_mtu: usize) -> Offload {
    let tcp_ipv4 = frame.get(12..14) == Some(&[0x08, 0x00][..])
        && Ipv4Packet::new_checked(&frame[14..]).is_ok_and(|ip| {
            ip.next_header() == IpProtocol::Tcp && TcpPacket::new_checked(ip.payload()).is_ok()
        });
    if !tcp_ipv4 {
        return Offload::NONE;
    }
    let ip = Ipv4Packet::new_unchecked(&frame[14..]);
    let ip_header_len = usize::from(ip.header_len());
    let tcp = TcpPacket::new_unchecked(ip.payload());
    let tcp_len = ip.payload().len() as u16;
    let pseudo = ipv4_pseudo_header(ip.src_addr().octets(), ip.dst_addr().octets(), 6, tcp_len);
    let tcp_start = 14 + ip_header_len;
    let checksum = if tcp.checksum() == pseudo {
        Checksum::Partial {
            start: tcp_start as u16,
            offset: 16,
        }
    } else {
        Checksum::Complete
    };
    let tcp_header_len = usize::from(tcp.header_len());
    let gso = (frame.len() > pod_mtu + 14).then(|| Gso {
        kind: GsoKind::TcpV4,
        ecn: false,
        size: (pod_mtu - ip_header_len - tcp_header_len) as u16,
        hdr_len: (tcp_start + tcp_header_len) as u16,
    });
    Offload { checksum, gso }
}

/// Where node 1's relay threads run (node 2's run on CPU 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Both on CPU 0, beside the sender, as `podswitch-bench lab` places
    /// node 1's worker. Pinned, as the switch's worker is: a thread that
    /// moved between CPUs would queue its packets to two CPUs' backlogs,
    /// and they could overtake each other.
    BesideSender,
    /// The sending thread on CPU 0, the replies thread on CPU 1.
    RepliesApart,
    /// Wherever the scheduler puts them (a measurement only).
    Unpinned,
}

impl Placement {
    /// The CPUs of a relay's sending and replies threads on node `index`.
    fn cpus(self, index: u8) -> (Option<usize>, Option<usize>) {
        match (index, self) {
            (1, Placement::BesideSender) => (Some(0), Some(0)),
            (1, Placement::RepliesApart) => (Some(0), Some(1)),
            (1, Placement::Unpinned) => (None, None),
            _ => (Some(1), Some(1)),
        }
    }
}

/// Run `relays` (two threads each, placed as `placement` says) while
/// `work` runs; stop them after.
fn with_relays<R>(
    relays: &[&Relay],
    placement: Placement,
    work: impl FnOnce() -> Result<R>,
) -> Result<R> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let threads: Vec<_> = relays
            .iter()
            .flat_map(|relay| {
                let stop = &stop;
                let (send_cpu, receive_cpu) = placement.cpus(relay.node.index);
                let stats = &relay.stats;
                [
                    scope.spawn(move || {
                        on_thread_cpu(send_cpu, &stats.send_cpu_ms, || relay.pod_to_peer(stop))
                    }),
                    scope.spawn(move || {
                        on_thread_cpu(receive_cpu, &stats.receive_cpu_ms, || {
                            relay.peer_to_pod(stop)
                        })
                    }),
                ]
            })
            .collect();
        let result = work();
        stop.store(true, Ordering::Relaxed);
        for thread in threads {
            thread
                .join()
                .map_err(|_| anyhow!("a relay thread panicked"))??;
        }
        result
    })
}

/// Pin the calling thread to `cpu` (if any), run `f`, and add the CPU
/// time the thread took to `cpu_ms`.
fn on_thread_cpu(
    cpu: Option<usize>,
    cpu_ms: &AtomicU64,
    f: impl FnOnce() -> Result<()>,
) -> Result<()> {
    if let Some(cpu) = cpu {
        pin_current_thread(cpu)?;
    }
    let before = thread_cpu_seconds()?;
    let result = f();
    let used = thread_cpu_seconds()? - before;
    cpu_ms.fetch_add((used * 1000.0) as u64, Ordering::Relaxed);
    result
}

/// A capture of node 2's underlay into a pcap file, by tcpdump.
struct Capture {
    tcpdump: Process,
    path: PathBuf,
    log: PathBuf,
}

impl Capture {
    /// Start capturing the tunnel packets of `kind` on node 2's underlay
    /// (`ns`), whole frames, into `dir`.
    fn start(ns: &Netns, kind: TunnelKind, dir: &Path) -> Result<Capture> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{kind}.pcap"));
        let log = dir.join(format!("{kind}.tcpdump.log"));
        let port = udp_port(kind).to_string();
        let tcpdump = Process::spawn_logged(
            ns.command("tcpdump")?
                .args(["-i", UPLINK, "-n", "-s", "0", "-B", "262144", "-w"])
                .arg(&path)
                .args(["udp", "port", &port]),
            "tcpdump on node 2's underlay",
            File::create(&log)?,
        )?;
        // tcpdump says "listening on" once its socket is open.
        for _ in 0..100 {
            if std::fs::read_to_string(&log)?.contains("listening on") {
                return Ok(Capture { tcpdump, path, log });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("tcpdump did not start: {}", std::fs::read_to_string(&log)?)
    }

    /// Stop capturing; fail if the kernel dropped any packet of the capture.
    fn stop(mut self) -> Result<PathBuf> {
        ensure!(
            self.tcpdump
                .signal_and_wait(nix::sys::signal::Signal::SIGINT, Duration::from_secs(10)),
            "tcpdump did not stop"
        );
        let log = std::fs::read_to_string(&self.log)?;
        let dropped = log
            .lines()
            .find(|l| l.contains("dropped by kernel"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .with_context(|| format!("no drop count from tcpdump:\n{log}"))?;
        ensure!(
            dropped == 0,
            "the capture dropped {dropped} packets:\n{log}"
        );
        Ok(self.path)
    }
}

/// tshark's reading of node 1's packets in the capture: dissected as
/// `kind` with no malformed packet, IPv4 header checksums good, and on a
/// wire-size underlay every outer UDP and inner TCP checksum good.
fn tshark_check(
    path: &Path,
    kind: TunnelKind,
    family: IpVersion,
    underlay: Underlay,
    what: &str,
) -> Result<()> {
    let vni_field = match kind {
        TunnelKind::Vxlan => "vxlan.vni",
        TunnelKind::Geneve => "geneve.vni",
    };
    let port = udp_port(kind).to_string();
    let (source, ip_checksums) = match family {
        IpVersion::Ipv4 => ("ip.src", "1,1"),
        IpVersion::Ipv6 => ("ipv6.src", "1"),
    };
    let output = podswitch_lab::tools::command("tshark")?
        .args(["-n", "-r"])
        .arg(path)
        .args(["-c", "3000", "-d", &format!("udp.port=={port},{kind}")])
        .args(["-Y", &format!("{source} == {} && tcp", vtep(1, family))])
        .args([
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
        ])
        .args(["-o", "tcp.check_checksum:TRUE"])
        .args([
            "-T",
            "fields",
            "-E",
            "separator=;",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=,",
        ])
        .args([
            "-e",
            vni_field,
            "-e",
            "ip.checksum.status",
            "-e",
            "udp.checksum.status",
        ])
        .args(["-e", "tcp.checksum.status", "-e", "_ws.malformed"])
        .output()
        .context("running tshark")?;
    ensure!(
        output.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout)?;
    let mut lines = 0;
    for line in text.lines() {
        lines += 1;
        let fields: Vec<&str> = line.split(';').collect();
        let [vni, ip, udp, tcp, malformed] = fields[..] else {
            bail!("{what}: tshark line {line:?}");
        };
        ensure!(
            vni == "1" || vni == "0x000001",
            "{what}: tshark read VNI {vni:?}: {line}"
        );
        ensure!(
            malformed.is_empty(),
            "{what}: tshark found a malformed packet: {line}"
        );
        ensure!(
            ip.starts_with('1'),
            "{what}: IPv4 header checksum per tshark: {line}"
        );
        if underlay == Underlay::WireSize {
            ensure!(
                ip == ip_checksums && udp == "1" && tcp == "1",
                "{what}: checksums per tshark: {line}"
            );
        }
    }
    ensure!(
        lines > 100,
        "{what}: tshark read only {lines} packets of node 1"
    );
    eprintln!("{what}: tshark read {lines} packets of node 1, all as expected");
    Ok(())
}

/// A relay on node 1 and the peer on node 2 — a kernel VXLAN node, or for
/// Geneve a second relay — in a new lab, on `underlay`, with VTEPs of
/// `family`.
struct Testbed {
    kind: TunnelKind,
    n2: Netns,
    one: RelayNode,
    /// The relay node 2 runs for Geneve.
    two: Option<RelayNode>,
    /// Node 2's pod.
    peer_pod: Pod,
    /// Node 1's outer headers toward node 2, and node 2's back (Geneve).
    templates: Vec<OuterTemplate>,
    /// Dropped last, after the relays.
    lab: Lab,
}

impl Testbed {
    fn new(tag: &str, kind: TunnelKind, underlay: Underlay, family: IpVersion) -> Result<Testbed> {
        let mut lab = Lab::new(tag)?;
        let n1 = lab.netns("n1")?;
        let n2 = lab.netns("n2")?;
        connect(underlay, &n1, &n2, family)?;
        // The template needs the tunnel TAP's MAC, which the node opens:
        // open it first with a stand-in template for the pod's settings.
        let stand_in = template(kind, family, 1, 2, [0; 6])?;
        let one = RelayNode::create(&mut lab, &n1, 1, kind, &stand_in)?;
        let mut templates = vec![template(kind, family, 1, 2, one.tunnel.mac()?)?];
        let (two, peer_pod) = match kind {
            TunnelKind::Vxlan => {
                let mtu = UNDERLAY_MTU as u32;
                let kernel = KernelNode::create_with_vtep(n2.clone(), 2, mtu, vtep(2, family))?;
                kernel.vxlan.add_peer(
                    &kernel.ns,
                    &pod_cidr(1),
                    "10.244.1.0",
                    &router_mac(1),
                    vtep(1, family),
                )?;
                (None, kernel.add_pod(&mut lab, 2, true)?)
            }
            TunnelKind::Geneve => {
                let two = RelayNode::create(&mut lab, &n2, 2, kind, &stand_in)?;
                templates.push(template(kind, family, 2, 1, two.tunnel.mac()?)?);
                let pod = two.pod.clone();
                (Some(two), pod)
            }
        };
        Ok(Testbed {
            lab,
            kind,
            n2,
            one,
            two,
            peer_pod,
            templates,
        })
    }

    /// The relays: node 1's, and node 2's for Geneve.
    fn relays(&self) -> Result<Vec<Relay<'_>>> {
        let peer_mac = match &self.two {
            None => parse_mac(&kernel_vtep_mac(2))?,
            Some(_) => parse_mac(&router_mac(2))?,
        };
        let mut relays = vec![Relay::new(
            &self.one,
            self.templates[0].clone(),
            self.kind,
            peer_mac,
        )?];
        if let Some(two) = &self.two {
            let template = self.templates[1].clone();
            relays.push(Relay::new(
                two,
                template,
                self.kind,
                parse_mac(&router_mac(1))?,
            )?);
        }
        Ok(relays)
    }
}

/// TCP from node 1's pod to node 2's over `kind` and `underlay` with
/// VTEPs of `family`, through the relay, checked on the underlay and by
/// tshark.
fn tcp_through_tunnel_gso(
    tag: &str,
    kind: TunnelKind,
    underlay: Underlay,
    family: IpVersion,
) -> Result<()> {
    let _serial = serial();
    if !kernel_has_tunnel_gso()? {
        return Ok(());
    }
    let what = format!("{kind} over {family}, {underlay:?} underlay");
    let testbed = Testbed::new(tag, kind, underlay, family)?;
    if underlay == Underlay::WireSize {
        // What arrives is what was sent: no receive-side merging.
        testbed.n2.run("ethtool", &["-K", UPLINK, "gro", "off"])?;
    }
    let relays = testbed.relays()?;
    let relay_refs: Vec<&Relay> = relays.iter().collect();
    let (a, b) = (&testbed.one.pod, &testbed.peer_pod);
    let capture_dir = testbed.lab.scratch_dir()?;
    with_relays(&relay_refs, Placement::BesideSender, || {
        expect_pings(a, b.ip, &what)?;
        expect_pings(b, a.ip, &what)?;
        // Paced so that the capture keeps up with every frame.
        let capture = Capture::start(&testbed.n2, kind, &capture_dir)?;
        let paced = IperfClient {
            tcp_rate: Some(500_000_000),
            ..IperfClient::default()
        };
        let result = expect_iperf(&paced, a, b, &format!("{what}, paced, captured"))?;
        let path = capture.stop()?;
        let mut wire = TunnelCapture::new(kind, udp_port(kind), vtep(1, family), UNDERLAY_MTU);
        wire.read_pcap(&path)?;
        wire.check(underlay, 100, &what)?;
        tshark_check(&path, kind, family, underlay, &what)?;
        // Nothing was lost on the way (no hole above); what the sender
        // counts as retransmits are tail loss probes sent when an ACK came
        // late, which the receiver reports as duplicates.
        ensure!(
            result.retransmits <= few_retransmits(&result, paced.seconds),
            "{what}: {} retransmits at 500 Mbit/s ({} on the underlay)",
            result.retransmits,
            wire.counts.sequence_repeats
        );
        let full_speed = IperfClient::default();
        let full = expect_iperf(&full_speed, a, b, &format!("{what}, full speed"))?;
        ensure!(
            full.retransmits <= few_retransmits(&full, full_speed.seconds),
            "{what}: {} retransmits at full speed",
            full.retransmits
        );
        expect_iperf(
            &IperfClient::default(),
            b,
            a,
            &format!("{what}, the other way"),
        )?;
        Ok(())
    })?;
    for relay in &relays {
        relay.check(&what)?;
    }
    for pod in [a, b] {
        let errors = checksum_errors(&pod.ns)?;
        ensure!(
            errors == 0,
            "{what}: pod {} counted {errors} checksum errors",
            pod.ip
        );
    }
    std::fs::remove_dir_all(&capture_dir)?;
    Ok(())
}

#[test]
fn vxlan_to_a_kernel_node_segments_whole_on_the_underlay() -> Result<()> {
    let (kind, underlay) = (TunnelKind::Vxlan, Underlay::Whole);
    tcp_through_tunnel_gso("tgso-vx-whole", kind, underlay, IpVersion::Ipv4)
}

#[test]
fn vxlan_to_a_kernel_node_cut_before_the_underlay() -> Result<()> {
    let (kind, underlay) = (TunnelKind::Vxlan, Underlay::WireSize);
    tcp_through_tunnel_gso("tgso-vx-wire", kind, underlay, IpVersion::Ipv4)
}

#[test]
fn geneve_between_relays_segments_whole_on_the_underlay() -> Result<()> {
    let (kind, underlay) = (TunnelKind::Geneve, Underlay::Whole);
    tcp_through_tunnel_gso("tgso-gn-whole", kind, underlay, IpVersion::Ipv4)
}

#[test]
fn geneve_between_relays_cut_before_the_underlay() -> Result<()> {
    let (kind, underlay) = (TunnelKind::Geneve, Underlay::WireSize);
    tcp_through_tunnel_gso("tgso-gn-wire", kind, underlay, IpVersion::Ipv4)
}

#[test]
fn vxlan_over_ipv6_to_a_kernel_node_segments_whole_on_the_underlay() -> Result<()> {
    let (kind, underlay) = (TunnelKind::Vxlan, Underlay::Whole);
    tcp_through_tunnel_gso("tgso-vx6-whole", kind, underlay, IpVersion::Ipv6)
}

#[test]
fn vxlan_over_ipv6_to_a_kernel_node_cut_before_the_underlay() -> Result<()> {
    let (kind, underlay) = (TunnelKind::Vxlan, Underlay::WireSize);
    tcp_through_tunnel_gso("tgso-vx6-wire", kind, underlay, IpVersion::Ipv6)
}

/// The device itself: the offloads and header size the kernel took, more
/// queues on one device, its MAC, the node settings written in the
/// node's namespace, and the refusal a kernel without tunnel GSO gives.
#[test]
fn the_tunnel_tap_device() -> Result<()> {
    let _serial = serial();
    if !kernel_has_tunnel_gso()? {
        return Ok(());
    }
    let mut lab = Lab::new("tgso-dev")?;
    let ns = lab.netns("n1")?;
    let (first, second) = ns.enter(|| {
        let first = TunnelTap::open(TUNNEL_TAP)?;
        let second = TunnelTap::open(TUNNEL_TAP)?;
        apply_node_sysctls(TUNNEL_TAP, IpVersion::Ipv4)?;
        Ok((first, second))
    })?;
    assert_eq!(first.name(), TUNNEL_TAP);
    let features = ns.run("ethtool", &["-k", TUNNEL_TAP])?;
    for feature in [
        "tx-checksumming: on",
        "tcp-segmentation-offload: on",
        "tx-udp_tnl-segmentation: on",
        "tx-udp_tnl-csum-segmentation: on",
    ] {
        ensure!(features.contains(feature), "no {feature:?} in:\n{features}");
    }
    let link = ns.ip(&["-d", "link", "show", TUNNEL_TAP])?;
    ensure!(link.contains("multi_queue"), "not multi-queue:\n{link}");
    let expected = ns.mac(TUNNEL_TAP)?;
    ensure!(first.mac()? == expected && second.mac()? == expected, "MAC");
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.tnl0.accept_local", "1"),
        ("net.ipv4.conf.tnl0.rp_filter", "0"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv6.conf.tnl0.disable_ipv6", "1"),
    ] {
        let set = ns.run("sysctl", &["-n", key])?;
        ensure!(set.trim() == value, "{key} = {set:?}, not {value}");
    }
    // Outside the namespace nothing changed: the host keeps its own.
    ensure!(
        !Path::new("/proc/sys/net/ipv4/conf/tnl0").exists(),
        "a host tnl0?"
    );
    // The kernel takes the tunnel offloads only beside a plain one, and
    // answers as a kernel without them does (EINVAL): the refusal a
    // caller falls back on.
    let refused = ns.enter(|| {
        Ok(TunnelTap::open_with_offloads(
            "tnl1",
            libc::TUN_F_CSUM | TUN_F_UDP_TUNNEL_GSO | TUN_F_UDP_TUNNEL_GSO_CSUM,
        ))
    })?;
    match refused {
        Err(error @ TunnelTapError::Unavailable { .. }) => {
            let message = error.to_string();
            ensure!(
                message.contains("UDP tunnel GSO is unavailable on TAP device tnl1"),
                "{message}"
            );
        }
        other => bail!("expected Unavailable, got {other:?}"),
    }
    Ok(())
}

/// One iperf3 stream for 10 s from node 1's pod to node 2's, its rate and
/// the CPU it took: the processes in `pids` (the relay, when it is this
/// process), the kernel's system and softirq time, the whole machine. As
/// `podswitch-bench lab` places them: the sender on CPU 0 with node 1's
/// relay, the receiver on CPU 1.
fn measure(from: &Pod, to: &Pod, pids: &[u32]) -> Result<String> {
    let client = IperfClient {
        seconds: 10,
        ..IperfClient::default()
    };
    let _server = on_cpu(1, || iperf_server(&to.ns, client.port))?;
    let meter = CpuMeter::start(pids)?;
    let machine = MachineMeter::start()?;
    let result = on_cpu(0, || client.run(&from.ns, to.ip))?;
    let cpu = meter.stop()?;
    let busy = machine.stop()?;
    Ok(format!(
        "{:6.2} Gbit/s, {:4} retransmits; relay {:.2}, kernel system {:.2} + softirq {:.2}, machine {:.2} CPUs",
        result.gbps(),
        result.retransmits,
        cpu.processes,
        cpu.kernel_system,
        cpu.kernel_softirq,
        busy
    ))
}

/// The relay against the kernel's own path, both underlay models: one
/// stream, 10 s each.
#[test]
#[ignore = "a measurement: run it alone, with --ignored --nocapture"]
fn measure_relay_against_the_kernel() -> Result<()> {
    let _serial = serial();
    ensure!(
        kernel_has_tunnel_gso()?,
        "this kernel has no UDP tunnel GSO on TAP devices"
    );
    let mut report = Vec::new();
    for underlay in [Underlay::Whole, Underlay::WireSize] {
        // Both relay threads beside the sender on CPU 0, as one worker
        // would carry both; the replies (a system call or two per ACK
        // here) apart; the scheduler's choice.
        for placement in [
            Placement::BesideSender,
            Placement::RepliesApart,
            Placement::Unpinned,
        ] {
            let (kind, family) = (TunnelKind::Vxlan, IpVersion::Ipv4);
            let testbed = Testbed::new("tgso-measure", kind, underlay, family)?;
            let relays = testbed.relays()?;
            let relay_refs: Vec<&Relay> = relays.iter().collect();
            let line = with_relays(&relay_refs, placement, || {
                measure(&testbed.one.pod, &testbed.peer_pod, &[std::process::id()])
            })?;
            let stats = &relays[0].stats;
            report.push(format!(
                "relay, {placement:?}, {underlay:?}: {line}; \
                 sending thread {:.2} s, replies thread {:.2} s",
                stats.send_cpu_ms.load(Ordering::Relaxed) as f64 / 1000.0,
                stats.receive_cpu_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            ));
        }
        let mut lab = Lab::new("tgso-measure-kernel")?;
        let n1 = lab.netns("n1")?;
        let n2 = lab.netns("n2")?;
        connect(underlay, &n1, &n2, IpVersion::Ipv4)?;
        let k1 = KernelNode::create(n1, 1, UNDERLAY_MTU as u32)?;
        let k2 = KernelNode::create(n2, 2, UNDERLAY_MTU as u32)?;
        k1.add_peer(2, &kernel_vtep_mac(2))?;
        k2.add_peer(1, &kernel_vtep_mac(1))?;
        let (a, b) = (
            k1.add_pod(&mut lab, 2, true)?,
            k2.add_pod(&mut lab, 2, true)?,
        );
        report.push(format!("kernel, {underlay:?}: {}", measure(&a, &b, &[])?));
    }
    eprintln!("\n{}", report.join("\n"));
    Ok(())
}
