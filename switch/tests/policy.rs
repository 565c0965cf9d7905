//! NetworkPolicy enforced by the switch (issue 20) through the real path:
//! two podswitch nodes, pods made by the real CNI plugin, labelled in
//! three namespaces, policies applied at run time with `podswitch policy
//! set` on both nodes (as a source hands every node the same set), real
//! TCP and UDP from the pods. The cases: default deny (same node and
//! across, replies to the selected pods' own connections and the node's
//! own traffic still passing), allow from a namespace, an ipBlock with an
//! except, named ports and a port range, egress to a Service's endpoints
//! (the switch translating the Service), and a policy change while a
//! connection is open (it goes on; new ones follow the new rules). The
//! denials are counted per policy and per reason. Needs root.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use podswitch_control::policy::Cluster;
use podswitch_control::service::{Endpoint, Service, ServicePort, ServiceProtocol};
use podswitch_lab::Lab;
use podswitch_lab::cluster::{Pod, SwitchNode, SwitchOptions, SwitchPair};
use podswitch_lab::netns::Netns;
use podswitch_lab::service_traffic::{
    ECHO_PORT, HELD_CONNECTION, TCP_PORT, TRY_SERVICE, UDP_PORT, request, serve_in,
};
use serde_json::json;

/// A Service whose endpoints are the `web` pods b and c.
const WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// How long a try waits for an answer: a denied one waits it out.
const TRY_SECONDS: &str = "2";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_podswitch"))
}

/// The pods' namespaces and labels: a in `front` (a client), b and c in
/// `shop` (`web`, c with named ports), d in `other` (a client).
fn cluster(pods: &[[Pod; 2]; 2], policies: serde_json::Value) -> Result<Cluster> {
    let [[a, b], [c, d]] = pods;
    let named = json!([{"name": "http", "port": TCP_PORT},
                       {"name": "dns", "protocol": "udp", "port": UDP_PORT}]);
    Ok(serde_json::from_value(json!({
        "namespaces": [{"name": "front", "labels": {"team": "front"}},
                       {"name": "shop"}, {"name": "other"}],
        "pods": [
            {"namespace": "front", "name": "a", "labels": {"app": "client"}, "ip": a.ip},
            {"namespace": "shop", "name": "b", "labels": {"app": "web"}, "ip": b.ip},
            {"namespace": "shop", "name": "c", "labels": {"app": "web"}, "ip": c.ip,
             "ports": named},
            {"namespace": "other", "name": "d", "labels": {"app": "client"}, "ip": d.ip},
        ],
        "policies": policies,
    }))?)
}

/// Put `policies` in force on both nodes through the control socket.
fn apply(
    nodes: &[SwitchNode; 2],
    pods: &[[Pod; 2]; 2],
    dir: &Path,
    policies: serde_json::Value,
) -> Result<()> {
    let file = dir.join("policy.json");
    let set = cluster(pods, policies)?;
    std::fs::write(&file, serde_json::to_string_pretty(&set)?)?;
    for node in nodes {
        node.cli(&["policy", "set", &file.to_string_lossy()])?;
    }
    Ok(())
}

/// How a try from `ns` to `host:port` ended (`connected`, `answered`,
/// `refused`, `timeout`).
fn outcome(ns: &Netns, proto: &str, host: Ipv4Addr, port: u16) -> Result<String> {
    let host = host.to_string();
    let port = port.to_string();
    let args = ["-c", TRY_SERVICE, proto, &host, &port, TRY_SECONDS];
    Ok(ns.run("python3", &args)?.trim().to_string())
}

/// Check that `from` reaches `to:port` over `proto` (`allowed`) or not.
fn expect(case: &str, from: &Pod, proto: &str, to: &Pod, port: u16, allowed: bool) -> Result<()> {
    let got = outcome(&from.ns, proto, to.ip, port)?;
    let want = match (allowed, proto) {
        (true, "tcp") => "connected",
        (true, _) => "answered",
        (false, _) => "timeout",
    };
    ensure!(
        got == want,
        "{case}: {proto} {} -> {}:{port}: {got}, expected {want}",
        from.ip,
        to.ip
    );
    Ok(())
}

/// Packets `node` dropped for `reason`, over all ports.
fn drops(node: &SwitchNode, reason: &str) -> Result<u64> {
    let stats = node.cli_json(&["stats"])?;
    let ports = stats["ports"].as_object().context("ports in stats")?;
    Ok(ports
        .values()
        .filter_map(|port| port["drops"][reason].as_u64())
        .sum())
}

/// What `node`'s `podswitch policy` counts as denied by `policy`.
fn denied_by(node: &SwitchNode, policy: &str) -> Result<u64> {
    let status = node.cli_json(&["policy"])?;
    let counters = status["policies"].as_array().context("policies")?;
    counters
        .iter()
        .find(|p| p["policy"] == policy)
        .and_then(|p| p["denied"].as_u64())
        .with_context(|| format!("{policy} is not in force on node {}: {status}", node.index))
}

#[test]
fn the_switch_enforces_network_policy_as_kubernetes_specifies() -> Result<()> {
    let mut lab = Lab::new("pol")?;
    let dir: PathBuf = lab.scratch_dir()?;
    let services = dir.join("services.json");
    let (b_ip, c_ip) = (Ipv4Addr::new(10, 244, 1, 3), Ipv4Addr::new(10, 244, 2, 2));
    let endpoints = [b_ip, c_ip].map(|e| Endpoint::ready(e, TCP_PORT)).to_vec();
    let web = Service::new(
        "shop/web",
        WEB,
        vec![ServicePort::new(ServiceProtocol::Tcp, 80, endpoints)],
    );
    std::fs::write(&services, serde_json::to_string(&[web])?)?;
    let options = SwitchOptions::translating_services(binary(), &services)?;
    let SwitchPair { nodes, pods } = SwitchPair::build(&mut lab, binary(), &dir, &options)?;
    let [[a, b], [c, d]] = &pods;
    ensure!((b.ip, c.ip) == (b_ip, c_ip), "pods at {} {}", b.ip, c.ip);
    let _servers = [a, b, c, d]
        .map(|pod| serve_in(&pod.ns, pod.ip))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;

    // No policy: everything passes.
    expect("no policy", d, "tcp", c, TCP_PORT, true)?;

    // Default deny for ingress in `shop`.
    let deny = json!({"namespace": "shop", "name": "deny-ingress", "pod_selector": {}});
    apply(&nodes, &pods, &dir, json!([deny]))?;
    let case = "default deny";
    expect(case, a, "tcp", b, TCP_PORT, false)?;
    expect(case, a, "tcp", c, TCP_PORT, false)?;
    expect(case, d, "udp", c, UDP_PORT, false)?;
    // The selected pods' own connections get their replies, and the
    // node reaches its pods (kubelet probes).
    expect(case, c, "tcp", a, TCP_PORT, true)?;
    expect(case, b, "udp", d, UDP_PORT, true)?;
    let from_node = outcome(&nodes[0].ns, "tcp", b.ip, TCP_PORT)?;
    ensure!(from_node == "connected", "node 1 to its pod b: {from_node}");
    ensure!(
        denied_by(&nodes[1], "shop/deny-ingress")? >= 2,
        "node 2 counted c's denials"
    );
    ensure!(
        drops(&nodes[1], "policy_denied_ingress")? >= 2,
        "node 2's drops by reason"
    );
    ensure!(
        drops(&nodes[0], "policy_denied_egress")? == 0,
        "nothing restricts egress"
    );
    // `podswitch trace` tells the same, and counts nothing.
    let denied_before = denied_by(&nodes[0], "shop/deny-ingress")?;
    let b_ip = b.ip.to_string();
    let port = TCP_PORT.to_string();
    let args = [
        "trace", &a.port, "--dst", &b_ip, "--proto", "tcp", "--dport", &port,
    ];
    let traced = nodes[0].cli_json(&args)?;
    ensure!(
        traced["drop_reason"] == "policy_denied_ingress",
        "trace of a to b under default deny: {traced:#}"
    );
    ensure!(
        denied_by(&nodes[0], "shop/deny-ingress")? == denied_before,
        "a trace counted a denial"
    );
    let shown = nodes[1].cli(&["policy"])?;
    ensure!(
        shown.contains("shop/c") && shown.contains("shop/deny-ingress"),
        "podswitch policy on node 2:\n{shown}"
    );

    // Allow from a namespace, beside the default deny.
    let from_front = json!({"namespace": "shop", "name": "from-front", "pod_selector": {},
        "ingress": [{"peers": [{"namespace_selector": {"match_labels": {"team": "front"}}}]}]});
    apply(&nodes, &pods, &dir, json!([deny, from_front]))?;
    let case = "allow from namespace front";
    expect(case, a, "tcp", b, TCP_PORT, true)?;
    expect(case, a, "tcp", c, TCP_PORT, true)?;
    expect(case, d, "tcp", c, TCP_PORT, false)?;

    // An ipBlock with an except: the pod network but d.
    let block = json!({"namespace": "shop", "name": "from-block", "pod_selector": {},
        "ingress": [{"peers": [{"ip_block": {"cidr": "10.244.0.0/16",
                                             "except": [format!("{}/32", d.ip)]}}]}]});
    apply(&nodes, &pods, &dir, json!([block]))?;
    let case = "ipBlock with except";
    expect(case, a, "tcp", c, TCP_PORT, true)?;
    expect(case, b, "udp", c, UDP_PORT, true)?;
    expect(case, d, "tcp", c, TCP_PORT, false)?;

    // Named ports (resolved at c), then a port range.
    let named = json!({"namespace": "shop", "name": "named", "pod_selector": {},
        "ingress": [{"ports": [{"port": "http"}, {"protocol": "udp", "port": "dns"}]}]});
    apply(&nodes, &pods, &dir, json!([named]))?;
    let case = "named ports";
    expect(case, d, "tcp", c, TCP_PORT, true)?;
    expect(case, d, "udp", c, UDP_PORT, true)?;
    expect(case, d, "tcp", c, ECHO_PORT, false)?;
    let range = json!({"namespace": "shop", "name": "range", "pod_selector": {},
        "ingress": [{"ports": [{"port": ECHO_PORT, "end_port": ECHO_PORT + 9}]}]});
    apply(&nodes, &pods, &dir, json!([range]))?;
    let case = "port range";
    expect(case, d, "tcp", c, ECHO_PORT, true)?;
    expect(case, d, "tcp", c, TCP_PORT, false)?;

    // Egress to a Service's endpoints: the rule names the `web` pods'
    // port; the client asks the ClusterIP, which the switch translates
    // first.
    let to_web = json!({"namespace": "front", "name": "to-web", "pod_selector": {},
        "policy_types": ["Egress"],
        "egress": [{"peers": [{"namespace_selector":
                                   {"match_labels": {"kubernetes.io/metadata.name": "shop"}},
                               "pod_selector": {"match_labels": {"app": "web"}}}],
                    "ports": [{"port": TCP_PORT}]}]});
    apply(&nodes, &pods, &dir, json!([to_web]))?;
    let case = "egress to a Service's endpoints";
    for _ in 0..6 {
        let (endpoint, seen) = request(a, "tcp", WEB, 80)?;
        ensure!(
            [b.ip, c.ip].contains(&endpoint) && seen == a.ip,
            "{case}: answered by {endpoint}, which saw {seen}"
        );
    }
    expect(case, a, "tcp", d, TCP_PORT, false)?;
    expect(case, a, "tcp", c, ECHO_PORT, false)?;
    ensure!(
        drops(&nodes[0], "policy_denied_egress")? >= 2,
        "node 1 dropped a's denied egress"
    );

    // A policy change while a connection is open: it goes on, new ones
    // follow the new rules.
    let echo = json!({"namespace": "shop", "name": "echo", "pod_selector": {},
        "ingress": [{"ports": [{"port": ECHO_PORT}]}]});
    apply(&nodes, &pods, &dir, json!([echo]))?;
    let go = dir.join("go");
    let _ = std::fs::remove_file(&go);
    let held = std::thread::scope(|scope| -> Result<String> {
        let client = scope.spawn(|| {
            a.ns.run(
                "python3",
                &[
                    "-c",
                    HELD_CONNECTION,
                    &c.ip.to_string(),
                    &ECHO_PORT.to_string(),
                    &go.to_string_lossy(),
                ],
            )
        });
        let changed = wait_for_connection(c, a.ip).and_then(|()| {
            apply(&nodes, &pods, &dir, json!([deny]))?;
            expect("after the change", a, "tcp", c, ECHO_PORT, false)
        });
        std::fs::write(&go, "")?;
        let output = client
            .join()
            .map_err(|_| anyhow::anyhow!("the client thread panicked"))??;
        changed?;
        Ok(output.trim().to_string())
    })?;
    ensure!(
        held == "echoed",
        "the open connection after the change: {held}"
    );

    // Every policy gone: everything passes again.
    apply(&nodes, &pods, &dir, json!([]))?;
    expect("no policy again", d, "tcp", c, TCP_PORT, true)?;
    for node in &nodes {
        node.check_frames()?;
    }
    Ok(())
}

/// Wait (10 s at most) until `server` has a connection from `client` to
/// its echo port.
fn wait_for_connection(server: &Pod, client: Ipv4Addr) -> Result<()> {
    let filter = format!("sport = :{ECHO_PORT}");
    for _ in 0..100 {
        let established = server
            .ns
            .run("ss", &["-Htn", "state", "established", &filter])?;
        if established.contains(&format!("{client}:")) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    anyhow::bail!("{client} did not connect to {}:{ECHO_PORT}", server.ip)
}
