//! The contenders and their testbeds: each is two pods, one per node
//! (the direct veth pair has no nodes) or, for the same-node contenders,
//! both on node 1, in namespaces of one [`Lab`], built the same way every
//! run and torn down — processes by PID first, then namespaces — when the
//! testbed is dropped.
//!
//! Node 1 and its pod belong to CPU 0, node 2 and its pod to CPU 1: the
//! podswitch workers and Open vSwitch's polling threads are pinned there,
//! and the measurements pin senders and receivers likewise. On one node
//! the sender and node 1's switch keep CPU 0 and the receiving
//! application keeps CPU 1, for every contender alike.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use podswitch_control::service::{Endpoint, Service, ServicePort};
use podswitch_lab::cluster::{
    KernelNode, PeerEntry, Pod, SwitchNode, SwitchOptions, UPLINK, connect_underlay,
    kernel_vtep_mac, ping,
};
use podswitch_lab::cni::CniPlugin;
use podswitch_lab::flat_pods::direct_veth_pods;
use podswitch_lab::kube_proxy::{self, KubeProxyMode};
use podswitch_lab::ovs_node::OvsNode;
use podswitch_lab::{Lab, Netns};
use serde_json::{Value, json};

use super::markdown::counters_line;
use super::measure::SERVICE_PORTS;

/// The standard underlay MTU: pods get 1450 (VXLAN or Geneve over IPv4
/// costs 50 bytes).
pub const MTU: u32 = 1500;
/// The jumbo contenders' underlay MTU: pods get 8950.
pub const JUMBO_MTU: u32 = 9000;
/// Outer IPv4, UDP and VXLAN (or option-less Geneve) headers and the inner
/// Ethernet header: what the pods' MTU leaves of the underlay's.
const TUNNEL_OVERHEAD: u32 = 50;

/// How an underlay carries TCP segments: the two models the kernel path
/// has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Segments {
    /// The nodes' underlay veths keep TX checksum offload, TSO and GSO
    /// on, so a 64 KB segment may cross whole, as over a NIC with TSO and
    /// GRO. Into a podswitch node too: on a veth uplink with TSO on the
    /// daemon runs its XDP program in generic mode. (veth turns TSO off on
    /// the peer of a device with a native XDP program — `ethtool -k`:
    /// "tcp-segmentation-offload: off [requested on]" — as Open vSwitch's
    /// nodes have: there the sending kernel cuts segments before the veth,
    /// leaving their checksums for the "NIC" to finish.)
    Whole,
    /// Offloads off: segments are cut to wire-size frames in software
    /// before the underlay, every checksum complete.
    WireSize,
}

/// A contender's underlay: its model and MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Underlay {
    /// How it carries TCP segments.
    pub segments: Segments,
    /// Its MTU.
    pub mtu: u32,
}

/// MTU 1500, offloads off: what podswitch nodes ran on before.
const WIRE_SIZE: Underlay = Underlay::new(Segments::WireSize, MTU);
/// MTU 1500, offloads on: what the kernel baseline runs on.
const WHOLE: Underlay = Underlay::new(Segments::Whole, MTU);
const JUMBO_WIRE_SIZE: Underlay = Underlay::new(Segments::WireSize, JUMBO_MTU);
const JUMBO_WHOLE: Underlay = Underlay::new(Segments::Whole, JUMBO_MTU);

impl Underlay {
    const fn new(segments: Segments, mtu: u32) -> Underlay {
        Underlay { segments, mtu }
    }

    /// The pods' MTU over this underlay.
    pub const fn pod_mtu(&self) -> u32 {
        self.mtu - TUNNEL_OVERHEAD
    }

    /// Its model and MTU in a few words, for tables.
    pub fn label(&self) -> String {
        let model = match self.segments {
            Segments::Whole => "segments whole",
            Segments::WireSize => "wire-size",
        };
        format!("{model}, MTU {}", self.mtu)
    }

    /// What it is, for the description of a contender whose nodes (with
    /// an XDP program on their uplinks, in native or generic mode, or
    /// none) it joins.
    fn description(&self, uplinks: Uplinks) -> String {
        let mtu = self.mtu;
        match self.segments {
            Segments::WireSize => format!(
                "underlay MTU {mtu}, offloads off: segments cut to wire-size frames before it"
            ),
            Segments::Whole if uplinks == Uplinks::GenericXdp => format!(
                "underlay MTU {mtu} with the nodes' TX checksum, TSO and GSO on, as the kernel \
                 baseline has it; on a veth uplink with TSO on the daemons (xdp_mode = \"auto\") \
                 run the uplink's XDP program in generic mode, which leaves the peer its TSO, so \
                 64 KB segments cross whole as a NIC with TSO/GRO lets them"
            ),
            Segments::Whole if uplinks == Uplinks::NativeXdp => format!(
                "underlay MTU {mtu} with the nodes' TX checksum, TSO and GSO on, as the kernel \
                 baseline has it; segments still cannot cross whole into a node whose uplink has \
                 an XDP program (veth turns TSO off on its peer), so node 1's kernel cuts them \
                 before the veth, leaving their checksums for the \"NIC\" to finish, which veth \
                 hands across unfinished"
            ),
            Segments::Whole => format!(
                "underlay MTU {mtu} with TX checksum, TSO and GSO on, so 64 KB segments cross it \
                 whole as a NIC with TSO/GRO lets them"
            ),
        }
    }
}

/// What the nodes' uplinks run, as far as the underlay model cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Uplinks {
    /// No XDP program (kernel nodes).
    Plain,
    /// An XDP program in the driver's (veth's) own mode.
    NativeXdp,
    /// An XDP program in the kernel's generic mode.
    GenericXdp,
}

/// What kind of path a contender is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// podswitch on both nodes, pods made by podswitch-cni.
    Podswitch {
        /// "vxlan" or "geneve".
        encap: &'static str,
        /// "adaptive" or "busy".
        poll_mode: &'static str,
        /// How the CNI plugin attaches the pods: "veth" (AF_XDP on the
        /// host end, frame at a time, offloads off), "veth-offload" (a
        /// packet socket with virtio-net headers on the host end) or
        /// "tap" (TAP device with virtio-net headers); the last two carry
        /// 64 KB TCP segments to and from the pod's kernel.
        pod_interface: &'static str,
        /// The daemons' `tunnel_offload`: how TAP pods' super-frames
        /// reach the peer ("auto": whole, through the tunnel TAP device;
        /// "udp-segment": cut by the switch, sent through a UDP socket).
        tunnel_offload: &'static str,
    },
    /// Flannel-style bridge + vxlan on both nodes.
    Kernel {
        /// Whether the pods keep TX checksum offload, TSO and GSO on.
        pod_offloads: bool,
    },
    /// Open vSwitch's userspace datapath with AF_XDP ports and VXLAN.
    Ovs,
    /// Two pods on one veth pair, offloads off.
    Veth,
}

/// Where a contender's two pods are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// One pod on each node: every measurement.
    AcrossNodes,
    /// Both pods on node 1: TCP only.
    SameNode,
}

/// How the sending pod addresses the receiving one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// By its own address: every contender but the ClusterIP ones.
    PodAddress,
    /// Through a Service's ClusterIP ([`CLUSTER_IP`]) whose one endpoint
    /// it is, translated by kube-proxy's iptables rules on the sender's
    /// node (where kube-proxy's DNAT happens) — with podswitch, by way
    /// of the node's stack and the daemon's masquerade rule.
    KubeProxy,
    /// Through the same ClusterIP, translated by podswitch itself
    /// (`service_translation = "switch"`, the Service given to node 1's
    /// daemon over its control socket): no trip through the node's
    /// stack, the client's address kept.
    Switch,
}

/// Rules on the policy contender's receiving pod besides the one that
/// lets the sender in.
pub const POLICY_RULES: usize = 100;

/// The ClusterIP of the ClusterIP contenders' Service.
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// One contender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contender {
    /// Short name for `--only`, file names and the JSON.
    pub key: &'static str,
    /// Name in tables and plots.
    pub name: &'static str,
    /// Its path.
    pub kind: Kind,
    /// Where its pods are.
    pub placement: Placement,
    /// Its underlay (for the bare veth pair, which has none: the pods'
    /// MTU).
    pub underlay: Underlay,
    /// Measured with TCP alone (the same-node contenders, and those that
    /// differ from another only where bulk TCP feels it: the underlay
    /// model, the MTU).
    pub tcp_only: bool,
    /// How the sender addresses the receiver.
    pub via: Via,
    /// NetworkPolicy in force on both nodes ([`Testbed::enforce_policy`]):
    /// the receiving pod admits only the sender, the sender may reach
    /// only the receiver.
    pub policy: bool,
}

impl Contender {
    /// One line saying what the path is.
    pub fn description(&self) -> String {
        let path = self.path_description();
        let path = match self.kind {
            // One node, no underlay; the bare veth pair has none either.
            _ if self.placement == Placement::SameNode => path,
            Kind::Veth => path,
            Kind::Podswitch { .. } if self.underlay.segments == Segments::Whole => {
                format!("{path}; {}", self.underlay.description(Uplinks::GenericXdp))
            }
            Kind::Podswitch { .. } | Kind::Ovs => {
                format!("{path}; {}", self.underlay.description(Uplinks::NativeXdp))
            }
            Kind::Kernel { .. } => format!("{path}; {}", self.underlay.description(Uplinks::Plain)),
        };
        let tcp = if self.tcp_only { " (TCP only)" } else { "" };
        let path = match (self.via, self.kind) {
            (Via::PodAddress, _) => path,
            (Via::KubeProxy, Kind::Podswitch { .. }) => format!(
                "{path}; the receiving pod reached through the ClusterIP {CLUSTER_IP}, which \
                 kube-proxy's iptables rules on node 1 translate: the switch hands the packets \
                 to node 1's stack, which DNATs them and routes them back through the switch \
                 (the daemon's masquerade rule lets the replies find their way back)"
            ),
            (Via::KubeProxy, _) => format!(
                "{path}; the receiving pod reached through the ClusterIP {CLUSTER_IP}, which \
                 kube-proxy's iptables rules on node 1 translate"
            ),
            (Via::Switch, _) => format!(
                "{path}; the receiving pod reached through the ClusterIP {CLUSTER_IP}, which node \
                 1's switch translates itself (service_translation = \"switch\", the Service \
                 given over its control socket): the node's stack stays out of the path and the \
                 receiver sees the client's own address"
            ),
        };
        let path = match self.policy {
            true => format!(
                "{path}; NetworkPolicy in force on both nodes: the receiving pod selected for \
                 ingress by a policy of {} rules that lets only the sender in, the sender selected \
                 for egress by one that lets it reach only the receiver, so every packet passes \
                 the policy stage of both nodes",
                POLICY_RULES + 1
            ),
            false => path,
        };
        match self.placement {
            Placement::AcrossNodes => format!("{path}{tcp}"),
            Placement::SameNode => format!(
                "{path} — both pods on node 1 (TCP only): the sender and node 1's switch on \
                 CPU 0, the receiving application on CPU 1"
            ),
        }
    }

    fn path_description(&self) -> String {
        // What `xdp_mode = "auto"` picks for the uplink: generic on a veth
        // with TSO on (the segments-whole underlay), native elsewhere.
        let xdp = match self.underlay.segments {
            Segments::Whole if self.placement != Placement::SameNode => "generic",
            _ => "native",
        };
        match self.kind {
            Kind::Podswitch {
                encap,
                poll_mode,
                pod_interface: "tap",
                tunnel_offload,
            } => {
                let to_peers = match tunnel_offload {
                    "udp-segment" => {
                        "cut by the switch and each one's datagrams sent with one UDP_SEGMENT \
                         send through a UDP socket, as on kernels before 6.17"
                    }
                    _ => {
                        "sent to peers whole through the node's tunnel port, whose kernel cuts them"
                    }
                };
                format!(
                    "podswitch on both nodes, {encap} overlay, {poll_mode} polling, one worker per \
                     node (node 1 on CPU 0, node 2 on CPU 1), {xdp} XDP uplink; pods made by \
                     podswitch-cni as TAP devices with virtio-net offloads on (64 KB TCP segments \
                     from and to the pods' kernels, {to_peers}, and coalesced again for a receiving \
                     TAP pod)"
                )
            }
            Kind::Podswitch {
                encap,
                poll_mode,
                pod_interface: "veth-offload",
                ..
            } => format!(
                "podswitch on both nodes, {encap} overlay, {poll_mode} polling, one worker per node \
                 (node 1 on CPU 0, node 2 on CPU 1), {xdp} XDP uplink; pods made by podswitch-cni \
                 on veth with offloads on, the host end read and written through a packet socket \
                 with virtio-net headers (64 KB TCP segments from and to the pods' kernels, sent \
                 to peers whole through the node's tunnel port, whose kernel cuts them, and \
                 coalesced again for a receiving pod)"
            ),
            Kind::Podswitch {
                encap, poll_mode, ..
            } => format!(
                "podswitch on both nodes, {encap} overlay, {poll_mode} polling, one worker per node \
                 (node 1 on CPU 0, node 2 on CPU 1), {xdp} XDP; pods made by podswitch-cni on \
                 veth (AF_XDP), offloads off"
            ),
            Kind::Kernel { pod_offloads: true } => "Flannel-style: bridge cni0 + vxlan0 in each \
                node, pods on veth with offloads on (what Flannel users get)"
                .into(),
            Kind::Kernel {
                pod_offloads: false,
            } => "Flannel-style, pods' TX checksum/TSO/GSO off: every frame wire-size from the \
                pod on (like for like with a frame-at-a-time switch)"
                .into(),
            Kind::Ovs => "Open vSwitch userspace datapath (netdev) in each node: afxdp ports in \
                native XDP mode, userspace VXLAN, NORMAL (MAC-learning) forwarding, one PMD thread \
                per node (node 1 on CPU 0, node 2 on CPU 1); pods on one flat /16, offloads off"
                .into(),
            Kind::Veth => "two pods on one veth pair, offloads off: no node, no overlay — the \
                ceiling of a frame-at-a-time path here"
                .into(),
        }
    }

    /// The kernel contender whose TCP figures this one's are held
    /// against: pods' offloads on, one pod per node, on this contender's
    /// underlay model and MTU. Only for the switches across nodes
    /// (podswitch, Open vSwitch): the same-node contenders have
    /// [`KERNEL_SAME_NODE`], the kernel contenders are the baselines.
    pub fn same_underlay_kernel(&self) -> Option<&'static Contender> {
        if !matches!(self.kind, Kind::Podswitch { .. } | Kind::Ovs)
            || self.placement != Placement::AcrossNodes
            || self.via != Via::PodAddress
            || self.policy
        {
            return None;
        }
        ALL.iter().find(|k| {
            k.kind == Kind::Kernel { pod_offloads: true }
                && k.placement == Placement::AcrossNodes
                && k.underlay == self.underlay
                && k.via == Via::PodAddress
        })
    }

    /// For a ClusterIP or a policy contender, the same path with the
    /// receiving pod addressed directly and no policy: what the Service
    /// hop or the policy stage costs is the difference.
    pub fn plain_twin(&self) -> Option<&'static Contender> {
        if self.via == Via::PodAddress && !self.policy {
            return None;
        }
        ALL.iter().find(|c| {
            c.via == Via::PodAddress
                && !c.policy
                && c.kind == self.kind
                && c.placement == self.placement
                && c.underlay == self.underlay
                && c.tcp_only == self.tcp_only
        })
    }
}

/// podswitch's VXLAN path with adaptive polling and veth pods: the kind
/// most contenders share.
const VXLAN_VETH: Kind = Kind::Podswitch {
    encap: "vxlan",
    poll_mode: "adaptive",
    pod_interface: "veth",
    tunnel_offload: "auto",
};

/// The same with TAP pods.
const VXLAN_TAP: Kind = Kind::Podswitch {
    encap: "vxlan",
    poll_mode: "adaptive",
    pod_interface: "tap",
    tunnel_offload: "auto",
};

/// The same with offloaded veth pods (a packet socket on the host end).
const VXLAN_VETH_OFFLOAD: Kind = Kind::Podswitch {
    encap: "vxlan",
    poll_mode: "adaptive",
    pod_interface: "veth-offload",
    tunnel_offload: "auto",
};

/// TAP pods whose super-frames the switch cuts and sends through a
/// `UDP_SEGMENT` socket: what a kernel before 6.17 gets.
const VXLAN_TAP_UDP_SEGMENT: Kind = Kind::Podswitch {
    encap: "vxlan",
    poll_mode: "adaptive",
    pod_interface: "tap",
    tunnel_offload: "udp-segment",
};

/// Every contender, in the order they run and are reported: first those
/// measured with everything at MTU 1500 (the CNI plugin's default pod,
/// an offloaded veth, at their head), then those measured with TCP
/// alone — TAP pods through the UDP_SEGMENT socket, podswitch on the underlay model the kernel baseline has, the
/// jumbo ones (the kernel on both models, podswitch's veth, offloaded
/// veth and TAP pods on both), and the same-node ones.
pub const ALL: [Contender; 31] = [
    Contender {
        key: "podswitch-vxlan-veth-offload-adaptive",
        name: "podswitch VXLAN offloaded veth adaptive (the default pod)",
        kind: VXLAN_VETH_OFFLOAD,
        placement: Placement::AcrossNodes,
        underlay: WIRE_SIZE,
        tcp_only: false,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "podswitch-vxlan-adaptive",
        name: "podswitch VXLAN AF_XDP veth adaptive",
        kind: VXLAN_VETH,
        placement: Placement::AcrossNodes,
        underlay: WIRE_SIZE,
        tcp_only: false,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "podswitch-vxlan-tap-adaptive",
        name: "podswitch VXLAN TAP adaptive",
        kind: VXLAN_TAP,
        placement: Placement::AcrossNodes,
        underlay: WIRE_SIZE,
        tcp_only: false,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "podswitch-vxlan-busy",
        name: "podswitch VXLAN AF_XDP veth busy",
        kind: Kind::Podswitch {
            encap: "vxlan",
            poll_mode: "busy",
            pod_interface: "veth",
            tunnel_offload: "auto",
        },
        placement: Placement::AcrossNodes,
        underlay: WIRE_SIZE,
        tcp_only: false,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "podswitch-geneve-adaptive",
        name: "podswitch Geneve AF_XDP veth adaptive",
        kind: Kind::Podswitch {
            encap: "geneve",
            poll_mode: "adaptive",
            pod_interface: "veth",
            tunnel_offload: "auto",
        },
        placement: Placement::AcrossNodes,
        underlay: WIRE_SIZE,
        tcp_only: false,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "podswitch-geneve-busy",
        name: "podswitch Geneve AF_XDP veth busy",
        kind: Kind::Podswitch {
            encap: "geneve",
            poll_mode: "busy",
            pod_interface: "veth",
            tunnel_offload: "auto",
        },
        placement: Placement::AcrossNodes,
        underlay: WIRE_SIZE,
        tcp_only: false,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: KERNEL_BASELINE,
        name: "kernel, offloads on",
        kind: Kind::Kernel { pod_offloads: true },
        placement: Placement::AcrossNodes,
        underlay: WHOLE,
        tcp_only: false,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "kernel-wire-frames",
        name: "kernel, offloads on, wire-size underlay",
        kind: Kind::Kernel { pod_offloads: true },
        placement: Placement::AcrossNodes,
        underlay: WIRE_SIZE,
        tcp_only: false,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "kernel-offloads-off",
        name: "kernel, offloads off",
        kind: Kind::Kernel {
            pod_offloads: false,
        },
        placement: Placement::AcrossNodes,
        underlay: WIRE_SIZE,
        tcp_only: false,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "ovs-afxdp",
        name: "Open vSwitch AF_XDP",
        kind: Kind::Ovs,
        placement: Placement::AcrossNodes,
        underlay: WIRE_SIZE,
        tcp_only: false,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "veth",
        name: "direct veth",
        kind: Kind::Veth,
        placement: Placement::AcrossNodes,
        underlay: WIRE_SIZE,
        tcp_only: false,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "podswitch-vxlan-tap-udp-segment",
        name: "podswitch VXLAN TAP, UDP_SEGMENT socket",
        kind: VXLAN_TAP_UDP_SEGMENT,
        placement: Placement::AcrossNodes,
        underlay: WIRE_SIZE,
        tcp_only: true,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "podswitch-vxlan-adaptive-whole",
        name: "podswitch VXLAN AF_XDP veth adaptive, underlay offloads on, generic XDP",
        kind: VXLAN_VETH,
        placement: Placement::AcrossNodes,
        underlay: WHOLE,
        tcp_only: true,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "podswitch-vxlan-tap-adaptive-whole",
        name: "podswitch VXLAN TAP adaptive, underlay offloads on, generic XDP",
        kind: VXLAN_TAP,
        placement: Placement::AcrossNodes,
        underlay: WHOLE,
        tcp_only: true,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "podswitch-vxlan-veth-offload-adaptive-whole",
        name: "podswitch VXLAN offloaded veth adaptive, underlay offloads on, generic XDP",
        kind: VXLAN_VETH_OFFLOAD,
        placement: Placement::AcrossNodes,
        underlay: WHOLE,
        tcp_only: true,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "kernel-offloads-on-jumbo",
        name: "kernel, offloads on, MTU 9000",
        kind: Kind::Kernel { pod_offloads: true },
        placement: Placement::AcrossNodes,
        underlay: JUMBO_WHOLE,
        tcp_only: true,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "kernel-wire-frames-jumbo",
        name: "kernel, offloads on, wire-size underlay, MTU 9000",
        kind: Kind::Kernel { pod_offloads: true },
        placement: Placement::AcrossNodes,
        underlay: JUMBO_WIRE_SIZE,
        tcp_only: true,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "podswitch-vxlan-adaptive-jumbo",
        name: "podswitch VXLAN AF_XDP veth adaptive, MTU 9000",
        kind: VXLAN_VETH,
        placement: Placement::AcrossNodes,
        underlay: JUMBO_WIRE_SIZE,
        tcp_only: true,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "podswitch-vxlan-tap-adaptive-jumbo",
        name: "podswitch VXLAN TAP adaptive, MTU 9000",
        kind: VXLAN_TAP,
        placement: Placement::AcrossNodes,
        underlay: JUMBO_WIRE_SIZE,
        tcp_only: true,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "podswitch-vxlan-veth-offload-adaptive-jumbo",
        name: "podswitch VXLAN offloaded veth adaptive, MTU 9000",
        kind: VXLAN_VETH_OFFLOAD,
        placement: Placement::AcrossNodes,
        underlay: JUMBO_WIRE_SIZE,
        tcp_only: true,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "podswitch-vxlan-adaptive-jumbo-whole",
        name: "podswitch VXLAN AF_XDP veth adaptive, MTU 9000, underlay offloads on, generic XDP",
        kind: VXLAN_VETH,
        placement: Placement::AcrossNodes,
        underlay: JUMBO_WHOLE,
        tcp_only: true,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "podswitch-vxlan-tap-adaptive-jumbo-whole",
        name: "podswitch VXLAN TAP adaptive, MTU 9000, underlay offloads on, generic XDP",
        kind: VXLAN_TAP,
        placement: Placement::AcrossNodes,
        underlay: JUMBO_WHOLE,
        tcp_only: true,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "podswitch-vxlan-veth-offload-adaptive-jumbo-whole",
        name: "podswitch VXLAN offloaded veth adaptive, MTU 9000, underlay offloads on, generic XDP",
        kind: VXLAN_VETH_OFFLOAD,
        placement: Placement::AcrossNodes,
        underlay: JUMBO_WHOLE,
        tcp_only: true,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: KERNEL_SAME_NODE,
        name: "one node: kernel, offloads on",
        kind: Kind::Kernel { pod_offloads: true },
        placement: Placement::SameNode,
        underlay: WHOLE,
        tcp_only: true,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "podswitch-tap-same-node",
        name: "one node: podswitch TAP adaptive",
        kind: VXLAN_TAP,
        placement: Placement::SameNode,
        underlay: WIRE_SIZE,
        tcp_only: true,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "podswitch-veth-offload-same-node",
        name: "one node: podswitch offloaded veth adaptive",
        kind: VXLAN_VETH_OFFLOAD,
        placement: Placement::SameNode,
        underlay: WIRE_SIZE,
        tcp_only: true,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: "podswitch-veth-same-node",
        name: "one node: podswitch AF_XDP veth adaptive",
        kind: VXLAN_VETH,
        placement: Placement::SameNode,
        underlay: WIRE_SIZE,
        tcp_only: true,
        via: Via::PodAddress,
        policy: false,
    },
    Contender {
        key: KERNEL_CLUSTER_IP,
        name: "kernel, offloads on, through a ClusterIP",
        kind: Kind::Kernel { pod_offloads: true },
        placement: Placement::AcrossNodes,
        underlay: WHOLE,
        tcp_only: false,
        via: Via::KubeProxy,
        policy: false,
    },
    Contender {
        key: "podswitch-tap-cluster-ip-kube-proxy",
        name: "podswitch VXLAN TAP adaptive, through a ClusterIP (kube-proxy)",
        kind: VXLAN_TAP,
        placement: Placement::AcrossNodes,
        underlay: WIRE_SIZE,
        tcp_only: false,
        via: Via::KubeProxy,
        policy: false,
    },
    Contender {
        key: "podswitch-tap-cluster-ip",
        name: "podswitch VXLAN TAP adaptive, through a ClusterIP (the switch's translation)",
        kind: VXLAN_TAP,
        placement: Placement::AcrossNodes,
        underlay: WIRE_SIZE,
        tcp_only: false,
        via: Via::Switch,
        policy: false,
    },
    Contender {
        key: "podswitch-vxlan-adaptive-policy",
        name: "podswitch VXLAN AF_XDP veth adaptive, with NetworkPolicy",
        kind: VXLAN_VETH,
        placement: Placement::AcrossNodes,
        underlay: WIRE_SIZE,
        tcp_only: false,
        via: Via::PodAddress,
        policy: true,
    },
];

/// The baseline, which the headline's ratios are taken against
/// for every contender: the kernel path as Flannel users have it (MTU
/// 1500, segments whole across the underlay).
pub const KERNEL_BASELINE: &str = "kernel-offloads-on";

/// The same-node contenders' baseline: two pods on one Flannel-style
/// bridge, offloads on.
pub const KERNEL_SAME_NODE: &str = "kernel-same-node";

/// The ClusterIP contenders' baseline: the kernel path through
/// kube-proxy's rules.
pub const KERNEL_CLUSTER_IP: &str = "kernel-cluster-ip";

/// The contenders of `--quick`: one of each kind (the Geneve and busy
/// variants run the same code as these), TAP pods across nodes, TAP pods
/// and the kernel on one node, and TAP pods beside the kernel on a jumbo
/// underlay (TCP only, a few seconds each), and the ClusterIP path of
/// the kernel and of TAP pods (through kube-proxy, and translated by the
/// switch), and veth pods with NetworkPolicy; offloaded veth pods across
/// nodes too.
pub const QUICK: [&str; 14] = [
    "podswitch-vxlan-adaptive",
    "podswitch-vxlan-tap-adaptive",
    "podswitch-vxlan-veth-offload-adaptive",
    KERNEL_BASELINE,
    "ovs-afxdp",
    "veth",
    KERNEL_SAME_NODE,
    "podswitch-tap-same-node",
    "kernel-wire-frames-jumbo",
    "podswitch-vxlan-tap-adaptive-jumbo",
    KERNEL_CLUSTER_IP,
    "podswitch-tap-cluster-ip-kube-proxy",
    "podswitch-tap-cluster-ip",
    "podswitch-vxlan-adaptive-policy",
];

/// What building a podswitch testbed needs.
pub struct Binaries {
    /// The `podswitch` daemon and CLI.
    pub podswitch: PathBuf,
    /// The `podswitch-cni` plugin.
    pub cni: CniPlugin,
    /// The daemons' `spin_us` (adaptive polling's spin window), when the
    /// command line sets one; the daemon's default otherwise.
    pub spin_us: Option<u32>,
    /// The daemons' `overload_nice`, when the command line sets one.
    pub overload_nice: Option<i32>,
    /// The daemons' `sleep_on_any_cpu`, when the command line sets it.
    pub sleep_on_any_cpu: Option<bool>,
    /// The CPU both nodes' workers are pinned to, when the command line
    /// names one; node 1's to CPU 0 and node 2's to CPU 1 otherwise.
    pub worker_cpu: Option<usize>,
    /// The daemons' `tunnel_offload`, when the command line sets it.
    pub tunnel_offload: Option<String>,
    /// The daemons' `tunnel_receive`, when the command line sets it.
    pub tunnel_receive: Option<String>,
    /// The daemons' `xdp_mode`, when the command line sets it.
    pub xdp_mode: Option<String>,
}

/// The nodes of a testbed, whose processes stop when dropped.
enum Nodes {
    Podswitch(Box<[SwitchNode; 2]>),
    Ovs(Box<[OvsNode; 2]>),
    /// Node 1's namespace.
    Kernel(Netns),
    None,
}

/// A built testbed. Dropping it stops its processes, then deletes its
/// namespaces, then its files (the lab's scratch directory).
pub struct Testbed {
    nodes: Nodes,
    /// The sending pod (node 1) and the receiving pod (node 2).
    pub pods: [Pod; 2],
    /// The address the sending pod sends to: the receiving pod's, or
    /// the ClusterIP it is reached through.
    pub server: Ipv4Addr,
    lab: Lab,
}

impl Testbed {
    /// Build `contender`'s testbed.
    pub fn build(contender: &Contender, binaries: &Binaries) -> Result<Testbed> {
        let mut lab = Lab::new("bl")?;
        let files = lab.scratch_dir()?;
        let same_node = contender.placement == Placement::SameNode;
        let underlay = contender.underlay;
        let (nodes, pods) = match contender.kind {
            Kind::Podswitch {
                encap,
                poll_mode,
                pod_interface,
                tunnel_offload,
            } => podswitch_nodes(
                &mut lab,
                &files,
                binaries,
                PodswitchSetup {
                    encap,
                    poll_mode,
                    pod_interface,
                    tunnel_offload,
                    same_node,
                    underlay,
                    translate_services: contender.via == Via::Switch,
                },
            )?,
            Kind::Kernel { pod_offloads } => {
                kernel_nodes(&mut lab, underlay, pod_offloads, same_node)?
            }
            Kind::Ovs => ovs_nodes(&mut lab, &files, underlay)?,
            Kind::Veth => (Nodes::None, direct_veth_pods(&mut lab, underlay.pod_mtu())?),
        };
        let mut testbed = Testbed {
            server: pods[1].ip,
            nodes,
            pods,
            lab,
        };
        let connected = testbed
            .wait_until_connected()
            .and_then(|()| match contender.via {
                Via::PodAddress => Ok(()),
                via => testbed.through_cluster_ip(via),
            })
            .and_then(|()| match contender.policy {
                true => testbed.enforce_policy(),
                false => Ok(()),
            });
        if let Err(e) = connected {
            // Where the frames went, for the report.
            let seen = match testbed.switch_counters() {
                Ok(Some(c)) => format!(
                    " (podswitch's counters: node 1: {}; node 2: {})",
                    counters_line(&c["node1"]),
                    counters_line(&c["node2"])
                ),
                _ => String::new(),
            };
            bail!("{e:#}{seen}");
        }
        Ok(testbed)
    }

    /// Ping both ways until the path answers (neighbours resolved,
    /// MAC tables learned), for at most 10 s.
    fn wait_until_connected(&self) -> Result<()> {
        let [a, b] = &self.pods;
        let deadline = Instant::now() + Duration::from_secs(10);
        while ping(&a.ns, b.ip, 1)? == 0 || ping(&b.ns, a.ip, 1)? == 0 {
            if Instant::now() > deadline {
                bail!("pod {} cannot reach pod {} after 10 s", a.ip, b.ip);
            }
        }
        Ok(())
    }

    /// Put the receiving pod behind [`CLUSTER_IP`]: a Service with every
    /// port the measurements use, on node 1, where the sender's packets
    /// are translated — as kube-proxy's iptables rules, or given to the
    /// switch.
    fn through_cluster_ip(&mut self, via: Via) -> Result<()> {
        let receiver = self.pods[1].ip;
        let ports = SERVICE_PORTS
            .iter()
            .map(|&(protocol, port)| {
                let endpoint = Endpoint {
                    node: Some("node2".into()),
                    ..Endpoint::ready(receiver, port)
                };
                ServicePort {
                    name: format!("{}-{port}", protocol.name()),
                    ..ServicePort::new(protocol, port, vec![endpoint])
                }
            })
            .collect();
        let service = Service::new("default/receiver", CLUSTER_IP, ports);
        match (via, &self.nodes) {
            (Via::Switch, Nodes::Podswitch(nodes)) => {
                let file = self.lab.scratch_dir()?.join("services.json");
                std::fs::write(&file, serde_json::to_string(&[service])?)?;
                nodes[0].cli(&["services", "set", &file.to_string_lossy()])?;
            }
            (Via::KubeProxy, Nodes::Podswitch(nodes)) => kube_proxy::write_rules(
                &self.lab,
                &nodes[0].ns,
                KubeProxyMode::Iptables,
                &[service],
            )?,
            (Via::KubeProxy, Nodes::Kernel(node1)) => {
                kube_proxy::write_rules(&self.lab, node1, KubeProxyMode::Iptables, &[service])?
            }
            _ => bail!("no node in this testbed translates Services {via:?}"),
        }
        self.server = CLUSTER_IP;
        Ok(())
    }

    /// Put NetworkPolicy in force on both nodes, as a source hands every
    /// node the same set: [`POLICY_RULES`] ipBlock rules that match
    /// nothing here, then the rule that lets the sender in, on the
    /// receiving pod's ingress, and the sender's egress to the receiver
    /// alone. Both stages work: egress on node 1, ingress on node 2.
    fn enforce_policy(&mut self) -> Result<()> {
        let Nodes::Podswitch(nodes) = &self.nodes else {
            bail!("only podswitch enforces NetworkPolicy in this lab");
        };
        let [sender, receiver] = &self.pods;
        let app = |name: &str| json!({"match_labels": {"app": name}});
        let mut ingress: Vec<serde_json::Value> = (0..POLICY_RULES)
            .map(|i| json!({"peers": [{"ip_block": {"cidr": format!("172.{}.{}.0/24", 16 + i / 256, i % 256)}}]}))
            .collect();
        ingress.push(json!({"peers": [{"pod_selector": app("sender")}]}));
        let cluster = json!({
            "pods": [
                {"namespace": "bench", "name": "sender", "labels": {"app": "sender"}, "ip": sender.ip},
                {"namespace": "bench", "name": "receiver", "labels": {"app": "receiver"}, "ip": receiver.ip},
            ],
            "policies": [
                {"namespace": "bench", "name": "receiver", "pod_selector": app("receiver"),
                 "ingress": ingress},
                {"namespace": "bench", "name": "sender", "pod_selector": app("sender"),
                 "policy_types": ["Egress"],
                 "egress": [{"peers": [{"pod_selector": app("receiver")}]}]},
            ],
        });
        let file = self.lab.scratch_dir()?.join("policy.json");
        std::fs::write(&file, serde_json::to_string(&cluster)?)?;
        for node in nodes.iter() {
            node.cli(&["policy", "set", &file.to_string_lossy()])?;
        }
        Ok(())
    }

    /// The PIDs of the switch processes (none for the kernel paths).
    pub fn switch_pids(&self) -> Vec<u32> {
        match &self.nodes {
            Nodes::Podswitch(nodes) => nodes.iter().filter_map(SwitchNode::pid).collect(),
            Nodes::Ovs(nodes) => nodes.iter().map(OvsNode::pid).collect(),
            Nodes::Kernel(_) | Nodes::None => Vec::new(),
        }
    }

    /// What `ethtool -k` says of TCP segmentation offload on node 1's
    /// uplink — "on", or "off" (as veth turns it beside node 2's XDP
    /// program, whatever was asked); `None` without nodes.
    pub fn uplink_tso(&self) -> Result<Option<String>> {
        let node1 = match &self.nodes {
            Nodes::Podswitch(nodes) => &nodes[0].ns,
            Nodes::Ovs(nodes) => &nodes[0].ns,
            Nodes::Kernel(ns) => ns,
            Nodes::None => return Ok(None),
        };
        let features = node1.run("ethtool", &["-k", UPLINK])?;
        tso_state(&features)
            .map(Some)
            .with_context(|| format!("no tcp-segmentation-offload in `ethtool -k {UPLINK}`"))
    }

    /// podswitch's counters on both nodes (`podswitch stats`), keyed
    /// `node1` and `node2`; `None` for other contenders.
    pub fn switch_counters(&self) -> Result<Option<Value>> {
        let Nodes::Podswitch(nodes) = &self.nodes else {
            return Ok(None);
        };
        let [n1, n2] = nodes.as_ref();
        Ok(Some(json!({
            "node1": n1.cli_json(&["stats"])?,
            "node2": n2.cli_json(&["stats"])?,
        })))
    }

    /// What the switches logged, for an error report.
    pub fn logs(&self) -> String {
        match &self.nodes {
            Nodes::Podswitch(nodes) => nodes
                .iter()
                .map(|n| format!("node {}:\n{}", n.index, n.log()))
                .collect::<Vec<_>>()
                .join("\n"),
            Nodes::Ovs(nodes) => nodes
                .iter()
                .map(|n| format!("node {}:\n{}", n.index, n.log_tail(20)))
                .collect::<Vec<_>>()
                .join("\n"),
            Nodes::Kernel(_) | Nodes::None => String::new(),
        }
    }
}

/// How a podswitch testbed is set up.
struct PodswitchSetup {
    encap: &'static str,
    poll_mode: &'static str,
    pod_interface: &'static str,
    /// `tunnel_offload`, unless the command line sets it for all.
    tunnel_offload: &'static str,
    /// Both pods on node 1 rather than one per node.
    same_node: bool,
    underlay: Underlay,
    /// The switches translate Services themselves.
    translate_services: bool,
}

/// Two podswitch nodes peered over a veth underlay, each with one pod
/// made by the CNI plugin (or node 1 with both), the daemons running
/// their production configuration.
fn podswitch_nodes(
    lab: &mut Lab,
    dir: &Path,
    binaries: &Binaries,
    setup: PodswitchSetup,
) -> Result<(Nodes, [Pod; 2])> {
    let options = SwitchOptions {
        encap: setup.encap.into(),
        poll_mode: setup.poll_mode.into(),
        xdp_mode: binaries.xdp_mode.clone().unwrap_or_else(|| "auto".into()),
        cni: Some(binaries.cni.clone()),
        pod_interface: Some(setup.pod_interface.into()),
        underlay_mtu: setup.underlay.mtu,
        spin_us: binaries.spin_us,
        overload_nice: binaries.overload_nice,
        sleep_on_any_cpu: binaries.sleep_on_any_cpu,
        worker_cpu: binaries.worker_cpu,
        tunnel_offload: binaries
            .tunnel_offload
            .clone()
            .or_else(|| (setup.tunnel_offload != "auto").then(|| setup.tunnel_offload.into())),
        tunnel_receive: binaries.tunnel_receive.clone(),
        membership: setup
            .translate_services
            .then(|| "service_translation = \"switch\"\n".to_string()),
        ..SwitchOptions::default()
    };
    let [n1, n2] = underlay_nodes(lab, setup.underlay)?;
    let peer = |index| {
        [PeerEntry {
            index,
            vtep_mac: None,
        }]
    };
    let mut node1 = SwitchNode::start(n1, 1, &binaries.podswitch, dir, &options, &peer(2))?;
    let mut node2 = SwitchNode::start(n2, 2, &binaries.podswitch, dir, &options, &peer(1))?;
    for node in [&mut node1, &mut node2] {
        without_frame_checks(node)?;
    }
    let plugin = &binaries.cni;
    let pods = if setup.same_node {
        [
            node1.add_cni_pod(lab, plugin, 2)?,
            node1.add_cni_pod(lab, plugin, 3)?,
        ]
    } else {
        [
            node1.add_cni_pod(lab, plugin, 2)?,
            node2.add_cni_pod(lab, plugin, 2)?,
        ]
    };
    Ok((Nodes::Podswitch(Box::new([node1, node2])), pods))
}

/// Restart `node`'s daemon with `check_frames = false`, as a node runs in
/// production: the lab turns the per-move frame check on for its tests,
/// and it costs an atomic exchange per frame move.
fn without_frame_checks(node: &mut SwitchNode) -> Result<()> {
    let config = node
        .log_path()
        .with_file_name(format!("node{}.toml", node.index));
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("reading {}", config.display()))?;
    if !text.contains("check_frames = true") {
        return Ok(());
    }
    if !node.stop() {
        bail!("podswitch on node {} did not stop", node.index);
    }
    std::fs::write(
        &config,
        text.replace("check_frames = true", "check_frames = false"),
    )?;
    node.launch()
}

/// Node namespaces `n1` and `n2` joined by a veth underlay of
/// `underlay`'s MTU, with TX checksum offload, TSO and GSO on for
/// [`Segments::Whole`] (off otherwise).
fn underlay_nodes(lab: &mut Lab, underlay: Underlay) -> Result<[Netns; 2]> {
    let n1 = lab.netns("n1")?;
    let n2 = lab.netns("n2")?;
    connect_underlay(&n1, 1, &n2, 2, underlay.mtu)?;
    if underlay.segments == Segments::Whole {
        for ns in [&n1, &n2] {
            ns.run(
                "ethtool",
                &["-K", UPLINK, "tx", "on", "tso", "on", "gso", "on"],
            )?;
        }
    }
    Ok([n1, n2])
}

/// `tcp-segmentation-offload`'s state in `ethtool -k` output: "on",
/// "off", or with ethtool's note, e.g. "off [fixed]".
fn tso_state(features: &str) -> Option<String> {
    features.lines().find_map(|line| {
        let state = line.trim().strip_prefix("tcp-segmentation-offload:")?;
        Some(state.trim().to_string())
    })
}

/// Two Flannel-style kernel nodes peered over a veth underlay, one pod
/// each (or both on node 1, on its bridge), the pods' offloads on or off.
fn kernel_nodes(
    lab: &mut Lab,
    underlay: Underlay,
    pod_offloads: bool,
    same_node: bool,
) -> Result<(Nodes, [Pod; 2])> {
    let [n1, n2] = underlay_nodes(lab, underlay)?;
    let node1 = n1.clone();
    let k1 = KernelNode::create(n1, 1, underlay.mtu)?;
    let k2 = KernelNode::create(n2, 2, underlay.mtu)?;
    k1.add_peer(2, &kernel_vtep_mac(2))?;
    k2.add_peer(1, &kernel_vtep_mac(1))?;
    let pods = if same_node {
        [
            k1.add_pod(lab, 2, pod_offloads)?,
            k1.add_pod(lab, 3, pod_offloads)?,
        ]
    } else {
        [
            k1.add_pod(lab, 2, pod_offloads)?,
            k2.add_pod(lab, 2, pod_offloads)?,
        ]
    };
    Ok((Nodes::Kernel(node1), pods))
}

/// Two Open vSwitch nodes with a VXLAN port to each other, one pod each.
fn ovs_nodes(lab: &mut Lab, dir: &Path, underlay: Underlay) -> Result<(Nodes, [Pod; 2])> {
    let [n1, n2] = underlay_nodes(lab, underlay)?;
    let o1 = OvsNode::start(n1, 1, dir, 0)?;
    let o2 = OvsNode::start(n2, 2, dir, 1)?;
    o1.add_peer(2)?;
    o2.add_peer(1)?;
    let mtu = underlay.pod_mtu();
    let pods = [o1.add_pod(lab, 2, mtu)?, o2.add_pod(lab, 2, mtu)?];
    Ok((Nodes::Ovs(Box::new([o1, o2])), pods))
}

/// The contenders named in `only` (comma-separated keys), or `default`.
pub fn select(only: Option<&str>, default: &[&str]) -> Result<Vec<Contender>> {
    let keys: Vec<&str> = match only {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .collect(),
        None => default.to_vec(),
    };
    keys.iter()
        .map(|key| {
            ALL.iter()
                .find(|c| c.key == *key)
                .copied()
                .with_context(|| {
                    let known: Vec<&str> = ALL.iter().map(|c| c.key).collect();
                    format!("no contender {key:?}; there are {}", known.join(", "))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_by_key() {
        let all: Vec<&str> = ALL.iter().map(|c| c.key).collect();
        assert_eq!(select(None, &all).unwrap().len(), ALL.len());
        let quick = select(None, &QUICK).unwrap();
        assert_eq!(quick.len(), QUICK.len());
        // TAP pods across nodes and on one node, with the kernel there.
        assert!(quick.iter().any(|c| matches!(
            c.kind,
            Kind::Podswitch {
                pod_interface: "tap",
                ..
            }
        ) && c.placement == Placement::AcrossNodes));
        assert!(quick.iter().any(|c| c.key == KERNEL_SAME_NODE));
        // One of every kind.
        assert!(
            quick
                .iter()
                .any(|c| matches!(c.kind, Kind::Podswitch { .. }))
        );
        assert!(quick.iter().any(|c| c.kind == Kind::Ovs));
        assert!(quick.iter().any(|c| c.kind == Kind::Veth));
        assert!(quick.iter().any(|c| matches!(c.kind, Kind::Kernel { .. })));
        // A jumbo contender with its kernel, so a same-underlay ratio
        // comes out.
        let jumbo = quick
            .iter()
            .find(|c| c.underlay.mtu == JUMBO_MTU && matches!(c.kind, Kind::Podswitch { .. }))
            .unwrap();
        let kernel = jumbo.same_underlay_kernel().unwrap();
        assert!(quick.iter().any(|c| c.key == kernel.key));
        let some = select(Some("veth, ovs-afxdp"), &[]).unwrap();
        assert_eq!(some[0].key, "veth");
        assert_eq!(some[1].key, "ovs-afxdp");
        assert!(select(Some("nope"), &[]).is_err());
    }

    #[test]
    fn keys_are_unique_and_the_baseline_exists() {
        for (i, a) in ALL.iter().enumerate() {
            assert!(ALL[i + 1..].iter().all(|b| b.key != a.key));
        }
        assert!(ALL.iter().any(|c| c.key == KERNEL_BASELINE));
        assert!(
            ALL.iter()
                .any(|c| c.key == KERNEL_SAME_NODE && c.placement == Placement::SameNode)
        );
        let baseline = ALL.iter().find(|c| c.key == KERNEL_BASELINE).unwrap();
        assert_eq!(baseline.underlay, WHOLE);
        assert!(!baseline.tcp_only);
        // One node measures TCP alone.
        assert!(
            ALL.iter()
                .filter(|c| c.placement == Placement::SameNode)
                .all(|c| c.tcp_only)
        );
    }

    /// podswitch's veth and TAP pods, and the kernel with the pods'
    /// offloads on, each on both underlay models at MTU 1500 and 9000.
    #[test]
    fn throughput_kinds_run_on_every_underlay() {
        let kinds = [
            VXLAN_VETH,
            VXLAN_VETH_OFFLOAD,
            VXLAN_TAP,
            Kind::Kernel { pod_offloads: true },
        ];
        for kind in kinds {
            for underlay in [WIRE_SIZE, WHOLE, JUMBO_WIRE_SIZE, JUMBO_WHOLE] {
                let found: Vec<&Contender> = ALL
                    .iter()
                    .filter(|c| {
                        c.kind == kind
                            && c.underlay == underlay
                            && c.placement == Placement::AcrossNodes
                            && c.via == Via::PodAddress
                            && !c.policy
                    })
                    .collect();
                assert_eq!(found.len(), 1, "{kind:?} on {underlay:?}");
            }
        }
        // The jumbo ones name their MTU, and only they run at 9000.
        for c in ALL {
            assert_eq!(c.name.contains("MTU 9000"), c.underlay.mtu == JUMBO_MTU);
        }
        assert_eq!(JUMBO_WHOLE.pod_mtu(), 8950);
        assert_eq!(WIRE_SIZE.pod_mtu(), 1450);
    }

    #[test]
    fn switches_meet_the_kernel_on_their_own_underlay() {
        let kernel_of = |key: &str| {
            let c = select(Some(key), &[]).unwrap()[0];
            c.same_underlay_kernel().map(|k| k.key)
        };
        assert_eq!(
            kernel_of("podswitch-vxlan-tap-adaptive"),
            Some("kernel-wire-frames")
        );
        assert_eq!(kernel_of("ovs-afxdp"), Some("kernel-wire-frames"));
        assert_eq!(
            kernel_of("podswitch-vxlan-tap-adaptive-whole"),
            Some(KERNEL_BASELINE)
        );
        assert_eq!(
            kernel_of("podswitch-vxlan-adaptive-jumbo"),
            Some("kernel-wire-frames-jumbo")
        );
        assert_eq!(
            kernel_of("podswitch-vxlan-tap-adaptive-jumbo-whole"),
            Some("kernel-offloads-on-jumbo")
        );
        // The kernels are the baselines; the bare veth has no underlay;
        // one node has its own baseline.
        for key in [
            KERNEL_BASELINE,
            "kernel-offloads-off",
            "veth",
            "podswitch-tap-same-node",
        ] {
            assert_eq!(kernel_of(key), None, "{key}");
        }
        // Every podswitch contender across nodes has one, on its underlay
        // (the ClusterIP ones are held against the kernel's ClusterIP path).
        for c in ALL.iter().filter(|c| {
            matches!(c.kind, Kind::Podswitch { .. })
                && c.placement == Placement::AcrossNodes
                && c.via == Via::PodAddress
                && !c.policy
        }) {
            let k = c.same_underlay_kernel().unwrap();
            assert_eq!(k.underlay, c.underlay, "{}", c.key);
            assert_eq!(k.kind, Kind::Kernel { pod_offloads: true });
        }
    }

    #[test]
    fn cluster_ip_contenders_have_a_direct_twin_and_a_kernel() {
        let through: Vec<&Contender> = ALL.iter().filter(|c| c.via != Via::PodAddress).collect();
        assert!(through.iter().any(|c| c.key == KERNEL_CLUSTER_IP));
        for c in through {
            let twin = c.plain_twin().unwrap();
            assert_eq!(
                (twin.kind, twin.underlay),
                (c.kind, c.underlay),
                "{}",
                c.key
            );
            assert_eq!(twin.via, Via::PodAddress);
            assert!(c.same_underlay_kernel().is_none(), "{}", c.key);
            assert!(c.description().contains("ClusterIP"));
        }
        assert!(
            select(Some(KERNEL_BASELINE), &[]).unwrap()[0]
                .plain_twin()
                .is_none()
        );
    }

    #[test]
    fn the_policy_contender_is_held_against_the_same_path_without_policy() {
        let with: Vec<&Contender> = ALL.iter().filter(|c| c.policy).collect();
        assert!(!with.is_empty());
        for c in with {
            let twin = c.plain_twin().unwrap();
            assert_eq!(
                (twin.kind, twin.underlay, twin.policy),
                (c.kind, c.underlay, false)
            );
            assert!(c.same_underlay_kernel().is_none(), "{}", c.key);
            assert!(c.description().contains("NetworkPolicy"));
            assert!(QUICK.contains(&c.key) && QUICK.contains(&twin.key));
        }
    }

    #[test]
    fn podswitch_contenders_on_the_segments_whole_underlay_say_generic_xdp() {
        for c in ALL {
            let whole = matches!(c.kind, Kind::Podswitch { .. })
                && c.underlay.segments == Segments::Whole
                && c.placement == Placement::AcrossNodes;
            assert_eq!(c.name.contains("generic XDP"), whole, "{}", c.key);
            assert_eq!(c.description().contains("generic mode"), whole, "{}", c.key);
            if matches!(c.kind, Kind::Podswitch { .. }) {
                assert_eq!(c.description().contains("native XDP"), !whole, "{}", c.key);
            }
        }
    }

    #[test]
    fn podswitch_contenders_say_how_their_pods_are_attached() {
        for c in ALL {
            let Kind::Podswitch { pod_interface, .. } = c.kind else {
                continue;
            };
            let description = c.description();
            let says = |what: &str| description.contains(what);
            let (afxdp, packet_socket, tap) = (
                says("veth (AF_XDP)"),
                says("packet socket"),
                says("TAP devices"),
            );
            let expected = match pod_interface {
                "veth" => (true, false, false),
                "veth-offload" => (false, true, false),
                "tap" => (false, false, true),
                other => panic!("{}: unknown pod interface {other}", c.key),
            };
            assert_eq!((afxdp, packet_socket, tap), expected, "{}", c.key);
        }
    }

    #[test]
    fn reads_tso_state() {
        // What a podswitch node's uplink says: veth turned TSO off.
        let features = "Features for ul0:\nrx-checksumming: on\ntx-checksumming: on\n\
                        tcp-segmentation-offload: off\n\ttx-tcp-segmentation: off [fixed]\n";
        assert_eq!(tso_state(features).as_deref(), Some("off"));
        assert_eq!(
            tso_state("tcp-segmentation-offload: off [requested on]\n").as_deref(),
            Some("off [requested on]")
        );
        assert_eq!(
            tso_state("tcp-segmentation-offload: on\n").as_deref(),
            Some("on")
        );
        assert_eq!(tso_state("Features for ul0:\n"), None);
    }
}
