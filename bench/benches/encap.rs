//! Per-frame cost of encapsulation and decapsulation, VXLAN and Geneve over
//! IPv4 and IPv6, one frame at a time and in batches of 64 (as the switch
//! processes them). Run with `cargo bench -p podswitch-bench --bench encap`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use podswitch_encap::flow::flow_hash;
use podswitch_encap::wire::EthernetAddress;
use podswitch_encap::{Decapsulator, OuterTemplate, TunnelKind, TunnelSpec, Vni};

const HEADROOM: usize = 256;
const BATCH: usize = 64;

#[derive(Clone, Copy)]
struct Case {
    kind: TunnelKind,
    ipv6: bool,
    frame_len: usize,
}

impl Case {
    fn all() -> Vec<Case> {
        let mut cases = Vec::new();
        for kind in [TunnelKind::Vxlan, TunnelKind::Geneve] {
            for ipv6 in [false, true] {
                for frame_len in [64, 1400] {
                    cases.push(Case {
                        kind,
                        ipv6,
                        frame_len,
                    });
                }
            }
        }
        cases
    }

    fn name(&self) -> String {
        format!(
            "{}-{}-{}B",
            self.kind,
            if self.ipv6 { "ipv6" } else { "ipv4" },
            self.frame_len
        )
    }

    fn addresses(&self) -> (IpAddr, IpAddr) {
        if self.ipv6 {
            (
                IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x11)),
                IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x12)),
            )
        } else {
            (
                IpAddr::V4(Ipv4Addr::new(10, 1, 0, 11)),
                IpAddr::V4(Ipv4Addr::new(10, 1, 0, 12)),
            )
        }
    }

    fn template(&self) -> OuterTemplate {
        let (local_ip, remote_ip) = self.addresses();
        OuterTemplate::new(&TunnelSpec {
            kind: self.kind,
            vni: Vni::new(1).unwrap(),
            udp_port: self.kind.default_udp_port(),
            local_mac: EthernetAddress([2, 0, 0, 0, 0, 0x11]),
            next_hop_mac: EthernetAddress([2, 0, 0, 0, 0, 0x12]),
            vlan: None,
            local_ip,
            remote_ip,
            ttl: 64,
            geneve_options: &[],
            underlay_mtu: 1500,
        })
        .unwrap()
    }

    fn decapsulator(&self) -> Decapsulator {
        Decapsulator::new(self.kind, self.addresses().1, Vni::new(1).unwrap())
    }

    /// A buffer holding an Ethernet + IPv4 + UDP frame of `frame_len` bytes
    /// after `HEADROOM`, flow `flow`.
    fn buffer(&self, flow: u16) -> (Vec<u8>, Range<usize>) {
        let mut buf = vec![0u8; HEADROOM + self.frame_len];
        let frame = &mut buf[HEADROOM..];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[14] = 0x45;
        frame[14 + 9] = 17;
        frame[14 + 12..14 + 20].copy_from_slice(&[10, 244, 1, 5, 10, 244, 2, 7]);
        frame[34..36].copy_from_slice(&(40000 + flow).to_be_bytes());
        frame[36..38].copy_from_slice(&5201u16.to_be_bytes());
        (buf, HEADROOM..HEADROOM + self.frame_len)
    }

    /// An encapsulated packet of flow `flow`, ready for decapsulation.
    fn packet(&self, flow: u16) -> Vec<u8> {
        let (mut buf, frame) = self.buffer(flow);
        let range = self.template().encapsulate(&mut buf, frame).unwrap();
        buf[range].to_vec()
    }
}

fn encap(c: &mut Criterion) {
    let mut group = c.benchmark_group("encap");
    for case in Case::all() {
        let template = case.template();
        group.throughput(Throughput::Elements(1));
        let (mut buf, frame) = case.buffer(0);
        group.bench_function(BenchmarkId::new("frame", case.name()), |b| {
            b.iter(|| black_box(template.encapsulate(black_box(&mut buf), frame.clone())))
        });

        // The template alone, with the flow hash already known (a NIC's RSS
        // hash, or one computed once per flow).
        group.bench_function(BenchmarkId::new("frame-hashed", case.name()), |b| {
            b.iter(|| {
                black_box(template.encapsulate_with_hash(
                    black_box(&mut buf),
                    frame.clone(),
                    0x1234_5678,
                ))
            })
        });

        group.throughput(Throughput::Elements(BATCH as u64));
        let mut batch: Vec<_> = (0..BATCH as u16).map(|flow| case.buffer(flow)).collect();
        group.bench_function(BenchmarkId::new("batch64", case.name()), |b| {
            b.iter(|| {
                for (buf, frame) in batch.iter_mut() {
                    let _ = black_box(template.encapsulate(buf, frame.clone()));
                }
            })
        });
    }
    group.finish();
}

fn decap(c: &mut Criterion) {
    let mut group = c.benchmark_group("decap");
    for case in Case::all() {
        let decap = case.decapsulator();
        group.throughput(Throughput::Elements(1));
        let packet = case.packet(0);
        assert!(decap.decapsulate(&packet).is_ok());
        group.bench_function(BenchmarkId::new("frame", case.name()), |b| {
            b.iter(|| black_box(decap.decapsulate(black_box(&packet))))
        });

        group.throughput(Throughput::Elements(BATCH as u64));
        let batch: Vec<_> = (0..BATCH as u16).map(|flow| case.packet(flow)).collect();
        group.bench_function(BenchmarkId::new("batch64", case.name()), |b| {
            b.iter(|| {
                for packet in &batch {
                    let _ = black_box(decap.decapsulate(packet));
                }
            })
        });
    }
    group.finish();
}

fn flow(c: &mut Criterion) {
    let case = Case {
        kind: TunnelKind::Vxlan,
        ipv6: false,
        frame_len: 64,
    };
    let (buf, frame) = case.buffer(0);
    c.bench_function("flow_hash/ipv4-udp", |b| {
        b.iter(|| black_box(flow_hash(black_box(&buf[frame.clone()]))))
    });
}

criterion_group!(benches, encap, decap, flow);
criterion_main!(benches);
