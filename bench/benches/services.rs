//! Service translation costs (issue 18 item 3): a packet of an established
//! connection through the Service stage (the connection table's probe and
//! the in-place rewrite with its checksums), each way, with 1 k, 16 k,
//! 32 k and 1 M connections in the table, one packet at a time and in
//! batches of 32 as the worker receives them ([`Translator::prefetch`]
//! first, which prefetches only from
//! [`podswitch_services::conntrack::PREFETCH_FROM`] connections; requests
//! also with the prefetch always and never, the measurement that chose
//! that size); the
//! connection table's probe alone (with the parse of the packet's tuple),
//! one at a time and batched
//! ([`podswitch_services::ConnTable::lookup_batch`]), and batched on
//! tuples already read (`conntrack-probe-batch32`, the table's own share);
//! the Service table's pick of an endpoint for a connection's first
//! packet; and what the stage costs a pod-to-pod packet that is no
//! Service's (both checks, as a packet from a pod to a local pod meets
//! them). Run with `cargo bench -p podswitch-bench --bench services`.
//!
//! The connections are those of 250 clients on this node to 1000 Services
//! of 4 endpoints each, client ports at random. With 1 M connections the
//! packets cycle through 2^20 of them picked at random, which hit about
//! 630 000 connections spread over the whole table, so nearly every probe
//! misses the cache, as on a busy node (the 65536 used before hit
//! connections that fitted in a 32 MiB L3); likewise 2^20 with 16 k and
//! 32 k; with 1 k, through 65536. Each
//! iteration copies the 54-byte TCP packet (or the batch's) into place
//! first (2–3 ns a packet, included). A batch benchmark's time is for 32
//! packets.

use std::hint::black_box;
use std::net::Ipv4Addr;

#[path = "common/rng.rs"]
mod rng;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use podswitch_control::service::{Endpoint, Service, ServicePort, ServiceProtocol};
use podswitch_encap::checksum::{combine, fill_ipv4_header, ipv4_pseudo_header, sum};
use podswitch_services::conntrack::BATCH;
use podswitch_services::flow;
use podswitch_services::{
    Affinity, FlowKey, L4Checksum, Nodes, Pass, ServiceTable, Timeouts, Translator, Verdict,
};
use rng::Rng;

const SERVICES: u32 = 1000;
const ENDPOINTS: u32 = 4;
const CLIENTS: u32 = 250;
/// Packets cycled through per benchmark with 1 M connections (a power of
/// two); 65536 with 1 k.
const PACKETS: usize = 1 << 20;

fn cluster_ip(service: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + service)
}

/// 1000 TCP Services on port 80, four endpoints each on other nodes.
fn table() -> ServiceTable {
    let services = (0..SERVICES)
        .map(|s| {
            let endpoints = (0..ENDPOINTS)
                .map(|e| {
                    let address =
                        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 2, 0)) + s * ENDPOINTS + e);
                    Endpoint::ready(address, 8080)
                })
                .collect();
            let port = ServicePort::new(ServiceProtocol::Tcp, 80, endpoints);
            Service::new(format!("bench/svc-{s}"), cluster_ip(s), vec![port])
        })
        .collect();
    ServiceTable::new(services, &Nodes::default())
}

/// A random client-to-Service flow.
fn flow(rng: &mut Rng) -> FlowKey {
    FlowKey {
        src: Ipv4Addr::new(10, 244, 1, 2 + rng.below(u64::from(CLIENTS)) as u8),
        dst: cluster_ip(rng.below(u64::from(SERVICES)) as u32),
        sport: 1024 + rng.below(60000) as u16,
        dport: 80,
        protocol: 6,
    }
}

/// A 54-byte TCP packet (IPv4 header, TCP header, 14 bytes of data) of
/// `flow` with correct checksums.
fn packet(flow: &FlowKey) -> [u8; 54] {
    let mut p = [0u8; 54];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&54u16.to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&flow.src.octets());
    p[16..20].copy_from_slice(&flow.dst.octets());
    p[20..22].copy_from_slice(&flow.sport.to_be_bytes());
    p[22..24].copy_from_slice(&flow.dport.to_be_bytes());
    p[32] = 0x50;
    p[33] = 0x10;
    p[40..].copy_from_slice(b"GET / HTTP/1.1");
    fill_ipv4_header(&mut p[..20]);
    let pseudo = ipv4_pseudo_header(flow.src.octets(), flow.dst.octets(), 6, 34);
    let checksum = !combine(&[pseudo, sum(&p[20..])]);
    p[36..38].copy_from_slice(&checksum.to_be_bytes());
    p
}

/// A translator holding `connections` connections opened through `table`,
/// and `packets` packets of them: requests, and the endpoints' replies.
fn established(
    table: &ServiceTable,
    connections: usize,
    packets: usize,
) -> (Translator, Vec<[u8; 54]>, Vec<[u8; 54]>) {
    let translator = Translator::new(connections, Timeouts::default());
    let mut rng = Rng(7);
    let mut opened = Vec::with_capacity(connections);
    while translator.conns.len() < connections {
        let flow = flow(&mut rng);
        let mut p = packet(&flow);
        if translator.outbound(table, &mut p, L4Checksum::Full, 0, Pass::Live)
            == (Verdict::Translated { new: true })
        {
            opened.push((flow, p));
        }
    }
    let (mut requests, mut replies) = (Vec::with_capacity(packets), Vec::with_capacity(packets));
    for _ in 0..packets {
        let (flow, translated) = &opened[rng.below(opened.len() as u64) as usize];
        requests.push(packet(flow));
        let endpoint = Ipv4Addr::new(
            translated[16],
            translated[17],
            translated[18],
            translated[19],
        );
        replies.push(packet(&FlowKey {
            src: endpoint,
            dst: flow.src,
            sport: 8080,
            dport: flow.sport,
            protocol: 6,
        }));
    }
    (translator, requests, replies)
}

/// The batch of `BATCH` packets at `start`.
fn batch(packets: &[[u8; 54]], start: usize) -> [[u8; 54]; BATCH] {
    packets[start..start + BATCH]
        .try_into()
        .expect("BATCH packets")
}

/// Whether a batch's probes are prefetched before its packets go through
/// the stage.
#[derive(Clone, Copy)]
enum Prefetch {
    /// As the worker does: [`Translator::prefetch`], which prefetches only
    /// when the table is large enough for it to pay.
    AsWorker,
    /// Whatever the table's size.
    Always,
    /// Never.
    Never,
}

/// The Service stage over the batch at `start`: its probes prefetched as
/// `prefetch` says, then `stage` (outbound or inbound) on each packet.
fn stage_batch(
    translator: &Translator,
    table: &ServiceTable,
    packets: &[[u8; 54]],
    start: usize,
    prefetch: Prefetch,
    stage: impl Fn(&Translator, &ServiceTable, &mut [u8]) -> Verdict,
) -> [[u8; 54]; BATCH] {
    let mut packets = batch(packets, start);
    let keys = packets.iter().filter_map(|p| flow::connection_key(p));
    match prefetch {
        Prefetch::AsWorker => translator.prefetch(table, keys),
        Prefetch::Always => translator.conns.prefetch(keys),
        Prefetch::Never => {}
    }
    for p in &mut packets {
        black_box(stage(translator, table, p));
    }
    packets
}

fn outbound(translator: &Translator, table: &ServiceTable, p: &mut [u8]) -> Verdict {
    translator.outbound(table, p, L4Checksum::Full, 1, Pass::Live)
}

fn inbound(translator: &Translator, table: &ServiceTable, p: &mut [u8]) -> Verdict {
    translator.inbound(table, p, L4Checksum::Full, 1, Pass::Live)
}

fn both(translator: &Translator, table: &ServiceTable, p: &mut [u8]) -> Verdict {
    black_box(outbound(translator, table, p));
    inbound(translator, table, p)
}

fn services(c: &mut Criterion) {
    let table = table();
    let mut group = c.benchmark_group("services");
    group.throughput(Throughput::Elements(1));
    for (name, connections, packets) in [
        ("1k", 1_000, 1 << 16),
        ("16k", 16_000, PACKETS),
        ("32k", 32_000, PACKETS),
        ("1m", 1_000_000, PACKETS),
    ] {
        let (translator, requests, replies) = established(&table, connections, packets);
        let mask = packets - 1;
        let mut i = 0;
        group.bench_function(format!("request/{name}"), |b| {
            b.iter(|| {
                let mut p = requests[i & mask];
                i += 1;
                black_box(translator.outbound(&table, &mut p, L4Checksum::Full, 1, Pass::Live));
                black_box(p)
            })
        });
        group.bench_function(format!("reply/{name}"), |b| {
            b.iter(|| {
                let mut p = replies[i & mask];
                i += 1;
                black_box(translator.inbound(&table, &mut p, L4Checksum::Full, 1, Pass::Live));
                black_box(p)
            })
        });
        // Pod-to-pod traffic with translation on: what the stage costs
        // every packet that is no Service's, each way.
        let direct: Vec<[u8; 54]> = requests
            .iter()
            .map(|p| {
                let mut flow = podswitch_services::flow::parse(p).expect("TCP").key;
                flow.dst = Ipv4Addr::new(10, 244, 3, p[19]);
                packet(&flow)
            })
            .collect();
        group.bench_function(format!("pod-to-pod/{name}"), |b| {
            b.iter(|| {
                let mut p = direct[i & mask];
                i += 1;
                black_box(translator.outbound(&table, &mut p, L4Checksum::Full, 1, Pass::Live));
                black_box(translator.inbound(&table, &mut p, L4Checksum::Full, 1, Pass::Live));
                black_box(p)
            })
        });
        // The probe alone, its tuple read from the packet as the stage
        // does (read from a ready array instead, the CPU overlaps one
        // probe's cache misses with the next's, which a packet's own
        // parse and probe do not).
        group.bench_function(format!("conntrack-lookup/{name}"), |b| {
            b.iter(|| {
                let p = &requests[i & mask];
                i += 1;
                let parsed = podswitch_services::flow::parse(p).expect("TCP");
                black_box(translator.conns.lookup(&parsed.key, parsed.tcp_flags, 1))
            })
        });
        group.throughput(Throughput::Elements(BATCH as u64));
        let batches = packets - BATCH;
        for (stage, stream, prefetch, run) in [
            (
                "request",
                &requests,
                Prefetch::AsWorker,
                outbound as fn(&_, &_, &mut _) -> _,
            ),
            (
                "request-prefetch-always",
                &requests,
                Prefetch::Always,
                outbound,
            ),
            (
                "request-prefetch-never",
                &requests,
                Prefetch::Never,
                outbound,
            ),
            ("reply", &replies, Prefetch::AsWorker, inbound),
            ("pod-to-pod", &direct, Prefetch::AsWorker, both),
        ] {
            group.bench_function(format!("{stage}-batch{BATCH}/{name}"), |b| {
                b.iter(|| {
                    let start = i & batches;
                    i += BATCH;
                    black_box(stage_batch(
                        &translator,
                        &table,
                        stream,
                        start,
                        prefetch,
                        run,
                    ))
                })
            });
        }
        group.bench_function(format!("conntrack-lookup-batch{BATCH}/{name}"), |b| {
            b.iter(|| {
                let start = i & batches;
                i += BATCH;
                let packets = batch(&requests, start);
                let parsed = packets.map(|p| podswitch_services::flow::parse(&p).expect("TCP"));
                let (keys, flags) = (parsed.map(|p| p.key), parsed.map(|p| p.tcp_flags));
                let mut hits = [None; BATCH];
                translator.conns.lookup_batch(&keys, &flags, 1, &mut hits);
                black_box(hits)
            })
        });
        // The table's own share: the batch's tuples already read.
        let keys: Vec<FlowKey> = requests
            .iter()
            .map(|p| podswitch_services::flow::parse(p).expect("TCP").key)
            .collect();
        group.bench_function(format!("conntrack-probe-batch{BATCH}/{name}"), |b| {
            b.iter(|| {
                let start = i & batches;
                i += BATCH;
                let mut hits = [None; BATCH];
                translator.conns.lookup_batch(
                    &keys[start..start + BATCH],
                    &[0x10; BATCH],
                    1,
                    &mut hits,
                );
                black_box(hits)
            })
        });
        group.throughput(Throughput::Elements(1));
    }
    // A connection's first packet picks its endpoint: the Service
    // table's probe and the flow hash.
    let affinity = Affinity::default();
    let flows: Vec<FlowKey> = {
        let mut rng = Rng(11);
        (0..1 << 16).map(|_| flow(&mut rng)).collect()
    };
    let mut i = 0;
    group.bench_function("select/1000-services", |b| {
        b.iter(|| {
            let flow = &flows[i & 0xffff];
            i += 1;
            black_box(table.select(flow, &affinity, 1, Pass::Live))
        })
    });
    group.finish();
}

criterion_group!(benches, services);
criterion_main!(benches);
