//! NetworkPolicy evaluation costs (issue 20 item 4): the verdict on a
//! connection's first packet at a pod selected by policies holding 10,
//! 1 000 and 10 000 rules in all. Run with
//! `cargo bench -p podswitch-bench --bench policy`.
//!
//! The cluster has 2 000 pods in 20 namespaces, labelled `app` (one of 50)
//! and `tier` (one of 4); the server pod is selected by every policy, ten
//! rules a policy. Rules are drawn at random: seven in ten allow pods by a
//! pod selector (a few of them with a namespace selector too), one in ten
//! a whole namespace, two in ten an ipBlock (a /8 to /28, half of them
//! with a /24 or /32 except), on one to three TCP or UDP ports, a range or
//! a named port. The packets cycle through 65 536 drawn at random: remote
//! pods, addresses inside and outside the blocks, TCP mostly, common and
//! random ports.
//!
//! Then the switch's whole policy stage (`podswitch::policy`) on a packet
//! of a connection it tracks, among 2^20 tracked connections (a probe of
//! its connection table and the parse), and on a connection's first
//! packet that the rules deny (the parse, a missed probe, the rules); the
//! tracked case also in batches of 32 prefetched first, as the AF_XDP
//! port hands them over.

use std::hint::black_box;
use std::net::Ipv4Addr;

#[path = "common/rng.rs"]
mod rng;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipnet::Ipv4Net;
use podswitch::policy::Policies;
use podswitch_policy::model::{IpBlock, NamedPort, Peer, PolicyPort, Port, Rule};
use podswitch_policy::selector::{LabelSelector, Labels};
use podswitch_policy::{
    Cluster, Direction, Namespace, NetworkPolicy, Pod, Protocol, Verdict, compile,
};
use podswitch_services::{Pass, flow};
use rng::Rng;

const NAMESPACES: u64 = 20;
const PODS: u32 = 2000;
const APPS: u64 = 50;
const RULES_PER_POLICY: usize = 10;
/// Packets cycled through per benchmark (a power of two).
const PACKETS: usize = 1 << 16;
const PORTS: [u16; 6] = [53, 80, 443, 5432, 8080, 9090];

fn pod_ip(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + index)
}

fn cluster(rng: &mut Rng) -> (Vec<Pod>, Vec<Namespace>) {
    let namespaces = (0..NAMESPACES)
        .map(|n| Namespace {
            name: format!("ns{n}"),
            labels: Labels::from([("team".into(), format!("t{}", n % 5))]),
        })
        .collect();
    let pods = (0..PODS)
        .map(|i| Pod {
            namespace: format!("ns{}", rng.below(NAMESPACES)),
            name: format!("pod{i}"),
            labels: Labels::from([
                ("app".into(), format!("app{}", rng.below(APPS))),
                ("tier".into(), format!("tier{}", rng.below(4))),
            ]),
            ip: pod_ip(i),
            ports: vec![NamedPort {
                name: "metrics".into(),
                protocol: Protocol::Tcp,
                port: 9000 + rng.below(100) as u16,
            }],
        })
        .collect();
    (pods, namespaces)
}

fn random_block(rng: &mut Rng) -> IpBlock {
    let len = [8, 16, 20, 24, 28][rng.below(5) as usize];
    let base = if rng.below(2) == 0 {
        0x0a00_0000
    } else {
        rng.next() as u32
    };
    let cidr = Ipv4Net::new(Ipv4Addr::from(base | rng.next() as u32 & 0x00ff_ffff), len)
        .unwrap()
        .trunc();
    let mut except = Vec::new();
    if rng.below(2) == 0 && len < 24 {
        let inside = u32::from(cidr.network()) | (rng.next() as u32 & !u32::from(cidr.netmask()));
        let except_len = if rng.below(2) == 0 { 24 } else { 32 };
        except.push(
            Ipv4Net::new(Ipv4Addr::from(inside), except_len)
                .unwrap()
                .trunc(),
        );
    }
    IpBlock { cidr, except }
}

fn random_rule(rng: &mut Rng) -> Rule {
    let app = LabelSelector::labels([("app", format!("app{}", rng.below(APPS)).as_str())]);
    let peer = match rng.below(10) {
        0..=5 => Peer {
            pod_selector: Some(app),
            ..Peer::default()
        },
        6 => Peer {
            pod_selector: Some(app),
            namespace_selector: Some(LabelSelector::labels([(
                "team",
                format!("t{}", rng.below(5)).as_str(),
            )])),
            ..Peer::default()
        },
        7 => Peer {
            namespace_selector: Some(LabelSelector::labels([(
                "kubernetes.io/metadata.name",
                format!("ns{}", rng.below(NAMESPACES)).as_str(),
            )])),
            ..Peer::default()
        },
        _ => Peer {
            ip_block: Some(random_block(rng)),
            ..Peer::default()
        },
    };
    let ports = (0..1 + rng.below(3))
        .map(|_| {
            let protocol = if rng.below(4) == 0 {
                Protocol::Udp
            } else {
                Protocol::Tcp
            };
            match rng.below(10) {
                0 => PolicyPort::new(Protocol::Tcp, Some(Port::Name("metrics".into()))),
                1 => {
                    let first = 1024 + rng.below(60000) as u16;
                    PolicyPort {
                        end_port: Some(first + rng.below(500) as u16),
                        ..PolicyPort::new(protocol, Some(Port::Number(first)))
                    }
                }
                _ => PolicyPort::new(protocol, Some(Port::Number(PORTS[rng.below(6) as usize]))),
            }
        })
        .collect();
    Rule {
        peers: vec![peer],
        ports,
    }
}

/// Policies with `rules` rules in all, each selecting the server (pod 0).
fn policies(rng: &mut Rng, server: &Pod, rules: usize) -> Vec<NetworkPolicy> {
    let selector = LabelSelector::labels([("app", server.labels["app"].as_str())]);
    (0..rules.div_ceil(RULES_PER_POLICY))
        .map(|p| NetworkPolicy {
            namespace: server.namespace.clone(),
            name: format!("policy{p}"),
            pod_selector: selector.clone(),
            policy_types: Vec::new(),
            ingress: (0..RULES_PER_POLICY.min(rules - p * RULES_PER_POLICY))
                .map(|_| random_rule(rng))
                .collect(),
            egress: Vec::new(),
        })
        .collect()
}

fn packets(rng: &mut Rng) -> Vec<(Ipv4Addr, u8, u16)> {
    (0..PACKETS)
        .map(|_| {
            let remote = match rng.below(4) {
                0 | 1 => pod_ip(rng.below(u64::from(PODS)) as u32),
                2 => Ipv4Addr::from(0x0a00_0000 | rng.next() as u32 & 0x00ff_ffff),
                _ => Ipv4Addr::from(rng.next() as u32),
            };
            let protocol = if rng.below(5) == 0 { 17 } else { 6 };
            let port = match rng.below(4) {
                0 => 1024 + rng.below(64000) as u16,
                1 => 9000 + rng.below(100) as u16,
                _ => PORTS[rng.below(6) as usize],
            };
            (remote, protocol, port)
        })
        .collect()
}

fn policy(c: &mut Criterion) {
    let mut rng = Rng(20);
    let (pods, namespaces) = cluster(&mut rng);
    let server = &pods[0];
    let packets = packets(&mut rng);
    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(1));
    for (name, rules) in [("10", 10), ("1k", 1_000), ("10k", 10_000)] {
        let policies = policies(&mut rng, server, rules);
        let compiled = compile(&policies, &pods, &namespaces);
        let allowed = packets
            .iter()
            .filter(|&&(remote, protocol, port)| {
                compiled.allows(Direction::Ingress, server.ip, remote, protocol, port)
                    == Verdict::Allowed
            })
            .count();
        println!("policy/{name}: {} of {PACKETS} packets allowed", allowed);
        let mut next = 0;
        group.bench_function(format!("allows/{name}-rules"), |b| {
            b.iter(|| {
                let (remote, protocol, port) = packets[next & (PACKETS - 1)];
                next += 1;
                black_box(compiled.allows(
                    Direction::Ingress,
                    black_box(server.ip),
                    black_box(remote),
                    protocol,
                    port,
                ))
            })
        });
    }
    group.finish();
}

/// Connections the stage bench tracks.
const TRACKED: usize = 1 << 20;
/// Packets a batch of the worker's AF_XDP port holds at most, prefetched
/// together.
const BATCH: usize = 32;
/// The port the stage bench's connections go to, which one rule allows
/// from anywhere; every other port is left to the 1 000 random rules.
const OPEN_PORT: u16 = 7000;

/// A TCP packet of `flags` from `src:sport` to `dst:dport`.
fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[32] = 0x50;
    p[33] = flags;
    p
}

fn stage(c: &mut Criterion) {
    let mut rng = Rng(21);
    let (pods, namespaces) = cluster(&mut rng);
    let server = pods[0].clone();
    let mut list = policies(&mut rng, &server, 1_000);
    list[0].ingress.push(Rule {
        peers: Vec::new(),
        ports: vec![PolicyPort::new(
            Protocol::Tcp,
            Some(Port::Number(OPEN_PORT)),
        )],
    });
    let local = Ipv4Net::new(server.ip, 32).unwrap();
    let switch = Policies::new(local, Vec::new(), TRACKED);
    let cluster = Cluster {
        namespaces,
        pods,
        policies: list,
    };
    switch.set("bench", cluster).unwrap();
    let enforced = switch.enforced();
    let stage = switch.stage(&enforced, Pass::Live).unwrap();
    // Connections from random addresses and ports: each SYN tracks one.
    let remote = |i: usize| Ipv4Addr::from(0x0b00_0000 + (i as u32 >> 4));
    let sport = |i: usize| 1024 + (i as u16 & 0x0fff);
    for i in 0..TRACKED {
        let syn = tcp(remote(i), sport(i), server.ip, OPEN_PORT, 0x02);
        stage.check(&syn, false, true).unwrap();
    }
    assert_eq!(switch.connections(), TRACKED);
    // Cycle through them in a shuffled order, so that neighbours in the
    // table are not neighbours in time.
    let packets: Vec<[u8; 40]> = (0..TRACKED)
        .map(|_| {
            let i = rng.below(TRACKED as u64) as usize;
            tcp(remote(i), sport(i), server.ip, OPEN_PORT, 0x10)
        })
        .collect();
    let denied: Vec<[u8; 40]> = (0..PACKETS)
        .map(|i| tcp(remote(i), sport(i), server.ip, 1, 0x02))
        .collect();
    let mut group = c.benchmark_group("policy-stage");
    group.throughput(Throughput::Elements(1));
    let mut next = 0;
    group.bench_function("tracked/1m", |b| {
        b.iter(|| {
            let packet = &packets[next & (TRACKED - 1)];
            next += 1;
            black_box(stage.check(black_box(packet), false, true))
        })
    });
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("tracked/1m-batched", |b| {
        b.iter(|| {
            let start = next & (TRACKED - 1) & !(BATCH - 1);
            next += BATCH;
            let batch = &packets[start..start + BATCH];
            stage.prefetch(batch.iter().filter_map(|p| flow::connection_key(p)));
            for packet in batch {
                black_box(stage.check(black_box(packet), false, true)).ok();
            }
        })
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("first-packet-denied/1k-rules", |b| {
        b.iter(|| {
            let packet = &denied[next & (PACKETS - 1)];
            next += 1;
            black_box(stage.check(black_box(packet), false, true))
        })
    });
    group.finish();
}

criterion_group!(benches, policy, stage);
criterion_main!(benches);
