//! TAP pods (`"podInterface": "tap"`) beside veth pods, through the real
//! path: the plugin makes the pods as a runtime would, the daemons attach
//! to their TAP devices with virtio-net headers, and ping and iperf3 run
//! between every kind of pair — TAP to TAP on one node (super-frames
//! passed whole), TAP to veth (cut into segments), veth to TAP
//! (coalesced), across nodes over VXLAN and Geneve (encapsulated whole
//! and cut by the node's kernel through the tunnel port — or, with the
//! offload off, cut and encapsulated by the switch — then decapsulated
//! and coalesced), and against a kernel VXLAN node whose underlay must
//! see only plain, valid, MTU-sized frames in sequence (from an offloaded
//! veth pod too, whose super-frames take the same path). Needs root.

mod common;

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::{
    Nodes, delete_cni_pods, find_port, nodes_with, offload, plugin, port_of, serial, tcp,
};
use podswitch_encap::TunnelKind;
use podswitch_lab::Lab;
use podswitch_lab::capture::RawLink;
use podswitch_lab::cluster::{
    Pod, SwitchNode, SwitchOptions, UPLINK, expect_iperf, expect_pings, node_ip, ping,
    switch_and_kernel_node,
};
use podswitch_lab::flood::UdpSocketFlood;
use podswitch_lab::traffic::IperfClient;
use podswitch_lab::tunnel_capture::{TunnelCapture, Underlay, checksum_errors};
use podswitch_lab::udp_sink::UdpSink;

/// Two TAP pods and one veth pod on each of two podswitch nodes.
struct Mixed {
    nodes: Nodes,
    /// Per node: TAP pods .2 and .3, veth pod .4.
    pods: [[Pod; 3]; 2],
}

fn mixed(tag: &str, options: &SwitchOptions) -> Result<Mixed> {
    let mut nodes = nodes_with(tag, 2, options)?;
    let plugin = plugin();
    let mut pods = Vec::new();
    for node in &nodes.switches {
        pods.push([
            node.add_cni_pod_as(&mut nodes.lab, &plugin, 2, "tap")?,
            node.add_cni_pod_as(&mut nodes.lab, &plugin, 3, "tap")?,
            node.add_cni_pod_as(&mut nodes.lab, &plugin, 4, "veth")?,
        ]);
    }
    let [one, two] = <[[Pod; 3]; 2]>::try_from(pods).map_err(|_| anyhow::anyhow!("two nodes"))?;
    Ok(Mixed {
        nodes,
        pods: [one, two],
    })
}

/// Mixed pods talking, on switches started with `options`: over their
/// tunnel port (the kernel cutting super-frames; with `tunnel_offload =
/// "udp-segment"` the switch cutting them and a UDP socket sending each
/// one's datagrams at once) unless `tunnel_offload` is "off" (the switch
/// cutting them and sending the segments on the uplink).
fn mixed_pods_talk(tag: &str, options: &SwitchOptions) -> Result<Mixed> {
    let tb = mixed(tag, options)?;
    talk(&tb, options)?;
    Ok(tb)
}

/// [`mixed_pods_talk`] on a testbed already made.
fn talk(tb: &Mixed, options: &SwitchOptions) -> Result<()> {
    let [[t1, t1b, v1], [t2, _, v2]] = &tb.pods;
    let [n1, n2] = [&tb.nodes.switches[0], &tb.nodes.switches[1]];
    for node in [n1, n2] {
        let kinds: Vec<String> = node
            .cli_json(&["ports"])?
            .as_array()
            .context("ports")?
            .iter()
            .filter(|p| p["role"] == "pod")
            .map(|p| p["kind"].as_str().unwrap_or_default().to_string())
            .collect();
        ensure!(
            kinds.iter().filter(|k| *k == "tap").count() == 2
                && kinds.iter().filter(|k| *k == "afxdp").count() == 1,
            "node {}: pod ports {kinds:?}",
            node.index
        );
    }
    for (from, to, what) in [
        (t1, t1b, "TAP to TAP, one node"),
        (t1, v1, "TAP to veth, one node"),
        (v1, t1, "veth to TAP, one node"),
        (t1, t2, "TAP to TAP, across nodes"),
        (t1, v2, "TAP to veth, across nodes"),
        (v2, t1, "veth to TAP, across nodes"),
    ] {
        expect_pings(from, to.ip, what)?;
    }
    tcp(t1, t1b, 1, "TAP to TAP, one node")?;
    tcp(t1, v1, 1, "TAP to veth, one node")?;
    tcp(v1, t1b, 1, "veth to TAP, one node")?;
    tcp(t1, t2, 1, "TAP to TAP, across nodes")?;
    tcp(t1, t2, 4, "TAP to TAP, across nodes, 4 streams")?;
    tcp(t2, v1, 1, "TAP to veth, across nodes")?;
    tcp(v2, t1, 1, "veth to TAP, across nodes")?;
    // Datagrams as large as the pod MTU allows, less room for headers:
    // 1400 bytes on a 1500-byte underlay, 8900 on a jumbo one.
    let datagram = options.underlay_mtu - 100;
    let udp = IperfClient {
        seconds: 1,
        udp: Some((200_000_000, datagram)),
        ..IperfClient::default()
    };
    expect_iperf(&udp, t1, t2, "UDP TAP to TAP across nodes")?;
    expect_iperf(&udp, v2, t1, "UDP veth to TAP across nodes")?;
    for pod in tb.pods.iter().flatten() {
        let errors = checksum_errors(&pod.ns)?;
        ensure!(
            errors == 0,
            "pod {} counted {errors} checksum errors",
            pod.ip
        );
    }
    // Pods' interfaces have IPv6 off: no router solicitations or MLD
    // reports for the switch to drop.
    for node in [n1, n2] {
        let stats = node.cli_json(&["stats"])?;
        for (name, port) in stats["ports"].as_object().context("ports")? {
            ensure!(
                port["drops"]["multicast"].as_u64().unwrap_or(0) == 0,
                "node {} port {name} dropped multicast: {}",
                node.index,
                port["drops"]
            );
        }
    }
    // The large-segment paths were taken: node 1's first TAP pod's
    // super-frames were cut (for the veth pod), its neighbour got them
    // whole, and node 2's TAP pod got super-frames: received whole through
    // node 2's tunnel port (VXLAN, `tunnel_receive = "auto"`), or
    // coalesced from the uplink's frames.
    let sender = port_of(n1, t1)?;
    ensure!(
        offload(&sender, "super_frames_cut") > 0,
        "no super-frame was cut: {sender}"
    );
    let neighbour = port_of(n1, t1b)?;
    ensure!(
        offload(&neighbour, "super_frames_sent") > 0,
        "no super-frame reached the TAP pod on the same node: {neighbour}"
    );
    let receiver = port_of(n2, t2)?;
    ensure!(
        offload(&receiver, "super_frames_sent") > 0,
        "no super-frame reached the TAP pod across nodes: {receiver}"
    );
    let receiving_tunnel = find_port(n2, |p| p["role"] == "tunnel")?;
    let offload_mode = options.tunnel_offload.as_deref();
    let through_kernel = options.encap == "vxlan"
        && offload_mode.is_none_or(|mode| mode == "auto")
        && options.tunnel_receive.as_deref() != Some("afxdp");
    if through_kernel {
        let tunnel = receiving_tunnel.context("no tunnel port on node 2")?;
        let (packets, bytes) = (
            tunnel["counters"]["rx_packets"].as_u64().unwrap_or(0),
            tunnel["counters"]["rx_bytes"].as_u64().unwrap_or(0),
        );
        ensure!(
            packets > 0 && bytes / packets > 1500,
            "node 2 received no super-packets through its tunnel port: {tunnel}"
        );
        let stats = n2.cli_json(&["stats"])?;
        ensure!(
            stats["uplink_to_kernel"].as_u64() > Some(0),
            "node 2's XDP program passed no TCP to the kernel: {}",
            stats["uplink_to_kernel"]
        );
    } else {
        ensure!(
            offload(&receiver, "frames_coalesced") > 0,
            "nothing was coalesced for the TAP pod across nodes: {receiver}"
        );
        if let Some(tunnel) = receiving_tunnel {
            ensure!(
                tunnel["counters"]["rx_packets"] == 0,
                "node 2's tunnel port received with tunnel_receive off: {tunnel}"
            );
        }
    }
    // Toward the other node the super-frames went whole through the
    // tunnel port for the kernel to cut — or, with the offload off, there
    // is no tunnel port and the switch cut them.
    let tunnel = find_port(n1, |p| p["role"] == "tunnel")?;
    if offload_mode == Some("off") {
        ensure!(
            tunnel.is_none(),
            "a tunnel port with the offload off: {tunnel:?}"
        );
    } else {
        let tunnel = tunnel.context("no tunnel port on node 1")?;
        let (kind, counter) = match offload_mode {
            Some("udp-segment") => ("socket", "super_frames_cut"),
            _ => ("tap", "super_frames_sent"),
        };
        ensure!(
            tunnel["kind"] == kind && offload(&tunnel, counter) > 0,
            "no super-frame went to the peer through a {kind} tunnel port ({counter}): {tunnel}"
        );
        udp_takes_the_uplink(n1, t1, t2)?;
    }
    for node in [n1, n2] {
        node.check_frames()?;
    }
    Ok(())
}

/// Datagrams [`udp_takes_the_uplink`] sends: fewer than a TAP queue holds.
const UDP_DATAGRAMS: u64 = 500;

/// A TAP pod's UDP to a pod on the other node leaves `node` by the uplink
/// (in AF_XDP batches), not through the tunnel port (a `write` each into
/// the node's stack): the uplink's `tx` grows by at least as many as
/// arrived, the tunnel port's by fewer (none of them).
fn udp_takes_the_uplink(node: &SwitchNode, from: &Pod, to: &Pod) -> Result<()> {
    let tx = |role: &str| -> Result<u64> {
        let port = find_port(node, |p| p["role"] == role)?
            .with_context(|| format!("no {role} port on node {}", node.index))?;
        Ok(port["counters"]["tx_packets"].as_u64().unwrap_or(0))
    };
    let sink = UdpSink::bind(&to.ns, 9000)?;
    let sender = UdpSocketFlood::open(
        &from.ns,
        SocketAddrV4::new(from.ip, 40000),
        SocketAddrV4::new(to.ip, 9000),
        18,
    )?;
    let (uplink, tunnel) = (tx("uplink")?, tx("tunnel")?);
    let stop = AtomicBool::new(false);
    let received = std::thread::scope(|scope| {
        let receiver = scope.spawn(|| sink.run(&stop, Duration::from_secs(30)));
        let sent = sender.run(UDP_DATAGRAMS);
        stop.store(true, Ordering::Relaxed);
        let received = receiver
            .join()
            .unwrap_or_else(|_| anyhow::bail!("the sink panicked"));
        sent.and(received)
    })?;
    let (uplink, tunnel) = (tx("uplink")? - uplink, tx("tunnel")? - tunnel);
    let arrived = received.packets;
    ensure!(arrived > 0, "none of {UDP_DATAGRAMS} datagrams arrived");
    ensure!(
        uplink >= arrived && tunnel < arrived,
        "a TAP pod's {UDP_DATAGRAMS} datagrams ({arrived} arrived): the uplink sent {uplink} \
         packets, the tunnel port {tunnel}"
    );
    Ok(())
}

/// DEL every pod: the TAP devices go from the pods, the ports from the
/// switches.
fn delete_all(tb: &Mixed) -> Result<()> {
    for (node, pods) in tb.nodes.switches.iter().zip(&tb.pods) {
        let kinds = ["tap", "tap", "veth"];
        let pods: Vec<(&Pod, u8, &str)> = pods
            .iter()
            .zip(2..)
            .zip(kinds)
            .map(|((p, n), k)| (p, n, k))
            .collect();
        delete_cni_pods(node, &pods)?;
    }
    Ok(())
}

#[test]
fn tap_and_veth_pods_over_vxlan() -> Result<()> {
    let _serial = serial();
    let mut tb = mixed_pods_talk("tap-vxlan", &SwitchOptions::default())?;
    // A daemon killed and restarted re-attaches to its TAP pods.
    let [[t1, _, _], [t2, _, _]] = &tb.pods;
    let node = &mut tb.nodes.switches[0];
    let daemon = node.daemon().context("no daemon")?;
    ensure!(
        daemon.signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5)),
        "SIGKILL did not stop the daemon"
    );
    node.launch()?;
    let port = port_of(node, t1)?;
    ensure!(port["kind"] == "tap", "not restored as a TAP port: {port}");
    let replies = ping(&t1.ns, t2.ip, 10)?;
    ensure!(replies >= 5, "{replies}/10 replies after the restart");
    tcp(t1, t2, 1, "TAP to TAP after a restart")?;
    delete_all(&tb)
}

/// [`mixed_pods_talk`] with `options` (serially), then every pod deleted.
fn talk_and_delete(tag: &str, options: &SwitchOptions) -> Result<()> {
    let _serial = serial();
    let tb = mixed_pods_talk(tag, options)?;
    delete_all(&tb)
}

#[test]
fn tap_and_veth_pods_over_geneve() -> Result<()> {
    talk_and_delete(
        "tap-geneve",
        &SwitchOptions {
            encap: "geneve".into(),
            ..SwitchOptions::default()
        },
    )
}

/// With `tunnel_offload = "off"` (or a kernel without UDP tunnel GSO)
/// the switch cuts TAP pods' super-frames itself and sends the segments
/// on the uplink.
#[test]
fn tap_pods_with_the_switch_cutting_super_frames() -> Result<()> {
    talk_and_delete(
        "tap-cut",
        &SwitchOptions {
            tunnel_offload: Some("off".into()),
            ..SwitchOptions::default()
        },
    )
}

/// With `tunnel_offload = "udp-segment"` (what `auto` falls back to on
/// kernels before 6.17) the switch cuts TAP pods' super-frames and a UDP
/// socket sends each one's datagrams with one `UDP_SEGMENT` send; over
/// Geneve here (the kernel VXLAN peer test below covers VXLAN).
#[test]
fn tap_pods_sending_through_a_udp_segment_socket() -> Result<()> {
    talk_and_delete(
        "tap-udpseg",
        &SwitchOptions {
            encap: "geneve".into(),
            tunnel_offload: Some("udp-segment".into()),
            ..SwitchOptions::default()
        },
    )
}

/// With `tunnel_receive = "afxdp"` every tunnel packet comes through the
/// uplink's AF_XDP socket and is coalesced for a TAP pod by the switch.
#[test]
fn tap_pods_receiving_through_afxdp() -> Result<()> {
    talk_and_delete(
        "tap-afxdp",
        &SwitchOptions {
            tunnel_receive: Some("afxdp".into()),
            ..SwitchOptions::default()
        },
    )
}

/// On an underlay that keeps TSO (segments whole) a daemon with
/// `xdp_mode = "auto"` runs its veth uplink's program in generic mode: a
/// native program on a veth turns TSO off on its peer, a generic one
/// leaves it on, so TAP pods' super-frames cross the underlay whole. Node
/// 2's kernel skips GRO on an uplink with a generic program, so the
/// super-packets its tunnel port reads (checked in [`talk`]) came whole
/// over the wire — with their Ethernet header, which the kernel lost
/// before the generic-mode program was built without multi-buffer
/// support.
#[test]
fn tap_pods_with_generic_xdp_and_segments_whole() -> Result<()> {
    on_the_segments_whole_underlay("tap-generic", "vxlan", "generic", 1500)
}

/// [`tap_pods_with_generic_xdp_and_segments_whole`] on a 9000-byte
/// underlay, UDP datagrams of 8900 bytes among the traffic.
#[test]
fn tap_pods_with_generic_xdp_on_a_jumbo_underlay() -> Result<()> {
    on_the_segments_whole_underlay("tap-generic-jumbo", "vxlan", "generic", 9000)
}

/// With Geneve, peers' TCP comes through the uplink's AF_XDP socket,
/// whose buffers hold one MTU-sized frame, not a super-frame: `auto`
/// keeps the program native on that underlay (the peer's TSO held off, so
/// its kernel cuts), and TAP pods still talk.
#[test]
fn tap_pods_over_geneve_on_the_segments_whole_underlay() -> Result<()> {
    on_the_segments_whole_underlay("tap-whole-gnv", "geneve", "native", 1500)
}

/// Mixed pods on two nodes whose underlay has its offloads on, the
/// daemons restarted after the offloads went on (as nodes whose underlay
/// had them from the start would begin) with `xdp_mode = "auto"`: their
/// uplinks run XDP in `mode`, and every pair talks ([`talk`]), on an
/// underlay of `underlay_mtu` bytes.
fn on_the_segments_whole_underlay(
    tag: &str,
    encap: &str,
    mode: &str,
    underlay_mtu: u32,
) -> Result<()> {
    let _serial = serial();
    let options = SwitchOptions {
        encap: encap.into(),
        underlay_mtu,
        ..SwitchOptions::default()
    };
    let mut tb = mixed(tag, &options)?;
    // Both stopped first: a native program on one node's uplink would
    // hold the other's TSO off.
    for node in tb.nodes.switches.iter_mut() {
        ensure!(node.stop(), "node {}'s daemon did not stop", node.index);
    }
    for node in tb.nodes.switches.iter_mut() {
        node.ns.run(
            "ethtool",
            &["-K", UPLINK, "tx", "on", "tso", "on", "gso", "on"],
        )?;
    }
    for node in tb.nodes.switches.iter_mut() {
        node.launch()?;
    }
    for node in &tb.nodes.switches {
        let uplink = find_port(node, |p| p["role"] == "uplink")?.context("no uplink port")?;
        ensure!(
            uplink["xdp_mode"] == mode,
            "node {}: a veth uplink with TSO on runs XDP in {} mode over {encap}, not {mode}",
            node.index,
            uplink["xdp_mode"]
        );
    }
    if mode == "generic" {
        let features = tb.nodes.switches[0].ns.run("ethtool", &["-k", UPLINK])?;
        ensure!(
            features.contains("tcp-segmentation-offload: on"),
            "node 1's uplink lost TSO beside a generic XDP program:\n{features}"
        );
    }
    talk(&tb, &options)?;
    delete_all(&tb)
}

/// A TAP pod on a podswitch node and a pod on a kernel VXLAN node
/// (Flannel-style, offloads on): ping and TCP both ways, and every tunnel
/// frame the kernel node receives is a plain frame of at most the
/// underlay MTU with valid checksums, its TCP in sequence.
#[test]
fn tap_pod_with_kernel_vxlan_node() -> Result<()> {
    tap_pod_with_kernel_vxlan_node_through("tap-interop", None, "tap")
}

/// [`tap_pod_with_kernel_vxlan_node`] with an offloaded veth pod
/// (`"podInterface": "veth-offload"`), whose super-frames take the same
/// path.
#[test]
fn offloaded_veth_pod_with_kernel_vxlan_node() -> Result<()> {
    tap_pod_with_kernel_vxlan_node_through("vo-interop", None, "veth-offload")
}

/// [`tap_pod_with_kernel_vxlan_node`] with the switch cutting the
/// super-frames and a `UDP_SEGMENT` socket sending them.
#[test]
fn tap_pod_with_kernel_vxlan_node_through_a_udp_segment_socket() -> Result<()> {
    tap_pod_with_kernel_vxlan_node_through("tap-interop-us", Some("udp-segment"), "tap")
}

/// A TAP pod (or another `pod_interface` that hands the switch
/// super-frames) and a kernel VXLAN node's pod talking, the podswitch
/// node's `tunnel_offload` set to `mode` (its default for `None`).
fn tap_pod_with_kernel_vxlan_node_through(
    tag: &str,
    mode: Option<&str>,
    pod_interface: &str,
) -> Result<()> {
    let _serial = serial();
    let mut lab = Lab::new(tag)?;
    let dir = lab.scratch_dir()?;
    let options = SwitchOptions {
        tunnel_offload: mode.map(String::from),
        ..SwitchOptions::default()
    };
    let (node, kernel) =
        switch_and_kernel_node(&mut lab, &common::daemon_binary()?, &dir, &options)?;
    let n2 = &kernel.ns;
    // What arrives is what was sent: no receive-side merging.
    n2.run("ethtool", &["-K", UPLINK, "gro", "off"])?;
    let a = node.add_cni_pod_as(&mut lab, &plugin(), 2, pod_interface)?;
    let k = kernel.add_pod(&mut lab, 2, true)?;
    expect_pings(&a, k.ip, "TAP pod to kernel pod")?;
    expect_pings(&k, a.ip, "kernel pod to TAP pod")?;

    let mut capture = RawLink::open(n2, UPLINK, Duration::from_millis(100))?;
    let mut seen = TunnelCapture::new(TunnelKind::Vxlan, 4789, node_ip(1).into(), 1500);
    // Paced, so that the capture keeps up and a missing segment is the
    // path's, not the capture's.
    let paced = IperfClient {
        seconds: 3,
        tcp_rate: Some(400_000_000),
        ..IperfClient::default()
    };
    std::thread::scope(|scope| -> Result<()> {
        let sender = scope.spawn(|| expect_iperf(&paced, &a, &k, "TAP pod to kernel pod, paced"));
        let frames = capture.collect(200_000, Duration::from_secs(4), |_| true);
        for frame in &frames {
            seen.add(frame, frame.len());
        }
        sender
            .join()
            .map_err(|_| anyhow::anyhow!("iperf3 thread panicked"))??;
        Ok(())
    })?;
    let what = "underlay frames from the podswitch node";
    if let Err(e) = seen.check(Underlay::WireSize, 1000, what) {
        return Err(e.context(node.cli(&["stats"]).unwrap_or_default()));
    }
    if seen.counts.sequence_holes > 0 {
        // What the switch itself dropped, it counts.
        eprintln!(
            "the switch's drops: {}",
            node.cli(&["stats"]).unwrap_or_default()
        );
    }
    tcp(&a, &k, 1, "TAP pod to kernel pod")?;
    tcp(&k, &a, 1, "kernel pod to TAP pod")?;
    // The TAP pod's super-frames went whole to the node's kernel, which
    // cut them (or, through the UDP socket, cut by the switch).
    let tunnel = find_port(&node, |p| p["role"] == "tunnel")?.context("no tunnel port")?;
    let counter = match mode {
        Some("udp-segment") => "super_frames_cut",
        _ => "super_frames_sent",
    };
    ensure!(
        offload(&tunnel, counter) > 0,
        "no super-frame went through the tunnel port ({counter}): {tunnel}"
    );
    for pod in [&a, &k] {
        let errors = checksum_errors(&pod.ns)?;
        ensure!(
            errors == 0,
            "pod {} counted {errors} checksum errors",
            pod.ip
        );
    }
    node.check_frames()
}
