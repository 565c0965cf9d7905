//! kube-proxy's Services through podswitch (issue 18, item 1): two nodes
//! with pods made by the real plugin, kube-proxy-shaped rules written on
//! both nodes as kube-proxy writes them (iptables mode: `KUBE-SERVICES` →
//! `KUBE-SVC-*` → `KUBE-SEP-*` DNAT, endpoints picked by `statistic`;
//! nftables mode: `table ip kube-proxy`, a service map and `dnat to`),
//! and pods reaching TCP and UDP Services whose endpoints are on the same
//! node, on the other node, and the client itself. The daemon's table
//! `ip podswitch` is what makes it work: with `service_masquerade = false`
//! the same connections fail; a clean stop removes the table; a daemon
//! killed with SIGKILL and started again leaves exactly one copy. Needs
//! root.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use common::{Nodes, nodes, plugin, serial};
use podswitch_lab::cluster::{Pod, SwitchNode, pod_gateway};
use podswitch_lab::process::Process;
use podswitch_lab::service_traffic::{ECHO_PORT, TCP_PORT, UDP_PORT, request, serve_in};
use podswitch_lab::traffic::{IPERF_PORT, IperfClient, iperf_server};
use podswitch_lab::{Lab, Netns};

/// `count` one-byte round trips on one TCP connection; the median in µs.
const ROUND_TRIPS: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rtts = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter()
    s.send(b"x")
    s.recv(1)
    rtts.append(time.perf_counter() - t)
rtts.sort()
print(f"{rtts[len(rtts) // 2] * 1e6:.1f}")
"#;

/// A Service: a ClusterIP, a protocol and port, and its endpoints (pod
/// address, target port).
struct Service {
    name: &'static str,
    cluster_ip: Ipv4Addr,
    udp: bool,
    port: u16,
    endpoints: Vec<(Ipv4Addr, u16)>,
}

impl Service {
    fn proto(&self) -> &'static str {
        if self.udp { "udp" } else { "tcp" }
    }
}

/// The lab: pods a (10.244.1.2) and b (10.244.1.3) on node 1, c
/// (10.244.2.2) and d (10.244.2.3) on node 2, a server in a, b and c.
struct ServiceLab {
    nodes: Nodes,
    pods: [Pod; 4],
    _servers: Vec<Process>,
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

/// The Services of the test: one per case with a single endpoint, one
/// with an endpoint on each node, and the UDP "DNS" Services.
fn services() -> Vec<Service> {
    let a = ip(10, 244, 1, 2);
    let b = ip(10, 244, 1, 3);
    let c = ip(10, 244, 2, 2);
    let tcp = |name, last, endpoints: &[Ipv4Addr]| Service {
        name,
        cluster_ip: ip(10, 96, 0, last),
        udp: false,
        port: 80,
        endpoints: endpoints.iter().map(|&e| (e, TCP_PORT)).collect(),
    };
    let dns = |name, last, endpoint| Service {
        name,
        cluster_ip: ip(10, 96, 0, last),
        udp: true,
        port: 53,
        endpoints: vec![(endpoint, UDP_PORT)],
    };
    vec![
        tcp("web", 10, &[b, c]),
        tcp("web-b", 11, &[b]),
        tcp("web-c", 12, &[c]),
        tcp("web-a", 13, &[a]),
        dns("dns-b", 21, b),
        dns("dns-c", 22, c),
        Service {
            name: "iperf-b",
            cluster_ip: ip(10, 96, 0, 31),
            udp: false,
            port: IPERF_PORT,
            endpoints: vec![(b, IPERF_PORT)],
        },
        Service {
            name: "iperf-c",
            cluster_ip: ip(10, 96, 0, 32),
            udp: false,
            port: IPERF_PORT,
            endpoints: vec![(c, IPERF_PORT)],
        },
        Service {
            name: "echo-c",
            cluster_ip: ip(10, 96, 0, 33),
            udp: false,
            port: ECHO_PORT,
            endpoints: vec![(c, ECHO_PORT)],
        },
        Service {
            name: "echo-b",
            cluster_ip: ip(10, 96, 0, 34),
            udp: false,
            port: ECHO_PORT,
            endpoints: vec![(b, ECHO_PORT)],
        },
    ]
}

/// The cluster CIDR kube-proxy is told (`--cluster-cidr`): traffic to a
/// ClusterIP from outside it is marked for masquerade.
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// kube-proxy's masquerade mark.
const MASQ_MARK: &str = "0x4000";

/// kube-proxy's iptables-mode `nat` table for `services`, as
/// `iptables-restore --noflush` input.
fn iptables_rules(services: &[Service]) -> String {
    let mut chains = vec![
        "KUBE-SERVICES".to_string(),
        "KUBE-POSTROUTING".into(),
        "KUBE-MARK-MASQ".into(),
    ];
    let mut rules = vec![
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
            .into(),
        format!("-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"),
        format!("-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"),
        format!("-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}"),
        "-A KUBE-POSTROUTING -j MASQUERADE --random-fully".to_string(),
    ];
    for (i, svc) in services.iter().enumerate() {
        let proto = svc.proto();
        let svc_chain = format!("KUBE-SVC-{i:016}");
        chains.push(svc_chain.clone());
        let matches = format!(
            "-d {}/32 -p {proto} -m comment --comment \"default/{}\" -m {proto} --dport {}",
            svc.cluster_ip, svc.name, svc.port
        );
        rules.push(format!("-A KUBE-SERVICES {matches} -j {svc_chain}"));
        rules.push(format!(
            "-A {svc_chain} ! -s {CLUSTER_CIDR} {matches} -j KUBE-MARK-MASQ"
        ));
        let n = svc.endpoints.len();
        for (j, (endpoint, port)) in svc.endpoints.iter().enumerate() {
            let sep = format!("KUBE-SEP-{i:08}{j:08}");
            chains.push(sep.clone());
            // kube-proxy: endpoint j of n is taken with probability
            // 1/(n-j) among those left; the last always.
            let pick = if j + 1 < n {
                format!(
                    " -m statistic --mode random --probability {:.11}",
                    1.0 / (n - j) as f64
                )
            } else {
                String::new()
            };
            rules.push(format!(
                "-A {svc_chain} -m comment --comment \"default/{} -> {endpoint}:{port}\"{pick} -j {sep}",
                svc.name
            ));
            // Hairpin: an endpoint reaching itself is masqueraded by
            // kube-proxy's own rule.
            rules.push(format!("-A {sep} -s {endpoint}/32 -j KUBE-MARK-MASQ"));
            rules.push(format!(
                "-A {sep} -p {proto} -m {proto} -j DNAT --to-destination {endpoint}:{port}"
            ));
        }
    }
    let mut text = String::from("*nat\n");
    for chain in chains {
        text.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for rule in rules {
        text.push_str(&rule);
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    text
}

/// kube-proxy's nftables-mode table for `services`, as `nft -f` input.
fn nftables_rules(services: &[Service]) -> String {
    let mut map = Vec::new();
    let mut chains = String::new();
    for (i, svc) in services.iter().enumerate() {
        let proto = svc.proto();
        let chain = format!("service-{i}-{}", svc.name);
        map.push(format!(
            "{} . {proto} . {} : goto {chain}",
            svc.cluster_ip, svc.port
        ));
        let endpoints: Vec<String> = svc
            .endpoints
            .iter()
            .enumerate()
            .map(|(j, _)| format!("{j} : goto endpoint-{i}-{j}"))
            .collect();
        chains.push_str(&format!(
            "chain {chain} {{\n\
             ip daddr {} {proto} dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade\n\
             numgen random mod {} vmap {{ {} }}\n}}\n",
            svc.cluster_ip,
            svc.port,
            svc.endpoints.len(),
            endpoints.join(", ")
        ));
        for (j, (endpoint, port)) in svc.endpoints.iter().enumerate() {
            chains.push_str(&format!(
                "chain endpoint-{i}-{j} {{\n\
                 ip saddr {endpoint} jump mark-for-masquerade\n\
                 meta l4proto {proto} dnat to {endpoint}:{port}\n}}\n"
            ));
        }
    }
    format!(
        "table ip kube-proxy\ndelete table ip kube-proxy\ntable ip kube-proxy {{\n\
         map service-ips {{\n\
         type ipv4_addr . inet_proto . inet_service : verdict\n\
         elements = {{ {} }}\n}}\n\
         chain nat-prerouting {{\ntype nat hook prerouting priority dstnat; policy accept;\njump services\n}}\n\
         chain nat-output {{\ntype nat hook output priority -100; policy accept;\njump services\n}}\n\
         chain nat-postrouting {{\ntype nat hook postrouting priority srcnat; policy accept;\njump masquerading\n}}\n\
         chain masquerading {{\nmeta mark & {MASQ_MARK} == 0 return\n\
         meta mark set meta mark ^ {MASQ_MARK}\nmasquerade fully-random\n}}\n\
         chain mark-for-masquerade {{\nmeta mark set meta mark | {MASQ_MARK}\n}}\n\
         chain services {{\nip daddr . meta l4proto . th dport vmap @service-ips\n}}\n\
         {chains}}}\n",
        map.join(", ")
    )
}

/// How kube-proxy writes its rules.
#[derive(Clone, Copy)]
enum Mode {
    Iptables,
    Nftables,
}

/// Write `mode`'s rules for `services` on `node`, as kube-proxy would.
fn write_kube_proxy_rules(lab: &Lab, node: &Netns, mode: Mode, services: &[Service]) -> Result<()> {
    let dir = std::env::temp_dir().join(lab.prefix().trim_end_matches('-'));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!("{}.rules", node.name()));
    match mode {
        Mode::Iptables => {
            std::fs::write(&file, iptables_rules(services))?;
            node.run("iptables-restore", &["--noflush", &file.to_string_lossy()])?;
        }
        Mode::Nftables => {
            std::fs::write(&file, nftables_rules(services))?;
            node.run("nft", &["-f", &file.to_string_lossy()])?;
        }
    }
    Ok(())
}

/// Start an endpoint server in `pod`, ready when its three sockets are.
fn start_server(pod: &Pod) -> Result<Process> {
    serve_in(&pod.ns, pod.ip)
}

/// Two nodes running podswitch, four pods, servers in three of them, and
/// `mode`'s kube-proxy rules on both nodes.
fn service_lab(tag: &str, mode: Mode) -> Result<ServiceLab> {
    let mut nodes = nodes(tag, 2)?;
    let plugin = plugin();
    let mut pods = Vec::new();
    for (node, n) in [(0, 2), (0, 3), (1, 2), (1, 3)] {
        pods.push(nodes.switches[node].add_cni_pod(&mut nodes.lab, &plugin, n)?);
    }
    let pods: [Pod; 4] = pods.try_into().map_err(|_| anyhow::anyhow!("four pods"))?;
    let servers = pods[..3].iter().map(start_server).collect::<Result<_>>()?;
    for node in &nodes.switches {
        write_kube_proxy_rules(&nodes.lab, &node.ns, mode, &services())?;
    }
    Ok(ServiceLab {
        nodes,
        pods,
        _servers: servers,
    })
}

/// The Service named `name`.
fn service(name: &str) -> Service {
    services()
        .into_iter()
        .find(|s| s.name == name)
        .expect("a Service of the test")
}

/// `from` reaches Service `name` and its one endpoint answers, seeing the
/// client as `from`'s node's gateway (the masquerade's cost).
fn expect_answer(from: &Pod, name: &str, what: &str) -> Result<()> {
    let svc = service(name);
    let (endpoint, seen) = request(from, svc.proto(), svc.cluster_ip, svc.port)
        .with_context(|| format!("{what} ({name})"))?;
    ensure!(
        endpoint == svc.endpoints[0].0,
        "{what}: {endpoint} answered for {}",
        svc.endpoints[0].0
    );
    let [_, _, node, _] = from.ip.octets();
    ensure!(
        seen == pod_gateway(node),
        "{what}: the endpoint saw the client as {seen}, not the gateway {}",
        pod_gateway(node)
    );
    eprintln!(
        "{what}: {} -> {} answered by {endpoint}",
        from.ip, svc.cluster_ip
    );
    Ok(())
}

/// `from` does not reach Service `name`.
fn expect_no_answer(from: &Pod, name: &str, what: &str) -> Result<()> {
    let svc = service(name);
    match request(from, svc.proto(), svc.cluster_ip, svc.port) {
        Ok(answer) => bail!("{what} ({name}): answered {answer:?} without the daemon's table"),
        Err(e) => {
            eprintln!("{what}: fails as expected: {e:#}");
            Ok(())
        }
    }
}

/// Every case: TCP same node, across nodes and hairpin from pod a, the
/// two-endpoint Service answered by both, TCP from node 2's pod d (its
/// node's rules), and UDP "DNS" same node and across nodes.
fn every_case_works(lab: &ServiceLab) -> Result<()> {
    let [a, _, _, d] = &lab.pods;
    expect_answer(a, "web-b", "TCP, endpoint on the same node")?;
    expect_answer(a, "web-c", "TCP, endpoint on the other node")?;
    expect_answer(a, "web-a", "TCP, hairpin (the client is the endpoint)")?;
    expect_answer(d, "web-c", "TCP from node 2, endpoint on the same node")?;
    expect_answer(d, "web-b", "TCP from node 2, endpoint on the other node")?;
    expect_answer(a, "dns-b", "UDP, endpoint on the same node")?;
    expect_answer(a, "dns-c", "UDP, endpoint on the other node")?;
    expect_answer(d, "dns-b", "UDP from node 2, endpoint on the other node")?;
    // Two endpoints, one per node, picked at random: 40 requests leave
    // one unanswered with probability 2^-39.
    let web = service("web");
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..40 {
        answered.insert(request(a, "tcp", web.cluster_ip, web.port)?.0);
    }
    let all: std::collections::BTreeSet<_> = web.endpoints.iter().map(|e| e.0).collect();
    ensure!(
        answered == all,
        "two-endpoint Service: answered by {answered:?} of {all:?}"
    );
    // The node forwards each Service packet back out the host port it
    // came in by, and sends the pod an ICMP redirect for it, which NAT
    // must keep from leaving the node.
    for pod in &lab.pods {
        let text = pod.ns.run("nstat", &["-asz", "IcmpInRedirects"])?;
        ensure!(
            !text
                .lines()
                .any(|l| l.starts_with("IcmpInRedirects")
                    && l.split_whitespace().nth(1) != Some("0")),
            "pod {} got ICMP redirects: {text}",
            pod.ip
        );
    }
    Ok(())
}

/// Without the daemon's table, the connections the endpoint's reply
/// would take past the node's stack fail.
fn cases_fail_without_the_table(lab: &ServiceLab) -> Result<()> {
    let a = &lab.pods[0];
    expect_no_answer(a, "web-b", "TCP, same node, no masquerade")?;
    expect_no_answer(a, "web-c", "TCP, across nodes, no masquerade")?;
    expect_no_answer(a, "dns-b", "UDP, same node, no masquerade")?;
    expect_no_answer(a, "dns-c", "UDP, across nodes, no masquerade")?;
    // kube-proxy masquerades hairpin connections itself (the
    // KUBE-SEP rule marking the endpoint's own address).
    expect_answer(a, "web-a", "TCP, hairpin, kube-proxy's own masquerade")
}

/// The copies of the daemon's table in `node`'s ruleset, and of its
/// masquerade rule.
fn copies_of_the_table(node: &SwitchNode) -> Result<(usize, usize)> {
    let ruleset = node.ns.run("nft", &["list", "ruleset"])?;
    Ok((
        ruleset.matches("table ip podswitch {").count(),
        ruleset.matches("ct status dnat").count(),
    ))
}

/// The packets counted by the rule of the daemon's table whose text
/// holds `marker`.
fn counted(node: &SwitchNode, marker: &str) -> Result<u64> {
    let table = node.ns.run("nft", &["list", "table", "ip", "podswitch"])?;
    let line = table
        .lines()
        .find(|l| l.contains(marker))
        .with_context(|| format!("no rule with {marker:?} in\n{table}"))?;
    line.split_once("counter packets ")
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no packet count in {line:?}"))
}

/// Restart `node`'s daemon (stopping it cleanly if it runs) with
/// `service_masquerade` set to `on`.
fn relaunch_with_masquerade(node: &mut SwitchNode, on: bool) -> Result<()> {
    relaunch_with(node, "service_masquerade", on)
}

/// Restart `node`'s daemon (stopping it cleanly if it runs) with the
/// boolean `key` set to `on`.
fn relaunch_with(node: &mut SwitchNode, key: &str, on: bool) -> Result<()> {
    ensure!(node.stop(), "the daemon did not stop on SIGTERM");
    let path = node.config_path();
    let text = std::fs::read_to_string(&path)?;
    let key = |v: bool| format!("{key} = {v}\n");
    let base = text.replace(&key(true), "").replace(&key(false), "");
    // Top-level keys go before the first [[peers]] table.
    let edited = base.replacen(
        "check_frames = true\n",
        &format!("check_frames = true\n{}", key(on)),
        1,
    );
    ensure!(edited != base, "no check_frames line in {}", path.display());
    std::fs::write(&path, edited)?;
    node.launch()
}

#[test]
fn kube_proxy_iptables_mode_services_work_through_the_daemons_table() -> Result<()> {
    let _serial = serial();
    let mut lab = service_lab("svcipt", Mode::Iptables)?;
    for node in &lab.nodes.switches {
        ensure!(
            copies_of_the_table(node)? == (1, 1),
            "node {}: table",
            node.index
        );
    }
    every_case_works(&lab)?;
    for node in &lab.nodes.switches {
        let masqueraded = counted(node, "Service endpoint")?;
        eprintln!("node {}: {masqueraded} packets masqueraded", node.index);
        ensure!(
            masqueraded > 0,
            "node {}: the rule matched nothing",
            node.index
        );
    }

    // Switched off: a clean stop removes the table, and the daemon
    // started with service_masquerade = false writes no Service rule (the
    // table keeps the egress rule).
    let node = &mut lab.nodes.switches[0];
    ensure!(node.stop(), "the daemon did not stop on SIGTERM");
    ensure!(
        copies_of_the_table(node)? == (0, 0),
        "the table outlived a clean stop"
    );
    relaunch_with_masquerade(node, false)?;
    ensure!(
        copies_of_the_table(node)? == (1, 0),
        "service_masquerade = false: the table must hold the egress rule only"
    );
    cases_fail_without_the_table(&lab)?;

    // Back on, killed with SIGKILL (the table stays), started again: one
    // copy.
    let node = &mut lab.nodes.switches[0];
    relaunch_with_masquerade(node, true)?;
    let daemon = node.daemon().context("the daemon runs")?;
    ensure!(
        daemon.signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(10)),
        "the daemon survived SIGKILL"
    );
    ensure!(copies_of_the_table(node)? == (1, 1), "SIGKILL: the table");
    node.launch()?;
    ensure!(
        copies_of_the_table(node)? == (1, 1),
        "after a restart: one copy"
    );
    every_case_works(&lab)?;
    for node in &lab.nodes.switches {
        node.check_frames()?;
    }
    Ok(())
}

#[test]
fn kube_proxy_nftables_mode_services_work_through_the_daemons_table() -> Result<()> {
    let _serial = serial();
    let mut lab = service_lab("svcnft", Mode::Nftables)?;
    every_case_works(&lab)?;
    relaunch_with_masquerade(&mut lab.nodes.switches[0], false)?;
    cases_fail_without_the_table(&lab)?;
    Ok(())
}

/// Egress (issue 19): a pod reaches an address outside the pod network
/// (a "world" namespace behind node 1, with no route to the pods) through
/// its node, masqueraded to node 1's address on that link, over TCP and
/// UDP; pod-to-pod traffic across nodes keeps the pod's address. With `egress_masquerade = false` the world's answers have
/// nowhere to go.
#[test]
fn egress_is_masqueraded_to_the_node() -> Result<()> {
    let _serial = serial();
    let mut nodes = nodes("egress", 2)?;
    let plugin = plugin();
    let a = nodes.switches[0].add_cni_pod(&mut nodes.lab, &plugin, 2)?;
    let c = nodes.switches[1].add_cni_pod(&mut nodes.lab, &plugin, 2)?;
    let world = nodes.lab.netns("world")?;
    let n1 = &nodes.switches[0].ns;
    n1.add_veth("out0", &world, "eth0")?;
    let (n1_out, world_ip) = (ip(192, 0, 2, 1), ip(192, 0, 2, 2));
    n1.ip(&["addr", "add", "192.0.2.1/24", "dev", "out0"])?;
    n1.ip(&["link", "set", "out0", "up"])?;
    world.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"])?;
    world.ip(&["link", "set", "eth0", "up"])?;
    let _world_server = serve_in(&world, world_ip)?;
    let _pod_server = start_server(&c)?;

    for proto in ["tcp", "udp"] {
        let (answered, seen) = request(
            &a,
            proto,
            world_ip,
            if proto == "tcp" { TCP_PORT } else { UDP_PORT },
        )?;
        ensure!(
            answered == world_ip && seen == n1_out,
            "{proto} to the world: answered by {answered}, saw the client as {seen} (not node 1's {n1_out})"
        );
        let (answered, seen) = request(
            &a,
            proto,
            c.ip,
            if proto == "tcp" { TCP_PORT } else { UDP_PORT },
        )?;
        ensure!(
            answered == c.ip && seen == a.ip,
            "{proto} pod to pod: answered by {answered}, saw the client as {seen}, not {}",
            a.ip
        );
    }
    ensure!(
        counted(&nodes.switches[0], "pod to the world")? > 0,
        "the egress rule matched nothing"
    );

    relaunch_with(&mut nodes.switches[0], "egress_masquerade", false)?;
    ensure!(
        request(&a, "tcp", world_ip, TCP_PORT).is_err(),
        "the world answered a pod's own address with egress_masquerade = false"
    );
    let (answered, seen) = request(&a, "tcp", c.ip, TCP_PORT)?;
    ensure!(answered == c.ip && seen == a.ip, "pod to pod after: {seen}");
    Ok(())
}

/// The cost of the masquerade path (docs/services.md): TCP throughput and
/// round trips from pod a to pod c's address and to its ClusterIP. A
/// measurement, not a check: run it by hand.
#[test]
#[ignore = "a measurement for docs/services.md, run by hand"]
fn measure_the_service_path() -> Result<()> {
    let _serial = serial();
    let lab = service_lab("svcmeasure", Mode::Iptables)?;
    let [a, b, c, _] = &lab.pods;
    let client = IperfClient {
        seconds: 5,
        ..IperfClient::default()
    };
    for (to, cluster_ip, what) in [
        (b, service("iperf-b").cluster_ip, "same node"),
        (c, service("iperf-c").cluster_ip, "across nodes"),
    ] {
        let _server = iperf_server(&to.ns, IPERF_PORT)?;
        let direct = client.run(&a.ns, to.ip)?.gbps();
        let via = client.run(&a.ns, cluster_ip)?.gbps();
        eprintln!("TCP {what}: pod IP {direct:.2} Gbit/s, ClusterIP {via:.2} Gbit/s");
    }
    let rtt = |to: Ipv4Addr| -> Result<String> {
        let port = ECHO_PORT.to_string();
        let text = a.ns.run(
            "python3",
            &["-c", ROUND_TRIPS, &to.to_string(), &port, "2000"],
        )?;
        Ok(text.trim().to_string())
    };
    // Alternating rounds, so that a change in the machine's load falls
    // on both paths.
    for (to, echo, what) in [(b, "echo-b", "same node"), (c, "echo-c", "across nodes")] {
        let (mut direct, mut via) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            direct.push(rtt(to.ip)?);
            via.push(rtt(service(echo).cluster_ip)?);
        }
        eprintln!(
            "TCP round trip {what} (medians of 2000, 3 alternating rounds): \
             pod IP {direct:?} us, ClusterIP {via:?} us"
        );
    }
    Ok(())
}
