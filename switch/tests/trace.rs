//! `podswitch trace` against what packets really do: two podswitch nodes
//! in namespaces, pods on veth ports. A trace's verdict is checked against
//! the same packet sent for real — to a remote pod (it arrives at the peer
//! the trace names, through the tunnel), with a spoofed source (counted as
//! `spoofed`), with no route (counted as `no_route`) — and a trace sends
//! nothing and counts nothing. Needs root.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use podswitch_control::service::{Endpoint, Service, ServicePort, ServiceProtocol};
use podswitch_lab::cluster::{
    Pod, SwitchNode, SwitchOptions, SwitchPair, node_ip, ping, router_mac,
};
use podswitch_lab::flood::{self, UDP_HEADERS, UdpFlow};
use podswitch_lab::service_traffic::{UDP_PORT, request, serve_in};
use podswitch_lab::{Lab, RawLink, parse_mac};
use serde_json::Value;

/// Real packets sent for each case.
const COPIES: u64 = 10;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_podswitch"))
}

fn trace(node: &SwitchNode, args: &[&str]) -> Result<Value> {
    node.cli_json(&[&["trace"], args].concat())
}

/// The outcome the trace gives `stage`.
fn stage<'a>(trace: &'a Value, stage: &str) -> &'a str {
    trace["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["stage"] == stage))
        .and_then(|s| s["outcome"].as_str())
        .unwrap_or_default()
}

fn counter(node: &SwitchNode, port: &str, field: &str) -> Result<u64> {
    Ok(node.cli_json(&["stats"])?["ports"][port][field]
        .as_u64()
        .unwrap_or(0))
}

fn drops(node: &SwitchNode, port: &str, reason: &str) -> Result<u64> {
    Ok(node.cli_json(&["stats"])?["ports"][port]["drops"][reason]
        .as_u64()
        .unwrap_or(0))
}

/// Wait until `port`'s `reason` drops reach `target` (the worker counts
/// within a batch).
fn wait_drops(node: &SwitchNode, port: &str, reason: &str, target: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = drops(node, port, reason)?;
        if n >= target {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{port}: {n} {reason} drops, {target} expected"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

/// A UDP frame from `pod` (its MAC) with source address `src`, to `to`
/// through the router.
fn udp_frame(pod: &Pod, src: Ipv4Addr, to: Ipv4Addr) -> Result<Vec<u8>> {
    let flow = UdpFlow {
        src_mac: parse_mac(&pod.mac)?,
        dst_mac: parse_mac(&router_mac(1))?,
        src: SocketAddrV4::new(src, 40000),
        dst: SocketAddrV4::new(to, 9),
    };
    flood::udp_frame(&flow, UDP_HEADERS + 32)
}

fn link_mac(node: &SwitchNode, ifname: &str) -> Result<String> {
    let out = node.ns.ip(&["-j", "link", "show", ifname])?;
    let links: Value = serde_json::from_str(&out)?;
    Ok(links[0]["address"].as_str().unwrap_or_default().to_string())
}

#[test]
fn traces_match_what_packets_do() -> Result<()> {
    let mut lab = Lab::new("sw-trace")?;
    let dir = lab.scratch_dir()?;
    let SwitchPair { nodes, pods } =
        SwitchPair::build(&mut lab, binary(), &dir, &SwitchOptions::default())?;
    let [n1, n2] = &nodes;
    let [[a, _], [c, _]] = &pods;
    let a_port = a.port.as_str();
    // Resolve the peer's next hop, as traffic would.
    ensure!(ping(&a.ns, c.ip, 3)? >= 1, "no ping across nodes");

    // To a remote pod: through the tunnel to node 2, with the outer
    // header node 1 writes.
    let remote = trace(n1, &[a_port, "--dst", &c.ip.to_string(), "--proto", "icmp"])?;
    ensure!(remote["verdict"] == "tunnel", "{remote:#}");
    ensure!(remote["peer"] == node_ip(2).to_string(), "{remote:#}");
    ensure!(remote["output_port"] == "ul0", "{remote:#}");
    let outer = &remote["outer"];
    ensure!(outer["src_ip"] == node_ip(1).to_string(), "{remote:#}");
    ensure!(outer["dst_ip"] == node_ip(2).to_string(), "{remote:#}");
    ensure!(outer["dst_port"] == 4789 && outer["vni"] == 1, "{remote:#}");
    ensure!(outer["src_mac"] == link_mac(n1, "ul0")?, "{remote:#}");
    ensure!(outer["dst_mac"] == link_mac(n2, "ul0")?, "{remote:#}");
    ensure!(
        stage(&remote, "policy").starts_with("passed: no NetworkPolicy"),
        "{remote:#}"
    );
    // The real packets arrive at that peer, through its uplink, at the pod.
    let before = (
        counter(n2, "ul0", "rx_packets")?,
        counter(n2, &c.port, "tx_packets")?,
    );
    let replies = u64::from(ping(&a.ns, c.ip, COPIES as u32)?);
    ensure!(
        replies >= COPIES / 2,
        "{replies}/{COPIES} pings across nodes"
    );
    let after = (
        counter(n2, "ul0", "rx_packets")?,
        counter(n2, &c.port, "tx_packets")?,
    );
    ensure!(after.0 - before.0 >= replies && after.1 - before.1 >= replies);
    // The human form says the same.
    let text = n1.cli(&[
        "trace",
        a_port,
        "--dst",
        &c.ip.to_string(),
        "--proto",
        "icmp",
    ])?;
    ensure!(
        text.contains(&format!("to peer {} via tunnel (ul0)", node_ip(2))),
        "{text}"
    );

    // A spoofed source, traced as the exact bytes then sent: a trace
    // neither sends nor counts.
    let spoofed = udp_frame(a, Ipv4Addr::new(10, 244, 1, 99), c.ip)?;
    let counted = drops(n1, a_port, "spoofed")?;
    let verdict = trace(n1, &[a_port, "--hex", &hex(&spoofed)])?;
    ensure!(verdict["verdict"] == "drop", "{verdict:#}");
    ensure!(verdict["drop_reason"] == "spoofed", "{verdict:#}");
    ensure!(
        stage(&verdict, "anti_spoofing") == "drop: spoofed",
        "{verdict:#}"
    );
    ensure!(stage(&verdict, "output") == "not reached", "{verdict:#}");
    ensure!(
        drops(n1, a_port, "spoofed")? == counted,
        "the trace was counted"
    );
    let mut link = RawLink::open(&a.ns, "eth0", Duration::from_millis(100))?;
    for _ in 0..COPIES {
        link.send(&spoofed)?;
    }
    wait_drops(n1, a_port, "spoofed", counted + COPIES)?;

    // No route: without the default route to the host port, an address
    // outside every pod CIDR.
    n1.cli(&["route", "del", "0.0.0.0/0"])?;
    let nowhere = Ipv4Addr::new(192, 0, 2, 1);
    let verdict = trace(n1, &[a_port, "--dst", &nowhere.to_string()])?;
    ensure!(verdict["drop_reason"] == "no_route", "{verdict:#}");
    ensure!(
        stage(&verdict, "fib_lookup") == "drop: no_route",
        "{verdict:#}"
    );
    let counted = drops(n1, a_port, "no_route")?;
    for _ in 0..COPIES {
        link.send(&udp_frame(a, a.ip, nowhere)?)?;
    }
    wait_drops(n1, a_port, "no_route", counted + COPIES)?;

    // Bad input is an error, not a crash.
    ensure!(trace(n1, &["nosuchport", "--dst", "10.244.2.2"]).is_err());
    ensure!(trace(n1, &[a_port, "--hex", "0g"]).is_err());
    ensure!(trace(n1, &[a_port, "--hex", "00"])?["drop_reason"] == "runt");
    for node in &nodes {
        node.check_frames()?;
    }
    Ok(())
}

/// A trace to a ClusterIP the switch translates: the Service stage names
/// the endpoint and the route follows it; no connection is opened; a real
/// request with the same tuple reaches that endpoint.
#[test]
fn a_service_trace_names_the_endpoint_a_real_request_reaches() -> Result<()> {
    let mut lab = Lab::new("sw-trace-svc")?;
    let dir = lab.scratch_dir()?;
    let file = dir.join("services.json");
    let dns = Ipv4Addr::new(10, 96, 0, 53);
    let (a, c) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 2));
    let port = ServicePort::new(ServiceProtocol::Udp, 53, vec![Endpoint::ready(c, UDP_PORT)]);
    let services = [Service::new("kube-system/dns", dns, vec![port])];
    std::fs::write(&file, serde_json::to_string(&services)?)?;
    let options = SwitchOptions::translating_services(binary(), &file)?;
    let SwitchPair { nodes, pods } = SwitchPair::build(&mut lab, binary(), &dir, &options)?;
    let [n1, _] = &nodes;
    let [[pa, _], [pc, _]] = &pods;
    ensure!((pa.ip, pc.ip) == (a, c), "pods at {} {}", pa.ip, pc.ip);
    let _server = serve_in(&pc.ns, c)?;
    let translated = |node: &SwitchNode| -> Result<Option<u64>> {
        Ok(node.cli_json(&["stats"])?["services"]["connections_translated"].as_u64())
    };
    let a_port = pa.port.as_str();
    let args = [
        a_port,
        "--dst",
        "10.96.0.53",
        "--dport",
        "53",
        "--sport",
        "40000",
    ];
    let traced = trace(n1, &args)?;
    ensure!(traced["verdict"] == "tunnel", "{traced:#}");
    ensure!(traced["peer"] == node_ip(2).to_string(), "{traced:#}");
    let service = stage(&traced, "service");
    ensure!(
        service.starts_with(&format!(
            "{a}:40000 → {dns}:53 becomes {a}:40000 → {c}:{UDP_PORT}, a new connection"
        )),
        "{traced:#}"
    );
    ensure!(translated(n1)? == Some(0), "the trace opened a connection");
    // The real request goes where the trace said.
    ensure!(request(pa, "udp", dns, 53)? == (c, a), "the real request");
    ensure!(translated(n1)? == Some(1));
    let text = n1.cli(&[&["trace"], &args[..]].concat())?;
    ensure!(text.contains(&format!("→ {c}:{UDP_PORT}")), "{text}");
    for node in &nodes {
        node.check_frames()?;
    }
    Ok(())
}
