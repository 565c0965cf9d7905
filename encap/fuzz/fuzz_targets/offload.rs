//! The TAP offloads on arbitrary input: virtio-net header parsing (both
//! forms), encapsulation for the kernel's tunnel segmentation,
//! segmentation of every segment, partial checksum completion and
//! coalescing. Never panics; what is accepted is self-consistent.
#![no_main]

use std::sync::{LazyLock, Mutex};

use libfuzzer_sys::fuzz_target;
use podswitch_encap::segment::complete_checksum;
use podswitch_encap::virtio_net::{self, Checksum, Header, TunnelHeader, TunnelOffload};
use podswitch_encap::wire::EthernetAddress;
use podswitch_encap::{Coalescer, Offload, OuterTemplate, TcpSegments, TunnelKind, TunnelSpec, Vni};

/// One coalescer, reused: a flush leaves it holding nothing, so runs do
/// not depend on each other (and its 512 KiB are not allocated per run).
static GRO: LazyLock<Mutex<Coalescer>> = LazyLock::new(|| Mutex::new(Coalescer::new()));

/// VXLAN over IPv4 toward a tunnel TAP device.
static TEMPLATE: LazyLock<OuterTemplate> = LazyLock::new(|| {
    OuterTemplate::new(&TunnelSpec {
        kind: TunnelKind::Vxlan,
        vni: Vni::new(1).unwrap(),
        udp_port: 4789,
        local_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
        next_hop_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
        vlan: None,
        local_ip: [10, 1, 0, 11].into(),
        remote_ip: [10, 1, 0, 12].into(),
        ttl: 64,
        geneve_options: &[],
        underlay_mtu: 1500,
    })
    .unwrap()
});

const MAX_FRAME: usize = 14 + 65535;

fuzz_target!(|data: &[u8]| {
    if data.len() < 7 {
        return;
    }
    let mss = u16::from_le_bytes([data[0], data[1]]);
    let start = usize::from(u16::from_le_bytes([data[2], data[3]]));
    let offset = usize::from(data[4]);
    let split = usize::from(data[5]);
    let frame = &data[6..];

    // The whole input as a virtio-net header and its frame.
    let header = Header::new_unchecked(data);
    let _ = header.to_string();
    if let Ok(offload) = Offload::parse(&header) {
        let mut again = data.to_vec();
        offload.emit(&mut Header::new_unchecked(&mut again[..]));
        assert_eq!(
            Offload::parse(&Header::new_unchecked(&again[..])),
            Ok(offload)
        );
        if let Checksum::Partial { start, offset } = offload.checksum {
            let mut frame = header.frame().to_vec();
            complete_checksum(&mut frame, start.into(), offset.into()).unwrap();
        }
        // Encapsulated for the kernel to finish: a header it takes.
        let mut buf = vec![0u8; 128];
        buf.extend_from_slice(header.frame());
        let end = buf.len();
        if let Ok((packet, tunnel)) = TEMPLATE.encapsulate_offloaded(&mut buf, 128..end, &offload) {
            let mut with_header = tunnel.to_bytes().to_vec();
            with_header.extend_from_slice(&buf[packet]);
            let parsed = TunnelOffload::parse(&TunnelHeader::new_unchecked(&with_header[..]));
            assert_eq!(parsed, Ok(tunnel));
        }
    }

    // The whole input as the tunnel form of the header.
    let tunnel = TunnelHeader::new_unchecked(data);
    let _ = tunnel.to_string();
    if let Ok(parsed) = TunnelOffload::parse(&tunnel) {
        let mut again = data.to_vec();
        parsed.emit(&mut TunnelHeader::new_unchecked(&mut again[..]));
        assert_eq!(
            TunnelOffload::parse(&TunnelHeader::new_unchecked(&again[..])),
            Ok(parsed)
        );
    }

    // Partial checksum completion anywhere.
    let mut copy = frame.to_vec();
    if complete_checksum(&mut copy, start, offset).is_ok() {
        assert!(start + offset + 2 <= copy.len());
    }

    // Segmentation: every segment is a frame of at most one MSS of payload.
    let mut segments = Vec::new();
    if let Ok(cut) = TcpSegments::new(frame, mss) {
        let mut out = vec![0u8; cut.max_segment_len()];
        let mut payload = 0;
        for i in 0..cut.count() {
            let len = cut.write(i, &mut out).expect("segment fits its own length");
            assert_eq!(len, cut.segment_len(i));
            let again = TcpSegments::new(&out[..len], mss).expect("a segment is a valid frame");
            assert_eq!(again.count(), 1);
            payload += again.payload_len();
            if segments.len() < 128 {
                segments.push(out[..len].to_vec());
            }
        }
        assert_eq!(payload, cut.payload_len());
        assert_eq!(cut.write(cut.count(), &mut out), None);
    }

    // Coalescing: the frame, its segments, and the input cut in pieces.
    let mut frames: Vec<&[u8]> = vec![frame];
    frames.extend(segments.iter().map(Vec::as_slice));
    if split > 0 {
        frames.extend(frame.chunks(split));
    }
    let mut gro = GRO.lock().unwrap();
    let before = gro.stats();
    let mut sent = 0u64;
    let mut send = |offload: &Offload, out: &[u8]| {
        sent += 1;
        assert!(out.len() <= MAX_FRAME.max(frame.len()));
        if let Some(gso) = offload.gso {
            let mut with_header = offload.to_bytes().to_vec();
            with_header.extend_from_slice(out);
            let header = Header::new_checked(&with_header[..]).unwrap();
            assert_eq!(Offload::parse(&header), Ok(*offload));
            assert_eq!(header.frame_len(), out.len());
            assert!(with_header.len() > virtio_net::HEADER_LEN);
            let cut = TcpSegments::new(out, gso.size).expect("a super-frame segments");
            assert!(cut.count() >= 2);
        }
    };
    for frame in &frames {
        gro.push(frame, &mut send);
    }
    gro.flush(&mut send);
    assert_eq!(gro.held(), 0);
    let after = gro.stats();
    let handled = (after.merged - before.merged) + (after.passed - before.passed);
    assert_eq!(handled, frames.len() as u64);
    assert!(sent <= frames.len() as u64);
});
