//! Dual-stack pods (issue 19): on nodes with a `pod_cidr6` the plugin
//! gives each pod an IPv6 address beside its IPv4 one (its IPv4 offset,
//! mirrored into the IPv6 pod CIDR), and the switches route IPv6 between
//! them — the pod's kernel resolving its IPv6 gateway through the switch's
//! neighbour advertisement — on one node and across the VXLAN overlay,
//! for veth, offloaded veth and TAP pods, with ping and iperf3 over IPv6, over an IPv4
//! and an IPv6 underlay, and to a kernel VXLAN node's pods carrying IPv6
//! as well. A pod sending from an IPv6 address that is not its own is
//! dropped and counted. Pods reach their node over IPv6 through the host
//! port (and the node them), and an IPv6 ClusterIP through
//! kube-proxy-shaped rules (`table ip6 kube-proxy`) with the daemon's
//! `ip6 podswitch` masquerade. Needs root.

mod common;

use std::net::{IpAddr, Ipv6Addr};

use anyhow::{Context, Result, ensure};
use common::{Nodes, nodes_with, plugin, serial};
use podswitch_control::service::ServiceProtocol;
use podswitch_lab::Lab;
use podswitch_lab::cluster::{
    Pod, SwitchNode, SwitchOptions, ping, pod_ip6, switch_and_kernel_node,
};
use podswitch_lab::kube_proxy::{self, KubeProxyMode, ProxiedPort};
use podswitch_lab::membership::wait_for;
use podswitch_lab::service_traffic::{TCP_PORT, request, serve_in};
use podswitch_lab::traffic::{IperfClient, iperf_server};
use serde_json::{Value, json};

/// A pod made by the plugin on `switch` (`pod_interface` "veth",
/// "veth-offload" or "tap"), with the IPv6 address its result gives, checked to mirror its
/// IPv4 one.
fn dual_stack_pod(
    lab: &mut Lab,
    switch: &SwitchNode,
    n: u8,
    pod_interface: &str,
) -> Result<(Pod, Ipv6Addr)> {
    let mut network = switch.cni_network("1.0.0");
    network["podInterface"] = pod_interface.into();
    let name = format!("pod{}{n}", switch.index);
    let (pod, result) = plugin().add_pod(lab, &switch.ns, &name, &network)?;
    let ip6 = ipv6_of(&result).with_context(|| format!("{name}'s result: {result}"))?;
    let [.., last] = pod.ip.octets();
    let mirrored = pod_ip6(switch.index, last);
    ensure!(
        ip6 == mirrored,
        "{name}: IPv6 {ip6} does not mirror IPv4 {}",
        pod.ip
    );
    Ok((pod, ip6))
}

/// The IPv6 address of a CNI result, a /128 via the link-local gateway.
fn ipv6_of(result: &Value) -> Result<Ipv6Addr> {
    let ips = result["ips"].as_array().context("no ips")?;
    ensure!(ips.len() == 2, "two addresses expected");
    let ip6 = ips
        .iter()
        .find_map(|ip| ip["address"].as_str()?.strip_suffix("/128"))
        .context("no IPv6 /128")?;
    let routes = result["routes"].as_array().context("no routes")?;
    ensure!(
        routes
            .iter()
            .any(|r| r["dst"] == "::/0" && r["gw"] == "fe80::1"),
        "no IPv6 default route via fe80::1"
    );
    Ok(ip6.parse()?)
}

/// Five pings over IPv6: at least four replies.
fn expect_pings6(from: &Pod, to: Ipv6Addr, what: &str) -> Result<()> {
    let replies = ping(&from.ns, to, 5)?;
    ensure!(
        replies >= 4,
        "{what}: {replies}/5 IPv6 ping replies to {to}"
    );
    Ok(())
}

/// Two seconds of TCP over IPv6 from `from` to `to` (listening on every
/// address): its rate, which must show traffic flowed.
fn tcp6(from: &Pod, to: &Pod, to6: Ipv6Addr, what: &str) -> Result<f64> {
    let client = IperfClient::default();
    let _server = iperf_server(&to.ns, client.port)?;
    let result = client
        .run(&from.ns, IpAddr::V6(to6))
        .with_context(|| format!("{what}: iperf3"))?;
    eprintln!("{what}: TCP over IPv6 {:.2} Gbit/s", result.gbps());
    ensure!(result.gbps() > 0.05, "{what}: {:.3} Gbit/s", result.gbps());
    Ok(result.gbps())
}

/// Wait until every peer of `switch` has its underlay next hop's MAC.
fn peers_resolved(switch: &SwitchNode) -> Result<()> {
    wait_for("the peers' underlay next hops", || {
        let peers = switch.cli_json(&["peers"])?;
        Ok(peers.as_array().is_some_and(|peers| {
            !peers.is_empty() && peers.iter().all(|p| p["next_hop_mac"].is_string())
        }))
    })
}

/// `port`'s drops for `reason` on `node`.
fn drops(node: &SwitchNode, port: &str, reason: &str) -> Result<u64> {
    Ok(node.cli_json(&["stats"])?["ports"][port]["drops"][reason]
        .as_u64()
        .unwrap_or(0))
}

#[test]
fn dual_stack_pods_reach_each_other_over_ipv6() -> Result<()> {
    let _serial = serial();
    let options = SwitchOptions {
        dual_stack: true,
        ..SwitchOptions::default()
    };
    let mut nodes = nodes_with("ds", 2, &options)?;
    let Nodes { lab, switches, .. } = &mut nodes;
    let (veth1, veth1_6) = dual_stack_pod(lab, &switches[0], 2, "veth")?;
    let (tap1, tap1_6) = dual_stack_pod(lab, &switches[0], 3, "tap")?;
    let (veth2, veth2_6) = dual_stack_pod(lab, &switches[1], 2, "veth")?;
    let (tap2, tap2_6) = dual_stack_pod(lab, &switches[1], 3, "tap")?;
    // An offloaded veth pod's kernel cuts its own IPv6 TCP segments (its
    // TSO for IPv6 is off), and the switch routes them frame by frame.
    let (offloaded1, offloaded1_6) = dual_stack_pod(lab, &switches[0], 4, "veth-offload")?;
    let (offloaded2, offloaded2_6) = dual_stack_pod(lab, &switches[1], 4, "veth-offload")?;

    // IPv4 still works beside it.
    ensure!(ping(&veth1.ns, veth2.ip, 3)? >= 2, "IPv4 across nodes");
    expect_pings6(&veth1, tap1_6, "veth to TAP on one node")?;
    expect_pings6(&tap1, veth1_6, "TAP to veth on one node")?;
    expect_pings6(&veth1, veth2_6, "veth to veth across nodes")?;
    expect_pings6(&tap2, tap1_6, "TAP to TAP across nodes")?;
    tcp6(&veth1, &tap2, tap2_6, "veth to TAP across nodes")?;
    tcp6(&tap2, &veth1, veth1_6, "TAP to veth across nodes")?;
    tcp6(&tap1, &veth1, veth1_6, "TAP to veth on one node")?;
    expect_pings6(
        &offloaded1,
        offloaded2_6,
        "offloaded veth to offloaded veth across nodes",
    )?;
    tcp6(
        &offloaded1,
        &offloaded2,
        offloaded2_6,
        "offloaded veth to offloaded veth across nodes",
    )?;
    tcp6(
        &offloaded2,
        &veth1,
        veth1_6,
        "offloaded veth to veth across nodes",
    )?;
    tcp6(
        &tap1,
        &offloaded1,
        offloaded1_6,
        "TAP to offloaded veth on one node",
    )?;

    // The switch answered the pod's solicitation for its gateway.
    let neighbours = veth1.ns.ip(&["-6", "neigh", "show", "dev", "eth0"])?;
    ensure!(
        neighbours.contains("fe80::1") && neighbours.contains("router"),
        "the pod's IPv6 gateway, as a router: {neighbours}"
    );

    // A source that is not the pod's own IPv6 address is dropped.
    let node1 = &nodes.switches[0];
    let port = &veth1.port;
    let before = drops(node1, port, "spoofed")?;
    veth1.ns.ip(&[
        "-6",
        "addr",
        "add",
        "fd00:10:244:1::99/128",
        "dev",
        "eth0",
        "nodad",
    ])?;
    let replies = ping_from(&veth1, "fd00:10:244:1::99", veth2_6)?;
    ensure!(replies == 0, "{replies} replies to a spoofed source");
    wait_for("the spoofed IPv6 pings counted as spoofed", || {
        Ok(drops(node1, port, "spoofed")? >= before + 3)
    })
}

/// Delegated IPAM: host-local with a range of each family gives the pod
/// both addresses; the IPv6 one is used as the plugin gave it.
#[test]
fn dual_stack_pods_with_host_local_ipam() -> Result<()> {
    let _serial = serial();
    let options = SwitchOptions {
        dual_stack: true,
        ..SwitchOptions::default()
    };
    let mut nodes = nodes_with("dshl", 2, &options)?;
    let Nodes { lab, switches, .. } = &mut nodes;
    let data_dir = lab.scratch_dir()?.join("host-local");
    let mut network = switches[0].cni_network("1.0.0");
    network["ipam"] = json!({
        "type": "host-local",
        "dataDir": data_dir,
        "ranges": [
            [{ "subnet": "10.244.1.0/24", "rangeStart": "10.244.1.100", "rangeEnd": "10.244.1.110",
               "gateway": "10.244.1.1" }],
            [{ "subnet": "fd00:10:244:1::/64", "rangeStart": "fd00:10:244:1::100",
               "rangeEnd": "fd00:10:244:1::110" }],
        ],
    });
    let (delegated, result) = plugin().add_pod(lab, &switches[0].ns, "pod1hl", &network)?;
    let delegated6 = ipv6_of(&result).with_context(|| format!("result: {result}"))?;
    ensure!(
        delegated6 == "fd00:10:244:1::100".parse::<Ipv6Addr>()?,
        "host-local's IPv6 address, not {delegated6}"
    );
    let (remote, remote6) = dual_stack_pod(lab, &switches[1], 2, "veth")?;
    expect_pings6(&delegated, remote6, "host-local pod to a pod across nodes")?;
    expect_pings6(&remote, delegated6, "back to the host-local pod")?;
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}

#[test]
fn dual_stack_pods_over_an_ipv6_underlay() -> Result<()> {
    let _serial = serial();
    let options = SwitchOptions {
        dual_stack: true,
        underlay_ipv6: true,
        ..SwitchOptions::default()
    };
    let mut nodes = nodes_with("ds6u", 2, &options)?;
    let Nodes { lab, switches, .. } = &mut nodes;
    let (veth1, veth1_6) = dual_stack_pod(lab, &switches[0], 2, "veth")?;
    let (tap2, tap2_6) = dual_stack_pod(lab, &switches[1], 3, "tap")?;
    // Both families of pod traffic cross the IPv6 underlay.
    // Neighbour discovery on the underlay takes a second or two: wait
    // for each node's peer to resolve rather than losing the first pings.
    for switch in switches.iter() {
        peers_resolved(switch)?;
    }
    ensure!(
        ping(&veth1.ns, tap2.ip, 3)? >= 2,
        "IPv4 over the IPv6 underlay"
    );
    expect_pings6(&veth1, tap2_6, "veth to TAP over the IPv6 underlay")?;
    expect_pings6(&tap2, veth1_6, "TAP to veth over the IPv6 underlay")?;
    tcp6(&veth1, &tap2, tap2_6, "veth to TAP over the IPv6 underlay")?;
    tcp6(&tap2, &veth1, veth1_6, "TAP to veth over the IPv6 underlay")?;
    Ok(())
}

#[test]
fn dual_stack_pods_reach_a_kernel_vxlan_node_over_ipv6() -> Result<()> {
    with_a_kernel_node("dsk", false)
}

#[test]
fn dual_stack_pods_reach_a_kernel_vxlan_node_over_an_ipv6_underlay() -> Result<()> {
    with_a_kernel_node("dsk6u", true)
}

/// Pods of a podswitch node and of a kernel VXLAN node (both families on
/// its one device), over an IPv4 or an IPv6 underlay: ping and TCP both
/// ways over IPv6, and IPv4 beside it.
fn with_a_kernel_node(tag: &str, underlay_ipv6: bool) -> Result<()> {
    let _serial = serial();
    let mut lab = Lab::new(tag)?;
    let dir = lab.scratch_dir()?;
    let options = SwitchOptions {
        dual_stack: true,
        underlay_ipv6,
        ..SwitchOptions::default()
    };
    let (node, kernel) =
        switch_and_kernel_node(&mut lab, &common::daemon_binary()?, &dir, &options)?;
    kernel.enable_ipv6()?;
    kernel.add_peer6(1, &options.router_mac(1))?;
    peers_resolved(&node)?;
    let (veth, veth6) = dual_stack_pod(&mut lab, &node, 2, "veth")?;
    let (tap, tap6) = dual_stack_pod(&mut lab, &node, 3, "tap")?;
    let k = kernel.add_pod(&mut lab, 2, true)?;
    let k6 = kernel.add_pod_ipv6(&k, 2)?;

    expect_pings6(&veth, k6, "veth pod to kernel pod")?;
    expect_pings6(&k, veth6, "kernel pod to veth pod")?;
    expect_pings6(&tap, k6, "TAP pod to kernel pod")?;
    tcp6(&veth, &k, k6, "veth pod to kernel pod")?;
    tcp6(&k, &tap, tap6, "kernel pod to TAP pod")?;
    tcp6(&tap, &k, k6, "TAP pod to kernel pod")?;
    expect_pings6(&k, tap6, "kernel pod to TAP pod")?;
    ensure!(ping(&k.ns, veth.ip, 3)? >= 2, "IPv4 beside it");
    Ok(())
}

/// Three pings from `source` (an address of the pod's) to `to`: replies.
fn ping_from(pod: &Pod, source: &str, to: Ipv6Addr) -> Result<u32> {
    let output = pod
        .ns
        .command("ping")?
        .args(["-c", "3", "-i", "0.2", "-W", "1", "-q", "-I", source])
        .arg(to.to_string())
        .output()
        .context("running ping")?;
    Ok(podswitch_lab::cluster::ping_received(
        &String::from_utf8_lossy(&output.stdout),
    ))
}

/// The IPv6 ClusterIP of the test's Service.
const CLUSTER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);

/// Over the host port's IPv6: a pod pings its node's IPv6 address (the
/// mirror of its gateway, `fd00:10:244:1::1`) and the node its pods, here
/// and on the other node; a pod on node 1 reaches an IPv6 ClusterIP whose
/// endpoints are pods on both nodes, through kube-proxy's IPv6 rules in
/// its nftables mode and then its iptables mode (ip6tables), each answer seeing the client as its node's address (the
/// daemon's `ip6 podswitch` masquerade), and a "world" behind node 1
/// through node 1's address; without that table the same
/// requests fail; after a restart of node 1's daemon all of it works
/// again.
#[test]
fn dual_stack_pods_reach_their_node_and_ipv6_services() -> Result<()> {
    let _serial = serial();
    let options = SwitchOptions {
        dual_stack: true,
        ..SwitchOptions::default()
    };
    let mut nodes = nodes_with("dssvc", 2, &options)?;
    let Nodes { lab, switches, .. } = &mut nodes;
    let (a, a6) = dual_stack_pod(lab, &switches[0], 2, "veth")?;
    let (b, b6) = dual_stack_pod(lab, &switches[0], 3, "tap")?;
    let (c, c6) = dual_stack_pod(lab, &switches[1], 2, "veth")?;
    let node1 = &switches[0];
    let node1_6 = pod_ip6(1, 1);

    expect_pings6(&a, node1_6, "pod to its node")?;
    expect_pings6(&b, node1_6, "TAP pod to its node")?;
    for (to, what) in [
        (a6, "node to its pod"),
        (c6, "node to a pod on the other node"),
    ] {
        let replies = ping(&node1.ns, to, 5)?;
        ensure!(replies >= 4, "{what}: {replies}/5 IPv6 ping replies");
    }
    let routes = node1.ns.ip(&["-6", "route", "show"])?;
    ensure!(
        routes.contains("fd00:10:244:2::/64 via fe80::1"),
        "the peer's IPv6 pod CIDR routed via the switch: {routes}"
    );

    let _servers = [serve_in(&b.ns, b6)?, serve_in(&c.ns, c6)?];
    let web6 = ProxiedPort {
        name: "default/web6".into(),
        cluster_ip: CLUSTER_IP6,
        protocol: ServiceProtocol::Tcp,
        port: 80,
        endpoints: vec![(b6, TCP_PORT), (c6, TCP_PORT)],
    };
    // kube-proxy's nftables mode, then its iptables mode (ip6tables).
    for mode in [KubeProxyMode::Nftables, KubeProxyMode::Iptables] {
        for node in switches.iter() {
            if mode == KubeProxyMode::Iptables {
                node.ns
                    .run("nft", &["delete", "table", "ip6", "kube-proxy"])?;
            }
            kube_proxy::write_ports(lab, &node.ns, mode, std::slice::from_ref(&web6))?;
        }
        // Two endpoints, one per node, picked at random: 30 requests
        // leave one unanswered with probability 2^-29.
        let mut answered = std::collections::BTreeSet::new();
        for _ in 0..30 {
            let (endpoint, seen) = request(&a, "tcp", CLUSTER_IP6, 80)?;
            ensure!(
                seen == node1_6,
                "{mode:?}: {endpoint} saw the client as {seen}, not its node's {node1_6}"
            );
            answered.insert(endpoint);
        }
        ensure!(
            answered == std::collections::BTreeSet::from([b6, c6]),
            "{mode:?}: answered by {answered:?} of {b6} and {c6}"
        );
        eprintln!(
            "IPv6 ClusterIP from node 1, kube-proxy {mode:?} mode: answered by {answered:?}, \
             client seen as {node1_6}"
        );
    }
    let table = node1
        .ns
        .run("nft", &["list", "table", "ip6", "podswitch"])?;
    let masqueraded = table
        .lines()
        .find(|l| l.contains("ct status dnat"))
        .and_then(|l| l.split_once("counter packets "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<u64>().ok());
    ensure!(
        masqueraded.is_some_and(|n| n > 0),
        "the ip6 table's Service rule counted nothing: {table}"
    );

    // Egress: a "world" behind node 1 with no route to the pods answers
    // a pod through node 1's address on that link (the ip6 table's
    // egress rule).
    let world = lab.netns("world")?;
    node1.ns.add_veth("out0", &world, "eth0")?;
    let (node1_out, world6): (Ipv6Addr, Ipv6Addr) =
        ("2001:db8::1".parse()?, "2001:db8::2".parse()?);
    for (ns, dev, address) in [(&node1.ns, "out0", node1_out), (&world, "eth0", world6)] {
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{address}/64"),
            "dev",
            dev,
            "nodad",
        ])?;
        ns.ip(&["link", "set", dev, "up"])?;
    }
    let _world_server = serve_in(&world, world6)?;
    let (answered, seen) = request(&a, "tcp", world6, TCP_PORT)?;
    ensure!(
        answered == world6 && seen == node1_out,
        "to the world: answered by {answered}, client seen as {seen}, not node 1's {node1_out}"
    );

    // Without the daemon's ip6 table the endpoints answer the pod
    // directly, from their own addresses, and the connection fails.
    node1
        .ns
        .run("nft", &["delete", "table", "ip6", "podswitch"])?;
    for _ in 0..2 {
        match request(&a, "tcp", CLUSTER_IP6, 80) {
            Ok(answer) => anyhow::bail!("answered {answer:?} without the ip6 masquerade"),
            Err(e) => eprintln!("without the ip6 masquerade, fails as expected: {e:#}"),
        }
    }

    // A restart puts the node's IPv6 address, its routes and the table
    // back: the pods reach the node and the Service again.
    let node1 = &mut switches[0];
    ensure!(node1.stop(), "the daemon did not stop on SIGTERM");
    node1.launch()?;
    wait_for("a pod's IPv6 to its node after a restart", || {
        Ok(ping(&a.ns, node1_6, 1)? == 1)
    })?;
    let routes = node1.ns.ip(&["-6", "route", "show"])?;
    ensure!(
        routes.contains("fd00:10:244:2::/64 via fe80::1"),
        "the peer's IPv6 pod CIDR after a restart: {routes}"
    );
    let mut answered = std::collections::BTreeSet::new();
    wait_for("both endpoints answering after a restart", || {
        if let Ok((endpoint, seen)) = request(&a, "tcp", CLUSTER_IP6, 80) {
            ensure!(seen == node1_6, "{endpoint} saw the client as {seen}");
            answered.insert(endpoint);
        }
        Ok(answered.len() == 2)
    })
}
