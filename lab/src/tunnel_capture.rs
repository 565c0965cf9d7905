//! What a node put on the underlay, read back from a capture: every
//! tunnel packet of one sender checked for well-formed outer headers,
//! checksums (valid, or partial where segments cross the underlay whole),
//! size, and the continuity of each inner TCP flow.

use std::collections::HashMap;
use std::fs::File;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use pcap_file::pcap::PcapReader;
use podswitch_encap::TunnelKind;
use podswitch_encap::checksum::ipv4_pseudo_header;
use podswitch_encap::segment::complete_checksum;
use podswitch_encap::wire::{
    IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket, checksum,
};

use crate::Netns;

/// How the underlay carries a node's tunnel packets, and so what a capture
/// of it must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underlay {
    /// Offloads on: 64 KB segments cross whole, as a NIC with TSO/GRO
    /// lets them (partial checksums and all).
    Whole,
    /// Offloads off: the sending kernel cuts every segment to the MTU
    /// before the underlay, computing every checksum.
    WireSize,
}

/// What a capture showed of one sender's tunnel packets.
#[derive(Debug, Default, Clone)]
pub struct TunnelCounts {
    /// Tunnel packets from the sender.
    pub frames: usize,
    /// Captured shorter than they were.
    pub truncated: usize,
    /// Longer than the underlay MTU: segments that crossed whole.
    pub super_frames: usize,
    /// Outer IP header (IPv4 checksum, DF, lengths) or UDP port wrong.
    pub bad_outer: usize,
    /// Outer UDP checksums left zero (the receiver's UDP GRO refuses
    /// those).
    pub zero_udp_checksum: usize,
    /// Outer UDP checksums holding the pseudo-header sum, to be finished
    /// by the receiving kernel.
    pub partial_udp_checksum: usize,
    /// Outer UDP checksums neither valid nor partial.
    pub bad_udp_checksum: usize,
    /// The tunnel header or the inner IPv4 header wrong.
    pub bad_inner: usize,
    /// Inner TCP segments.
    pub tcp_segments: usize,
    /// Inner TCP checksums holding the pseudo-header sum.
    pub partial_tcp_checksum: usize,
    /// Inner TCP checksums neither valid nor partial.
    pub bad_tcp_checksum: usize,
    /// Inner TCP payload carried.
    pub tcp_payload_bytes: u64,
    /// Segments starting past where their flow's previous one ended.
    pub sequence_holes: usize,
    /// Segments starting before it (retransmissions).
    pub sequence_repeats: usize,
}

/// A checker fed the frames of a capture (see the module documentation).
#[derive(Debug)]
pub struct TunnelCapture {
    /// What it has seen so far.
    pub counts: TunnelCounts,
    kind: TunnelKind,
    udp_port: u16,
    sender: IpAddress,
    /// The largest frame, Ethernet header included, that is not a
    /// super-frame.
    max_frame: usize,
    /// Where each inner TCP flow (addresses and ports) goes on.
    next_seq: HashMap<[u8; 12], u32>,
}

impl TunnelCapture {
    /// A checker for `sender`'s tunnel packets of `kind` to `udp_port`,
    /// over an underlay of `underlay_mtu`.
    pub fn new(kind: TunnelKind, udp_port: u16, sender: IpAddr, underlay_mtu: usize) -> Self {
        TunnelCapture {
            counts: TunnelCounts::default(),
            kind,
            udp_port,
            sender: sender.into(),
            max_frame: underlay_mtu + 14,
            next_seq: HashMap::new(),
        }
    }

    /// Check every packet of the pcap file at `path`.
    pub fn read_pcap(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut reader = PcapReader::new(file)?;
        while let Some(packet) = reader.next_packet() {
            let packet = packet?;
            self.add(&packet.data, packet.orig_len as usize);
        }
        Ok(())
    }

    /// Account for one captured frame of `orig_len` bytes, if the sender
    /// sent it.
    pub fn add(&mut self, frame: &[u8], orig_len: usize) {
        let Some((ip_header_len, src, _, ip_ok)) = outer_ip(frame) else {
            return;
        };
        if src != self.sender {
            return;
        }
        let counts = &mut self.counts;
        counts.frames += 1;
        if orig_len != frame.len() {
            counts.truncated += 1;
            return;
        }
        if frame.len() > self.max_frame {
            counts.super_frames += 1;
        }
        let udp_start = 14 + ip_header_len;
        let Ok(udp) = UdpPacket::new_checked(&frame[udp_start..]) else {
            counts.bad_outer += 1;
            return;
        };
        if !ip_ok
            || usize::from(udp.len()) != frame.len() - udp_start
            || udp.dst_port() != self.udp_port
        {
            counts.bad_outer += 1;
            return;
        }
        let Some(tunnel_len) = self.kind.header_len(udp.payload()) else {
            counts.bad_inner += 1;
            return;
        };
        let inner_start = udp_start + 8 + tunnel_len;
        let inner = frame
            .get(inner_start..)
            .filter(|inner| inner.get(12..14) == Some(&[0x08, 0x00][..]));
        let Some(ip) = inner.and_then(|inner| Ipv4Packet::new_checked(&inner[14..]).ok()) else {
            counts.bad_inner += 1;
            return;
        };
        if !ip.verify_checksum() {
            counts.bad_inner += 1;
            return;
        }
        let tcp_start = inner_start + 14 + usize::from(ip.header_len());
        let tcp = (ip.next_header() == IpProtocol::Tcp)
            .then(|| TcpPacket::new_checked(ip.payload()).ok())
            .flatten();
        let mut tcp_partial = false;
        if let Some(tcp) = &tcp {
            counts.tcp_segments += 1;
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            let tcp_len = ip.payload().len() as u16;
            let pseudo = ipv4_pseudo_header(src.octets(), dst.octets(), 6, tcp_len);
            // A valid checksum may equal the pseudo-header sum (1 in
            // 65536): validity first.
            if tcp.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst)) {
            } else if tcp.checksum() == pseudo {
                counts.partial_tcp_checksum += 1;
                tcp_partial = true;
            } else {
                counts.bad_tcp_checksum += 1;
            }
        }
        check_udp_checksum(frame, udp_start, tcp_partial.then_some(tcp_start), counts);
        if let Some(tcp) = &tcp {
            self.follow_sequence(&ip, tcp);
        }
    }

    /// Follow the inner TCP flow's sequence: a segment must start where
    /// its flow's last one ended, or before (a retransmission), never
    /// after.
    fn follow_sequence(&mut self, ip: &Ipv4Packet<&[u8]>, tcp: &TcpPacket<&[u8]>) {
        let len = tcp.payload().len() as u32;
        if len == 0 {
            return;
        }
        let counts = &mut self.counts;
        counts.tcp_payload_bytes += u64::from(len);
        let mut flow = [0u8; 12];
        flow[..4].copy_from_slice(&ip.src_addr().octets());
        flow[4..8].copy_from_slice(&ip.dst_addr().octets());
        flow[8..10].copy_from_slice(&tcp.src_port().to_be_bytes());
        flow[10..].copy_from_slice(&tcp.dst_port().to_be_bytes());
        let seq = tcp.seq_number().0 as u32;
        let end = seq.wrapping_add(len);
        match self.next_seq.get(&flow).copied() {
            Some(expected) if seq == expected => {}
            // Sequence numbers compare in 32-bit serial arithmetic.
            Some(expected) if (seq.wrapping_sub(expected) as i32) < 0 => {
                counts.sequence_repeats += 1;
                if (end.wrapping_sub(expected) as i32) <= 0 {
                    return;
                }
            }
            Some(_) => counts.sequence_holes += 1,
            None => {}
        }
        self.next_seq.insert(flow, end);
    }

    /// Fail unless the packets seen are what `underlay` must carry: at
    /// least `min_segments` TCP segments, nothing malformed, every
    /// checksum valid (or, where segments cross whole, partial) and, on a
    /// wire-size underlay, nothing over the MTU.
    ///
    /// Holes in a TCP sequence are printed, not refused: on a loaded
    /// machine the kernel's backlog or the capture's socket buffer can
    /// miss a frame and TCP repairs it; a cut that lost bytes shows as bad
    /// checksums.
    pub fn check(&self, underlay: Underlay, min_segments: usize, what: &str) -> Result<()> {
        let c = &self.counts;
        eprintln!("{what}: underlay capture {c:?}");
        ensure!(
            c.tcp_segments >= min_segments,
            "{what}: too few TCP segments seen: {c:?}"
        );
        ensure!(
            c.truncated == 0
                && c.bad_outer == 0
                && c.zero_udp_checksum == 0
                && c.bad_udp_checksum == 0
                && c.bad_inner == 0
                && c.bad_tcp_checksum == 0,
            "{what}: bad tunnel packets on the underlay: {c:?}"
        );
        match underlay {
            Underlay::WireSize => ensure!(
                c.super_frames == 0 && c.partial_udp_checksum == 0 && c.partial_tcp_checksum == 0,
                "{what}: frames over the MTU or unfinished checksums on a wire-size underlay: {c:?}"
            ),
            Underlay::Whole => ensure!(
                c.super_frames > 0,
                "{what}: no segment crossed the underlay whole: {c:?}"
            ),
        }
        Ok(())
    }
}

/// The outer IP header of a tunnel frame: its length, source and
/// destination, and whether it is right (IPv4: header checksum, DF;
/// either: the length covers exactly the rest of the frame).
fn outer_ip(frame: &[u8]) -> Option<(usize, IpAddress, IpAddress, bool)> {
    match frame.get(12..14)? {
        [0x08, 0x00] => {
            let ip = Ipv4Packet::new_checked(&frame[14..]).ok()?;
            let ok = ip.verify_checksum()
                && ip.dont_frag()
                && ip.header_len() == 20
                && usize::from(ip.total_len()) == frame.len() - 14;
            Some((20, ip.src_addr().into(), ip.dst_addr().into(), ok))
        }
        [0x86, 0xdd] => {
            let ip = Ipv6Packet::new_checked(&frame[14..]).ok()?;
            let ok = usize::from(ip.payload_len()) == frame.len() - 54
                && ip.next_header() == IpProtocol::Udp;
            Some((40, ip.src_addr().into(), ip.dst_addr().into(), ok))
        }
        _ => None,
    }
}

/// The outer UDP checksum (the header at `udp_start`) of a checked tunnel
/// frame: never zero, and valid once the inner TCP checksum at
/// `partial_tcp` (if it is partial) is finished — a checksum computed by
/// local checksum offload anticipates it — or else partial itself (the
/// pseudo-header sum, for a segment crossing whole).
fn check_udp_checksum(
    frame: &[u8],
    udp_start: usize,
    partial_tcp: Option<usize>,
    counts: &mut TunnelCounts,
) {
    let mut finished;
    let frame = match partial_tcp {
        Some(tcp_start) => {
            finished = frame.to_vec();
            match complete_checksum(&mut finished, tcp_start, 16) {
                Ok(()) => &finished[..],
                Err(_) => frame,
            }
        }
        None => frame,
    };
    let Some((_, src, dst, _)) = outer_ip(frame) else {
        return;
    };
    let udp = UdpPacket::new_unchecked(&frame[udp_start..]);
    let pseudo = checksum::pseudo_header(&src, &dst, IpProtocol::Udp, u32::from(udp.len()));
    if udp.checksum() == 0 {
        counts.zero_udp_checksum += 1;
    } else if udp.verify_checksum(&src, &dst) {
    } else if udp.checksum() == pseudo {
        counts.partial_udp_checksum += 1;
    } else {
        counts.bad_udp_checksum += 1;
    }
}

/// The TCP and UDP checksum errors `ns`'s kernel has counted (nstat).
pub fn checksum_errors(ns: &Netns) -> Result<u64> {
    ns.kernel_counters(&["TcpInCsumErrors", "UdpInCsumErrors"])
}
