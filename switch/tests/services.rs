//! The switch's own Service translation (issue 18 item 2,
//! `service_translation = "switch"`) through the real path: two podswitch
//! nodes, pods made by the real CNI plugin, Services given in a
//! `services_file`: a TCP Service with an endpoint on each node, a hairpin
//! Service, a UDP "DNS" Service, an echo Service, and NodePorts under
//! both external traffic policies, one with an external IP. Clients on
//! both nodes reach them (the NodePorts at either node's address, the
//! external IP with every endpoint; DNS with fragmented datagrams too),
//! the endpoints see the clients' own addresses, no Service
//! packet crosses a node's stack (the host ports send nothing), and a
//! change of endpoints during traffic is followed: new connections go to
//! the new set and a removed endpoint's connection ends. An endpoint's ICMP
//! port unreachable reaches its client translated (`ECONNREFUSED` on a
//! connected UDP socket), on the same node, across nodes and in hairpin.
//! Needs root.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use podswitch_control::service::{Endpoint, Service, ServicePort, ServiceProtocol, TrafficPolicy};
use podswitch_lab::Lab;
use podswitch_lab::cluster::{Pod, SwitchNode, SwitchOptions, SwitchPair, node_ip, pod_gateway};
use podswitch_lab::membership::wait_for as wait_until;
use podswitch_lab::service_traffic::{
    ECHO_PORT, HELD_CONNECTION, TCP_PORT, TRY_SERVICE, UDP_PORT, request, request_sized, serve_in,
};

const WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const WEB_A: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 13);
const DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
const ECHO: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 33);
const WEB_LOCAL: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 14);
/// A Service without endpoints, TCP and UDP.
const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 44);
/// `web`'s NodePort (`externalTrafficPolicy: Cluster`).
const WEB_NODE_PORT: u16 = 30080;
/// `web-local`'s NodePort (`externalTrafficPolicy: Local`).
const LOCAL_NODE_PORT: u16 = 30081;
/// `empty`'s TCP NodePort, without endpoints.
const EMPTY_NODE_PORT: u16 = 30082;
/// `sticky`'s ClusterIP and NodePort: `sessionAffinity: ClientIP`.
const STICKY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 15);
const STICKY_NODE_PORT: u16 = 30083;
/// `web-local`'s external address (a documentation address: a packet
/// the switch did not translate would find no route out of the lab).
const WEB_LOCAL_EXTERNAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_podswitch"))
}

/// The Services of the test, `web` and `echo` served by `web` and `echo`;
/// `web` and `web-local` (served by `web` too) have NodePorts.
fn services(web: &[Ipv4Addr], echo: &[Ipv4Addr], a: Ipv4Addr, c: Ipv4Addr) -> Vec<Service> {
    let tcp = |port, target, endpoints: &[Ipv4Addr]| {
        let endpoints = endpoints
            .iter()
            .map(|&e| Endpoint::ready(e, target))
            .collect();
        vec![ServicePort::new(ServiceProtocol::Tcp, port, endpoints)]
    };
    let with_node_port = |mut ports: Vec<ServicePort>, node_port| {
        ports[0].node_port = Some(node_port);
        ports
    };
    let web_local = Service {
        external_traffic_policy: TrafficPolicy::Local,
        internal_traffic_policy: TrafficPolicy::Local,
        external_ips: vec![WEB_LOCAL_EXTERNAL],
        ..Service::new(
            "default/web-local",
            WEB_LOCAL,
            with_node_port(tcp(80, TCP_PORT, web), LOCAL_NODE_PORT),
        )
    };
    let dns = vec![ServicePort::new(
        ServiceProtocol::Udp,
        53,
        vec![Endpoint::ready(c, UDP_PORT)],
    )];
    vec![
        Service::new(
            "default/web",
            WEB,
            with_node_port(tcp(80, TCP_PORT, web), WEB_NODE_PORT),
        ),
        web_local,
        Service::new("default/web-a", WEB_A, tcp(80, TCP_PORT, &[a])),
        Service::new("kube-system/dns", DNS, dns),
        Service::new("default/echo", ECHO, tcp(ECHO_PORT, ECHO_PORT, echo)),
        Service::new(
            "default/empty",
            EMPTY,
            vec![
                with_node_port(tcp(80, TCP_PORT, &[]), EMPTY_NODE_PORT).remove(0),
                ServicePort::new(ServiceProtocol::Udp, 53, vec![]),
            ],
        ),
    ]
}

fn write(path: &Path, services: &[Service]) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(services)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The endpoints node `node`'s table gives the Service port at `ip`.
fn endpoints_of(node: &SwitchNode, ip: Ipv4Addr) -> Result<Vec<(Ipv4Addr, u64)>> {
    let table = node.cli_json(&["services"])?;
    let port = table
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["cluster_ip"] == ip.to_string()))
        .with_context(|| format!("{ip} is not in the table: {table}"))?;
    let endpoints = port["endpoints"].as_array().cloned().unwrap_or_default();
    Ok(endpoints
        .iter()
        .filter_map(|e| {
            Some((
                e["address"].as_str()?.parse().ok()?,
                e["connections"].as_u64()?,
            ))
        })
        .collect())
}

/// Wait (10 s at most) until `node`'s table satisfies `done` for `ip`.
fn wait_for(
    node: &SwitchNode,
    ip: Ipv4Addr,
    what: &str,
    done: impl Fn(&[(Ipv4Addr, u64)]) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let endpoints = endpoints_of(node, ip)?;
        if done(&endpoints) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: node {}'s table still has {endpoints:?} for {ip}",
                node.index
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The endpoints that answered `count` TCP requests from `from` to the
/// web Service, each checked to have seen `from`'s own address.
fn web_answers(from: &Pod, count: usize) -> Result<BTreeSet<Ipv4Addr>> {
    answers(from, WEB, 80, count)
}

/// The endpoints that answered `count` TCP requests from `from` to
/// `ip:port`, each checked to have seen `from`'s own address.
fn answers(from: &Pod, ip: Ipv4Addr, port: u16, count: usize) -> Result<BTreeSet<Ipv4Addr>> {
    let mut answered = BTreeSet::new();
    for _ in 0..count {
        let (endpoint, seen) = request(from, "tcp", ip, port)?;
        ensure!(
            seen == from.ip,
            "{endpoint} saw the client {} as {seen}",
            from.ip
        );
        answered.insert(endpoint);
    }
    Ok(answered)
}

/// Packets each node's switch sent to its node's stack (the host port).
fn to_host(nodes: &[SwitchNode; 2]) -> Result<Vec<u64>> {
    nodes
        .iter()
        .map(|node| {
            let stats = node.cli_json(&["stats"])?;
            stats["ports"]["podsw0"]["tx_packets"]
                .as_u64()
                .context("podsw0 in stats")
        })
        .collect()
}

/// A lab for the switch's own translation, named after `tag`: its
/// directory, the Services file to write there, and the addresses of the
/// pods [`SwitchPair`] makes (two on node 1, one on node 2).
fn translation_lab(tag: &str) -> Result<(Lab, PathBuf, PathBuf, [Ipv4Addr; 3])> {
    let lab = Lab::new(tag)?;
    let dir: PathBuf = lab.scratch_dir()?;
    let file = dir.join("services.json");
    let pods = [
        Ipv4Addr::new(10, 244, 1, 2),
        Ipv4Addr::new(10, 244, 1, 3),
        Ipv4Addr::new(10, 244, 2, 2),
    ];
    Ok((lab, dir, file, pods))
}

#[test]
fn the_switch_translates_services_keeping_the_client_address() -> Result<()> {
    let (mut lab, dir, file, [a, b, c]) = translation_lab("svc")?;
    write(&file, &services(&[b, c], &[c], a, c))?;
    let options = SwitchOptions::translating_services(binary(), &file)?;
    let SwitchPair { nodes, pods } = SwitchPair::build(&mut lab, binary(), &dir, &options)?;
    let [[pa, pb], [pc, pd]] = &pods;
    ensure!(
        (pa.ip, pb.ip, pc.ip) == (a, b, c),
        "pods at {} {} {}",
        pa.ip,
        pb.ip,
        pc.ip
    );
    let _servers = [pa, pb, pc]
        .map(|pod| serve_in(&pod.ns, pod.ip))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;

    let before = to_host(&nodes)?;
    // Both endpoints, from either node (same node and across), the client
    // seen as itself.
    for client in [pa, pd] {
        let answered = web_answers(client, 24)?;
        ensure!(
            answered == BTreeSet::from([b, c]),
            "{} reached only {answered:?}",
            client.ip
        );
    }
    // Hairpin: the client is the endpoint, and sees the ClusterIP.
    ensure!(request(pa, "tcp", WEB_A, 80)? == (a, WEB_A), "hairpin");
    // UDP "DNS", across nodes and on the same node; a 4000-byte question
    // and answer, each three IP fragments at the pods' MTU, too.
    for client in [pa, pd] {
        ensure!(
            request(client, "udp", DNS, 53)? == (c, client.ip),
            "DNS from {}",
            client.ip
        );
        ensure!(
            request_sized(client, "udp", DNS, 53, 4000)? == (c, client.ip),
            "a fragmented DNS question from {}",
            client.ip
        );
    }
    // NodePorts at either node's address: `externalTrafficPolicy: Cluster`
    // reaches both endpoints, `Local` only that node's.
    for client in [pa, pd] {
        for node in [1, 2] {
            let answered = answers(client, node_ip(node), WEB_NODE_PORT, 16)?;
            ensure!(
                answered == BTreeSet::from([b, c]),
                "{} to node {node}'s NodePort {WEB_NODE_PORT} reached only {answered:?}",
                client.ip
            );
        }
        for (node, endpoint) in [(1, b), (2, c)] {
            let answered = answers(client, node_ip(node), LOCAL_NODE_PORT, 8)?;
            ensure!(
                answered == BTreeSet::from([endpoint]),
                "{} to node {node}'s externalTrafficPolicy Local NodePort reached {answered:?}",
                client.ip
            );
        }
    }
    // Its external address, from pods: every endpoint whatever the
    // policies (kube-proxy's cluster chain for traffic from pods).
    for client in [pa, pd] {
        let answered = answers(client, WEB_LOCAL_EXTERNAL, 80, 16)?;
        ensure!(
            answered == BTreeSet::from([b, c]),
            "{} to the external IP {WEB_LOCAL_EXTERNAL} reached only {answered:?}",
            client.ip
        );
    }
    // A Service without endpoints refuses at once (an ICMP port
    // unreachable from the switch, as kube-proxy's REJECT), TCP and UDP.
    for protocol in ["tcp", "udp"] {
        let port = if protocol == "tcp" { "80" } else { "53" };
        let outcome = pa.ns.run(
            "python3",
            &["-c", TRY_SERVICE, protocol, &EMPTY.to_string(), port],
        )?;
        ensure!(
            outcome.trim() == "refused",
            "{protocol} to a Service without endpoints: {}",
            outcome.trim()
        );
    }
    let after = to_host(&nodes)?;
    ensure!(
        before == after,
        "Service packets crossed the nodes' stacks: host ports sent {before:?} then {after:?}"
    );
    // Each connection counted once, on its client's node: 24 web, the
    // hairpin, two DNS, 48 NodePort and 16 external IP requests from node
    // 1's pod a; 24 web, two DNS, 48 NodePort and 16 external IP requests
    // from node 2's d. A SYN the client sent again that arrives after its
    // connection closed opens a new one, as in the kernel's conntrack (on
    // a loaded machine a SYN can wait out the client's 1 s timer): at
    // most one more per SYN retransmitted.
    for (node, client, expected) in [(&nodes[0], pa, 27 + 48 + 16), (&nodes[1], pd, 26 + 48 + 16)] {
        let stats = node.cli_json(&["stats"])?;
        let translated = stats["services"]["connections_translated"]
            .as_u64()
            .context("connections_translated in stats")?;
        let resent = syn_retransmits(client)?;
        ensure!(
            (expected..=expected + resent).contains(&translated),
            "node {} translated {translated} connections for {expected} requests, \
             its client {} retransmitted {resent} SYNs; its table: {}",
            node.index,
            client.ip,
            node.cli_json(&["services"])?
        );
    }

    // An endpoint leaves during traffic: new connections go to the one
    // left, and a connection to the one that left ends.
    let go = dir.join("go");
    let _ = std::fs::remove_file(&go);
    let held = std::thread::scope(|scope| -> Result<String> {
        let ns = &pa.ns;
        let client = scope.spawn(|| {
            ns.run(
                "python3",
                &[
                    "-c",
                    HELD_CONNECTION,
                    &ECHO.to_string(),
                    &ECHO_PORT.to_string(),
                    &go.to_string_lossy(),
                ],
            )
        });
        let held =
            wait_for(&nodes[0], ECHO, "the echo connection", |e| e == [(c, 1)]).and_then(|()| {
                write(&file, &services(&[b], &[b], a, c))?;
                wait_for(&nodes[0], ECHO, "c leaving echo", |e| {
                    e.len() == 1 && e[0].0 == b
                })?;
                wait_for(&nodes[0], WEB, "c leaving web", |e| {
                    e.len() == 1 && e[0].0 == b
                })
            });
        std::fs::write(&go, "")?;
        let output = client
            .join()
            .map_err(|_| anyhow::anyhow!("the client thread panicked"))??;
        held?;
        Ok(output.trim().to_string())
    })?;
    ensure!(
        held == "reset",
        "the connection to the removed endpoint: {held}"
    );
    ensure!(
        web_answers(pa, 12)? == BTreeSet::from([b]),
        "new connections after c left"
    );
    // It comes back: new connections use it again.
    write(&file, &services(&[b, c], &[c], a, c))?;
    wait_for(&nodes[0], WEB, "c back in web", |e| e.len() == 2)?;
    ensure!(
        web_answers(pa, 24)? == BTreeSet::from([b, c]),
        "new connections after c came back"
    );
    for node in &nodes {
        node.check_frames()?;
    }
    Ok(())
}

/// SYNs `pod`'s kernel has sent again (`TCPSynRetrans` in its namespace's
/// `/proc/net/netstat`).
fn syn_retransmits(pod: &Pod) -> Result<u64> {
    let netstat = pod.ns.run("cat", &["/proc/net/netstat"])?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next(), lines.next());
    names
        .zip(values)
        .and_then(|(names, values)| {
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(name, _)| *name == "TCPSynRetrans")
                .and_then(|(_, value)| value.parse().ok())
        })
        .with_context(|| format!("TCPSynRetrans in {}'s /proc/net/netstat", pod.ip))
}

/// Traffic from outside the pod network — node 2's own stack, and node
/// 1's — to node 1's NodePorts, translated by node 1's netfilter from the
/// switch's Service table (`ip podswitch-external`):
/// `externalTrafficPolicy: Cluster` reaches the endpoints on both nodes
/// with the client masqueraded to node 1's gateway, `Local` only node 1's
/// endpoint with the client's own address, and a NodePort without
/// endpoints refuses the connection. A Service's external address is
/// taken by the client's own node, as kube-proxy does: from node 2 it
/// reaches node 2's endpoint (`Local`). A NodePort with `sessionAffinity:
/// ClientIP` keeps each client on one endpoint, across a change of the
/// Services too. The table is gone when node 1's daemon stops.
#[test]
fn traffic_from_outside_the_pod_network_reaches_services() -> Result<()> {
    let (mut lab, dir, file, [a, b, c]) = translation_lab("svc-ext")?;
    write(&file, &services(&[b, c], &[c], a, c))?;
    let options = SwitchOptions::translating_services(binary(), &file)?;
    let SwitchPair { mut nodes, pods } = SwitchPair::build(&mut lab, binary(), &dir, &options)?;
    let [[pa, pb], [pc, _]] = &pods;
    let _servers = [pa, pb, pc]
        .map(|pod| serve_in(&pod.ns, pod.ip))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    // The nodes' own stacks as clients, at their underlay addresses.
    let node_client = |node: &SwitchNode, index: u8| Pod {
        ns: node.ns.clone(),
        ip: node_ip(index),
        mac: String::new(),
        port: String::new(),
    };
    let (outside, itself) = (node_client(&nodes[1], 2), node_client(&nodes[0], 1));
    // A route for the external address, as a node's default route would
    // give it (a socket needs one before netfilter's output hook runs).
    nodes[1].ns.ip(&[
        "route",
        "add",
        &format!("{WEB_LOCAL_EXTERNAL}/32"),
        "via",
        &node_ip(1).to_string(),
    ])?;
    let gateway = pod_gateway(1);
    for client in [&outside, &itself] {
        let mut answered = BTreeSet::new();
        for _ in 0..16 {
            let (endpoint, seen) = request(client, "tcp", node_ip(1), WEB_NODE_PORT)?;
            ensure!(
                seen == gateway,
                "{endpoint} saw {} at the Cluster NodePort as {seen}, not {gateway}",
                client.ip
            );
            answered.insert(endpoint);
        }
        ensure!(
            answered == BTreeSet::from([b, c]),
            "{} to node 1's NodePort {WEB_NODE_PORT} reached only {answered:?}",
            client.ip
        );
    }
    for (address, port, endpoint) in [
        (node_ip(1), LOCAL_NODE_PORT, b),
        (WEB_LOCAL_EXTERNAL, 80, c),
    ] {
        for _ in 0..8 {
            let answer = request(&outside, "tcp", address, port)?;
            ensure!(
                answer == (endpoint, outside.ip),
                "node 2 to {address}:{port} (externalTrafficPolicy Local): {answer:?}"
            );
        }
    }
    let outcome = outside.ns.run(
        "python3",
        &[
            "-c",
            TRY_SERVICE,
            "tcp",
            &node_ip(1).to_string(),
            &EMPTY_NODE_PORT.to_string(),
        ],
    )?;
    ensure!(
        outcome.trim() == "refused",
        "node 2 to a NodePort without endpoints: {}",
        outcome.trim()
    );
    sticky_clients_from_outside(&file, &nodes[0], [&outside, &itself], [a, b, c])?;
    let node1 = nodes[0].ns.clone();
    let tables = || node1.run("nft", &["list", "tables"]);
    let before = tables()?;
    ensure!(
        before.contains("table ip podswitch-external"),
        "node 1 has no external Services table: {before}"
    );
    ensure!(nodes[0].stop(), "node 1's daemon did not exit on SIGTERM");
    let after = tables()?;
    ensure!(
        !after.contains("podswitch-external"),
        "node 1's stopped daemon left its table: {after}"
    );
    Ok(())
}

/// `sessionAffinity: ClientIP` at a NodePort, from outside the pod
/// network: with `sticky` (a Cluster NodePort Service with affinity)
/// added, each client's connections all reach one endpoint, and the
/// client is in that endpoint's affinity set in node 1's table; after a
/// change of the Services that adds an endpoint (the table is changed,
/// not replaced), each client still reaches the same one.
fn sticky_clients_from_outside(
    file: &Path,
    node1: &SwitchNode,
    clients: [&Pod; 2],
    [a, b, c]: [Ipv4Addr; 3],
) -> Result<()> {
    let with_sticky = |endpoints: &[Ipv4Addr]| {
        let mut list = services(&[b, c], &[c], a, c);
        let mut port = ServicePort::new(
            ServiceProtocol::Tcp,
            80,
            endpoints
                .iter()
                .map(|&e| Endpoint::ready(e, TCP_PORT))
                .collect(),
        );
        port.node_port = Some(STICKY_NODE_PORT);
        list.push(Service {
            affinity_seconds: Some(600),
            ..Service::new("default/sticky", STICKY, vec![port])
        });
        list
    };
    let table = || {
        node1
            .ns
            .run("nft", &["list", "table", "ip", "podswitch-external"])
    };
    let set_of =
        |endpoint: Ipv4Addr| format!("affinity-default/sticky/tcp/80__{endpoint}/{TCP_PORT}");
    let wait_for_set = |endpoint: Ipv4Addr| {
        wait_until(&format!("{} in node 1's table", set_of(endpoint)), || {
            Ok(table()?.contains(&set_of(endpoint)))
        })
    };
    let endpoint_of = |client: &Pod| -> Result<Ipv4Addr> {
        let mut answered = BTreeSet::new();
        for _ in 0..8 {
            answered.insert(request(client, "tcp", node_ip(1), STICKY_NODE_PORT)?.0);
        }
        ensure!(
            answered.len() == 1,
            "{} reached {answered:?} at a NodePort with sessionAffinity: ClientIP",
            client.ip
        );
        Ok(answered.into_iter().next().unwrap_or(b))
    };
    write(file, &with_sticky(&[b, c]))?;
    wait_for_set(c)?;
    let in_set = |client: &Pod, endpoint: Ipv4Addr, when: &str| -> Result<()> {
        let members = node1.ns.run(
            "nft",
            &["list", "set", "ip", "podswitch-external", &set_of(endpoint)],
        )?;
        ensure!(
            members.contains(&client.ip.to_string()),
            "{} reached {endpoint} but is not in its affinity set {when}: {members}",
            client.ip
        );
        Ok(())
    };
    let mut first = Vec::new();
    for client in clients {
        let endpoint = endpoint_of(client)?;
        in_set(client, endpoint, "")?;
        first.push(endpoint);
    }
    write(file, &with_sticky(&[b, c, a]))?;
    wait_for_set(a)?;
    for (client, &before) in clients.into_iter().zip(&first) {
        in_set(
            client,
            before,
            "after the change (the table was replaced, not changed)",
        )?;
    }
    for (client, before) in clients.into_iter().zip(first) {
        let after = endpoint_of(client)?;
        ensure!(
            after == before,
            "{} went to {before}, and after a change of the Services to {after}",
            client.ip
        );
    }
    Ok(())
}

/// A port no endpoint pod listens on.
const CLOSED_PORT: u16 = 9;

/// ICMP errors about translated connections reach the client translated
/// (the quoted packet's destination back to the ClusterIP and port), so
/// that its socket, connected to the ClusterIP, sees them: a connected
/// UDP socket to a Service whose endpoint has nothing on the target port
/// gets `ECONNREFUSED` from the endpoint's port unreachable, with the
/// endpoint on the client's node, on the other node, and the client
/// itself (hairpin).
#[test]
fn an_endpoint_s_port_unreachable_reaches_the_client_translated() -> Result<()> {
    let (mut lab, dir, file, [a, b, c]) = translation_lab("svc-icmp")?;
    let cases = [
        ("the same node", Ipv4Addr::new(10, 96, 0, 61), b),
        ("the other node", Ipv4Addr::new(10, 96, 0, 62), c),
        ("hairpin", Ipv4Addr::new(10, 96, 0, 63), a),
    ];
    let closed: Vec<Service> = cases
        .iter()
        .enumerate()
        .map(|(i, &(_, ip, endpoint))| {
            let port = ServicePort::new(
                ServiceProtocol::Udp,
                53,
                vec![Endpoint::ready(endpoint, CLOSED_PORT)],
            );
            Service::new(format!("default/closed-{i}"), ip, vec![port])
        })
        .collect();
    write(&file, &closed)?;
    let options = SwitchOptions::translating_services(binary(), &file)?;
    let SwitchPair { nodes, pods } = SwitchPair::build(&mut lab, binary(), &dir, &options)?;
    let [[pa, pb], [pc, _]] = &pods;
    ensure!(
        (pa.ip, pb.ip, pc.ip) == (a, b, c),
        "pods at {} {} {}",
        pa.ip,
        pb.ip,
        pc.ip
    );
    for (case, ip, _) in cases {
        // Bounded: 5 s for the answer (a lost error is a timeout).
        let outcome = pa.ns.run(
            "python3",
            &["-c", TRY_SERVICE, "udp", &ip.to_string(), "53", "5"],
        )?;
        ensure!(
            outcome.trim() == "refused",
            "UDP to a Service whose endpoint has no listener, {case}: {}",
            outcome.trim()
        );
    }
    let stats = nodes[0].cli_json(&["stats"])?;
    ensure!(
        stats["services"]["connections_translated"].as_u64() == Some(cases.len() as u64),
        "{}",
        stats["services"]
    );
    for node in &nodes {
        node.check_frames()?;
    }
    Ok(())
}
