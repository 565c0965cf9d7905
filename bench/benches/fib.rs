//! FIB costs: longest-prefix-match lookups in tables of 1k, 100k and 1M
//! routes, one address at a time and in batches of 64 (as the switch looks
//! them up), and the cost of a control-plane update (a pod's /32 added and
//! removed through `SharedFib`) with the table full. Run with
//! `cargo bench -p podswitch-bench --bench fib`.
//!
//! The tables mix what a pod network routes: a few short prefixes (a default
//! route, the service and link-local ranges), /24 pod CIDRs (three routes in
//! four) and /32 pod routes, 200 to a /24. The pod CIDRs are handed out in
//! order from 10.0.0.0 up, as Kubernetes' node IPAM does, with one in ten
//! left unused (nodes that left); `fib/lookup-scattered` scatters them at
//! random over the whole unicast space instead, the worst case for the cache.
//! `fib/lookup` and `fib/lookup-batch64` look up random addresses inside
//! random routes, `fib/lookup-any` uniformly random addresses.
//!
//! `fib6/*` does the same for the IPv6 table at 1k and 100k routes: /64
//! node pod CIDRs and /128 pod routes under a few short prefixes.

use std::collections::HashSet;
use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

#[path = "common/rng.rs"]
mod rng;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use podswitch::fib::{Ipv4Net, SharedFib};
use podswitch::fib6::{Ipv6Lpm, Ipv6Net};
use rng::Rng;

/// The switch's route targets, roughly: what the table stores.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Local { port: u16, mac: [u8; 6] },
    Peer(u32),
    Host,
}

/// Where the /24 pod CIDRs are.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// In order from 10.0.0.0, with one in ten left unused.
    Allocated,
    /// At random in 1.0.0.0–223.255.255.255.
    Scattered,
}

const TABLES: [(&str, usize, Layout); 4] = [
    ("1k", 1_000, Layout::Allocated),
    ("100k", 100_000, Layout::Allocated),
    ("1m", 1_000_000, Layout::Allocated),
    ("1m", 1_000_000, Layout::Scattered),
];
/// Addresses looked up per table, cycled through (a power of two).
const ADDRESSES: usize = 1 << 20;
const BATCH: usize = 64;
/// /32 pod routes per /24 that has them.
const PODS_PER_24: u32 = 200;

fn prefix(addr: u32, len: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::from(addr), len).expect("length ≤ 32")
}

/// `n` routes: 7 short prefixes, n/4 pod /32s (200 to a /24, in pod CIDRs
/// picked at random) and the rest /24 pod CIDRs placed as `layout` says.
fn routes(n: usize, layout: Layout, rng: &mut Rng) -> Vec<(Ipv4Net, Target)> {
    let mut routes: Vec<(Ipv4Net, Target)> = [
        ("0.0.0.0/0", Target::Host),
        ("10.0.0.0/8", Target::Host),
        ("10.96.0.0/12", Target::Host),
        ("100.64.0.0/10", Target::Peer(1)),
        ("169.254.0.0/16", Target::Host),
        ("172.16.0.0/12", Target::Peer(2)),
        ("192.168.0.0/16", Target::Host),
    ]
    .into_iter()
    .map(|(p, t)| (p.parse().expect("valid prefix"), t))
    .collect();
    let hosts = n / 4;
    let mut seen = HashSet::new();
    let mut slash24s = Vec::new();
    let mut next = u32::from(Ipv4Addr::new(10, 0, 0, 0));
    while slash24s.len() < n - routes.len() - hosts {
        let net = match layout {
            Layout::Allocated => {
                next += 1 << 8;
                next - (1 << 8)
            }
            Layout::Scattered => {
                (1 + rng.below(223) as u32) << 24 | (rng.below(1 << 16) as u32) << 8
            }
        };
        let unused = matches!(layout, Layout::Allocated) && rng.below(10) == 0;
        if !unused && seen.insert(net) {
            slash24s.push(net);
        }
    }
    for (i, &net) in slash24s.iter().enumerate() {
        routes.push((prefix(net, 24), Target::Peer(i as u32 % 5000)));
    }
    let mut picked = HashSet::new();
    let mut with_pods = Vec::new();
    while with_pods.len() < hosts.div_ceil(PODS_PER_24 as usize) {
        let net = slash24s[rng.below(slash24s.len() as u64) as usize];
        if picked.insert(net) {
            with_pods.push(net);
        }
    }
    for i in 0..hosts as u32 {
        let addr = with_pods[(i / PODS_PER_24) as usize] | (1 + i % PODS_PER_24);
        let mac = [0x02, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        routes.push((
            prefix(addr, 32),
            Target::Local {
                port: i as u16,
                mac,
            },
        ));
    }
    routes
}

/// Random addresses inside random routes.
fn routed_addresses(routes: &[(Ipv4Net, Target)], rng: &mut Rng) -> Vec<Ipv4Addr> {
    (0..ADDRESSES)
        .map(|_| {
            let (net, _) = routes[rng.below(routes.len() as u64) as usize];
            let host = rng.next() as u32 & !u32::from(net.netmask());
            Ipv4Addr::from(u32::from(net.network()) | host)
        })
        .collect()
}

fn uniform_addresses(rng: &mut Rng) -> Vec<Ipv4Addr> {
    (0..ADDRESSES)
        .map(|_| Ipv4Addr::from(rng.next() as u32))
        .collect()
}

struct Table {
    name: &'static str,
    layout: Layout,
    fib: SharedFib<Target>,
    routed: Vec<Ipv4Addr>,
    uniform: Vec<Ipv4Addr>,
    /// A free address in a /24 that has pod routes: the next pod's /32.
    new_pod: Ipv4Net,
}

fn tables() -> Vec<Table> {
    let mut rng = Rng(0x5eed);
    TABLES
        .iter()
        .map(|&(name, n, layout)| {
            let routes = routes(n, layout, &mut rng);
            let started = Instant::now();
            let fib = SharedFib::new();
            fib.update(|t| {
                for &(p, v) in &routes {
                    t.insert(p, v);
                }
            });
            let table = fib.load();
            assert_eq!(table.len(), n);
            eprintln!(
                "fib {name} {}: {} routes built in {:.2} s, {:.1} MiB",
                match layout {
                    Layout::Allocated => "allocated",
                    Layout::Scattered => "scattered",
                },
                table.len(),
                started.elapsed().as_secs_f64(),
                table.memory_bytes() as f64 / (1 << 20) as f64
            );
            let last_pod = u32::from(routes.last().expect("routes").0.network());
            let new_pod = prefix(last_pod & !0xff | 250, 32);
            assert_eq!(table.get(new_pod), None);
            Table {
                name,
                layout,
                routed: routed_addresses(&routes, &mut rng),
                uniform: uniform_addresses(&mut rng),
                fib,
                new_pod,
            }
        })
        .collect()
}

fn fib(c: &mut Criterion) {
    let tables = tables();
    let (allocated, scattered): (Vec<&Table>, Vec<&Table>) =
        tables.iter().partition(|t| t.layout == Layout::Allocated);
    for (group, tables, pick) in [
        (
            "fib/lookup",
            &allocated,
            (|t| &t.routed) as fn(&Table) -> &Vec<Ipv4Addr>,
        ),
        ("fib/lookup-scattered", &scattered, |t| &t.routed),
        ("fib/lookup-any", &allocated, |t| &t.uniform),
    ] {
        let mut group = c.benchmark_group(group);
        group.throughput(Throughput::Elements(1));
        for table in tables {
            let (snapshot, addresses) = (table.fib.load(), pick(table));
            let mut i = 0;
            group.bench_function(table.name, |b| {
                b.iter(|| {
                    i = (i + 1) & (ADDRESSES - 1);
                    snapshot.lookup(black_box(addresses[i]))
                })
            });
        }
        group.finish();
    }

    // As the switch does it: one snapshot per batch of frames.
    let mut group = c.benchmark_group("fib/lookup-batch64");
    group.throughput(Throughput::Elements(BATCH as u64));
    for table in &allocated {
        let mut found = [None; BATCH];
        let mut i = 0;
        group.bench_function(table.name, |b| {
            b.iter(|| {
                i = (i + BATCH) & (ADDRESSES - 1);
                let snapshot = table.fib.load();
                for (out, &addr) in found.iter_mut().zip(&table.routed[i..i + BATCH]) {
                    *out = snapshot.lookup(addr);
                }
                black_box(&found);
            })
        });
    }
    group.finish();

    // A pod added and removed: two updates, each publishing a snapshot.
    let mut group = c.benchmark_group("fib/update");
    for table in &allocated {
        let pod = Target::Local {
            port: 7,
            mac: [0x02, 0, 0, 0, 0, 7],
        };
        group.bench_function(table.name, |b| {
            b.iter(|| {
                table.fib.update(|t| t.insert(table.new_pod, pod));
                table.fib.update(|t| t.remove(table.new_pod))
            })
        });
    }
    group.finish();
}

/// The IPv6 tables: 1k and 100k routes, a few short prefixes, /64 node
/// pod CIDRs handed out in order inside fd00:10:244::/48 and beyond (three
/// routes in four) and /128 pod routes, 200 to a /64.
const TABLES6: [(&str, usize); 2] = [("1k", 1_000), ("100k", 100_000)];

fn routes6(n: usize) -> Vec<(Ipv6Net, Target)> {
    let mut routes: Vec<(Ipv6Net, Target)> = [
        ("::/0", Target::Host),
        ("fd00:10:96::/108", Target::Host),
        ("fd00:10:244::/48", Target::Host),
        ("64:ff9b::/96", Target::Peer(1)),
        ("fe80::/10", Target::Host),
    ]
    .into_iter()
    .map(|(p, t)| (p.parse().expect("valid prefix"), t))
    .collect();
    let pods = n / 4;
    let slash64s = n - routes.len() - pods;
    let cluster = u128::from("fd00:10:244::".parse::<Ipv6Addr>().expect("address"));
    let node = |i: usize| cluster + ((i as u128) << 64);
    for i in 0..slash64s {
        let net = Ipv6Net::new(Ipv6Addr::from(node(i)), 64).expect("/64");
        routes.push((net, Target::Peer(i as u32 % 5000)));
    }
    for i in 0..pods {
        let addr = node(i / PODS_PER_24 as usize) | (1 + (i as u128) % u128::from(PODS_PER_24));
        let mac = [0x02, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let net = Ipv6Net::new(Ipv6Addr::from(addr), 128).expect("/128");
        routes.push((
            net,
            Target::Local {
                port: i as u16,
                mac,
            },
        ));
    }
    routes
}

/// An IPv6 table under test: its name, the table, addresses to look up
/// and the routes it holds.
type Table6 = (
    &'static str,
    Ipv6Lpm<Target>,
    Vec<Ipv6Addr>,
    Vec<(Ipv6Net, Target)>,
);

fn fib6(c: &mut Criterion) {
    let mut rng = Rng(0x5eed6);
    let tables: Vec<Table6> = TABLES6
        .iter()
        .map(|&(name, n)| {
            let routes = routes6(n);
            let fib = build6(&routes);
            assert_eq!(fib.len(), n);
            let addresses = (0..ADDRESSES)
                .map(|_| {
                    let (net, _) = routes[rng.below(routes.len() as u64) as usize];
                    let host = (u128::from(rng.next()) << 64 | u128::from(rng.next()))
                        & !u128::from(net.netmask());
                    Ipv6Addr::from(u128::from(net.network()) | host)
                })
                .collect();
            (name, fib, addresses, routes)
        })
        .collect();
    let mut group = c.benchmark_group("fib6/lookup");
    group.throughput(Throughput::Elements(1));
    for (name, fib, addresses, _) in &tables {
        let mut i = 0;
        group.bench_function(*name, |b| {
            b.iter(|| {
                i = (i + 1) & (ADDRESSES - 1);
                fib.lookup(black_box(addresses[i]))
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("fib6/lookup-batch64");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, fib, addresses, _) in &tables {
        let mut found = [None; BATCH];
        let mut i = 0;
        group.bench_function(*name, |b| {
            b.iter(|| {
                i = (i + BATCH) & (ADDRESSES - 1);
                for (out, &addr) in found.iter_mut().zip(&addresses[i..i + BATCH]) {
                    *out = fib.lookup(addr);
                }
                black_box(&found);
            })
        });
    }
    group.finish();

    // What a change costs the control plane: the table built again from
    // its routes, as each topology snapshot is.
    let mut group = c.benchmark_group("fib6/rebuild");
    group.sample_size(10);
    for (name, _, _, routes) in &tables {
        group.bench_function(*name, |b| b.iter(|| build6(black_box(routes))));
    }
    group.finish();
}

/// An IPv6 table holding `routes`.
fn build6(routes: &[(Ipv6Net, Target)]) -> Ipv6Lpm<Target> {
    let mut fib = Ipv6Lpm::new();
    for &(prefix, target) in routes {
        fib.insert(prefix, target);
    }
    fib
}

criterion_group!(benches, fib, fib6);
criterion_main!(benches);
