//! The 5-tuple of an IPv4 packet, as the Service and connection tables key
//! it.

use std::net::Ipv4Addr;

/// TCP, the IP protocol number.
pub const TCP: u8 = 6;
/// UDP, the IP protocol number.
pub const UDP: u8 = 17;
/// SCTP, the IP protocol number.
pub const SCTP: u8 = 132;
/// ICMP, the IP protocol number.
pub const ICMP: u8 = 1;

/// TCP FIN flag.
pub const TCP_FIN: u8 = 0x01;
/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP RST flag.
pub const TCP_RST: u8 = 0x04;

/// One direction of a connection: addresses, ports and IP protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol: [`TCP`], [`UDP`] or [`SCTP`]; for [`track`], any.
    pub protocol: u8,
}

impl FlowKey {
    /// The same connection seen from the other end.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            protocol: self.protocol,
        }
    }
}

/// What [`parse`] reads from a packet: its flow, where its transport
/// header starts, and the TCP flags (0 for UDP and SCTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// The packet's 5-tuple.
    pub key: FlowKey,
    /// Offset of the transport header in the packet (the IPv4 IHL).
    pub l4_offset: usize,
    /// TCP flags byte, 0 for other protocols.
    pub tcp_flags: u8,
    /// The IPv4 total length: where the transport bytes end.
    pub total_len: usize,
}

/// Read the 5-tuple of an IPv4 packet (`ipv4` starts at its IPv4 header),
/// a whole datagram or the first fragment of one ([`fragment`] tells).
/// `None` for anything the Service stage leaves alone: not IPv4, a
/// protocol other than TCP/UDP/SCTP, a later fragment (it carries no
/// ports), an SCTP fragment (its CRC covers the whole datagram), or a
/// packet too short for its headers.
pub fn parse(ipv4: &[u8]) -> Option<Parsed> {
    let first = *ipv4.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let l4_offset = usize::from(first & 0x0f) * 4;
    if l4_offset < 20 || ipv4.len() < l4_offset + 4 {
        return None;
    }
    let fragmented = u16::from_be_bytes([ipv4[6], ipv4[7]]) & FRAGMENT_BITS;
    if fragmented & FRAGMENT_OFFSET != 0 {
        return None;
    }
    let protocol = ipv4[9];
    let min_l4 = match protocol {
        TCP => 20,
        UDP => 8,
        SCTP if fragmented == 0 => 12,
        _ => return None,
    };
    // The total length must cover the transport header and stay within the
    // frame (which may carry Ethernet padding after it).
    let total_len = usize::from(u16::from_be_bytes([ipv4[2], ipv4[3]]));
    if total_len < l4_offset + min_l4 || total_len > ipv4.len() {
        return None;
    }
    let l4 = &ipv4[l4_offset..];
    let tcp_flags = if protocol == TCP { l4[13] } else { 0 };
    Some(Parsed {
        key: FlowKey {
            src: Ipv4Addr::new(ipv4[12], ipv4[13], ipv4[14], ipv4[15]),
            dst: Ipv4Addr::new(ipv4[16], ipv4[17], ipv4[18], ipv4[19]),
            sport: u16::from_be_bytes([l4[0], l4[1]]),
            dport: u16::from_be_bytes([l4[2], l4[3]]),
            protocol,
        },
        l4_offset,
        tcp_flags,
        total_len,
    })
}

/// The more-fragments flag and the fragment offset of the IPv4 header's
/// flags word.
const FRAGMENT_BITS: u16 = 0x3fff;
/// The fragment offset alone.
const FRAGMENT_OFFSET: u16 = 0x1fff;
/// The more-fragments flag.
const MORE_FRAGMENTS: u16 = 0x2000;

/// One fragment of an IPv4 datagram, as [`fragment`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// Its datagram: source, destination, protocol, IP identification.
    pub key: crate::fragments::DatagramKey,
    /// Offset 0: it carries the transport header.
    pub first: bool,
    /// More-fragments clear: the datagram's end.
    pub last: bool,
}

/// The fragment an IPv4 packet is (`ipv4` starts at its IPv4 header);
/// `None` for a whole datagram or a header too short to tell.
#[inline]
pub fn fragment(ipv4: &[u8]) -> Option<Fragment> {
    let header = ipv4.get(..20)?;
    let bits = u16::from_be_bytes([header[6], header[7]]) & FRAGMENT_BITS;
    if bits == 0 {
        return None;
    }
    let address =
        |at: usize| Ipv4Addr::new(header[at], header[at + 1], header[at + 2], header[at + 3]);
    Some(Fragment {
        key: (
            address(12),
            address(16),
            header[9],
            u16::from_be_bytes([header[4], header[5]]),
        ),
        first: bits & FRAGMENT_OFFSET == 0,
        last: bits & MORE_FRAGMENTS == 0,
    })
}

/// An ICMP error about a TCP, UDP or SCTP packet, as [`parse_error`]
/// reads it: where its parts are and what it quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpError {
    /// The error's own source address.
    pub src: Ipv4Addr,
    /// The error's own destination address.
    pub dst: Ipv4Addr,
    /// Offset of the ICMP header in the packet.
    pub icmp_offset: usize,
    /// The IPv4 total length: where the ICMP message ends.
    pub total_len: usize,
    /// Offset of the quoted packet's transport header in the packet.
    pub quoted_l4_offset: usize,
    /// The quoted packet's tuple.
    pub quoted: FlowKey,
}

/// Length of the ICMP error header before the quoted packet.
const ICMP_HEADER_LEN: usize = 8;

impl IcmpError {
    /// Offset of the quoted packet's IPv4 header in the packet.
    pub fn quoted_offset(&self) -> usize {
        self.icmp_offset + ICMP_HEADER_LEN
    }
}

/// Read an ICMP error (destination unreachable, time exceeded, parameter
/// problem) about a TCP, UDP or SCTP packet whose quote holds at least
/// its IPv4 header and ports (`ipv4` starts at the error's IPv4 header).
/// `None` for anything else, a fragment of either, or a truncated header.
pub fn parse_error(ipv4: &[u8]) -> Option<IcmpError> {
    let (outer, l4) = tuple(ipv4)?;
    if outer.protocol != ICMP
        || !ICMP_ERRORS.contains(l4.first()?)
        || u16::from_be_bytes([ipv4[6], ipv4[7]]) & 0x2000 != 0
    {
        return None;
    }
    let icmp_offset = usize::from(ipv4[0] & 0x0f) * 4;
    let total_len = icmp_offset + l4.len();
    let quote = l4.get(ICMP_HEADER_LEN..)?;
    let (quoted, _) = tuple(quote)?;
    let quoted_l4_offset = icmp_offset + ICMP_HEADER_LEN + usize::from(quote[0] & 0x0f) * 4;
    if !matches!(quoted.protocol, TCP | UDP | SCTP) || total_len < quoted_l4_offset + 4 {
        return None;
    }
    Some(IcmpError {
        src: outer.src,
        dst: outer.dst,
        icmp_offset,
        total_len,
        quoted_l4_offset,
        quoted,
    })
}

/// How the NetworkPolicy stage tracks a packet ([`track`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracked {
    /// A packet of a connection of its own: TCP, UDP and SCTP by ports;
    /// an ICMP query (echo, timestamp, information) by its identifier,
    /// the request's as the source port and the reply's as the
    /// destination port, so that a reply is its request reversed; any
    /// other protocol by its addresses alone.
    Connection {
        /// Its tuple.
        key: FlowKey,
        /// TCP flags, 0 for other protocols.
        tcp_flags: u8,
    },
    /// An ICMP error (unreachable, time exceeded, parameter problem)
    /// about a packet of the connection `key`, the quoted packet's tuple.
    Related {
        /// The quoted packet's tuple.
        key: FlowKey,
    },
}

/// ICMP types of queries and their replies: echo, timestamp, information.
const ICMP_REQUESTS: [u8; 3] = [8, 13, 15];
const ICMP_REPLIES: [u8; 3] = [0, 14, 16];
/// ICMP error types: destination unreachable, time exceeded, parameter
/// problem.
const ICMP_ERRORS: [u8; 3] = [3, 11, 12];

/// How the NetworkPolicy stage tracks an IPv4 packet (`ipv4` starts at
/// its IPv4 header), any protocol. `None` for a packet too short for its
/// headers and for a fragment after the first (it carries no ports).
pub fn track(ipv4: &[u8]) -> Option<Tracked> {
    let (key, l4) = tuple(ipv4)?;
    if key.protocol == ICMP && ICMP_ERRORS.contains(&l4[0]) {
        let quoted = l4.get(8..)?;
        return Some(Tracked::Related {
            key: tuple(quoted)?.0,
        });
    }
    let tcp_flags = match key.protocol {
        TCP => l4.get(13).copied().unwrap_or(0),
        _ => 0,
    };
    Some(Tracked::Connection { key, tcp_flags })
}

/// The tuple a packet of its own connection is tracked under
/// ([`Tracked::Connection`]); `None` for an ICMP error and for what
/// [`track`] does not read. What the stages' prefetch passes probe.
pub fn connection_key(ipv4: &[u8]) -> Option<FlowKey> {
    match track(ipv4)? {
        Tracked::Connection { key, .. } => Some(key),
        Tracked::Related { .. } => None,
    }
}

/// The tuple of an IPv4 packet or of the start of one quoted in an ICMP
/// error (at least its header and 8 bytes of transport header), and its
/// transport bytes. `None` for a later fragment or a truncated header.
fn tuple(ipv4: &[u8]) -> Option<(FlowKey, &[u8])> {
    let first = *ipv4.first()?;
    let l4_offset = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || l4_offset < 20 || ipv4.len() < l4_offset {
        return None;
    }
    if u16::from_be_bytes([ipv4[6], ipv4[7]]) & 0x1fff != 0 {
        return None;
    }
    let total_len = usize::from(u16::from_be_bytes([ipv4[2], ipv4[3]]));
    let l4 = &ipv4[l4_offset..total_len.clamp(l4_offset, ipv4.len())];
    let protocol = ipv4[9];
    let word = |at: usize| Some(u16::from_be_bytes([*l4.get(at)?, *l4.get(at + 1)?]));
    let (sport, dport) = match protocol {
        TCP | UDP | SCTP => (word(0)?, word(2)?),
        ICMP => {
            let id = word(4)?;
            if ICMP_REQUESTS.contains(&l4[0]) {
                (id, 0)
            } else if ICMP_REPLIES.contains(&l4[0]) {
                (0, id)
            } else {
                (0, 0)
            }
        }
        _ => (0, 0),
    };
    let key = FlowKey {
        src: Ipv4Addr::new(ipv4[12], ipv4[13], ipv4[14], ipv4[15]),
        dst: Ipv4Addr::new(ipv4[16], ipv4[17], ipv4[18], ipv4[19]),
        sport,
        dport,
        protocol,
    };
    Some((key, l4))
}

#[cfg(test)]
pub(crate) mod tests {
    use podswitch_encap::checksum::{combine, ipv4_pseudo_header, sum};

    use super::*;

    /// An IPv4 packet with a valid header checksum and a transport header
    /// of `l4_len` bytes carrying the ports (the rest zero).
    pub(crate) fn packet(key: FlowKey, payload: &[u8]) -> Vec<u8> {
        let l4_len = match key.protocol {
            TCP => 20,
            UDP => 8,
            _ => 12,
        };
        let total = 20 + l4_len + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = key.protocol;
        p[12..16].copy_from_slice(&key.src.octets());
        p[16..20].copy_from_slice(&key.dst.octets());
        p[20..22].copy_from_slice(&key.sport.to_be_bytes());
        p[22..24].copy_from_slice(&key.dport.to_be_bytes());
        if key.protocol == TCP {
            p[32] = 0x50;
        }
        if key.protocol == UDP {
            p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        }
        p[20 + l4_len..].copy_from_slice(payload);
        podswitch_encap::checksum::fill_ipv4_header(&mut p[..20]);
        p
    }

    /// [`packet`] with a correct TCP or UDP checksum.
    pub(crate) fn checked(flow: FlowKey, payload: &[u8]) -> Vec<u8> {
        let mut p = packet(flow, payload);
        let at = if flow.protocol == TCP { 36 } else { 26 };
        let checksum = !combine(&[pseudo_header(&p), sum(&p[20..])]);
        p[at..at + 2].copy_from_slice(&checksum.to_be_bytes());
        p
    }

    fn pseudo_header(p: &[u8]) -> u16 {
        let addresses = |at: usize| [p[at], p[at + 1], p[at + 2], p[at + 3]];
        ipv4_pseudo_header(addresses(12), addresses(16), p[9], (p.len() - 20) as u16)
    }

    /// Whether a TCP or UDP packet's transport checksum verifies.
    pub(crate) fn l4_verifies(p: &[u8]) -> bool {
        combine(&[pseudo_header(p), sum(&p[20..])]) == 0xffff
    }

    pub(crate) fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, protocol: u8) -> FlowKey {
        FlowKey {
            src: src.into(),
            dst: dst.into(),
            sport,
            dport,
            protocol,
        }
    }

    #[test]
    fn parse_reads_the_five_tuple_and_tcp_flags() {
        let k = key([10, 244, 1, 2], 40000, [10, 96, 0, 10], 80, TCP);
        let mut p = packet(k, b"x");
        p[33] = TCP_SYN;
        let parsed = parse(&p).unwrap();
        assert_eq!(parsed.key, k);
        assert_eq!(parsed.l4_offset, 20);
        assert_eq!(parsed.tcp_flags, TCP_SYN);
        assert_eq!(parsed.total_len, 41);
        assert_eq!(parsed.key.reversed().reversed(), k);
    }

    #[test]
    fn parse_leaves_later_fragments_other_protocols_and_short_packets_alone() {
        let k = key([10, 244, 1, 2], 40000, [10, 96, 0, 10], 53, UDP);
        let p = packet(k, b"abc");
        assert!(parse(&p).is_some());
        assert_eq!(fragment(&p), None);
        // A first fragment has its ports; a later one has none.
        let mut first = p.clone();
        first[4..6].copy_from_slice(&[0xbe, 0xef]);
        first[6] = 0x20; // MF
        assert_eq!(parse(&first).unwrap().key, k);
        let datagram = (k.src, k.dst, UDP, 0xbeef);
        assert_eq!(
            fragment(&first),
            Some(Fragment {
                key: datagram,
                first: true,
                last: false
            })
        );
        let mut later = first.clone();
        later[6] = 0;
        later[7] = 1; // offset 8 bytes, the last
        assert!(parse(&later).is_none());
        assert_eq!(
            fragment(&later),
            Some(Fragment {
                key: datagram,
                first: false,
                last: true
            })
        );
        // SCTP's CRC covers the whole datagram: not even its first.
        let mut sctp = packet(key([10, 244, 1, 2], 40000, [10, 96, 0, 10], 53, SCTP), b"");
        assert!(parse(&sctp).is_some());
        sctp[6] = 0x20;
        assert!(parse(&sctp).is_none());
        let mut icmp = p.clone();
        icmp[9] = 1;
        assert!(parse(&icmp).is_none());
        for len in 0..28 {
            assert!(parse(&p[..len]).is_none(), "{len}");
        }
        let mut ipv6 = p.clone();
        ipv6[0] = 0x60;
        assert!(parse(&ipv6).is_none());
        let mut bad_ihl = p;
        bad_ihl[0] = 0x44;
        assert!(parse(&bad_ihl).is_none());
    }

    /// An ICMP packet from `src` to `dst` of `icmp_type` with identifier
    /// `id`, its body `body`, its checksums correct.
    pub(crate) fn icmp(src: [u8; 4], dst: [u8; 4], icmp_type: u8, id: u16, body: &[u8]) -> Vec<u8> {
        let mut p = packet(key(src, 0, dst, 0, UDP), &[]);
        p.truncate(20);
        p[9] = ICMP;
        p.extend_from_slice(&[icmp_type, 0, 0, 0]);
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        p.extend_from_slice(body);
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        podswitch_encap::checksum::fill_ipv4_header(&mut p[..20]);
        let checksum = !sum(&p[20..]);
        p[22..24].copy_from_slice(&checksum.to_be_bytes());
        p
    }

    #[test]
    fn track_keys_every_protocol_so_that_a_reply_is_its_request_reversed() {
        let (a, b) = ([10, 244, 1, 2], [10, 244, 2, 3]);
        let udp = packet(key(a, 40000, b, 53, UDP), b"q");
        let Some(Tracked::Connection { key: k, .. }) = track(&udp) else {
            panic!("udp");
        };
        assert_eq!(k, key(a, 40000, b, 53, UDP));
        let echo = |icmp_type, from, to| match track(&icmp(from, to, icmp_type, 77, b"ping")) {
            Some(Tracked::Connection { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(echo(0, b, a), echo(8, a, b).reversed());
        assert_eq!(echo(8, a, b), key(a, 77, b, 0, ICMP));
        // Another protocol (GRE): by its addresses.
        let mut gre = udp.clone();
        gre[9] = 47;
        let Some(Tracked::Connection { key: k, .. }) = track(&gre) else {
            panic!("gre");
        };
        assert_eq!(k, key(a, 0, b, 0, 47));
        // A first fragment has its ports, a later one is not tracked.
        let mut first = udp.clone();
        first[6] = 0x20;
        assert!(matches!(track(&first), Some(Tracked::Connection { key, .. }) if key.dport == 53));
        first[7] = 1;
        assert_eq!(track(&first), None);
        for len in 0..24 {
            assert!(track(&icmp(a, b, 8, 1, b"")[..len]).is_none(), "{len}");
        }
    }

    #[test]
    fn parse_error_finds_the_quoted_packet_and_refuses_what_it_cannot_rewrite() {
        let (a, b, router) = ([10, 244, 1, 2], [10, 244, 2, 3], [10, 244, 2, 1]);
        let sent = packet(key(a, 40000, b, 53, UDP), b"payload");
        let error = icmp(router, a, 3, 0, &sent[..28]);
        let parsed = parse_error(&error).unwrap();
        assert_eq!(parsed.quoted, key(a, 40000, b, 53, UDP));
        assert_eq!((parsed.src, parsed.dst), (router.into(), a.into()));
        assert_eq!(
            (
                parsed.icmp_offset,
                parsed.quoted_offset(),
                parsed.quoted_l4_offset
            ),
            (20, 28, 48)
        );
        assert_eq!(parsed.total_len, error.len());
        // Ports cut off, an echo, an ICMP quote, a fragment: not read.
        assert_eq!(parse_error(&icmp(router, a, 3, 0, &sent[..23])), None);
        assert_eq!(parse_error(&icmp(router, a, 8, 0, &sent[..28])), None);
        let ping = icmp(a, b, 8, 1, b"");
        assert_eq!(parse_error(&icmp(router, a, 11, 0, &ping)), None);
        let mut fragment = error.clone();
        fragment[6] |= 0x20;
        assert_eq!(parse_error(&fragment), None);
        for len in 0..error.len() {
            let mut cut = error[..len].to_vec();
            if len >= 4 {
                cut[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            }
            assert!(parse_error(&cut).is_none() || len >= 52, "{len}");
        }
    }

    #[test]
    fn track_sees_an_icmp_error_as_related_to_the_quoted_packets_connection() {
        let (a, b, router) = ([10, 244, 1, 2], [10, 244, 2, 3], [10, 244, 2, 1]);
        let sent = packet(key(a, 40000, b, 80, TCP), b"payload");
        // Unreachable: the quoted header and 8 bytes of TCP.
        let error = icmp(router, a, 3, 0, &sent[..28]);
        assert_eq!(
            track(&error),
            Some(Tracked::Related {
                key: key(a, 40000, b, 80, TCP)
            })
        );
        assert_eq!(track(&error[..30]), None);
    }
}
