//! Receive offload in user space (GRO): merge consecutive in-order TCP/IPv4
//! segments of a flow into one super-frame for a TAP pod port, which takes
//! it with a virtio-net header saying how the kernel may cut it again.
//!
//! The rules are Linux's `tcp_gro_receive`, a little stricter: a segment
//! joins its flow's held super-frame only if it is the next in sequence,
//! carries only ACK (and PSH), the same acknowledgment, window, TCP options
//! and IPv4 header (TOS, TTL, DF, options) and link header, and both its
//! checksums verify, since the super-frame goes out claiming them. Every
//! segment but the last carries the first's payload length (the GSO size);
//! a shorter one or one with PSH ends the super-frame. Anything else is sent
//! as it is, after the held super-frame of its flow, so that no flow is
//! reordered.
//!
//! ```
//! use podswitch_encap::coalesce::Coalescer;
//! use podswitch_encap::virtio_net::Offload;
//!
//! let mut gro = Coalescer::new();
//! let mut sent = Vec::new();
//! let mut send = |offload: &Offload, frame: &[u8]| sent.push((*offload, frame.len()));
//! // An ARP request is no TCP segment: it goes out at once, as it is.
//! gro.push(&[0xff; 42], &mut send);
//! gro.flush(&mut send);
//! assert_eq!(sent, [(Offload::NONE, 42)]);
//! assert_eq!(gro.stats().passed, 1);
//! ```

use core::fmt;

use crate::checksum;
use crate::segment::{TcpIpv4, ipv4_addresses, tcp_flags};
use crate::virtio_net::{Checksum, Gso, GsoKind, Offload};

/// Most flows held at once; a new flow beyond them sends the oldest.
pub const MAX_FLOWS: usize = 8;
/// Most segments merged into one super-frame.
pub const MAX_SEGMENTS: usize = 64;
/// Most bytes of IPv4 packet in a super-frame (the Total Length field's).
pub const MAX_IP_LEN: usize = 65535;

const ETHERNET_LEN: usize = 14;
const BUFFER_LEN: usize = ETHERNET_LEN + MAX_IP_LEN;
const IPPROTO_TCP: u8 = 6;
/// Offset of the checksum field in a TCP header.
const TCP_CHECKSUM_OFFSET: u16 = 16;

/// What the coalescer did with the frames pushed so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CoalesceStats {
    /// Frames merged into a super-frame (of two segments or more).
    pub merged: u64,
    /// Super-frames sent.
    pub super_frames: u64,
    /// Frames sent as they came: not mergeable, or alone in their flow.
    pub passed: u64,
}

/// A TCP flow: IPv4 source and destination, then the two ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey([u8; 12]);

/// A segment that may join a super-frame, as far as it alone can tell.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    headers: TcpIpv4,
    seq: u32,
    id: u16,
    df: bool,
    psh: bool,
}

/// How a pushed frame relates to TCP flows.
enum Class {
    /// Not a TCP segment with visible ports: belongs to no flow.
    Other,
    /// A segment of flow `FlowKey`, mergeable if the candidate is there.
    Tcp(FlowKey, Option<Candidate>),
}

/// One held flow: its super-frame so far and what the next segment must be.
struct Flow {
    buffer: Box<[u8]>,
    held: bool,
    age: u64,
    key: FlowKey,
    /// Length of the first frame as it came (sent unchanged when alone).
    first_len: usize,
    /// The first segment's headers; `ip_len` grows as segments join.
    headers: TcpIpv4,
    gso_size: usize,
    segments: usize,
    next_seq: u32,
    next_id: u16,
}

impl Flow {
    fn new() -> Flow {
        Flow {
            buffer: vec![0; BUFFER_LEN].into_boxed_slice(),
            held: false,
            age: 0,
            key: FlowKey([0; 12]),
            first_len: 0,
            headers: TcpIpv4 {
                ip_header_len: 20,
                ip_len: 40,
                tcp_header_len: 20,
            },
            gso_size: 0,
            segments: 0,
            next_seq: 0,
            next_id: 0,
        }
    }

    /// Whether `frame` (a candidate of this flow's key) continues it.
    fn continues(&self, frame: &[u8], candidate: &Candidate) -> bool {
        let (held, new) = (&self.headers, &candidate.headers);
        if held.ip_header_len != new.ip_header_len || held.tcp_header_len != new.tcp_header_len {
            return false;
        }
        let buffer = &self.buffer[..];
        let ip_end = ETHERNET_LEN + held.ip_header_len;
        let tcp_end = ip_end + held.tcp_header_len;
        let same = |range: core::ops::Range<usize>| buffer[range.clone()] == frame[range];
        // Link header; TOS; flags, fragment offset, TTL, protocol; options.
        // TCP: acknowledgment and data offset; window; options.
        let headers_match = same(0..ETHERNET_LEN)
            && same(15..16)
            && same(20..24)
            && same(34..ip_end)
            && same(ip_end + 8..ip_end + 13)
            && same(ip_end + 14..ip_end + 16)
            && same(ip_end + 20..tcp_end);
        let payload = new.payload_len();
        headers_match
            && candidate.seq == self.next_seq
            && (candidate.df || candidate.id == self.next_id)
            && payload <= self.gso_size
            && self.segments < MAX_SEGMENTS
            && held.ip_len + payload <= MAX_IP_LEN
    }

    /// Whether no further segment can join.
    fn full(&self) -> bool {
        self.segments == MAX_SEGMENTS || self.headers.ip_len == MAX_IP_LEN
    }
}

/// Userspace GRO for TCP/IPv4 frames bound for a TAP port: holds up to
/// [`MAX_FLOWS`] flows' super-frames (buffers allocated once, in
/// [`Coalescer::new`]), and hands every frame or super-frame to a `send`
/// callback with the [`Offload`] its virtio-net header must carry.
///
/// Push each frame of a batch with [`push`](Self::push), then call
/// [`flush`](Self::flush) at the end of the batch.
pub struct Coalescer {
    flows: [Flow; MAX_FLOWS],
    clock: u64,
    stats: CoalesceStats,
}

impl Default for Coalescer {
    fn default() -> Coalescer {
        Coalescer::new()
    }
}

impl fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("Coalescer")
            .field("held", &self.held())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Coalescer {
    /// A coalescer with its [`MAX_FLOWS`] buffers of 65549 bytes (an
    /// Ethernet header and the largest IPv4 packet) allocated.
    pub fn new() -> Coalescer {
        Coalescer {
            flows: core::array::from_fn(|_| Flow::new()),
            clock: 0,
            stats: CoalesceStats::default(),
        }
    }

    /// What the coalescer has done so far.
    pub fn stats(&self) -> CoalesceStats {
        self.stats
    }

    /// How many flows hold a super-frame (or a first segment) now.
    pub fn held(&self) -> usize {
        self.flows.iter().filter(|flow| flow.held).count()
    }

    /// Take one frame. It joins its flow's held super-frame; or it is sent
    /// as it is, after that super-frame (so the flow keeps its order); or
    /// it becomes the first segment of a new held super-frame, which may
    /// send the oldest held flow to make room. Frames that are no TCP
    /// segment, or malformed, are sent at once, unchanged.
    pub fn push<F: FnMut(&Offload, &[u8])>(&mut self, frame: &[u8], send: &mut F) {
        let (key, candidate) = match classify(frame) {
            Class::Other => return self.pass(frame, send),
            Class::Tcp(key, candidate) => (key, candidate),
        };
        let held = self
            .flows
            .iter()
            .position(|flow| flow.held && flow.key == key);
        let Some(candidate) = candidate else {
            if let Some(slot) = held {
                self.send_flow(slot, send);
            }
            return self.pass(frame, send);
        };
        if let Some(slot) = held {
            if self.flows[slot].continues(frame, &candidate) {
                return self.merge(slot, frame, &candidate, send);
            }
            self.send_flow(slot, send);
        }
        // A PSH segment ends a super-frame: alone, it is sent at once.
        if candidate.psh {
            return self.pass(frame, send);
        }
        let slot = match held {
            Some(slot) => slot,
            None => self.free_slot(send),
        };
        self.start(slot, key, frame, &candidate);
    }

    /// Send every held super-frame (at the end of a batch), oldest first.
    pub fn flush<F: FnMut(&Offload, &[u8])>(&mut self, send: &mut F) {
        while let Some(slot) = self.oldest() {
            self.send_flow(slot, send);
        }
    }

    fn pass<F: FnMut(&Offload, &[u8])>(&mut self, frame: &[u8], send: &mut F) {
        self.stats.passed += 1;
        send(&Offload::NONE, frame);
    }

    fn oldest(&self) -> Option<usize> {
        (0..MAX_FLOWS)
            .filter(|&slot| self.flows[slot].held)
            .min_by_key(|&slot| self.flows[slot].age)
    }

    /// A slot for a new flow: a free one, or the oldest, sent first.
    fn free_slot<F: FnMut(&Offload, &[u8])>(&mut self, send: &mut F) -> usize {
        if let Some(slot) = self.flows.iter().position(|flow| !flow.held) {
            return slot;
        }
        let slot = self.oldest().unwrap_or(0);
        self.send_flow(slot, send);
        slot
    }

    fn start(&mut self, slot: usize, key: FlowKey, frame: &[u8], candidate: &Candidate) {
        let flow = &mut self.flows[slot];
        flow.buffer[..frame.len()].copy_from_slice(frame);
        flow.held = true;
        flow.age = self.clock;
        self.clock += 1;
        flow.key = key;
        flow.first_len = frame.len();
        flow.headers = candidate.headers;
        flow.gso_size = candidate.headers.payload_len();
        flow.segments = 1;
        flow.next_seq = candidate.seq.wrapping_add(flow.gso_size as u32);
        flow.next_id = candidate.id.wrapping_add(1);
    }

    fn merge<F: FnMut(&Offload, &[u8])>(
        &mut self,
        slot: usize,
        frame: &[u8],
        candidate: &Candidate,
        send: &mut F,
    ) {
        let flow = &mut self.flows[slot];
        let payload = &frame[candidate.headers.header_len()..candidate.headers.frame_len()];
        let at = flow.headers.frame_len();
        flow.buffer[at..at + payload.len()].copy_from_slice(payload);
        flow.headers.ip_len += payload.len();
        flow.segments += 1;
        flow.next_seq = flow.next_seq.wrapping_add(payload.len() as u32);
        flow.next_id = flow.next_id.wrapping_add(1);
        if candidate.psh {
            flow.buffer[flow.headers.tcp_start() + 13] |= tcp_flags::PSH;
        }
        if candidate.psh || payload.len() < flow.gso_size || flow.full() {
            self.send_flow(slot, send);
        }
    }

    /// Send a held flow: its first frame unchanged if it is alone, else
    /// the super-frame with its lengths, IPv4 checksum and TCP
    /// pseudo-header sum set and a GSO offload.
    fn send_flow<F: FnMut(&Offload, &[u8])>(&mut self, slot: usize, send: &mut F) {
        let flow = &mut self.flows[slot];
        flow.held = false;
        if flow.segments == 1 {
            self.stats.passed += 1;
            send(&Offload::NONE, &flow.buffer[..flow.first_len]);
            return;
        }
        let headers = flow.headers;
        let buffer = &mut flow.buffer[..headers.frame_len()];
        let tcp_start = headers.tcp_start();
        buffer[16..18].copy_from_slice(&(headers.ip_len as u16).to_be_bytes());
        checksum::fill_ipv4_header(&mut buffer[ETHERNET_LEN..tcp_start]);
        let (src, dst) = ipv4_addresses(buffer);
        let tcp_len = (headers.ip_len - headers.ip_header_len) as u16;
        let pseudo = checksum::ipv4_pseudo_header(src, dst, IPPROTO_TCP, tcp_len);
        buffer[tcp_start + 16..tcp_start + 18].copy_from_slice(&pseudo.to_be_bytes());
        let offload = Offload {
            checksum: Checksum::Partial {
                start: tcp_start as u16,
                offset: TCP_CHECKSUM_OFFSET,
            },
            gso: Some(Gso {
                kind: GsoKind::TcpV4,
                ecn: false,
                size: flow.gso_size as u16,
                hdr_len: headers.header_len() as u16,
            }),
        };
        self.stats.merged += flow.segments as u64;
        self.stats.super_frames += 1;
        send(&offload, buffer);
    }
}

/// Find a frame's flow and whether it may join a super-frame by itself.
fn classify(frame: &[u8]) -> Class {
    if frame.get(12..14) != Some(&[0x08, 0x00][..]) {
        return Class::Other;
    }
    let Some(ip) = frame[ETHERNET_LEN..].first_chunk::<20>() else {
        return Class::Other;
    };
    let ip_header_len = usize::from(ip[0] & 0x0f) * 4;
    let fragment_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
    if ip[0] >> 4 != 4 || ip_header_len < 20 || ip[9] != IPPROTO_TCP || fragment_offset != 0 {
        return Class::Other;
    }
    let ports_at = ETHERNET_LEN + ip_header_len;
    let Some(ports) = frame.get(ports_at..ports_at + 4) else {
        return Class::Other;
    };
    let mut key = [0; 12];
    key[..8].copy_from_slice(&ip[12..20]);
    key[8..].copy_from_slice(ports);
    let key = FlowKey(key);
    Class::Tcp(key, candidate(frame))
}

/// The segment's facts if it may join a super-frame: well formed, not a
/// fragment, ACK with at most PSH besides, some payload, and checksums
/// that verify.
fn candidate(frame: &[u8]) -> Option<Candidate> {
    let headers = TcpIpv4::parse(frame).ok()?;
    if frame.len() > BUFFER_LEN || headers.payload_len() == 0 {
        return None;
    }
    let ip = &frame[ETHERNET_LEN..headers.tcp_start()];
    let tcp = &frame[headers.tcp_start()..headers.frame_len()];
    let flags = tcp[13];
    if tcp[12] & 0x0f != 0
        || flags & tcp_flags::ACK == 0
        || flags & !(tcp_flags::ACK | tcp_flags::PSH) != 0
    {
        return None;
    }
    if !checksum::ipv4_header_ok(ip) || !tcp_checksum_ok(frame, tcp) {
        return None;
    }
    Some(Candidate {
        headers,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        id: u16::from_be_bytes([ip[4], ip[5]]),
        df: ip[6] & 0x40 != 0,
        psh: flags & tcp_flags::PSH != 0,
    })
}

/// Whether a segment's TCP checksum verifies. Under `cfg(fuzzing)` it
/// always does, as [`checksum::ipv4_header_ok`] does, so fuzzers reach the
/// merging.
fn tcp_checksum_ok(frame: &[u8], tcp: &[u8]) -> bool {
    if cfg!(fuzzing) {
        return true;
    }
    let (src, dst) = ipv4_addresses(frame);
    let pseudo = checksum::ipv4_pseudo_header(src, dst, IPPROTO_TCP, tcp.len() as u16);
    checksum::combine(&[pseudo, checksum::sum(tcp)]) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DropReason;
    use crate::segment::TcpSegments;
    use crate::segment::complete_checksum;
    use crate::segment::tests::{Spec, checksums_valid, tcp_frame, timestamps};
    use crate::virtio_net::{HEADER_LEN, Header};
    use proptest::prelude::*;

    /// Everything a coalescer sent: offload and frame.
    type Sent = Vec<(Offload, Vec<u8>)>;

    /// A `send` callback that keeps what it is given.
    fn collect(sent: &mut Sent) -> impl FnMut(&Offload, &[u8]) + '_ {
        |offload: &Offload, frame: &[u8]| sent.push((*offload, frame.to_vec()))
    }

    fn run(gro: &mut Coalescer, frames: &[Vec<u8>]) -> Sent {
        let mut sent = Vec::new();
        let mut send = collect(&mut sent);
        for frame in frames {
            gro.push(frame, &mut send);
        }
        gro.flush(&mut send);
        drop(send);
        sent
    }

    fn payload(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    /// `n` in-order segments of `len` bytes each for `spec`, the last
    /// `last_len` bytes long.
    fn segments(spec: &Spec, n: usize, len: usize, last_len: usize) -> Vec<Vec<u8>> {
        let mut seq = spec.seq;
        (0..n)
            .map(|i| {
                let this = if i + 1 == n { last_len } else { len };
                let frame = tcp_frame(
                    &Spec {
                        seq,
                        id: spec.id.wrapping_add(i as u16),
                        ..spec.clone()
                    },
                    &payload(this, i as u8),
                );
                seq = seq.wrapping_add(this as u32);
                frame
            })
            .collect()
    }

    /// Segment `frame` at `mss` into owned frames.
    fn cut(frame: &[u8], mss: u16) -> Vec<Vec<u8>> {
        TcpSegments::new(frame, mss).unwrap().to_frames()
    }

    /// Check a super-frame's offload and its pseudo-header sum, complete
    /// its checksum and return it.
    fn completed(offload: &Offload, frame: &[u8]) -> Vec<u8> {
        let Checksum::Partial { start, offset } = offload.checksum else {
            panic!("super-frame without a partial checksum: {offload}");
        };
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        assert_eq!((usize::from(start), offset), (14 + ihl, 16));
        let gso = offload.gso.unwrap();
        assert_eq!(gso.kind, GsoKind::TcpV4);
        let thl = usize::from(frame[14 + ihl + 12] >> 4) * 4;
        assert_eq!(usize::from(gso.hdr_len), 14 + ihl + thl);
        let tcp_len = (frame.len() - 14 - ihl) as u16;
        let (src, dst) = ipv4_addresses(frame);
        let pseudo = checksum::ipv4_pseudo_header(src, dst, 6, tcp_len);
        assert_eq!(frame[14 + ihl + 16..14 + ihl + 18], pseudo.to_be_bytes());
        // The virtio header the TAP port writes is one Linux accepts.
        let mut with_header = offload.to_bytes().to_vec();
        with_header.extend_from_slice(frame);
        assert_eq!(
            Offload::parse(&Header::new_checked(&with_header[..]).unwrap()),
            Ok(*offload)
        );
        let mut frame = with_header[HEADER_LEN..].to_vec();
        complete_checksum(&mut frame, start.into(), offset.into()).unwrap();
        assert!(checksums_valid(&frame));
        frame
    }

    #[test]
    fn merges_in_order_segments_golden() {
        // Three segments of 4, 4 and 2 bytes: one super-frame.
        let spec = Spec::default();
        let frames = segments(&spec, 3, 4, 2);
        let mut gro = Coalescer::new();
        let sent = run(&mut gro, &frames);
        assert_eq!(sent.len(), 1);
        let (offload, frame) = &sent[0];
        assert_eq!(
            offload.to_string(),
            "csum=partial start=34 offset=16 gso=tcpv4 size=4 hdr_len=54"
        );
        #[rustfmt::skip]
        let expected: [u8; 64] = [
            2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00,
            // IPv4: length 50, the first id, DF, TTL 64, TCP, checksum.
            0x45, 0x00, 0x00, 0x32, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x0f, 0x9f,
            10, 244, 1, 5, 10, 244, 2, 7,
            // TCP: the first seq, ACK, pseudo-header sum for 30 bytes.
            0x9c, 0x40, 0x14, 0x51, 0x10, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00,
            0x50, 0x10, 0x01, 0xf6, 0x19, 0x18, 0x00, 0x00,
            0x00, 0x1f, 0x3e, 0x5d, 0x01, 0x1e, 0x3f, 0x5c, 0x02, 0x1d,
        ];
        assert_eq!(frame[..], expected);
        assert!(checksums_valid(&completed(offload, frame)));
        assert_eq!(
            gro.stats(),
            CoalesceStats {
                merged: 3,
                super_frames: 1,
                passed: 0
            }
        );
    }

    #[test]
    fn a_lone_segment_goes_out_unchanged() {
        let mut frame = tcp_frame(&Spec::default(), b"x");
        frame.extend_from_slice(&[0; 5]); // Ethernet padding to 60 bytes.
        let mut gro = Coalescer::new();
        let sent = run(&mut gro, std::slice::from_ref(&frame));
        assert_eq!(sent, vec![(Offload::NONE, frame)]);
        assert_eq!(gro.stats().passed, 1);
        assert_eq!(gro.held(), 0);
    }

    #[test]
    fn full_sized_segments_wait_and_a_short_or_psh_one_sends() {
        let mut gro = Coalescer::new();
        let mut sent = Vec::new();
        let mut send = |offload: &Offload, frame: &[u8]| sent.push((*offload, frame.len()));
        let frames = segments(&Spec::default(), 4, 100, 40);
        for frame in &frames[..3] {
            gro.push(frame, &mut send);
        }
        assert_eq!(gro.held(), 1);
        gro.push(&frames[3], &mut send);
        assert_eq!(gro.held(), 0, "the short segment ends the super-frame");
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1, 54 + 340);

        let psh = Spec {
            flags: tcp_flags::ACK | tcp_flags::PSH,
            ..Spec::default()
        };
        let mut frames = segments(&Spec::default(), 2, 100, 100);
        frames.push(
            segments(
                &Spec {
                    seq: psh.seq + 200,
                    id: psh.id + 2,
                    ..psh.clone()
                },
                1,
                100,
                100,
            )
            .remove(0),
        );
        let sent = run(&mut gro, &frames);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1[47], tcp_flags::ACK | tcp_flags::PSH, "PSH kept");
        assert_eq!(sent[0].0.gso.unwrap().size, 100);

        // A first segment with PSH is sent at once.
        let mut sent = 0;
        gro.push(
            &segments(&psh, 1, 10, 10)[0],
            &mut |_: &Offload, _: &[u8]| sent += 1,
        );
        assert_eq!((sent, gro.held()), (1, 0));
    }

    #[test]
    fn timestamps_and_ip_options_must_match() {
        let spec = Spec {
            tcp_options: timestamps(1000, 99),
            ip_options: vec![1, 1, 1, 0],
            ..Spec::default()
        };
        let mut frames = segments(&spec, 3, 200, 200);
        let sent = run(&mut Coalescer::new(), &frames);
        assert_eq!(sent.len(), 1);
        let frame = completed(&sent[0].0, &sent[0].1);
        assert_eq!(sent[0].0.gso.unwrap().hdr_len, 14 + 24 + 32);
        assert_eq!(frame.len(), 14 + 24 + 32 + 600);

        // A newer TSval on the third: the first two merge, the third waits alone.
        let later = Spec {
            seq: spec.seq + 400,
            id: spec.id + 2,
            tcp_options: timestamps(1001, 99),
            ..spec.clone()
        };
        frames[2] = segments(&later, 1, 200, 200).remove(0);
        let sent = run(&mut Coalescer::new(), &frames);
        assert_eq!(sent.len(), 2);
        assert!(sent[0].0.gso.is_some());
        assert_eq!(sent[1], (Offload::NONE, frames[2].clone()));
    }

    #[test]
    fn interleaved_flows_merge_separately() {
        let a = segments(&Spec::default(), 5, 300, 300);
        let b = segments(
            &Spec {
                src_port: 40001,
                seq: 77,
                ..Spec::default()
            },
            5,
            300,
            300,
        );
        let frames: Vec<_> = a
            .iter()
            .zip(&b)
            .flat_map(|(a, b)| [a.clone(), b.clone()])
            .collect();
        let mut gro = Coalescer::new();
        let sent = run(&mut gro, &frames);
        assert_eq!(sent.len(), 2);
        for ((offload, frame), flow) in sent.iter().zip([&a, &b]) {
            assert_eq!(offload.gso.unwrap().size, 300);
            let frame = completed(offload, frame);
            assert_eq!(
                cut(&frame, 300),
                *flow,
                "re-segmenting gives the segments back"
            );
        }
        assert_eq!(gro.stats().merged, 10);
    }

    #[test]
    fn out_of_order_segment_flushes_without_merging() {
        let frames = segments(&Spec::default(), 4, 100, 100);
        let order = [
            frames[0].clone(),
            frames[1].clone(),
            frames[3].clone(),
            frames[2].clone(),
        ];
        let mut gro = Coalescer::new();
        let sent = run(&mut gro, &order);
        // 0+1 merged, sent when 3 arrives; 3 held, sent when 2 arrives;
        // 2 held, sent by the flush.
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[0].0.gso.unwrap().size, 100);
        assert_eq!(completed(&sent[0].0, &sent[0].1).len(), 54 + 200);
        assert_eq!(sent[1], (Offload::NONE, frames[3].clone()));
        assert_eq!(sent[2], (Offload::NONE, frames[2].clone()));
        assert_eq!(
            gro.stats(),
            CoalesceStats {
                merged: 2,
                super_frames: 1,
                passed: 2
            }
        );
    }

    #[test]
    fn bad_checksum_segment_passes_alone() {
        let mut frames = segments(&Spec::default(), 4, 100, 100);
        frames[2][60] ^= 0x01; // a payload bit: the TCP checksum fails
        let mut gro = Coalescer::new();
        let sent = run(&mut gro, &frames);
        assert_eq!(sent.len(), 3);
        assert!(sent[0].0.gso.is_some());
        assert_eq!(sent[1], (Offload::NONE, frames[2].clone()));
        assert_eq!(sent[2], (Offload::NONE, frames[3].clone()));

        // A bad IPv4 header checksum, on the first: passed, the rest merge.
        let mut frames = segments(&Spec::default(), 3, 100, 100);
        frames[0][24] ^= 0x80;
        let sent = run(&mut gro, &frames);
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0], (Offload::NONE, frames[0].clone()));
        assert!(sent[1].0.gso.is_some());
    }

    #[test]
    fn fin_syn_rst_and_cwr_flush_and_pass_alone() {
        for flag in [
            tcp_flags::FIN,
            tcp_flags::SYN,
            tcp_flags::RST,
            tcp_flags::CWR,
            tcp_flags::URG,
            tcp_flags::ECE,
        ] {
            let spec = Spec::default();
            let mut frames = segments(&spec, 3, 100, 100);
            let last = Spec {
                seq: spec.seq + 300,
                id: spec.id + 3,
                flags: tcp_flags::ACK | flag,
                ..spec.clone()
            };
            frames.push(segments(&last, 1, 100, 100).remove(0));
            let sent = run(&mut Coalescer::new(), &frames);
            assert_eq!(sent.len(), 2, "flag {flag:#x}");
            assert_eq!(completed(&sent[0].0, &sent[0].1).len(), 54 + 300);
            assert_eq!(sent[1], (Offload::NONE, frames[3].clone()));
        }
    }

    #[test]
    fn what_is_not_a_data_segment_passes_alone() {
        let spec = Spec::default();
        let pure_ack = tcp_frame(&spec, &[]);
        let mut not_df = segments(
            &Spec {
                df: false,
                ..spec.clone()
            },
            3,
            100,
            100,
        );
        // Without DF the ids must run on: a jump ends the super-frame.
        not_df[2][18..20].copy_from_slice(&[0xff, 0xff]);
        let mut fixed = not_df[2][14..34].to_vec();
        crate::checksum::fill_ipv4_header(&mut fixed);
        not_df[2][14..34].copy_from_slice(&fixed);
        let udp = {
            let mut f = tcp_frame(&spec, b"abcd");
            f[23] = 17;
            f
        };
        let mut gro = Coalescer::new();
        let sent = run(&mut gro, &[pure_ack.clone(), udp.clone(), vec![1, 2, 3]]);
        assert_eq!(
            sent,
            vec![
                (Offload::NONE, pure_ack),
                (Offload::NONE, udp),
                (Offload::NONE, vec![1, 2, 3])
            ]
        );
        let sent = run(&mut gro, &not_df);
        assert_eq!(sent.len(), 2);
        assert_eq!(completed(&sent[0].0, &sent[0].1).len(), 54 + 200);
        assert_eq!(sent[1], (Offload::NONE, not_df[2].clone()));
        // A tagged, an IPv6 and a truncated frame: no flow, no panic.
        for frame in [
            vec![0u8; 13],
            [&[0u8; 12][..], &[0x81, 0, 0, 1, 0x08, 0]].concat(),
        ] {
            assert_eq!(run(&mut gro, std::slice::from_ref(&frame)).len(), 1);
        }
        assert_eq!(
            TcpSegments::new(&[0; 13], 1).unwrap_err(),
            DropReason::TruncatedEthernet
        );
    }

    #[test]
    fn a_ninth_flow_sends_the_oldest() {
        let mut gro = Coalescer::new();
        let mut sent = Vec::new();
        let flows: Vec<_> = (0..9u16)
            .map(|i| {
                tcp_frame(
                    &Spec {
                        src_port: 1000 + i,
                        ..Spec::default()
                    },
                    b"data",
                )
            })
            .collect();
        for frame in &flows[..8] {
            gro.push(frame, &mut collect(&mut sent));
        }
        assert_eq!(gro.held(), 8);
        gro.push(&flows[8], &mut collect(&mut sent));
        assert_eq!(gro.held(), 8);
        assert_eq!(sent, vec![(Offload::NONE, flows[0].clone())]);
        gro.flush(&mut collect(&mut sent));
        assert_eq!(sent.len(), 9);
        assert_eq!(
            sent[1..].iter().map(|(_, f)| f.clone()).collect::<Vec<_>>(),
            flows[1..]
        );
    }

    #[test]
    fn limits_segments_and_ip_length() {
        // 70 segments of 100 bytes: 64 merge, then 6.
        let frames = segments(&Spec::default(), 70, 100, 100);
        let sent = run(&mut Coalescer::new(), &frames);
        assert_eq!(sent.len(), 2);
        assert_eq!(completed(&sent[0].0, &sent[0].1).len(), 54 + 6400);
        assert_eq!(completed(&sent[1].0, &sent[1].1).len(), 54 + 600);

        // 9000-byte segments: 7 fit in 65535 bytes of IPv4 (63040), an 8th not.
        let frames = segments(&Spec::default(), 9, 9000, 9000);
        let sent = run(&mut Coalescer::new(), &frames);
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].1.len(), 54 + 7 * 9000);
        assert_eq!(sent[1].1.len(), 54 + 2 * 9000);

        // Exactly 65535: 65495 bytes of payload in 5 segments, the last short.
        let frames = segments(&Spec::default(), 5, 16000, 65495 - 4 * 16000);
        let sent = run(&mut Coalescer::new(), &frames);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1.len(), 14 + 65535);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn segment_then_coalesce_gives_the_super_frame_back(
            len in 1usize..65000,
            mss in 500u16..9000,
            seq in any::<u32>(),
            id in any::<u16>(),
            ports in any::<(u16, u16)>(),
            df in any::<bool>(),
            tsval in proptest::option::of(any::<u32>()),
            psh in any::<bool>(),
        ) {
            let spec = Spec {
                seq, id, df,
                src_port: ports.0,
                dst_port: ports.1,
                flags: tcp_flags::ACK | if psh { tcp_flags::PSH } else { 0 },
                tcp_options: tsval.map(|ts| timestamps(ts, 3)).unwrap_or_default(),
                ..Spec::default()
            };
            let headers = 54 + spec.tcp_options.len();
            prop_assume!(headers - 14 + len <= MAX_IP_LEN);
            let original = tcp_frame(&spec, &payload(len, 0x5a));
            let segments = cut(&original, mss);
            let mut gro = Coalescer::new();
            let sent = run(&mut gro, &segments);

            prop_assert_eq!(sent.len(), segments.len().div_ceil(MAX_SEGMENTS));
            let mut resegmented = Vec::new();
            for (offload, frame) in &sent {
                if offload.is_none() {
                    resegmented.push(frame.clone());
                } else {
                    prop_assert_eq!(usize::from(offload.gso.unwrap().size), usize::from(mss).min(len));
                    let frame = completed(offload, frame);
                    resegmented.extend(cut(&frame, offload.gso.unwrap().size));
                }
            }
            prop_assert_eq!(&resegmented, &segments);
            if segments.len() > 1 && segments.len() <= MAX_SEGMENTS {
                // One super-frame: the original but for the TCP checksum field.
                let (offload, frame) = &sent[0];
                prop_assert_eq!(frame.len(), original.len());
                prop_assert_eq!(&frame[..50], &original[..50]);
                prop_assert_eq!(&frame[52..], &original[52..]);
                let completed = completed(offload, frame);
                let zero_or_ones = |field: &[u8]| field == [0, 0] || field == [0xff, 0xff];
                prop_assert!(
                    completed[50..52] == original[50..52]
                        || (zero_or_ones(&completed[50..52]) && zero_or_ones(&original[50..52]))
                );
            }
            let stats = gro.stats();
            prop_assert_eq!(stats.merged + stats.passed, segments.len() as u64);
        }

        #[test]
        fn never_panics_and_counts_every_frame(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 0..20),
        ) {
            let mut gro = Coalescer::new();
            let sent = run(&mut gro, &frames);
            let stats = gro.stats();
            prop_assert_eq!(stats.merged + stats.passed, frames.len() as u64);
            prop_assert!(sent.len() <= frames.len());
        }
    }
}
