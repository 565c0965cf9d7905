//! Offloaded veth pods (`"podInterface": "veth-offload"`) beside plain
//! veth pods and TAP pods, through the real path: the plugin makes the
//! pods as a runtime would, the daemons read the veths' host ends through
//! packet sockets with virtio-net headers (a tc program keeping the node's
//! stack off them), and ping and iperf3 run between the kinds — offloaded
//! to offloaded on one node (super-frames passed whole), to a plain veth
//! pod (cut) and back (coalesced), across nodes (whole through the tunnel
//! port), to a TAP pod — then a daemon killed and restarted, and every pod
//! deleted. Needs root.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::{
    Nodes, delete_cni_pods, nodes_with, offload, plugin, pod_port_kinds, port_of, serial, tcp,
};
use podswitch_lab::Netns;
use podswitch_lab::cluster::{Pod, SwitchNode, SwitchOptions, expect_iperf, expect_pings, ping};
use podswitch_lab::traffic::IperfClient;
use podswitch_lab::tunnel_capture::checksum_errors;

/// The pods of each node, by address: .2 and .3 offloaded veths, .4 a
/// plain veth, .5 a TAP device.
const KINDS: [&str; 4] = ["veth-offload", "veth-offload", "veth", "tap"];

/// Two podswitch nodes with a pod of every [`KINDS`] each.
struct Testbed {
    nodes: Nodes,
    pods: [[Pod; 4]; 2],
}

fn testbed(tag: &str, options: &SwitchOptions) -> Result<Testbed> {
    let mut nodes = nodes_with(tag, 2, options)?;
    let plugin = plugin();
    let mut pods = Vec::new();
    for node in &nodes.switches {
        let mut made = Vec::new();
        for (n, kind) in (2..).zip(KINDS) {
            made.push(node.add_cni_pod_as(&mut nodes.lab, &plugin, n, kind)?);
        }
        pods.push(<[Pod; 4]>::try_from(made).map_err(|_| anyhow::anyhow!("four pods"))?);
    }
    let [one, two] = <[[Pod; 4]; 2]>::try_from(pods).map_err(|_| anyhow::anyhow!("two nodes"))?;
    Ok(Testbed {
        nodes,
        pods: [one, two],
    })
}

/// `node`'s port for `pod` counted some `counter` (an offload counter),
/// or an error saying `what` was expected.
fn expect_offload(node: &SwitchNode, pod: &Pod, counter: &str, what: &str) -> Result<()> {
    ensure!(
        offload(&port_of(node, pod)?, counter) > 0,
        "{what} ({counter} is 0)"
    );
    Ok(())
}

/// The packets `node` dropped for `reason`, over all its ports.
fn drops(node: &SwitchNode, reason: &str) -> Result<u64> {
    let stats = node.cli_json(&["stats"]).context("podswitch stats")?;
    let ports = stats["ports"].as_object().context("stats without ports")?;
    Ok(ports
        .values()
        .map(|port| port["drops"][reason].as_u64().unwrap_or(0))
        .sum())
}

/// IPv4 packets the node's own stack has received (`IpInReceives`).
fn stack_received(ns: &Netns) -> Result<u64> {
    ns.kernel_counters(&["IpInReceives"])
}

/// Every kind talking with offloaded pods, their super-frames on every
/// path they take, on switches started with `options`.
fn carry_super_frames(tag: &str, options: &SwitchOptions) -> Result<Testbed> {
    let tb = testbed(tag, options)?;
    let [[o1, o1b, v1, t1], [o2, _, v2, t2]] = &tb.pods;
    let [n1, n2] = [&tb.nodes.switches[0], &tb.nodes.switches[1]];
    for node in [n1, n2] {
        let mut kinds = pod_port_kinds(node)?;
        kinds.sort();
        ensure!(
            kinds == ["afxdp", "packet", "packet", "tap"],
            "node {}: pod ports {kinds:?}",
            node.index
        );
    }
    // The offloaded pods keep TCP/IPv4 segmentation and checksum offload;
    // every other segmentation is the pod's kernel's.
    for pod in [o1, o1b, o2] {
        let features = pod.ns.run("ethtool", &["-k", "eth0"])?;
        for (feature, state) in [
            ("tx-tcp-segmentation", "on"),
            ("tx-checksumming", "on"),
            ("tx-tcp6-segmentation", "off"),
            ("tx-udp-segmentation", "off"),
        ] {
            ensure!(
                features.contains(&format!("{feature}: {state}")),
                "pod {}: {feature} is not {state}:\n{features}",
                pod.ip
            );
        }
    }
    for (from, to, what) in [
        (o1, o1b, "offloaded to offloaded, one node"),
        (o1, v1, "offloaded to veth, one node"),
        (v1, o1, "veth to offloaded, one node"),
        (o1, o2, "offloaded to offloaded, across nodes"),
        (o1, t1, "offloaded to TAP, one node"),
        (o1, t2, "offloaded to TAP, across nodes"),
        (v2, o1, "veth to offloaded, across nodes"),
    ] {
        expect_pings(from, to.ip, what)?;
    }

    // On one node the super-frames pass whole, and the node's stack sees
    // none of them: a TCP run of hundreds of thousands of frames' worth
    // moves its IPv4 receive counter by no more than stray traffic does.
    let before = stack_received(&n1.ns)?;
    tcp(o1, o1b, 1, "offloaded to offloaded, one node")?;
    let seen = stack_received(&n1.ns)? - before;
    ensure!(
        seen < 1_000,
        "node 1's own stack received {seen} IPv4 packets during a TCP run between two \
         offloaded veth pods: the tc program is not keeping it off their host ends"
    );
    expect_offload(
        n1,
        o1b,
        "super_frames_sent",
        "no super-frame reached the offloaded pod on the same node",
    )?;
    tcp(o1, v1, 1, "offloaded to veth, one node")?;
    expect_offload(
        n1,
        o1,
        "super_frames_cut",
        "no super-frame was cut for the plain veth pod",
    )?;
    // The offloaded port reads one super-frame at a time while they are
    // cut, not a batch of them at once, whose segments would outrun the
    // worker's frames.
    let short = drops(n1, "no_free_frame")?;
    ensure!(
        short == 0,
        "node 1 dropped {short} packets for want of a free frame while cutting an offloaded \
         pod's super-frames for a plain veth pod"
    );
    tcp(v1, o1b, 1, "veth to offloaded, one node")?;
    tcp(o1, o2, 1, "offloaded to offloaded, across nodes")?;
    tcp(o1, o2, 4, "offloaded to offloaded, across nodes, 4 streams")?;
    expect_offload(
        n2,
        o2,
        "super_frames_sent",
        "no super-frame reached the offloaded pod across nodes",
    )?;
    tcp(t2, o1, 1, "TAP to offloaded, across nodes")?;
    tcp(v2, o1, 1, "veth to offloaded, across nodes")?;
    let udp = IperfClient {
        seconds: 1,
        udp: Some((200_000_000, 1400)),
        ..IperfClient::default()
    };
    expect_iperf(&udp, o1, o2, "UDP offloaded to offloaded across nodes")?;
    for pod in tb.pods.iter().flatten() {
        let errors = checksum_errors(&pod.ns)?;
        ensure!(
            errors == 0,
            "pod {} counted {errors} checksum errors",
            pod.ip
        );
    }
    for node in [n1, n2] {
        node.check_frames()?;
    }
    Ok(tb)
}

#[test]
fn offloaded_veth_pods_over_vxlan_and_a_restart() -> Result<()> {
    let _serial = serial();
    let mut tb = carry_super_frames("veth-offload", &SwitchOptions::default())?;
    // A daemon killed and restarted opens its packet ports again, with
    // the tc program.
    let [[o1, o1b, ..], [o2, ..]] = &tb.pods;
    let node = &mut tb.nodes.switches[0];
    let daemon = node.daemon().context("no daemon")?;
    ensure!(
        daemon.signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5)),
        "SIGKILL did not stop the daemon"
    );
    node.launch()?;
    let kinds = pod_port_kinds(node)?;
    ensure!(
        kinds.iter().filter(|k| *k == "packet").count() == 2,
        "after a restart: pod ports {kinds:?}"
    );
    let replies = ping(&o1.ns, o2.ip, 10)?;
    ensure!(replies >= 5, "{replies}/10 replies after the restart");
    let before = stack_received(&node.ns)?;
    tcp(
        o1,
        o1b,
        1,
        "offloaded to offloaded, one node, after a restart",
    )?;
    let seen = stack_received(&node.ns)? - before;
    ensure!(
        seen < 1_000,
        "after a restart node 1's stack received {seen}"
    );
    delete_all(&tb)
}

#[test]
fn offloaded_veth_pods_over_geneve() -> Result<()> {
    let _serial = serial();
    let options = SwitchOptions {
        encap: "geneve".into(),
        ..SwitchOptions::default()
    };
    let tb = carry_super_frames("veth-offload-gnv", &options)?;
    delete_all(&tb)
}

/// DEL every pod: the interfaces go from the pods, the ports from the
/// switches.
fn delete_all(tb: &Testbed) -> Result<()> {
    for (node, pods) in tb.nodes.switches.iter().zip(&tb.pods) {
        let pods: Vec<(&Pod, u8, &str)> = pods
            .iter()
            .zip(2..)
            .zip(KINDS)
            .map(|((p, n), k)| (p, n, k))
            .collect();
        delete_cni_pods(node, &pods)?;
    }
    Ok(())
}
