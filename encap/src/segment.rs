//! Segmentation offload in user space: cut a TCP/IPv4 super-frame from a
//! TAP port into frames of at most one MSS of payload, for ports that take
//! no super-frames (AF_XDP pods, the tunnel uplink); and complete a partial
//! checksum the way a virtio device does.
//!
//! Each segment is written whole into a buffer the caller owns (a UMEM
//! frame, after the headroom the encapsulation needs), so nothing is
//! allocated: the super-frame is read, never changed.

use crate::checksum;
use crate::drop_reason::DropReason;

/// Length of an untagged Ethernet II header.
const ETHERNET_LEN: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const IPPROTO_TCP: u8 = 6;

/// TCP flag bits (byte 13 of the header).
pub mod tcp_flags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push the data to the application.
    pub const PSH: u8 = 0x08;
    /// The acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
    /// The urgent pointer is significant.
    pub const URG: u8 = 0x20;
    /// ECN echo.
    pub const ECE: u8 = 0x40;
    /// Congestion window reduced.
    pub const CWR: u8 = 0x80;
}

/// The headers of a TCP/IPv4 frame, checked for length and consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpIpv4 {
    /// IPv4 header length (IHL × 4).
    pub ip_header_len: usize,
    /// IPv4 Total Length.
    pub ip_len: usize,
    /// TCP header length (data offset × 4).
    pub tcp_header_len: usize,
}

impl TcpIpv4 {
    /// Check an untagged Ethernet + IPv4 + TCP frame: lengths, version,
    /// IHL, protocol, data offset. Fragments are refused; the IPv4 Total
    /// Length decides where the packet ends (trailing bytes are ignored).
    pub fn parse(frame: &[u8]) -> Result<TcpIpv4, DropReason> {
        let Some(ethertype) = frame.get(12..14) else {
            return Err(DropReason::TruncatedEthernet);
        };
        if ethertype != ETHERTYPE_IPV4 {
            return Err(DropReason::NotTcpIpv4);
        }
        let ip = &frame[ETHERNET_LEN..];
        let Some(fixed) = ip.first_chunk::<20>() else {
            return Err(DropReason::TruncatedIpv4);
        };
        let ip_header_len = usize::from(fixed[0] & 0x0f) * 4;
        let ip_len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        if fixed[0] >> 4 != 4 || ip_header_len < 20 || ip_len < ip_header_len {
            return Err(DropReason::BadIpv4Header);
        }
        if ip_len > ip.len() {
            return Err(DropReason::TruncatedIpv4);
        }
        if u16::from_be_bytes([fixed[6], fixed[7]]) & 0x3fff != 0 {
            return Err(DropReason::Ipv4Fragment);
        }
        if fixed[9] != IPPROTO_TCP {
            return Err(DropReason::NotTcpIpv4);
        }
        let tcp = &ip[ip_header_len..ip_len];
        let Some(&offset_byte) = tcp.get(12) else {
            return Err(DropReason::BadTcpHeader);
        };
        let tcp_header_len = usize::from(offset_byte >> 4) * 4;
        if tcp_header_len < 20 || tcp_header_len > tcp.len() {
            return Err(DropReason::BadTcpHeader);
        }
        Ok(TcpIpv4 {
            ip_header_len,
            ip_len,
            tcp_header_len,
        })
    }

    /// Where the TCP header starts in the frame.
    pub const fn tcp_start(&self) -> usize {
        ETHERNET_LEN + self.ip_header_len
    }

    /// Length of the Ethernet, IPv4 and TCP headers together.
    pub const fn header_len(&self) -> usize {
        ETHERNET_LEN + self.ip_header_len + self.tcp_header_len
    }

    /// Bytes of TCP payload.
    pub const fn payload_len(&self) -> usize {
        self.ip_len - self.ip_header_len - self.tcp_header_len
    }

    /// Length of the frame up to the end of the IPv4 packet.
    pub const fn frame_len(&self) -> usize {
        ETHERNET_LEN + self.ip_len
    }
}

/// The IPv4 source and destination of a checked frame.
pub(crate) fn ipv4_addresses(frame: &[u8]) -> ([u8; 4], [u8; 4]) {
    let mut src = [0; 4];
    let mut dst = [0; 4];
    src.copy_from_slice(&frame[26..30]);
    dst.copy_from_slice(&frame[30..34]);
    (src, dst)
}

/// A TCP/IPv4 super-frame and the segments it is cut into.
///
/// ```
/// use podswitch_encap::segment::TcpSegments;
///
/// # let mut frame = vec![0u8; 14 + 20 + 20 + 3000];
/// # frame[12] = 0x08;
/// # frame[14] = 0x45;
/// # frame[16..18].copy_from_slice(&3040u16.to_be_bytes());
/// # frame[23] = 6;
/// # frame[46] = 0x50;
/// # frame[47] = 0x10;
/// let segments = TcpSegments::new(&frame, 1448).unwrap();
/// assert_eq!(segments.count(), 3);
/// let mut out = [0u8; 1514];
/// for i in 0..segments.count() {
///     let len = segments.write(i, &mut out).unwrap();
///     assert_eq!(len, segments.segment_len(i));
///     // … encapsulate and send &out[..len]
/// }
/// assert_eq!(segments.segment_len(2), 54 + 3000 - 2 * 1448);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegments<'a> {
    frame: &'a [u8],
    headers: TcpIpv4,
    mss: usize,
    count: usize,
}

impl<'a> TcpSegments<'a> {
    /// Check a super-frame (untagged Ethernet, IPv4 with or without
    /// options, not a fragment, TCP with or without options) and prepare to
    /// cut it at `mss` payload bytes, the virtio header's `gso_size`.
    /// Bytes after the IPv4 Total Length are ignored; an `mss` of 0 is
    /// refused as [`DropReason::BadVnetHeader`].
    pub fn new(frame: &'a [u8], mss: u16) -> Result<TcpSegments<'a>, DropReason> {
        let headers = TcpIpv4::parse(frame)?;
        if mss == 0 {
            return Err(DropReason::BadVnetHeader);
        }
        let mss = usize::from(mss);
        Ok(TcpSegments {
            frame: &frame[..headers.frame_len()],
            headers,
            mss,
            count: headers.payload_len().div_ceil(mss).max(1),
        })
    }

    /// How many segments the super-frame makes: at least 1 (a super-frame
    /// with no more than `mss` bytes, or none, is one segment).
    pub const fn count(&self) -> usize {
        self.count
    }

    /// The payload bytes per segment.
    pub const fn mss(&self) -> usize {
        self.mss
    }

    /// Length of the Ethernet, IPv4 and TCP headers each segment repeats.
    pub const fn header_len(&self) -> usize {
        self.headers.header_len()
    }

    /// Bytes of TCP payload in the whole super-frame.
    pub const fn payload_len(&self) -> usize {
        self.headers.payload_len()
    }

    /// The longest segment's frame length (the first one's).
    pub fn max_segment_len(&self) -> usize {
        self.segment_len(0)
    }

    fn payload_range(&self, i: usize) -> (usize, usize) {
        let start = i * self.mss;
        let end = (start + self.mss).min(self.payload_len());
        (start, end)
    }

    /// The frame length of segment `i`: headers plus its payload; 0 if `i`
    /// is not below [`count`](Self::count).
    pub fn segment_len(&self, i: usize) -> usize {
        if i >= self.count {
            return 0;
        }
        let (start, end) = self.payload_range(i);
        self.header_len() + end - start
    }

    /// Every segment as a complete frame in a buffer of its own (for tools
    /// and tests; the switch writes segments straight into its buffer
    /// frames with [`write`](Self::write)).
    pub fn to_frames(&self) -> Vec<Vec<u8>> {
        (0..self.count)
            .map(|i| {
                let mut out = vec![0u8; self.segment_len(i)];
                self.write(i, &mut out);
                out
            })
            .collect()
    }

    /// Write segment `i` into `out` as a complete frame and return its
    /// length; `None` (nothing written) if `i` is out of range or `out` is
    /// shorter than [`segment_len`](Self::segment_len).
    ///
    /// The headers are copied, then: IPv4 Total Length set, Identification
    /// advanced by `i`, header checksum recomputed; TCP sequence number
    /// advanced by `i × mss`, FIN and PSH kept on the last segment only,
    /// CWR on the first only, and the checksum computed in full (whatever
    /// partial value the super-frame held is ignored).
    pub fn write(&self, i: usize, out: &mut [u8]) -> Option<usize> {
        let len = self.segment_len(i);
        if len == 0 || out.len() < len {
            return None;
        }
        let out = &mut out[..len];
        let header_len = self.header_len();
        let (start, end) = self.payload_range(i);
        out[..header_len].copy_from_slice(&self.frame[..header_len]);
        out[header_len..].copy_from_slice(&self.frame[header_len + start..header_len + end]);

        let ip_end = ETHERNET_LEN + self.headers.ip_header_len;
        let ip = &mut out[ETHERNET_LEN..ip_end];
        let ip_len = (len - ETHERNET_LEN) as u16;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        let id = u16::from_be_bytes([ip[4], ip[5]]).wrapping_add(i as u16);
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        checksum::fill_ipv4_header(ip);

        let (src, dst) = ipv4_addresses(out);
        let tcp = &mut out[ip_end..];
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]])
            .wrapping_add((i * self.mss) as u32);
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        if i + 1 < self.count {
            tcp[13] &= !(tcp_flags::FIN | tcp_flags::PSH);
        }
        if i > 0 {
            tcp[13] &= !tcp_flags::CWR;
        }
        tcp[16..18].fill(0);
        let sum = checksum::combine(&[
            checksum::ipv4_pseudo_header(src, dst, IPPROTO_TCP, tcp.len() as u16),
            checksum::sum(tcp),
        ]);
        tcp[16..18].copy_from_slice(&(!sum).to_be_bytes());
        Some(len)
    }
}

/// Complete a partial checksum as a virtio device does for a frame with
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM` and no GSO: the 16-bit field at
/// `start + offset` holds the pseudo-header sum (as Linux leaves it for
/// `CHECKSUM_PARTIAL`); store there the complement of the sum of
/// `frame[start..]`, field included. A result of 0 is stored as 0xffff, as
/// Linux's `skb_checksum_help` does (UDP requires it; for TCP and ICMP the
/// two are the same ones-complement value). Refuses, changing nothing, a
/// field that does not lie inside the frame.
pub fn complete_checksum(frame: &mut [u8], start: usize, offset: usize) -> Result<(), DropReason> {
    let field = start
        .checked_add(offset)
        .filter(|field| field.checked_add(2).is_some_and(|end| end <= frame.len()))
        .ok_or(DropReason::BadVnetHeader)?;
    let sum = checksum::sum(&frame[start..]);
    frame[field..field + 2].copy_from_slice(&checksum::finish_udp(sum).to_be_bytes());
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use etherparse::{Ipv4HeaderSlice, TcpHeaderSlice};
    use proptest::prelude::*;
    use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket};

    /// What a test TCP/IPv4 frame holds.
    #[derive(Debug, Clone)]
    pub struct Spec {
        /// Source and destination MACs, then 0x0800.
        pub macs: [u8; 12],
        pub src: [u8; 4],
        pub dst: [u8; 4],
        pub tos: u8,
        pub id: u16,
        pub df: bool,
        pub ttl: u8,
        pub ip_options: Vec<u8>,
        pub src_port: u16,
        pub dst_port: u16,
        pub seq: u32,
        pub ack: u32,
        pub flags: u8,
        pub window: u16,
        pub tcp_options: Vec<u8>,
    }

    impl Default for Spec {
        fn default() -> Spec {
            Spec {
                macs: [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2],
                src: [10, 244, 1, 5],
                dst: [10, 244, 2, 7],
                tos: 0,
                id: 0x1234,
                df: true,
                ttl: 64,
                ip_options: Vec::new(),
                src_port: 40000,
                dst_port: 5201,
                seq: 0x1000_0000,
                ack: 0x2000_0000,
                flags: tcp_flags::ACK,
                window: 502,
                tcp_options: Vec::new(),
            }
        }
    }

    /// The TCP timestamp option, padded with two NOPs (12 bytes).
    pub fn timestamps(tsval: u32, tsecr: u32) -> Vec<u8> {
        let mut option = vec![1, 1, 8, 10];
        option.extend_from_slice(&tsval.to_be_bytes());
        option.extend_from_slice(&tsecr.to_be_bytes());
        option
    }

    /// A frame for `spec` carrying `payload`, its checksums set by
    /// etherparse (the independent judge).
    pub fn tcp_frame(spec: &Spec, payload: &[u8]) -> Vec<u8> {
        assert!(
            spec.ip_options.len().is_multiple_of(4) && spec.tcp_options.len().is_multiple_of(4)
        );
        let ihl = 20 + spec.ip_options.len();
        let thl = 20 + spec.tcp_options.len();
        let mut f = Vec::with_capacity(14 + ihl + thl + payload.len());
        f.extend_from_slice(&spec.macs);
        f.extend_from_slice(&ETHERTYPE_IPV4);
        f.push(0x40 | (ihl / 4) as u8);
        f.push(spec.tos);
        f.extend_from_slice(&((ihl + thl + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&spec.id.to_be_bytes());
        f.extend_from_slice(&[if spec.df { 0x40 } else { 0 }, 0]);
        f.extend_from_slice(&[spec.ttl, IPPROTO_TCP, 0, 0]);
        f.extend_from_slice(&spec.src);
        f.extend_from_slice(&spec.dst);
        f.extend_from_slice(&spec.ip_options);
        f.extend_from_slice(&spec.src_port.to_be_bytes());
        f.extend_from_slice(&spec.dst_port.to_be_bytes());
        f.extend_from_slice(&spec.seq.to_be_bytes());
        f.extend_from_slice(&spec.ack.to_be_bytes());
        f.extend_from_slice(&[((thl / 4) as u8) << 4, spec.flags]);
        f.extend_from_slice(&spec.window.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(&spec.tcp_options);
        f.extend_from_slice(payload);
        let ip = Ipv4HeaderSlice::from_slice(&f[14..]).unwrap();
        let ip_sum = ip.to_header().calc_header_checksum();
        let tcp = TcpHeaderSlice::from_slice(&f[14 + ihl..]).unwrap();
        let tcp_sum = tcp.calc_checksum_ipv4(&ip, payload).unwrap();
        f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
        f[14 + ihl + 16..14 + ihl + 18].copy_from_slice(&tcp_sum.to_be_bytes());
        f
    }

    /// Whether both checksums of a TCP/IPv4 frame verify, as smoltcp
    /// judges them (a sum over the field of all ones, so a field of 0 and
    /// one of 0xffff are the same value, as RFC 1624 says).
    pub fn checksums_valid(frame: &[u8]) -> bool {
        let Ok(ip) = Ipv4Packet::new_checked(&frame[14..]) else {
            return false;
        };
        let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
            return false;
        };
        let (src, dst) = (
            IpAddress::Ipv4(ip.src_addr()),
            IpAddress::Ipv4(ip.dst_addr()),
        );
        ip.verify_checksum() && tcp.verify_checksum(&src, &dst)
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn golden_segments() {
        // 10 bytes of payload cut at 4: segments of 4, 4 and 2 bytes.
        let spec = Spec {
            flags: tcp_flags::ACK | tcp_flags::PSH | tcp_flags::FIN | tcp_flags::CWR,
            ..Spec::default()
        };
        let frame = tcp_frame(&spec, b"0123456789");
        let segments = TcpSegments::new(&frame, 4).unwrap();
        assert_eq!(segments.count(), 3);
        assert_eq!(segments.header_len(), 54);
        assert_eq!(segments.payload_len(), 10);
        assert_eq!(segments.max_segment_len(), 58);
        let mut out = [0u8; 64];

        assert_eq!(segments.write(0, &mut out), Some(58));
        #[rustfmt::skip]
        let first: [u8; 58] = [
            2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00,
            // IPv4: length 44, id 0x1234, DF, TTL 64, TCP, checksum.
            0x45, 0x00, 0x00, 0x2c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x0f, 0xa5,
            10, 244, 1, 5, 10, 244, 2, 7,
            // TCP: ports, seq, ack, offset 5, ACK|CWR, window 502, checksum.
            0x9c, 0x40, 0x14, 0x51, 0x10, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00,
            0x50, 0x90, 0x01, 0xf6, 0x51, 0x71, 0x00, 0x00,
            b'0', b'1', b'2', b'3',
        ];
        assert_eq!(out[..58], first);
        assert!(checksums_valid(&out[..58]));

        assert_eq!(segments.write(1, &mut out), Some(58));
        assert_eq!(out[18..20], [0x12, 0x35], "id + 1");
        assert_eq!(out[38..42], [0x10, 0, 0, 4], "seq + 4");
        assert_eq!(out[47], tcp_flags::ACK, "no CWR, PSH or FIN");
        assert_eq!(out[54..58], *b"4567");
        assert!(checksums_valid(&out[..58]));

        assert_eq!(segments.write(2, &mut out), Some(56));
        assert_eq!(out[16..18], [0, 42]);
        assert_eq!(out[38..42], [0x10, 0, 0, 8], "seq + 8");
        assert_eq!(out[47], tcp_flags::ACK | tcp_flags::PSH | tcp_flags::FIN);
        assert_eq!(out[54..56], *b"89");
        assert!(checksums_valid(&out[..56]));

        assert_eq!(segments.write(3, &mut out), None);
        assert_eq!(segments.segment_len(3), 0);
        assert_eq!(segments.write(2, &mut out[..55]), None);
    }

    #[test]
    fn ignores_trailing_bytes_and_the_partial_checksum() {
        let original = tcp_frame(&Spec::default(), &payload(100));
        let mut frame = original.clone();
        frame[14 + 20 + 16..14 + 20 + 18].copy_from_slice(&[0xde, 0xad]);
        frame.extend_from_slice(&[0xee; 6]);
        let segments = TcpSegments::new(&frame, 1000).unwrap();
        assert_eq!(segments.count(), 1);
        let mut out = vec![0u8; 200];
        let len = segments.write(0, &mut out).unwrap();
        assert_eq!(len, 154);
        assert!(checksums_valid(&out[..len]));
        assert_eq!(out[..len], original[..]);
        let no_payload = tcp_frame(&Spec::default(), &[]);
        let segments = TcpSegments::new(&no_payload, 1000).unwrap();
        assert_eq!((segments.count(), segments.segment_len(0)), (1, 54));
    }

    #[test]
    fn refuses_what_it_cannot_segment() {
        let good = tcp_frame(&Spec::default(), &payload(100));
        let edit = |f: &dyn Fn(&mut Vec<u8>), mss: u16| {
            let mut frame = good.clone();
            f(&mut frame);
            TcpSegments::new(&frame, mss).map(|s| s.count())
        };
        assert_eq!(edit(&|_| {}, 30), Ok(4));
        assert_eq!(edit(&|_| {}, 0), Err(DropReason::BadVnetHeader));
        assert_eq!(
            edit(&|f| f.truncate(13), 30),
            Err(DropReason::TruncatedEthernet)
        );
        assert_eq!(edit(&|f| f[12] = 0x86, 30), Err(DropReason::NotTcpIpv4));
        assert_eq!(
            edit(&|f| f.truncate(33), 30),
            Err(DropReason::TruncatedIpv4)
        );
        assert_eq!(edit(&|f| f[14] = 0x65, 30), Err(DropReason::BadIpv4Header));
        assert_eq!(edit(&|f| f[14] = 0x44, 30), Err(DropReason::BadIpv4Header));
        assert_eq!(edit(&|f| f[17] = 19, 30), Err(DropReason::BadIpv4Header));
        assert_eq!(
            edit(&|f| f.truncate(150), 30),
            Err(DropReason::TruncatedIpv4)
        );
        assert_eq!(edit(&|f| f[20] |= 0x20, 30), Err(DropReason::Ipv4Fragment));
        assert_eq!(edit(&|f| f[21] = 1, 30), Err(DropReason::Ipv4Fragment));
        assert_eq!(edit(&|f| f[23] = 17, 30), Err(DropReason::NotTcpIpv4));
        assert_eq!(edit(&|f| f[46] = 0x40, 30), Err(DropReason::BadTcpHeader));
        // A 60-byte TCP header in 40 bytes of TCP.
        let long = |f: &mut Vec<u8>| {
            f[46] = 0xf0;
            f[16..18].copy_from_slice(&[0, 60]);
        };
        assert_eq!(edit(&long, 30), Err(DropReason::BadTcpHeader));
        // Total Length leaves 12 bytes for TCP.
        assert_eq!(
            edit(&|f| f[16..18].copy_from_slice(&[0, 32]), 30),
            Err(DropReason::BadTcpHeader)
        );
    }

    #[test]
    fn complete_checksum_golden() {
        // A UDP datagram whose checksum field holds the pseudo-header sum,
        // as Linux hands it over for CHECKSUM_PARTIAL.
        let mut frame = tcp_frame(&Spec::default(), &[]);
        frame.truncate(14 + 20);
        frame[23] = 17;
        frame[16..18].copy_from_slice(&[0, 32]);
        let udp = [
            0x9c, 0x40, 0x14, 0x51, 0x00, 0x0c, 0, 0, b'p', b'i', b'n', b'g',
        ];
        frame.extend_from_slice(&udp);
        let pseudo = checksum::ipv4_pseudo_header([10, 244, 1, 5], [10, 244, 2, 7], 17, 12);
        frame[40..42].copy_from_slice(&pseudo.to_be_bytes());
        complete_checksum(&mut frame, 34, 6).unwrap();
        let expected = smoltcp::wire::UdpPacket::new_unchecked(&frame[34..]);
        let (src, dst) = (IpAddress::v4(10, 244, 1, 5), IpAddress::v4(10, 244, 2, 7));
        assert!(expected.verify_checksum(&src, &dst));
        assert_eq!(frame[40..42], [0x57, 0x80]);

        // A TCP frame: partial, then completed, equals the full checksum.
        let full = tcp_frame(&Spec::default(), &payload(333));
        let mut partial = full.clone();
        let pseudo = checksum::ipv4_pseudo_header([10, 244, 1, 5], [10, 244, 2, 7], 6, 353);
        partial[50..52].copy_from_slice(&pseudo.to_be_bytes());
        complete_checksum(&mut partial, 34, 16).unwrap();
        assert_eq!(partial, full);

        // A sum of all ones stores 0xffff, never 0.
        let mut ones = [0, 0, 0xff, 0xff];
        complete_checksum(&mut ones, 0, 0).unwrap();
        assert_eq!(ones, [0xff, 0xff, 0xff, 0xff]);

        for (start, offset) in [(0, 3), (3, 0), (usize::MAX, 1), (1, usize::MAX)] {
            let mut short = [7u8; 4];
            assert_eq!(
                complete_checksum(&mut short, start, offset),
                Err(DropReason::BadVnetHeader)
            );
            assert_eq!(short, [7; 4]);
        }
        let mut edge = [0u8; 4];
        assert_eq!(complete_checksum(&mut edge, 2, 0), Ok(()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn segments_are_valid_and_continuous(
            len in 1usize..65000,
            mss in 500u16..9000,
            seq in any::<u32>(),
            id in any::<u16>(),
            ports in any::<(u16, u16)>(),
            tsval in proptest::option::of(any::<u32>()),
            ip_options in prop_oneof![Just(vec![]), Just(vec![1, 1, 1, 0])],
            flags in prop_oneof![
                Just(tcp_flags::ACK),
                Just(tcp_flags::ACK | tcp_flags::PSH),
                Just(tcp_flags::ACK | tcp_flags::PSH | tcp_flags::FIN | tcp_flags::CWR),
            ],
        ) {
            let spec = Spec {
                seq, id, flags, ip_options,
                src_port: ports.0,
                dst_port: ports.1,
                tcp_options: tsval.map(|ts| timestamps(ts, 7)).unwrap_or_default(),
                ..Spec::default()
            };
            let data = payload(len);
            let headers = 14 + 20 + spec.ip_options.len() + 20 + spec.tcp_options.len();
            prop_assume!(headers - 14 + len <= 65535);
            let frame = tcp_frame(&spec, &data);
            let segments = TcpSegments::new(&frame, mss).unwrap();
            prop_assert_eq!(segments.count(), len.div_ceil(usize::from(mss)));
            let mut out = vec![0u8; 9100 + 100];
            let mut joined = Vec::new();
            for i in 0..segments.count() {
                let n = segments.write(i, &mut out).unwrap();
                let seg = &out[..n];
                prop_assert!(n - headers <= usize::from(mss));
                prop_assert!(n - headers > 0);
                prop_assert!(checksums_valid(seg));
                let ip = Ipv4HeaderSlice::from_slice(&seg[14..]).unwrap();
                prop_assert_eq!(usize::from(ip.total_len()), n - 14);
                prop_assert_eq!(ip.identification(), id.wrapping_add(i as u16));
                let tcp = TcpHeaderSlice::from_slice(&seg[14 + ip.slice().len()..]).unwrap();
                prop_assert_eq!(tcp.sequence_number(), seq.wrapping_add(joined.len() as u32));
                let last = i + 1 == segments.count();
                prop_assert_eq!(tcp.fin(), last && flags & tcp_flags::FIN != 0);
                prop_assert_eq!(tcp.psh(), last && flags & tcp_flags::PSH != 0);
                prop_assert_eq!(tcp.cwr(), i == 0 && flags & tcp_flags::CWR != 0);
                prop_assert!(tcp.ack());
                prop_assert_eq!(tcp.options(), &spec.tcp_options[..]);
                prop_assert_eq!(&seg[..14], &frame[..14]);
                joined.extend_from_slice(&seg[headers..]);
            }
            prop_assert_eq!(joined, data);
        }

        #[test]
        fn never_panics_on_garbage(
            frame in proptest::collection::vec(any::<u8>(), 0..200),
            mss in any::<u16>(),
            start in 0usize..250,
            offset in 0usize..250,
        ) {
            if let Ok(segments) = TcpSegments::new(&frame, mss) {
                let mut out = vec![0u8; segments.max_segment_len()];
                for i in 0..segments.count() {
                    prop_assert_eq!(segments.write(i, &mut out), Some(segments.segment_len(i)));
                }
            }
            let mut frame = frame;
            let _ = complete_checksum(&mut frame, start, offset);
        }
    }
}
