//! The virtio-net header (virtio 1.0 `struct virtio_net_hdr_v1`) that a TAP
//! device opened with `IFF_VNET_HDR` puts before every frame, in the manner
//! of `smoltcp::wire`.
//!
//! ```text
//!  0               1               2               3
//!  0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7
//! +---------------+---------------+-------------------------------+
//! |     flags     |   gso_type    |          hdr_len (le)         |
//! +---------------+---------------+-------------------------------+
//! |         gso_size (le)         |        csum_start (le)        |
//! +-------------------------------+-------------------------------+
//! |        csum_offset (le)       |        num_buffers (le)       |
//! +-------------------------------+-------------------------------+
//! ```
//!
//! The 16-bit fields are little-endian, as virtio 1.0 and `TUNSETVNETLE`
//! (and x86's native order) have them; the switch sets the header size to
//! 12 with `TUNSETVNETHDRSZ`. [`Offload`] is what a header means: the
//! frame's checksum state and, for a super-frame, how to segment it.
//! [`Offload::parse`] applies the checks Linux's `virtio_net_hdr_to_skb`
//! applies, so a frame the switch accepts is one a TAP device would too.

use core::fmt;

use crate::drop_reason::DropReason;

/// Length of the header (`struct virtio_net_hdr_v1`).
pub const HEADER_LEN: usize = 12;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum from `csum_start` to the end
/// of the frame is still to be computed and stored at `csum_offset`.
pub const FLAG_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the sender has verified the checksums.
pub const FLAG_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`: not a super-frame.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`: a TCP/IPv4 super-frame.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`: a TCP/IPv6 super-frame.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4`: a UDP super-frame cut into datagrams.
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`: the TCP super-frame carries CWR (ECN).
pub const GSO_ECN: u8 = 0x80;

/// Offset of the checksum field in a TCP header.
const TCP_CHECKSUM_OFFSET: u16 = 16;
/// Offset of the checksum field in a UDP header.
const UDP_CHECKSUM_OFFSET: u16 = 6;

mod field {
    use core::ops::{Range, RangeFrom};

    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: Range<usize> = 2..4;
    pub const GSO_SIZE: Range<usize> = 4..6;
    pub const CSUM_START: Range<usize> = 6..8;
    pub const CSUM_OFFSET: Range<usize> = 8..10;
    pub const NUM_BUFFERS: Range<usize> = 10..12;
    pub const FRAME: RangeFrom<usize> = 12..;
}

/// A read/write view of a virtio-net header and the frame after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// View `buffer` as a virtio-net header without checking its length.
    pub const fn new_unchecked(buffer: T) -> Header<T> {
        Header { buffer }
    }

    /// View `buffer` as a virtio-net header, refusing a buffer shorter than
    /// [`HEADER_LEN`].
    pub fn new_checked(buffer: T) -> Result<Header<T>, DropReason> {
        let header = Self::new_unchecked(buffer);
        header.check_len()?;
        Ok(header)
    }

    /// Check that every accessor can be called without panicking.
    pub fn check_len(&self) -> Result<(), DropReason> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(DropReason::TruncatedVnetHeader)
        } else {
            Ok(())
        }
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn le16(&self, range: core::ops::Range<usize>) -> u16 {
        let data = self.buffer.as_ref();
        u16::from_le_bytes([data[range.start], data[range.start + 1]])
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The GSO type byte, ECN bit included.
    pub fn gso_type(&self) -> u8 {
        self.buffer.as_ref()[field::GSO_TYPE]
    }

    /// Length of the headers before the segment payload (a hint).
    pub fn hdr_len(&self) -> u16 {
        self.le16(field::HDR_LEN)
    }

    /// Payload bytes per segment of a super-frame.
    pub fn gso_size(&self) -> u16 {
        self.le16(field::GSO_SIZE)
    }

    /// Where the partial checksum's coverage starts, from the frame's start.
    pub fn csum_start(&self) -> u16 {
        self.le16(field::CSUM_START)
    }

    /// Where the checksum field is, from `csum_start`.
    pub fn csum_offset(&self) -> u16 {
        self.le16(field::CSUM_OFFSET)
    }

    /// Buffers merged into this frame (mergeable RX buffers; 0 from a TAP).
    pub fn num_buffers(&self) -> u16 {
        self.le16(field::NUM_BUFFERS)
    }

    /// Length of the frame after the header.
    pub fn frame_len(&self) -> usize {
        self.buffer.as_ref().len().saturating_sub(HEADER_LEN)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Header<&'a T> {
    /// The Ethernet frame after the header.
    pub fn frame(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::FRAME]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    fn set_le16(&mut self, range: core::ops::Range<usize>, value: u16) {
        self.buffer.as_mut()[range].copy_from_slice(&value.to_le_bytes());
    }

    /// Set the flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Set the GSO type byte.
    pub fn set_gso_type(&mut self, gso_type: u8) {
        self.buffer.as_mut()[field::GSO_TYPE] = gso_type;
    }

    /// Set the header-length hint.
    pub fn set_hdr_len(&mut self, value: u16) {
        self.set_le16(field::HDR_LEN, value);
    }

    /// Set the payload bytes per segment.
    pub fn set_gso_size(&mut self, value: u16) {
        self.set_le16(field::GSO_SIZE, value);
    }

    /// Set where the partial checksum's coverage starts.
    pub fn set_csum_start(&mut self, value: u16) {
        self.set_le16(field::CSUM_START, value);
    }

    /// Set where the checksum field is, from `csum_start`.
    pub fn set_csum_offset(&mut self, value: u16) {
        self.set_le16(field::CSUM_OFFSET, value);
    }

    /// Set the merged-buffer count.
    pub fn set_num_buffers(&mut self, value: u16) {
        self.set_le16(field::NUM_BUFFERS, value);
    }

    /// The Ethernet frame after the header, mutably.
    pub fn frame_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::FRAME]
    }
}

impl<T: AsRef<[u8]>> fmt::Display for Header<T> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match Offload::parse(self) {
            Ok(offload) => write!(f, "virtio-net {offload}"),
            Err(reason) => write!(f, "virtio-net ({reason})"),
        }
    }
}

/// The state of a frame's transport checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Checksum {
    /// Every checksum in the frame is complete (or the frame has none).
    Complete,
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the field at `start + offset` holds
    /// the pseudo-header sum; the checksum over `start..` is still to be
    /// computed and stored there.
    Partial {
        /// Where the checksum's coverage starts, from the frame's start.
        start: u16,
        /// Where the checksum field is, from `start`.
        offset: u16,
    },
    /// `VIRTIO_NET_HDR_F_DATA_VALID`: the sender verified the checksums.
    Verified,
}

/// The kind of super-frame a GSO header announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GsoKind {
    /// TCP over IPv4 (`VIRTIO_NET_HDR_GSO_TCPV4`).
    TcpV4,
    /// TCP over IPv6 (`VIRTIO_NET_HDR_GSO_TCPV6`).
    TcpV6,
    /// UDP datagrams, IPv4 or IPv6 (`VIRTIO_NET_HDR_GSO_UDP_L4`).
    UdpL4,
}

impl GsoKind {
    /// The `gso_type` code, without the ECN bit.
    pub const fn code(self) -> u8 {
        match self {
            GsoKind::TcpV4 => GSO_TCPV4,
            GsoKind::TcpV6 => GSO_TCPV6,
            GsoKind::UdpL4 => GSO_UDP_L4,
        }
    }

    /// The kind for a `gso_type` code (ECN bit cleared), if known.
    pub const fn from_code(code: u8) -> Option<GsoKind> {
        match code {
            GSO_TCPV4 => Some(GsoKind::TcpV4),
            GSO_TCPV6 => Some(GsoKind::TcpV6),
            GSO_UDP_L4 => Some(GsoKind::UdpL4),
            _ => None,
        }
    }

    /// Whether the segments are TCP.
    pub const fn is_tcp(self) -> bool {
        matches!(self, GsoKind::TcpV4 | GsoKind::TcpV6)
    }
}

impl fmt::Display for GsoKind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            GsoKind::TcpV4 => "tcpv4",
            GsoKind::TcpV6 => "tcpv6",
            GsoKind::UdpL4 => "udp_l4",
        })
    }
}

/// How to cut a super-frame into segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gso {
    /// What the segments are.
    pub kind: GsoKind,
    /// The ECN bit: the TCP super-frame carries CWR (first segment only).
    pub ecn: bool,
    /// Payload bytes per segment (the MSS); never 0.
    pub size: u16,
    /// Length of the headers before the payload, a hint (Linux sends the
    /// length of the skb's linear part, which may be longer).
    pub hdr_len: u16,
}

/// What a virtio-net header says about the frame after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Offload {
    /// The frame's transport checksum state.
    pub checksum: Checksum,
    /// How to segment the frame, if it is a super-frame.
    pub gso: Option<Gso>,
}

impl Offload {
    /// A plain frame with complete checksums: an all-zero header.
    pub const NONE: Offload = Offload {
        checksum: Checksum::Complete,
        gso: None,
    };

    /// Parse a header, checking it against the frame after it as Linux's
    /// `virtio_net_hdr_to_skb` does. Refuses (with
    /// [`DropReason::BadVnetHeader`]) flags other than NEEDS_CSUM or
    /// DATA_VALID, both at once, a checksum field outside the frame, an
    /// unknown GSO type (UFO included) or a bare ECN bit, a GSO size of 0,
    /// a header length past the frame, a TCP super-frame whose partial
    /// checksum is not TCP's, and a UDP one whose checksum is not partial
    /// at UDP's offset. `hdr_len` and `gso_size` of a plain frame are
    /// ignored, as Linux ignores them.
    pub fn parse<T: AsRef<[u8]>>(header: &Header<T>) -> Result<Offload, DropReason> {
        header.check_len()?;
        let frame_len = header.frame_len();
        let checksum = match header.flags() {
            0 => Checksum::Complete,
            FLAG_DATA_VALID => Checksum::Verified,
            FLAG_NEEDS_CSUM => {
                let (start, offset) = (header.csum_start(), header.csum_offset());
                if usize::from(start) + usize::from(offset) + 2 > frame_len {
                    return Err(DropReason::BadVnetHeader);
                }
                Checksum::Partial { start, offset }
            }
            _ => return Err(DropReason::BadVnetHeader),
        };
        let gso_type = header.gso_type();
        if gso_type == GSO_NONE {
            return Ok(Offload {
                checksum,
                gso: None,
            });
        }
        let kind = GsoKind::from_code(gso_type & !GSO_ECN).ok_or(DropReason::BadVnetHeader)?;
        let gso = Gso {
            kind,
            ecn: gso_type & GSO_ECN != 0,
            size: header.gso_size(),
            hdr_len: header.hdr_len(),
        };
        if gso.size == 0 || usize::from(gso.hdr_len) > frame_len {
            return Err(DropReason::BadVnetHeader);
        }
        let (field_offset, header_len) = if kind.is_tcp() {
            (TCP_CHECKSUM_OFFSET, 20)
        } else {
            (UDP_CHECKSUM_OFFSET, 8)
        };
        let consistent = match checksum {
            Checksum::Partial { start, offset } => {
                offset == field_offset && usize::from(start) + header_len <= frame_len
            }
            // UDP segmentation needs the partial checksum to finish.
            _ => kind != GsoKind::UdpL4,
        };
        if !consistent {
            return Err(DropReason::BadVnetHeader);
        }
        Ok(Offload {
            checksum,
            gso: Some(gso),
        })
    }

    /// Length of the header this offload emits.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Whether this is [`Offload::NONE`] (or says nothing more than it).
    pub fn is_none(&self) -> bool {
        *self == Offload::NONE
    }

    /// Write all 12 header bytes: unused fields and `num_buffers` zero.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, header: &mut Header<T>) {
        let (flags, start, offset) = match self.checksum {
            Checksum::Complete => (0, 0, 0),
            Checksum::Partial { start, offset } => (FLAG_NEEDS_CSUM, start, offset),
            Checksum::Verified => (FLAG_DATA_VALID, 0, 0),
        };
        header.set_flags(flags);
        header.set_csum_start(start);
        header.set_csum_offset(offset);
        match self.gso {
            None => {
                header.set_gso_type(GSO_NONE);
                header.set_hdr_len(0);
                header.set_gso_size(0);
            }
            Some(gso) => {
                header.set_gso_type(gso.kind.code() | if gso.ecn { GSO_ECN } else { 0 });
                header.set_hdr_len(gso.hdr_len);
                header.set_gso_size(gso.size);
            }
        }
        header.set_num_buffers(0);
    }

    /// The header bytes for this offload, for a caller that writes the
    /// header and the frame separately (`writev`).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0; HEADER_LEN];
        self.emit(&mut Header::new_unchecked(&mut bytes[..]));
        bytes
    }
}

impl fmt::Display for Offload {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.checksum {
            Checksum::Complete => write!(f, "csum=complete")?,
            Checksum::Partial { start, offset } => {
                write!(f, "csum=partial start={start} offset={offset}")?
            }
            Checksum::Verified => write!(f, "csum=verified")?,
        }
        if let Some(gso) = self.gso {
            write!(
                f,
                " gso={} size={} hdr_len={}",
                gso.kind, gso.size, gso.hdr_len
            )?;
            if gso.ecn {
                write!(f, " ecn")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // A TCP/IPv4 super-frame header as Linux sends it: NEEDS_CSUM from
    // byte 34 (14 + 20) at offset 16, GSO TCPv4 with ECN, hdr_len 66,
    // gso_size 1448; followed by a 66-byte stand-in frame.
    static HEADER_BYTES: [u8; 12] = [
        0x01, 0x81, 0x42, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00, 0x00, 0x00,
    ];

    fn offload() -> Offload {
        Offload {
            checksum: Checksum::Partial {
                start: 34,
                offset: 16,
            },
            gso: Some(Gso {
                kind: GsoKind::TcpV4,
                ecn: true,
                size: 1448,
                hdr_len: 66,
            }),
        }
    }

    fn buffer(header: [u8; 12], frame_len: usize) -> Vec<u8> {
        let mut bytes = header.to_vec();
        bytes.resize(HEADER_LEN + frame_len, 0xab);
        bytes
    }

    #[test]
    fn deconstruct() {
        let bytes = buffer(HEADER_BYTES, 66);
        let header = Header::new_checked(&bytes[..]).unwrap();
        assert_eq!(header.flags(), FLAG_NEEDS_CSUM);
        assert_eq!(header.gso_type(), GSO_TCPV4 | GSO_ECN);
        assert_eq!(header.hdr_len(), 66);
        assert_eq!(header.gso_size(), 1448);
        assert_eq!(header.csum_start(), 34);
        assert_eq!(header.csum_offset(), 16);
        assert_eq!(header.num_buffers(), 0);
        assert_eq!(header.frame_len(), 66);
        assert_eq!(header.frame(), &[0xab; 66][..]);
    }

    #[test]
    fn construct() {
        let mut bytes = [0xffu8; 14];
        let mut header = Header::new_unchecked(&mut bytes[..]);
        header.set_flags(FLAG_NEEDS_CSUM);
        header.set_gso_type(GSO_TCPV4 | GSO_ECN);
        header.set_hdr_len(66);
        header.set_gso_size(1448);
        header.set_csum_start(34);
        header.set_csum_offset(16);
        header.set_num_buffers(0);
        header.frame_mut().copy_from_slice(&[1, 2]);
        assert_eq!(bytes[..12], HEADER_BYTES);
        assert_eq!(bytes[12..], [1, 2]);
    }

    #[test]
    fn parse() {
        let bytes = buffer(HEADER_BYTES, 66);
        let header = Header::new_checked(&bytes[..]).unwrap();
        assert_eq!(Offload::parse(&header), Ok(offload()));
        let none = buffer([0; 12], 60);
        assert_eq!(
            Offload::parse(&Header::new_unchecked(&none[..])),
            Ok(Offload::NONE)
        );
    }

    #[test]
    fn emit() {
        let mut bytes = [0xffu8; 12];
        offload().emit(&mut Header::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, HEADER_BYTES);
        assert_eq!(offload().to_bytes(), HEADER_BYTES);
        assert_eq!(Offload::NONE.to_bytes(), [0; 12]);
        assert!(Offload::NONE.is_none());
        assert!(!offload().is_none());
        // DATA_VALID, no GSO.
        let verified = Offload {
            checksum: Checksum::Verified,
            gso: None,
        };
        assert_eq!(verified.to_bytes(), [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // UDP_L4: partial at offset 6.
        let udp = Offload {
            checksum: Checksum::Partial {
                start: 34,
                offset: 6,
            },
            gso: Some(Gso {
                kind: GsoKind::UdpL4,
                ecn: false,
                size: 1472,
                hdr_len: 42,
            }),
        };
        assert_eq!(
            udp.to_bytes(),
            [
                0x01, 0x05, 0x2a, 0x00, 0xc0, 0x05, 0x22, 0x00, 0x06, 0x00, 0x00, 0x00
            ]
        );
    }

    #[test]
    fn refuses_truncated() {
        assert_eq!(
            Header::new_checked(&HEADER_BYTES[..11]),
            Err(DropReason::TruncatedVnetHeader)
        );
        assert_eq!(
            Offload::parse(&Header::new_unchecked(&HEADER_BYTES[..3])),
            Err(DropReason::TruncatedVnetHeader)
        );
    }

    #[test]
    fn refuses_inconsistent_fields() {
        let bad = |edit: &dyn Fn(&mut [u8; 12]), frame_len: usize| {
            let mut header = HEADER_BYTES;
            edit(&mut header);
            let bytes = buffer(header, frame_len);
            Offload::parse(&Header::new_unchecked(&bytes[..]))
        };
        assert_eq!(bad(&|_| {}, 66), Ok(offload()));
        let refused = Err(DropReason::BadVnetHeader);
        // Unknown flag (RSC_INFO), both checksum flags.
        assert_eq!(bad(&|h| h[0] = 4, 66), refused);
        assert_eq!(bad(&|h| h[0] = 3, 66), refused);
        // UFO (3), an unknown type, a bare ECN bit.
        assert_eq!(bad(&|h| h[1] = 3, 66), refused);
        assert_eq!(bad(&|h| h[1] = 0x02, 66), refused);
        assert_eq!(bad(&|h| h[1] = 0x80, 66), refused);
        // GSO size 0.
        assert_eq!(bad(&|h| h[4..6].fill(0), 66), refused);
        // The checksum field ends past the frame: 34 + 16 + 2 = 52.
        assert_eq!(bad(&|h| h[1..6].fill(0), 51), refused);
        assert!(bad(&|h| h[1..6].fill(0), 52).is_ok());
        // hdr_len past the frame.
        assert_eq!(bad(&|_| {}, 65), refused);
        // A TCP super-frame whose checksum field is not TCP's.
        assert_eq!(bad(&|h| h[8] = 6, 66), refused);
        // UDP_L4 must carry a partial checksum at offset 6.
        assert_eq!(bad(&|h| h[1] = GSO_UDP_L4, 66), refused);
        assert!(bad(&|h| (h[1], h[8]) = (GSO_UDP_L4, 6), 66).is_ok());
        assert_eq!(bad(&|h| (h[0], h[1]) = (0, GSO_UDP_L4), 66), refused);
        // A TCP super-frame with complete checksums is accepted (packet
        // sockets send those); the segmenter computes them anyway.
        assert!(bad(&|h| h[0] = 0, 66).is_ok());
        // A plain frame's hdr_len and gso_size are hints Linux ignores.
        let plain = bad(&|h| (h[0], h[1]) = (0, 0), 10).unwrap();
        assert_eq!(plain, Offload::NONE);
    }

    #[test]
    fn display() {
        let bytes = buffer(HEADER_BYTES, 66);
        assert_eq!(
            Header::new_unchecked(&bytes[..]).to_string(),
            "virtio-net csum=partial start=34 offset=16 gso=tcpv4 size=1448 hdr_len=66 ecn"
        );
        assert_eq!(Offload::NONE.to_string(), "csum=complete");
        assert_eq!(
            Header::new_unchecked(&bytes[..5]).to_string(),
            "virtio-net (truncated_vnet_header)"
        );
    }

    fn offload_strategy() -> impl Strategy<Value = Offload> {
        let checksum = prop_oneof![
            Just(Checksum::Complete),
            Just(Checksum::Verified),
            (0u16..200, 0u16..40).prop_map(|(start, offset)| Checksum::Partial { start, offset }),
        ];
        let gso = proptest::option::of(
            (
                prop_oneof![
                    Just(GsoKind::TcpV4),
                    Just(GsoKind::TcpV6),
                    Just(GsoKind::UdpL4)
                ],
                any::<bool>(),
                1u16..,
                0u16..300,
            )
                .prop_map(|(kind, ecn, size, hdr_len)| Gso {
                    kind,
                    ecn,
                    size,
                    hdr_len,
                }),
        );
        (checksum, gso).prop_map(|(checksum, gso)| Offload { checksum, gso })
    }

    proptest! {
        #[test]
        fn emit_then_parse_round_trips(offload in offload_strategy()) {
            let mut bytes = vec![0u8; HEADER_LEN + 300];
            offload.emit(&mut Header::new_unchecked(&mut bytes[..]));
            match Offload::parse(&Header::new_unchecked(&bytes[..])) {
                Ok(parsed) => prop_assert_eq!(parsed, offload),
                // Only the combinations Linux refuses fail.
                Err(reason) => {
                    prop_assert_eq!(reason, DropReason::BadVnetHeader);
                    let gso = offload.gso.unwrap();
                    let tcp_partial_elsewhere = gso.kind.is_tcp()
                        && matches!(offload.checksum, Checksum::Partial { offset, .. } if offset != 16);
                    let udp_not_partial_at_6 = gso.kind == GsoKind::UdpL4
                        && !matches!(offload.checksum, Checksum::Partial { offset: 6, .. });
                    prop_assert!(tcp_partial_elsewhere || udp_not_partial_at_6);
                }
            }
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let header = Header::new_unchecked(&bytes[..]);
            if let Ok(Offload { checksum: Checksum::Partial { start, offset }, .. }) =
                Offload::parse(&header)
            {
                prop_assert!(usize::from(start) + usize::from(offset) + 2 <= header.frame_len());
            }
            let _ = header.to_string();
        }
    }
}
