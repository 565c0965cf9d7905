//! The control protocol: one JSON object per line each way over the
//! daemon's Unix socket. `docs/operations.md` documents it with examples.
//!
//! A request names its operation in `"op"`:
//! `{"op":"port_add","name":"veth1a2b","ip":"10.244.1.5","mac":"0a:58:0a:f4:01:05"}`.
//! The answer is `{"ok":true,"result":…}` or `{"ok":false,"error":"…"}`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;
use crate::policy::Cluster;
use crate::service::{Service, ServiceProtocol};
use crate::stats::{Census, PortReport, WorkerReport};

/// Longest request line the daemon reads; a longer one is refused.
pub const MAX_REQUEST_LEN: usize = 64 * 1024;

/// How the workers wait for traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PollMode {
    /// Spin while there is work, then sleep in poll() until traffic comes.
    #[default]
    Adaptive,
    /// Spin always: lowest latency, one whole core per worker.
    Busy,
}

/// The tunnel, as configuration spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encap {
    /// VXLAN, UDP port 4789 by default.
    #[default]
    Vxlan,
    /// Geneve, UDP port 6081 by default.
    Geneve,
}

impl std::fmt::Display for Encap {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Encap::Vxlan => "vxlan",
            Encap::Geneve => "geneve",
        })
    }
}

impl std::fmt::Display for PollMode {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            PollMode::Adaptive => "adaptive",
            PollMode::Busy => "busy",
        })
    }
}

/// The pods' IPv6 gateway on every dual-stack node: a link-local
/// address the switch answers neighbour solicitations for (a pod's own
/// link-local address, from its MAC, never takes this form).
pub const POD_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// A dual-stack pod's IPv6 address: its IPv4 address's offset in
/// `pod_cidr`, at the same offset in `pod_cidr6` (10.244.1.5 in
/// 10.244.1.0/24 is fd00:10:244:1::5 in fd00:10:244:1::/64). One
/// allocation serves both families. `None` if `ip` is outside `pod_cidr`
/// or the offset does not fit `pod_cidr6`.
pub fn pod_address6(pod_cidr: Ipv4Net, pod_cidr6: Ipv6Net, ip: Ipv4Addr) -> Option<Ipv6Addr> {
    if !pod_cidr.contains(&ip) {
        return None;
    }
    let offset = u128::from(u32::from(ip) - u32::from(pod_cidr.network()));
    let host_bits = 128 - u32::from(pod_cidr6.prefix_len());
    if host_bits < 128 && offset >> host_bits != 0 {
        return None;
    }
    Some(Ipv6Addr::from(u128::from(pod_cidr6.network()) + offset))
}

/// A remote node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's underlay address: its VTEP.
    pub node_ip: IpAddr,
    /// The peer's pod CIDR, routed to it.
    pub pod_cidr: Ipv4Net,
    /// The peer's IPv6 pod CIDR, routed to it, on a dual-stack cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<Ipv6Net>,
    /// The MAC inner frames are addressed to. Podswitch peers derive it
    /// from their node IP (leave it out); a kernel VXLAN peer (Flannel)
    /// needs its vxlan device's MAC here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<MacAddr>,
}

/// What a port is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortRole {
    /// A pod's interface.
    Pod,
    /// The underlay interface carrying the tunnel.
    Uplink,
    /// The TAP device into the node's own network stack.
    Host,
    /// The node-side TAP device through which encapsulated super-frames
    /// go to the node's kernel, which cuts them for the underlay (UDP
    /// tunnel segmentation offload).
    Tunnel,
}

/// How a pod port is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortKind {
    /// An existing interface (the host end of a pod's veth), read and
    /// written through AF_XDP.
    #[default]
    Afxdp,
    /// A TAP device read and written with a virtio-net header and
    /// offloads (TCP super-frames, partial checksums): the pod's own, in
    /// its namespace (`netns` and `ifname`, made by the CNI plugin), or
    /// one the daemon creates in the node's namespace.
    Tap,
    /// The host end of a pod's veth, read and written through a packet
    /// socket with a virtio-net header: the pod keeps its offloads, and
    /// TCP crosses as super-frames as with a TAP device.
    Packet,
    /// A UDP socket of the node's: the tunnel port where TAP devices lack
    /// UDP tunnel GSO (`tunnel_offload`); never a pod's.
    Socket,
}

/// A pod port to add.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// Interface name in the node's namespace (created, for a TAP).
    pub name: String,
    /// The pod's address: routed to this port, and the only source it may use.
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address on a dual-stack node: routed to this port,
    /// and with its link-local address the only IPv6 source it may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    /// The pod's MAC: frames to the pod carry it, and the only source it may use.
    pub mac: MacAddr,
    /// AF_XDP on an existing interface (default) or a new TAP device.
    #[serde(default)]
    pub kind: PortKind,
    /// Who the port belongs to (the CNI puts the container id here), so
    /// attachments can be checked and garbage-collected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// For a TAP port: the pod's network namespace (a path such as
    /// `/var/run/netns/pod1`) holding the TAP device `ifname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// For a TAP port in `netns`: the device's name there (`eth0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
}

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The node's network parameters: pod CIDR, gateway, MTU, …
    Info,
    /// Every port with its mode and counters.
    Ports,
    /// Add a pod port.
    PortAdd(PortSpec),
    /// Remove a pod port.
    PortDel {
        /// Its interface name.
        name: String,
    },
    /// Every peer with its next-hop state.
    Peers,
    /// Add (or replace) a peer.
    PeerAdd(PeerConfig),
    /// Remove a peer.
    PeerDel {
        /// Its node IP.
        node_ip: IpAddr,
    },
    /// The whole FIB.
    Routes,
    /// Route a prefix to the host port.
    RouteAdd {
        /// The prefix.
        prefix: Ipv4Net,
    },
    /// Remove a host route added with `route_add` or configured.
    RouteDel {
        /// The prefix.
        prefix: Ipv4Net,
    },
    /// Counters: ports, workers, frames.
    Stats,
    /// What the switch would do with a packet, stage by stage, without
    /// sending it.
    Trace(TraceSpec),
    /// Stream a port's received and sent frames: the answer is one
    /// response line, then (if it succeeded) a pcapng stream until the
    /// count is reached or the client hangs up.
    Capture(CaptureSpec),
    /// The switch's Service table: every Service port with its endpoints
    /// and their connections (`service_translation = "switch"`).
    Services,
    /// Replace the Services given through the control socket (the other
    /// sources' stay).
    ServicesSet {
        /// The whole set.
        services: Vec<Service>,
    },
    /// The NetworkPolicies in force: per local pod, the policies that
    /// select it, and what each policy denied.
    Policy,
    /// Replace the namespaces, pods and policies given through the
    /// control socket (the other sources' stay).
    PolicySet {
        /// The whole set.
        cluster: Cluster,
    },
}

/// The switch's NetworkPolicy enforcement (`policy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// Each source and how much it gave.
    pub sources: Vec<PolicySourceStatus>,
    /// Connections the policy stage tracks (their replies pass).
    pub connections: u64,
    /// This node's pods the sources name, and the policies selecting them.
    pub pods: Vec<PodPolicyStatus>,
    /// Every policy in force and the packets it denied since the switch
    /// started.
    pub policies: Vec<PolicyCounter>,
}

/// What one source gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySourceStatus {
    /// `control`, `file` or `kubernetes`.
    pub source: String,
    /// Namespaces listed.
    pub namespaces: usize,
    /// Pods listed (on any node).
    pub pods: usize,
    /// Policies listed.
    pub policies: usize,
}

/// One local pod and the policies selecting it; an empty list: nothing
/// restricts that direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPolicyStatus {
    /// `namespace/name`.
    pub pod: String,
    /// Its address.
    pub address: Ipv4Addr,
    /// The policies (`namespace/name`) restricting traffic to it.
    pub ingress: Vec<String>,
    /// The policies restricting traffic from it.
    pub egress: Vec<String>,
}

/// One policy and what it denied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCounter {
    /// `namespace/name`.
    pub policy: String,
    /// The source that gave it.
    pub source: String,
    /// Packets denied to or from the pods it selects (each denied packet
    /// counts for every policy selecting its pod in that direction).
    pub denied: u64,
}

/// One Service port in the switch's table (`services`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePortStatus {
    /// The Service's `namespace/name`.
    pub service: String,
    /// Where it came from: `control`, `file`, `kubernetes`.
    pub source: String,
    /// The ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// The protocol.
    pub protocol: ServiceProtocol,
    /// The port on the ClusterIP.
    pub port: u16,
    /// The port on every node's address, for a NodePort Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// The Service's external addresses, served on the same port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<Ipv4Addr>,
    /// The endpoints new connections to the ClusterIP go to.
    pub endpoints: Vec<EndpointStatus>,
}

/// One endpoint of a Service port and its open connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// The pod's address.
    pub address: Ipv4Addr,
    /// Its port.
    pub port: u16,
    /// Connections in the connection table to it (for any Service).
    pub connections: u64,
}

/// What to capture (`capture`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureSpec {
    /// The port (interface name, as `ports` lists it).
    pub port: String,
    /// Stop after this many frames (every frame until the client hangs
    /// up when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Only frames with this IPv4 address as source or destination, in
    /// the outer header or, for a tunnel packet, the inner one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Ipv4Addr>,
    /// Only frames with this TCP or UDP port as source or destination,
    /// likewise outer or inner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l4_port: Option<u16>,
}

/// Transport protocol of a traced packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceProtocol {
    /// UDP (the default).
    #[default]
    Udp,
    /// TCP (a SYN).
    Tcp,
    /// ICMP (an echo request).
    Icmp,
}

/// A packet to trace (`trace`): described, or given as raw bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceSpec {
    /// The port it arrives on (interface name, as `ports` lists it).
    pub in_port: String,
    /// IPv4 source; the port's own address when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<Ipv4Addr>,
    /// IPv4 destination (needed unless `hex` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<Ipv4Addr>,
    /// Transport protocol.
    #[serde(default)]
    pub protocol: TraceProtocol,
    /// UDP or TCP source port (default 40000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    /// UDP or TCP destination port (default 80).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// Ethernet source; the port's own MAC when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_mac: Option<MacAddr>,
    /// IPv4 TTL (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u8>,
    /// The whole frame, Ethernet header on, in hex (spaces and colons
    /// allowed); the description fields are then ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
}

/// One stage of a trace and what happened there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceStage {
    /// `parse`, `anti_spoofing`, `fib_lookup`, `policy`, `encapsulation`,
    /// `output`.
    pub stage: String,
    /// What it decided, in words.
    pub outcome: String,
}

/// The outer header an encapsulated packet would carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceOuter {
    /// Ethernet source (the uplink's MAC).
    pub src_mac: MacAddr,
    /// Ethernet destination (the underlay next hop's MAC).
    pub dst_mac: MacAddr,
    /// This node's VTEP.
    pub src_ip: IpAddr,
    /// The peer's VTEP.
    pub dst_ip: IpAddr,
    /// UDP source port (the inner flow's hash).
    pub src_port: u16,
    /// UDP destination port (the tunnel's).
    pub dst_port: u16,
    /// VXLAN or Geneve network identifier.
    pub vni: u32,
}

/// What the switch would do with a traced packet (`trace`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceReport {
    /// Every stage in order; those after a drop say `not reached`.
    pub stages: Vec<TraceStage>,
    /// `deliver` (to a local port), `tunnel` (to a peer) or `drop`.
    pub verdict: String,
    /// The drop reason's stable name, for a drop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
    /// The port it would leave by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_port: Option<String>,
    /// The peer's node IP, for a packet to a peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<IpAddr>,
    /// The outer header, for a packet to a peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outer: Option<TraceOuter>,
    /// The frame that was traced, in hex.
    pub frame: String,
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// What it returned, when it worked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Why not, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// A success carrying `result`.
    pub fn success(result: impl Serialize) -> Response {
        match serde_json::to_value(result) {
            Ok(value) => Response {
                ok: true,
                result: Some(value),
                error: None,
            },
            Err(e) => Response::failure(format!("cannot encode the result: {e}")),
        }
    }

    /// A refusal, with what to do about it.
    pub fn failure(error: impl Into<String>) -> Response {
        Response {
            ok: false,
            result: None,
            error: Some(error.into()),
        }
    }
}

/// The node's network parameters (`info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// The node's underlay address (VTEP).
    pub node_ip: IpAddr,
    /// The node's pod CIDR.
    pub pod_cidr: Ipv4Net,
    /// The pods' gateway.
    pub gateway: Ipv4Addr,
    /// The node's IPv6 pod CIDR on a dual-stack node (the pods' IPv6
    /// gateway is [`POD_GATEWAY6`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<Ipv6Net>,
    /// The MTU to give pod interfaces.
    pub pod_mtu: u32,
    /// The `gso_max_size` to give TAP pod interfaces, so that their
    /// super-frames fit a 64 KB outer packet once encapsulated (0: leave
    /// the kernel's default).
    #[serde(default)]
    pub pod_gso_max_size: u32,
    /// Whether the daemon can attach packet ports, the host ends of
    /// offloaded veth pods (Linux 6.6 and later: tcx); the CNI plugin's
    /// default pod interface follows it. Absent from an older daemon's
    /// answer: false.
    #[serde(default)]
    pub packet_ports: bool,
    /// The router MAC: the gateway's, and the VTEP MAC kernel peers need.
    pub router_mac: MacAddr,
    /// VXLAN or Geneve.
    pub encap: Encap,
    /// The overlay's VNI.
    pub vni: u32,
    /// The tunnel's UDP port.
    pub udp_port: u16,
    /// The uplink interface.
    pub uplink: String,
    /// The host port, if any.
    pub host_port: Option<String>,
    /// Adaptive or busy polling.
    pub poll_mode: PollMode,
    /// Adaptive polling's spin window: microseconds a worker keeps
    /// polling after its last packet.
    #[serde(default)]
    pub spin_us: u32,
    /// Buffer frames (4 KiB each) in the switch's buffer area.
    #[serde(default)]
    pub frame_count: u32,
    /// Pod sockets the buffer frames are planned for.
    #[serde(default)]
    pub max_pods: u32,
    /// The node-side TAP device that hands encapsulated super-frames to
    /// the kernel for segmentation, if the switch uses one.
    #[serde(default)]
    pub tunnel_port: Option<String>,
    /// The daemon's version.
    pub version: String,
    /// Where the peers come from, and whether it is reachable.
    #[serde(default)]
    pub membership: MembershipReport,
}

/// The membership source as the daemon last saw it (`info`, `peers`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipReport {
    /// `static` (the file and `peer add`) or `etcd`.
    pub source: String,
    /// Seconds since the Unix epoch since which the source has not
    /// answered; `None` while it answers (and always for `static`).
    #[serde(default)]
    pub unreachable_since: Option<u64>,
    /// The last error, while unreachable or misconfigured.
    #[serde(default)]
    pub error: Option<String>,
}

/// One port (`ports`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatus {
    /// Port index.
    pub id: u16,
    /// Interface name.
    pub name: String,
    /// Pod, uplink or host.
    pub role: PortRole,
    /// `afxdp` or `tap`.
    pub kind: PortKind,
    /// XDP attach mode for AF_XDP ports: `native` or `generic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_mode: Option<String>,
    /// `zero-copy` or `copy` for AF_XDP ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_mode: Option<String>,
    /// RX queues with a socket bound.
    pub queues: u32,
    /// The worker polling it.
    pub worker: usize,
    /// A pod's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// A dual-stack pod's IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    /// The pod's MAC, or the host port's kernel-side MAC.
    pub mac: MacAddr,
    /// Who added it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Its counters.
    pub counters: PortReport,
}

/// One peer (`peers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's VTEP.
    pub node_ip: IpAddr,
    /// Its pod CIDR.
    pub pod_cidr: Ipv4Net,
    /// Its IPv6 pod CIDR, on a dual-stack cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<Ipv6Net>,
    /// The MAC inner frames are addressed to.
    pub vtep_mac: MacAddr,
    /// The underlay neighbour packets to it go through.
    pub next_hop: Option<IpAddr>,
    /// That neighbour's MAC, once resolved.
    pub next_hop_mac: Option<MacAddr>,
}

/// One FIB entry (`routes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    /// The prefix, IPv4 or IPv6.
    pub prefix: IpNet,
    /// `pod <port>`, `peer <node ip>` or `host`.
    pub target: String,
}

/// Frame accounting (`stats`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameReport {
    /// Frames the switch owns.
    pub total: u64,
    /// On the free list.
    pub free: u64,
    /// Given to the kernel for receiving.
    pub fill: u64,
    /// Received, waiting on RX rings.
    pub rx: u64,
    /// Held by workers.
    pub in_flight: u64,
    /// On TX rings.
    pub tx: u64,
    /// Sent, waiting on completion rings.
    pub completion: u64,
    /// Between workers.
    pub queued: u64,
    /// Moves that did not start where the frame was (0 unless broken).
    pub violations: u64,
    /// Whether moves are checked (`check_frames`).
    pub checked: bool,
}

impl FrameReport {
    /// Split a census using the ring levels the workers last saw.
    pub fn new(
        census: Census,
        rx: u64,
        completion: u64,
        violations: u64,
        checked: bool,
    ) -> FrameReport {
        let rx = rx.min(census.fill_or_rx);
        let completion = completion.min(census.tx_or_completion);
        FrameReport {
            total: census.total(),
            free: census.free,
            fill: census.fill_or_rx - rx,
            rx,
            in_flight: census.in_flight,
            tx: census.tx_or_completion - completion,
            completion,
            queued: census.queued,
            violations,
            checked,
        }
    }
}

/// Counters (`stats`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Per port, by name.
    pub ports: std::collections::BTreeMap<String, PortReport>,
    /// Per worker.
    pub workers: Vec<WorkerReport>,
    /// Where the frames are.
    pub frames: FrameReport,
    /// The uplink XDP program's verdicts: tunnel packets redirected to the
    /// switch, other packets passed to the kernel.
    pub uplink_redirected: u64,
    /// See `uplink_redirected`.
    pub uplink_passed: u64,
    /// Tunnel packets carrying TCP that the XDP program passed to the
    /// node's kernel, which hands them to the tunnel port merged by GRO
    /// (`tunnel_receive`).
    #[serde(default)]
    pub uplink_to_kernel: u64,
    /// The switch's Service translation, when on
    /// (`service_translation = "switch"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<ServiceCounters>,
}

/// The Service stage's counters (its drops are counted per port, by
/// reason: `service_no_endpoints`, `conntrack_full`, `conntrack_clash`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCounters {
    /// Connections translated since the switch started.
    pub connections_translated: u64,
    /// Connections in the connection table now.
    pub connections_active: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_ipv6_address_mirrors_its_ipv4_offset() {
        let (v4, v6): (Ipv4Net, Ipv6Net) = (
            "10.244.1.0/24".parse().unwrap(),
            "fd00:10:244:1::/64".parse().unwrap(),
        );
        let at = |ip: &str| pod_address6(v4, v6, ip.parse().unwrap());
        assert_eq!(at("10.244.1.5"), Some("fd00:10:244:1::5".parse().unwrap()));
        assert_eq!(
            at("10.244.1.255"),
            Some("fd00:10:244:1::ff".parse().unwrap())
        );
        assert_eq!(at("10.244.2.5"), None);
        let narrow: Ipv6Net = "fd00::/124".parse().unwrap();
        assert_eq!(
            pod_address6(v4, narrow, "10.244.1.15".parse().unwrap()),
            Some("fd00::f".parse().unwrap())
        );
        assert_eq!(
            pod_address6(v4, narrow, "10.244.1.16".parse().unwrap()),
            None
        );
    }

    #[test]
    fn requests_read_as_documented() {
        let r: Request = serde_json::from_str(
            r#"{"op":"port_add","name":"veth1","ip":"10.244.1.5","mac":"0a:58:0a:f4:01:05"}"#,
        )
        .unwrap();
        let Request::PortAdd(spec) = r else { panic!() };
        assert_eq!(spec.kind, PortKind::Afxdp);
        assert_eq!(spec.ip, Ipv4Addr::new(10, 244, 1, 5));

        let r: Request = serde_json::from_str(
            r#"{"op":"peer_add","node_ip":"10.1.0.12","pod_cidr":"10.244.2.0/24"}"#,
        )
        .unwrap();
        assert!(matches!(r, Request::PeerAdd(_)));
        let r: Request = serde_json::from_str(
            r#"{"op":"services_set","services":[{"name":"default/web","cluster_ip":"10.96.0.10",
               "ports":[{"protocol":"tcp","port":80,"endpoints":[{"address":"10.244.1.5","port":8080}]}]}]}"#,
        )
        .unwrap();
        let Request::ServicesSet { services } = r else {
            panic!()
        };
        assert_eq!(services[0].ports[0].endpoints[0].port, 8080);
        for op in ["info", "ports", "peers", "routes", "stats", "services"] {
            serde_json::from_str::<Request>(&format!(r#"{{"op":"{op}"}}"#)).unwrap();
        }
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let cases = [
            (r#"{"op":"explode"}"#, "explode"),
            (r#"{"name":"x"}"#, "op"),
            (
                r#"{"op":"port_add","name":"v","ip":"10.244.1.500","mac":"0a:58:0a:f4:01:05"}"#,
                "IP",
            ),
            (
                r#"{"op":"port_add","name":"v","ip":"10.244.1.5","mac":"nope"}"#,
                "MAC",
            ),
            (
                r#"{"op":"port_add","name":"v","ip":"10.244.1.5","mac":"0a:58:0a:f4:01:05","colour":1}"#,
                "colour",
            ),
            (r#"{"op":"peer_del"}"#, "node_ip"),
        ];
        for (text, needle) in cases {
            let err = serde_json::from_str::<Request>(text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn frame_report_splits_rings() {
        let census = Census {
            free: 10,
            fill_or_rx: 20,
            in_flight: 1,
            tx_or_completion: 5,
            queued: 0,
        };
        let r = FrameReport::new(census, 4, 2, 0, true);
        assert_eq!(
            (r.fill, r.rx, r.tx, r.completion, r.total),
            (16, 4, 3, 2, 36)
        );
        let r = FrameReport::new(census, 99, 99, 0, true);
        assert_eq!((r.fill, r.rx, r.tx, r.completion), (0, 20, 0, 5));
    }

    #[test]
    fn responses() {
        let ok = serde_json::to_string(&Response::success(1)).unwrap();
        assert_eq!(ok, r#"{"ok":true,"result":1}"#);
        let err = serde_json::to_string(&Response::failure("no")).unwrap();
        assert_eq!(err, r#"{"ok":false,"error":"no"}"#);
    }
}
