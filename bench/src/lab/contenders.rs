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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use podswitch_lab::Lab;
use podswitch_lab::cluster::{
    KernelNode, PeerEntry, Pod, SwitchNode, SwitchOptions, UPLINK, connect_underlay,
    kernel_vtep_mac, ping,
};
use podswitch_lab::cni::CniPlugin;
use podswitch_lab::flat_pods::direct_veth_pods;
use podswitch_lab::ovs_node::OvsNode;
use serde_json::{Value, json};

/// Underlay MTU of every testbed; pods get 1450 (VXLAN or Geneve over
/// IPv4 costs 50 bytes).
pub const UNDERLAY_MTU: u32 = 1500;
/// The pods' MTU.
pub const POD_MTU: u32 = UNDERLAY_MTU - 50;

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
        /// host end, frame at a time, offloads off) or "tap" (TAP device
        /// with virtio-net headers, 64 KB TCP segments to and from the
        /// pod's kernel).
        pod_interface: &'static str,
    },
    /// Flannel-style bridge + vxlan on both nodes.
    Kernel {
        /// Whether the pods keep TX checksum offload, TSO and GSO on.
        pod_offloads: bool,
        /// Whether the underlay veth keeps them on too, so 64 KB
        /// segments cross it whole — what a NIC with TSO and GRO gives
        /// the kernel path — rather than being cut to wire-size frames in
        /// software before it.
        underlay_offloads: bool,
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
}

impl Contender {
    /// One line saying what the path is.
    pub fn description(&self) -> String {
        let path = self.path_description();
        match self.placement {
            Placement::AcrossNodes => path,
            Placement::SameNode => format!(
                "{path} — both pods on node 1 (TCP only): the sender and node 1's switch on \
                 CPU 0, the receiving application on CPU 1"
            ),
        }
    }

    fn path_description(&self) -> String {
        match self.kind {
            Kind::Podswitch {
                encap,
                poll_mode,
                pod_interface: "tap",
            } => format!(
                "podswitch on both nodes, {encap} overlay, {poll_mode} polling, one worker per node \
                 (node 1 on CPU 0, node 2 on CPU 1), native XDP uplink; pods made by podswitch-cni \
                 as TAP devices with virtio-net offloads on (64 KB TCP segments from and to the \
                 pods' kernels, cut to MTU frames toward the uplink and coalesced again for a \
                 receiving TAP pod)"
            ),
            Kind::Podswitch {
                encap, poll_mode, ..
            } => format!(
                "podswitch on both nodes, {encap} overlay, {poll_mode} polling, one worker per node \
                 (node 1 on CPU 0, node 2 on CPU 1), native XDP; pods made by podswitch-cni on \
                 veth (AF_XDP), offloads off"
            ),
            Kind::Kernel {
                pod_offloads: true,
                underlay_offloads: true,
            } => "Flannel-style: bridge cni0 + vxlan0 in each node, pods on veth with offloads \
                on, and the underlay veth too, so 64 KB segments cross it whole as a NIC with \
                TSO/GRO lets them (what Flannel users get)"
                .into(),
            Kind::Kernel {
                pod_offloads: true,
                underlay_offloads: false,
            } => "the same with the underlay's offloads off: the pods' 64 KB segments are cut to \
                wire-size frames in software before the underlay, and cross it one by one"
                .into(),
            Kind::Kernel {
                pod_offloads: false,
                ..
            } => "Flannel-style, pods' and underlay's TX checksum/TSO/GSO off: every frame \
                wire-size from the pod on (like for like with a frame-at-a-time switch)"
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
}

/// Every contender, in the order they run and are reported.
pub const ALL: [Contender; 13] = [
    Contender {
        key: "podswitch-vxlan-adaptive",
        name: "podswitch VXLAN adaptive",
        kind: Kind::Podswitch {
            encap: "vxlan",
            poll_mode: "adaptive",
            pod_interface: "veth",
        },
        placement: Placement::AcrossNodes,
    },
    Contender {
        key: "podswitch-vxlan-tap-adaptive",
        name: "podswitch VXLAN TAP adaptive",
        kind: Kind::Podswitch {
            encap: "vxlan",
            poll_mode: "adaptive",
            pod_interface: "tap",
        },
        placement: Placement::AcrossNodes,
    },
    Contender {
        key: "podswitch-vxlan-busy",
        name: "podswitch VXLAN busy",
        kind: Kind::Podswitch {
            encap: "vxlan",
            poll_mode: "busy",
            pod_interface: "veth",
        },
        placement: Placement::AcrossNodes,
    },
    Contender {
        key: "podswitch-geneve-adaptive",
        name: "podswitch Geneve adaptive",
        kind: Kind::Podswitch {
            encap: "geneve",
            poll_mode: "adaptive",
            pod_interface: "veth",
        },
        placement: Placement::AcrossNodes,
    },
    Contender {
        key: "podswitch-geneve-busy",
        name: "podswitch Geneve busy",
        kind: Kind::Podswitch {
            encap: "geneve",
            poll_mode: "busy",
            pod_interface: "veth",
        },
        placement: Placement::AcrossNodes,
    },
    Contender {
        key: KERNEL_BASELINE,
        name: "kernel, offloads on",
        kind: Kind::Kernel {
            pod_offloads: true,
            underlay_offloads: true,
        },
        placement: Placement::AcrossNodes,
    },
    Contender {
        key: "kernel-wire-frames",
        name: "kernel, offloads on, wire-size underlay",
        kind: Kind::Kernel {
            pod_offloads: true,
            underlay_offloads: false,
        },
        placement: Placement::AcrossNodes,
    },
    Contender {
        key: "kernel-offloads-off",
        name: "kernel, offloads off",
        kind: Kind::Kernel {
            pod_offloads: false,
            underlay_offloads: false,
        },
        placement: Placement::AcrossNodes,
    },
    Contender {
        key: "ovs-afxdp",
        name: "Open vSwitch AF_XDP",
        kind: Kind::Ovs,
        placement: Placement::AcrossNodes,
    },
    Contender {
        key: "veth",
        name: "direct veth",
        kind: Kind::Veth,
        placement: Placement::AcrossNodes,
    },
    Contender {
        key: KERNEL_SAME_NODE,
        name: "one node: kernel, offloads on",
        kind: Kind::Kernel {
            pod_offloads: true,
            underlay_offloads: true,
        },
        placement: Placement::SameNode,
    },
    Contender {
        key: "podswitch-tap-same-node",
        name: "one node: podswitch TAP adaptive",
        kind: Kind::Podswitch {
            encap: "vxlan",
            poll_mode: "adaptive",
            pod_interface: "tap",
        },
        placement: Placement::SameNode,
    },
    Contender {
        key: "podswitch-veth-same-node",
        name: "one node: podswitch veth adaptive",
        kind: Kind::Podswitch {
            encap: "vxlan",
            poll_mode: "adaptive",
            pod_interface: "veth",
        },
        placement: Placement::SameNode,
    },
];

/// The contender every ratio is taken against: the kernel path as Flannel
/// users have it.
pub const KERNEL_BASELINE: &str = "kernel-offloads-on";

/// The same-node contenders' baseline: two pods on one Flannel-style
/// bridge, offloads on.
pub const KERNEL_SAME_NODE: &str = "kernel-same-node";

/// The contenders of `--quick`: one of each kind (the Geneve and busy
/// variants run the same code as these), TAP pods across nodes, and TAP
/// pods and the kernel on one node (TCP only, a few seconds).
pub const QUICK: [&str; 7] = [
    "podswitch-vxlan-adaptive",
    "podswitch-vxlan-tap-adaptive",
    KERNEL_BASELINE,
    "ovs-afxdp",
    "veth",
    KERNEL_SAME_NODE,
    "podswitch-tap-same-node",
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
    /// The CPU both nodes' workers are pinned to, when the command line
    /// names one; node 1's to CPU 0 and node 2's to CPU 1 otherwise.
    pub worker_cpu: Option<usize>,
    /// The daemons' `tunnel_offload`, when the command line sets it.
    pub tunnel_offload: Option<String>,
}

/// The nodes of a testbed, whose processes stop when dropped.
enum Nodes {
    Podswitch(Box<[SwitchNode; 2]>),
    Ovs(Box<[OvsNode; 2]>),
    Kernel,
    None,
}

/// A built testbed. Dropping it stops its processes, then deletes its
/// namespaces, then its files.
pub struct Testbed {
    nodes: Nodes,
    /// The sending pod (node 1) and the receiving pod (node 2).
    pub pods: [Pod; 2],
    _lab: Lab,
    _files: ScratchDir,
}

impl Testbed {
    /// Build `contender`'s testbed.
    pub fn build(contender: &Contender, binaries: &Binaries) -> Result<Testbed> {
        let mut lab = Lab::new("bl")?;
        let files = ScratchDir(std::env::temp_dir().join(lab.prefix().trim_end_matches('-')));
        std::fs::create_dir_all(&files.0)?;
        let same_node = contender.placement == Placement::SameNode;
        let (nodes, pods) = match contender.kind {
            Kind::Podswitch {
                encap,
                poll_mode,
                pod_interface,
            } => podswitch_nodes(
                &mut lab,
                &files.0,
                binaries,
                PodswitchSetup {
                    encap,
                    poll_mode,
                    pod_interface,
                    same_node,
                },
            )?,
            Kind::Kernel {
                pod_offloads,
                underlay_offloads,
            } => kernel_nodes(&mut lab, pod_offloads, underlay_offloads, same_node)?,
            Kind::Ovs => ovs_nodes(&mut lab, &files.0)?,
            Kind::Veth => (Nodes::None, direct_veth_pods(&mut lab, POD_MTU)?),
        };
        let testbed = Testbed {
            nodes,
            pods,
            _lab: lab,
            _files: files,
        };
        testbed.wait_until_connected()?;
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

    /// The PIDs of the switch processes (none for the kernel paths).
    pub fn switch_pids(&self) -> Vec<u32> {
        match &self.nodes {
            Nodes::Podswitch(nodes) => nodes.iter().filter_map(SwitchNode::pid).collect(),
            Nodes::Ovs(nodes) => nodes.iter().map(OvsNode::pid).collect(),
            Nodes::Kernel | Nodes::None => Vec::new(),
        }
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
            Nodes::Kernel | Nodes::None => String::new(),
        }
    }
}

/// How a podswitch testbed is set up.
struct PodswitchSetup {
    encap: &'static str,
    poll_mode: &'static str,
    pod_interface: &'static str,
    /// Both pods on node 1 rather than one per node.
    same_node: bool,
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
        xdp_mode: "auto".into(),
        cni: Some(binaries.cni.clone()),
        pod_interface: Some(setup.pod_interface.into()),
        underlay_mtu: UNDERLAY_MTU,
        spin_us: binaries.spin_us,
        worker_cpu: binaries.worker_cpu,
        tunnel_offload: binaries.tunnel_offload.clone(),
        ..SwitchOptions::default()
    };
    let n1 = lab.netns("n1")?;
    let n2 = lab.netns("n2")?;
    connect_underlay(&n1, 1, &n2, 2, options.underlay_mtu)?;
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

/// Two Flannel-style kernel nodes peered over a veth underlay, one pod
/// each (or both on node 1, on its bridge), the pods' and the underlay's
/// offloads on or off.
fn kernel_nodes(
    lab: &mut Lab,
    pod_offloads: bool,
    underlay_offloads: bool,
    same_node: bool,
) -> Result<(Nodes, [Pod; 2])> {
    let n1 = lab.netns("n1")?;
    let n2 = lab.netns("n2")?;
    connect_underlay(&n1, 1, &n2, 2, UNDERLAY_MTU)?;
    if underlay_offloads {
        for ns in [&n1, &n2] {
            ns.run(
                "ethtool",
                &["-K", UPLINK, "tx", "on", "tso", "on", "gso", "on"],
            )?;
        }
    }
    let k1 = KernelNode::create(n1, 1, UNDERLAY_MTU)?;
    let k2 = KernelNode::create(n2, 2, UNDERLAY_MTU)?;
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
    Ok((Nodes::Kernel, pods))
}

/// Two Open vSwitch nodes with a VXLAN port to each other, one pod each.
fn ovs_nodes(lab: &mut Lab, dir: &Path) -> Result<(Nodes, [Pod; 2])> {
    let n1 = lab.netns("n1")?;
    let n2 = lab.netns("n2")?;
    connect_underlay(&n1, 1, &n2, 2, UNDERLAY_MTU)?;
    let o1 = OvsNode::start(n1, 1, dir, 0)?;
    let o2 = OvsNode::start(n2, 2, dir, 1)?;
    o1.add_peer(2)?;
    o2.add_peer(1)?;
    let pods = [o1.add_pod(lab, 2, POD_MTU)?, o2.add_pod(lab, 2, POD_MTU)?];
    Ok((Nodes::Ovs(Box::new([o1, o2])), pods))
}

/// A directory removed, with everything in it, when dropped.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
    }
}
