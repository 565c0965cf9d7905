//! `podswitch capture`: a port's frames, copied off the data path to a
//! control client as pcapng.
//!
//! A capture is a [`CaptureTap`] in the topology snapshot: the workers
//! offer it the bytes of each frame the port receives (in
//! `Pipeline::dispatch`, before the decision) and sends (in the worker's
//! transmit, in the form it leaves in: encapsulated on the uplink and the
//! tunnel port). The tap filters, copies what matches into a bounded
//! channel and counts what did not fit; it never blocks a worker. With no
//! capture running the cost is one emptiness check of the topology's
//! capture list per received packet and per port's transmit.

use std::io::Write;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{Receiver, Sender, TrySendError, bounded};
use pcap_file::DataLink;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use podswitch_encap::TunnelKind;

use crate::topology::PortId;

/// Frames a capture holds for its client before it drops (and counts)
/// more.
pub const CAPTURE_QUEUE: usize = 4096;
/// The longest frame a capture records whole; longer ones (TCP
/// super-frames) are cut to this, their original length kept.
pub const SNAPLEN: usize = 65535;

/// Which way a captured frame went through the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received from the port's device.
    Received,
    /// Sent to it.
    Sent,
}

/// One captured frame.
#[derive(Debug)]
pub struct CapturedFrame {
    /// Which way it went.
    pub direction: Direction,
    /// When the worker saw it.
    pub time: Duration,
    /// Its length before [`SNAPLEN`] cut it.
    pub original_len: usize,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Which frames a capture keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureFilter {
    /// This IPv4 address as source or destination (outer, or inner for a
    /// tunnel packet).
    pub host: Option<Ipv4Addr>,
    /// This TCP or UDP port as source or destination, likewise.
    pub l4_port: Option<u16>,
    /// The tunnel's UDP port: packets to it are looked into.
    pub tunnel_port: u16,
    /// The tunnel's header, to find the frame inside.
    pub tunnel: TunnelKind,
}

impl CaptureFilter {
    /// Whether `frame` passes.
    pub fn matches(&self, frame: &[u8]) -> bool {
        if self.host.is_none() && self.l4_port.is_none() {
            return true;
        }
        let Some(outer) = Headers::parse(frame) else {
            return false;
        };
        if self.passes(&outer) {
            return true;
        }
        // A tunnel packet: the frame inside it.
        match outer.inner_frame(frame, self.tunnel_port, self.tunnel) {
            Some(inner) => Headers::parse(inner).is_some_and(|inner| self.passes(&inner)),
            None => false,
        }
    }

    fn passes(&self, headers: &Headers) -> bool {
        let host = self
            .host
            .is_none_or(|h| headers.src == h || headers.dst == h);
        let port = self
            .l4_port
            .is_none_or(|p| headers.ports.is_some_and(|(s, d)| s == p || d == p));
        host && port
    }
}

/// The IPv4 addresses and TCP/UDP ports of an Ethernet frame.
struct Headers {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    /// For UDP: where its payload starts.
    udp_payload: Option<usize>,
    ports: Option<(u16, u16)>,
}

impl Headers {
    fn parse(frame: &[u8]) -> Option<Headers> {
        let (ethertype, ip_start) = match frame.get(12..14)? {
            [0x81, 0x00] => (frame.get(16..18)?, 18),
            ethertype => (ethertype, 14),
        };
        if ethertype != [0x08, 0x00] {
            return None;
        }
        let ip = frame.get(ip_start..)?;
        let header_len = usize::from(ip.first()? & 0x0f) * 4;
        let address = |at: usize| -> Option<Ipv4Addr> {
            let bytes: [u8; 4] = ip.get(at..at + 4)?.try_into().ok()?;
            Some(Ipv4Addr::from(bytes))
        };
        let (src, dst) = (address(12)?, address(16)?);
        let protocol = *ip.get(9)?;
        let l4 = ip_start + header_len;
        let port = |at: usize| -> Option<u16> {
            Some(u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?))
        };
        let ports = match protocol {
            6 | 17 => Some((port(l4)?, port(l4 + 2)?)),
            _ => None,
        };
        Some(Headers {
            src,
            dst,
            udp_payload: (protocol == 17).then_some(l4 + 8),
            ports,
        })
    }

    /// The Ethernet frame a `kind` tunnel packet to `tunnel_port` carries.
    fn inner_frame<'f>(
        &self,
        frame: &'f [u8],
        tunnel_port: u16,
        kind: TunnelKind,
    ) -> Option<&'f [u8]> {
        let payload = self.udp_payload?;
        if self.ports?.1 != tunnel_port {
            return None;
        }
        let tunnel = frame.get(payload..)?;
        tunnel.get(kind.header_len(tunnel)?..)
    }
}

/// A running capture, as the workers see it.
#[derive(Debug)]
pub struct CaptureTap {
    /// The port captured.
    pub port: PortId,
    filter: CaptureFilter,
    frames: Sender<CapturedFrame>,
    /// Frames that matched but found the queue full.
    missed: AtomicU64,
    /// Set when the port is gone: the capture ends.
    ended: AtomicBool,
}

impl CaptureTap {
    /// A tap on `port` keeping what `filter` passes, and the receiving
    /// end its client reads.
    pub fn new(port: PortId, filter: CaptureFilter) -> (CaptureTap, Receiver<CapturedFrame>) {
        let (frames, receiver) = bounded(CAPTURE_QUEUE);
        let tap = CaptureTap {
            port,
            filter,
            frames,
            missed: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        };
        (tap, receiver)
    }

    /// Offer a frame that went `direction` through the port: copied if
    /// the filter passes it and the queue has room (else counted as
    /// missed). Never blocks.
    pub fn offer(&self, direction: Direction, frame: &[u8]) {
        if !self.filter.matches(frame) {
            return;
        }
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let captured = CapturedFrame {
            direction,
            time,
            original_len: frame.len(),
            bytes: frame[..frame.len().min(SNAPLEN)].to_vec(),
        };
        if let Err(TrySendError::Full(_)) = self.frames.try_send(captured) {
            self.missed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Frames that matched but were not kept: the client read too slowly.
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }

    /// End the capture (its port is gone).
    pub fn end(&self) {
        self.ended.store(true, Ordering::Relaxed);
    }

    /// Whether [`CaptureTap::end`] was called.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }
}

/// Writes captured frames as pcapng: one interface (the port, Ethernet),
/// each packet marked inbound or outbound.
pub struct PcapNgStream<W: Write> {
    writer: PcapNgWriter<W>,
}

impl<W: Write> PcapNgStream<W> {
    /// Start the stream on `out` for the port named `port`.
    pub fn new(out: W, port: &str) -> pcap_file::PcapResult<PcapNgStream<W>> {
        let mut writer = PcapNgWriter::new(out)?;
        writer.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: SNAPLEN as u32,
            // Timestamps are written in nanoseconds (10^-9).
            options: vec![
                InterfaceDescriptionOption::IfName(port.to_string().into()),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        })?;
        Ok(PcapNgStream { writer })
    }

    /// Write one frame.
    pub fn write(&mut self, frame: &CapturedFrame) -> pcap_file::PcapResult<()> {
        // epb_flags: bits 0-1 are the direction, 1 inbound, 2 outbound.
        let flags = match frame.direction {
            Direction::Received => 1,
            Direction::Sent => 2,
        };
        self.writer.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: frame.time,
            original_len: frame.original_len as u32,
            data: frame.bytes.as_slice().into(),
            options: vec![EnhancedPacketOption::Flags(flags)],
        })?;
        Ok(())
    }

    /// Push what is written to the client.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.writer.get_mut().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn udp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(src, dst, 64)
            .udp(sport, dport);
        let mut frame = Vec::new();
        builder.write(&mut frame, payload).unwrap();
        frame
    }

    #[test]
    fn the_filter_looks_at_outer_and_inner_headers() {
        let inner = udp_frame([10, 244, 1, 2], [10, 244, 2, 2], 5000, 53, b"query");
        let mut vxlan = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        vxlan.extend_from_slice(&inner);
        let outer = udp_frame([10, 1, 0, 11], [10, 1, 0, 12], 40000, 4789, &vxlan);
        let filter = |host: Option<[u8; 4]>, l4_port| CaptureFilter {
            host: host.map(Ipv4Addr::from),
            l4_port,
            tunnel_port: 4789,
            tunnel: TunnelKind::Vxlan,
        };
        assert!(filter(None, None).matches(&outer));
        assert!(filter(Some([10, 1, 0, 12]), None).matches(&outer));
        assert!(filter(Some([10, 244, 2, 2]), None).matches(&outer));
        assert!(filter(Some([10, 244, 2, 2]), Some(53)).matches(&outer));
        assert!(filter(None, Some(4789)).matches(&outer));
        assert!(!filter(Some([10, 244, 3, 3]), None).matches(&outer));
        assert!(!filter(Some([10, 244, 2, 2]), Some(80)).matches(&outer));
        // Not looked into on another port.
        let other = CaptureFilter {
            tunnel_port: 6081,
            ..filter(Some([10, 244, 2, 2]), None)
        };
        assert!(!other.matches(&outer));
        assert!(filter(Some([10, 244, 1, 2]), Some(5000)).matches(&inner));
    }

    #[test]
    fn every_cut_of_a_frame_is_judged_without_panicking() {
        let inner = udp_frame([10, 244, 1, 2], [10, 244, 2, 2], 5000, 53, b"query");
        let mut vxlan = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        vxlan.extend_from_slice(&inner);
        let outer = udp_frame([10, 1, 0, 11], [10, 1, 0, 12], 40000, 4789, &vxlan);
        let filter = CaptureFilter {
            host: Some(Ipv4Addr::new(10, 244, 2, 2)),
            l4_port: Some(53),
            tunnel_port: 4789,
            tunnel: TunnelKind::Vxlan,
        };
        for len in 0..outer.len() {
            let _ = filter.matches(&outer[..len]);
        }
    }

    #[test]
    fn a_full_queue_counts_what_it_misses() {
        let every_frame = CaptureFilter {
            host: None,
            l4_port: None,
            tunnel_port: 4789,
            tunnel: TunnelKind::Vxlan,
        };
        let (tap, frames) = CaptureTap::new(PortId(1), every_frame);
        let frame = udp_frame([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, b"x");
        for _ in 0..CAPTURE_QUEUE + 3 {
            tap.offer(Direction::Received, &frame);
        }
        assert_eq!(frames.len(), CAPTURE_QUEUE);
        assert_eq!(tap.missed(), 3);
    }

    #[test]
    fn the_stream_is_pcapng_with_directions() {
        let mut out = Vec::new();
        {
            let mut stream = PcapNgStream::new(&mut out, "pod1").unwrap();
            for direction in [Direction::Received, Direction::Sent] {
                let bytes = udp_frame([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, b"x");
                let frame = CapturedFrame {
                    direction,
                    time: Duration::from_secs(1),
                    original_len: bytes.len(),
                    bytes,
                };
                stream.write(&frame).unwrap();
            }
        }
        let mut reader = pcap_file::pcapng::PcapNgReader::new(&out[..]).unwrap();
        let mut flags = Vec::new();
        while let Some(block) = reader.next_block() {
            if let pcap_file::pcapng::Block::EnhancedPacket(packet) = block.unwrap() {
                for option in &packet.options {
                    if let EnhancedPacketOption::Flags(f) = option {
                        flags.push(*f);
                    }
                }
            }
        }
        assert_eq!(flags, [1, 2]);
    }
}
