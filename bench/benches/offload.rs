//! Cost of the userspace offloads for TAP pods: segmenting a 64 KB TCP
//! super-frame at MSS 1398 (pod MTU 1450 with TCP timestamps) into frames
//! for an AF_XDP port or the uplink, and coalescing 45 such segments back
//! into one super-frame for a TAP port. Run with
//! `cargo bench -p podswitch-bench --bench offload`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use podswitch_encap::checksum;
use podswitch_encap::segment::complete_checksum;
use podswitch_encap::{Coalescer, Offload, TcpSegments};

const MSS: u16 = 1398;
/// Segments in the 64 KB super-frame: 46 × 1398 = 64308 bytes of payload,
/// what Linux's TSO sends under its 64 KB limit.
const SUPER_SEGMENTS: usize = 46;
/// Segments coalesced into one super-frame.
const COALESCED: usize = 45;
/// Ethernet + IPv4 + TCP with the timestamp option.
const HEADERS: usize = 14 + 20 + 32;

/// An Ethernet + IPv4 + TCP (timestamps) super-frame with `payload` bytes,
/// its TCP checksum field holding junk (the segmenter ignores it).
fn super_frame(payload: usize) -> Vec<u8> {
    let mut frame = vec![0u8; HEADERS + payload];
    frame[..12].copy_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut frame[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + 32 + payload) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..20].copy_from_slice(&[10, 244, 1, 5, 10, 244, 2, 7]);
    checksum::fill_ipv4_header(ip);
    let tcp = &mut frame[34..HEADERS];
    tcp[..4].copy_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
    tcp[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes());
    tcp[8..12].copy_from_slice(&0x2000_0000u32.to_be_bytes());
    tcp[12] = 8 << 4;
    tcp[13] = 0x10 | 0x08; // ACK, PSH
    tcp[14..16].copy_from_slice(&502u16.to_be_bytes());
    tcp[16..18].copy_from_slice(&[0xde, 0xad]);
    tcp[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    for (i, byte) in frame[HEADERS..].iter_mut().enumerate() {
        *byte = (i * 7 + i / 251) as u8;
    }
    frame
}

fn segment(c: &mut Criterion) {
    let mut group = c.benchmark_group("segment");
    let frame = super_frame(SUPER_SEGMENTS * usize::from(MSS));
    let mut out = [0u8; 2048];
    assert_eq!(
        TcpSegments::new(&frame, MSS).unwrap().count(),
        SUPER_SEGMENTS
    );
    let cut_all = |frame: &[u8], out: &mut [u8]| {
        let segments = TcpSegments::new(frame, MSS).unwrap();
        let mut bytes = 0;
        for i in 0..segments.count() {
            bytes += segments.write(i, out).unwrap();
        }
        bytes
    };

    // Time per super-frame, and the payload rate it gives.
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function(BenchmarkId::new("superframe", "64KB-mss1398"), |b| {
        b.iter(|| black_box(cut_all(black_box(&frame), &mut out)))
    });
    // The same work, counted per segment written.
    group.throughput(Throughput::Elements(SUPER_SEGMENTS as u64));
    group.bench_function(BenchmarkId::new("segments", "64KB-mss1398"), |b| {
        b.iter(|| black_box(cut_all(black_box(&frame), &mut out)))
    });

    // A non-GSO frame with a partial checksum, as a TAP pod sends when only
    // TUN_F_CSUM applies.
    let mut small = TcpSegments::new(&frame, MSS).unwrap().to_frames().remove(0);
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("complete_checksum", "1464B"), |b| {
        b.iter(|| complete_checksum(black_box(&mut small), 34, 16))
    });
    group.finish();
}

fn coalesce(c: &mut Criterion) {
    let mut group = c.benchmark_group("coalesce");
    let frame = super_frame(COALESCED * usize::from(MSS));
    let segments = TcpSegments::new(&frame, MSS).unwrap().to_frames();
    assert_eq!(segments.len(), COALESCED);
    let mut gro = Coalescer::new();
    let mut sent = 0usize;
    let mut send = |offload: &Offload, frame: &[u8]| {
        black_box((offload, frame));
        sent += 1;
    };
    for segment in &segments {
        gro.push(segment, &mut send);
    }
    gro.flush(&mut send);
    assert_eq!(sent, 1, "45 segments make one super-frame");
    assert_eq!(gro.stats().merged, COALESCED as u64);

    group.throughput(Throughput::Elements(COALESCED as u64));
    group.bench_function(BenchmarkId::new("segments", "45-mss1398"), |b| {
        b.iter(|| {
            let mut send = |offload: &Offload, frame: &[u8]| {
                black_box((offload, frame.len()));
            };
            for segment in &segments {
                gro.push(black_box(segment), &mut send);
            }
            gro.flush(&mut send);
        })
    });

    // Frames that pass alone (a UDP flow): the cost of looking.
    let udp: Vec<Vec<u8>> = segments
        .iter()
        .map(|segment| {
            let mut frame = segment.clone();
            frame[23] = 17;
            frame
        })
        .collect();
    group.bench_function(BenchmarkId::new("pass-through", "45-udp"), |b| {
        b.iter(|| {
            let mut send = |offload: &Offload, frame: &[u8]| {
                black_box((offload, frame.len()));
            };
            for frame in &udp {
                gro.push(black_box(frame), &mut send);
            }
            gro.flush(&mut send);
        })
    });
    group.finish();
}

fn sums(c: &mut Criterion) {
    let mut group = c.benchmark_group("checksum");
    let data = super_frame(SUPER_SEGMENTS * usize::from(MSS));
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function(BenchmarkId::new("sum", "64KB"), |b| {
        b.iter(|| black_box(checksum::sum(black_box(&data))))
    });
    group.bench_function(BenchmarkId::new("smoltcp-data", "64KB"), |b| {
        b.iter(|| black_box(checksum::data(black_box(&data))))
    });
    group.finish();
}

criterion_group!(benches, segment, coalesce, sums);
criterion_main!(benches);
