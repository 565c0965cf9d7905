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
//!
//! The tunnel form (`struct virtio_net_hdr_v1_hash_tunnel`, Linux 6.17+)
//! is 24 bytes: the header above, then the hash report fields of
//! `struct virtio_net_hdr_v1_hash` and two offsets that say where a UDP
//! tunnel lies in a super-frame, so that the kernel (or a NIC) can cut an
//! encapsulated super-frame into encapsulated segments. A TAP device
//! parses them only when its header size is 24 (`TUNSETVNETHDRSZ`) and
//! UDP tunnel GSO is on (`TUNSETOFFLOAD`).
//!
//! ```text
//! 12 +-------------------------------+-------------------------------+
//!    |      hash_value_lo (le)       |      hash_value_hi (le)       |
//! 16 +-------------------------------+-------------------------------+
//!    |       hash_report (le)        |            padding            |
//! 20 +-------------------------------+-------------------------------+
//!    |     outer_th_offset (le)      |     inner_nh_offset (le)      |
//!    +-------------------------------+-------------------------------+
//! ```
//!
//! [`TunnelOffload`] is what it means; [`TunnelOffload::encapsulated`]
//! turns a pod's [`Offload`] into the header for the frame once the
//! tunnel's outer headers are in front of it.

use core::fmt;

use smoltcp::wire::IpVersion;

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
/// Length of the tunnel form (`struct virtio_net_hdr_v1_hash_tunnel`).
pub const TUNNEL_HEADER_LEN: usize = 24;
/// `VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM` (tunnel form): every segment's outer
/// UDP checksum is to be computed; the field holds the pseudo-header sum.
pub const FLAG_UDP_TUNNEL_CSUM: u8 = 8;
/// `VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4` (tunnel form): the super-frame is
/// inside a UDP tunnel over IPv4; or'ed with the inner GSO type.
pub const GSO_UDP_TUNNEL_IPV4: u8 = 0x20;
/// `VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV6` (tunnel form): the same over IPv6.
pub const GSO_UDP_TUNNEL_IPV6: u8 = 0x40;

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
        le16(self.buffer.as_ref(), range)
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
        set_le16(self.buffer.as_mut(), range, value);
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

/// The little-endian 16-bit field at `range` of `data`.
fn le16(data: &[u8], range: core::ops::Range<usize>) -> u16 {
    u16::from_le_bytes([data[range.start], data[range.start + 1]])
}

/// Store `value` little-endian in the 16-bit field at `range` of `data`.
fn set_le16(data: &mut [u8], range: core::ops::Range<usize>, value: u16) {
    data[range].copy_from_slice(&value.to_le_bytes());
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
        Offload::parse_fields(
            header,
            header.flags(),
            header.gso_type(),
            header.frame_len(),
        )
    }

    /// [`parse`](Self::parse) with the flags and GSO type given (the
    /// tunnel form's, its own bits taken out) and the length of the frame
    /// after the header; the other fields are read from `header`.
    fn parse_fields<T: AsRef<[u8]>>(
        header: &Header<T>,
        flags: u8,
        gso_type: u8,
        frame_len: usize,
    ) -> Result<Offload, DropReason> {
        let checksum = match flags {
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

    /// This offload of an encapsulated packet, for its inner frame once
    /// the `outer_len` bytes of outer headers in front of it are gone:
    /// a partial checksum in the inner frame moves back with it, one in
    /// the outer headers (the outer UDP checksum, the only one pending —
    /// a packet has one) leaves the inner frame's complete; the segment
    /// header length moves back too. Refuses (`BadVnetHeader`) a
    /// super-frame whose partial checksum is not in the inner frame.
    pub fn without_outer_headers(self, outer_len: usize) -> Result<Offload, DropReason> {
        let checksum = match self.checksum {
            Checksum::Partial { start, offset } => {
                match usize::from(start).checked_sub(outer_len) {
                    Some(inner) => Checksum::Partial {
                        start: inner as u16,
                        offset,
                    },
                    None if self.gso.is_none() => Checksum::Complete,
                    None => return Err(DropReason::BadVnetHeader),
                }
            }
            other => other,
        };
        let gso = self.gso.map(|gso| Gso {
            hdr_len: usize::from(gso.hdr_len).saturating_sub(outer_len) as u16,
            ..gso
        });
        Ok(Offload { checksum, gso })
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

mod tunnel_field {
    use core::ops::{Range, RangeFrom};

    pub const BASE: Range<usize> = 0..12;
    pub const HASH_VALUE_LO: Range<usize> = 12..14;
    pub const HASH_VALUE_HI: Range<usize> = 14..16;
    pub const HASH_REPORT: Range<usize> = 16..18;
    pub const PADDING: Range<usize> = 18..20;
    pub const OUTER_TH_OFFSET: Range<usize> = 20..22;
    pub const INNER_NH_OFFSET: Range<usize> = 22..24;
    pub const FRAME: RangeFrom<usize> = 24..;
}

/// A read/write view of the tunnel form of the header
/// ([`TUNNEL_HEADER_LEN`] bytes) and the frame after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TunnelHeader<T> {
    /// View `buffer` as a tunnel-form header without checking its length.
    pub const fn new_unchecked(buffer: T) -> TunnelHeader<T> {
        TunnelHeader { buffer }
    }

    /// View `buffer` as a tunnel-form header, refusing a buffer shorter
    /// than [`TUNNEL_HEADER_LEN`].
    pub fn new_checked(buffer: T) -> Result<TunnelHeader<T>, DropReason> {
        let header = Self::new_unchecked(buffer);
        header.check_len()?;
        Ok(header)
    }

    /// Check that every accessor can be called without panicking.
    pub fn check_len(&self) -> Result<(), DropReason> {
        if self.buffer.as_ref().len() < TUNNEL_HEADER_LEN {
            Err(DropReason::TruncatedVnetHeader)
        } else {
            Ok(())
        }
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The first 12 bytes, `struct virtio_net_hdr_v1`, as a [`Header`]
    /// view (whose frame is empty: the frame follows the whole 24 bytes).
    pub fn base(&self) -> Header<&[u8]> {
        Header::new_unchecked(&self.buffer.as_ref()[tunnel_field::BASE])
    }

    /// The receive hash (`hash_value_hi` << 16 | `hash_value_lo`).
    pub fn hash_value(&self) -> u32 {
        let data = self.buffer.as_ref();
        let low = le16(data, tunnel_field::HASH_VALUE_LO);
        let high = le16(data, tunnel_field::HASH_VALUE_HI);
        u32::from(high) << 16 | u32::from(low)
    }

    /// The kind of receive hash (`VIRTIO_NET_HASH_REPORT_*`).
    pub fn hash_report(&self) -> u16 {
        le16(self.buffer.as_ref(), tunnel_field::HASH_REPORT)
    }

    /// Where the outer transport (UDP) header starts, from the frame's start.
    pub fn outer_th_offset(&self) -> u16 {
        le16(self.buffer.as_ref(), tunnel_field::OUTER_TH_OFFSET)
    }

    /// Where the inner network header starts, from the frame's start.
    pub fn inner_nh_offset(&self) -> u16 {
        le16(self.buffer.as_ref(), tunnel_field::INNER_NH_OFFSET)
    }

    /// Length of the frame after the header.
    pub fn frame_len(&self) -> usize {
        self.buffer.as_ref().len().saturating_sub(TUNNEL_HEADER_LEN)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> TunnelHeader<&'a T> {
    /// The Ethernet frame after the header.
    pub fn frame(&self) -> &'a [u8] {
        &self.buffer.as_ref()[tunnel_field::FRAME]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TunnelHeader<T> {
    /// The first 12 bytes as a writable [`Header`] view.
    pub fn base_mut(&mut self) -> Header<&mut [u8]> {
        Header::new_unchecked(&mut self.buffer.as_mut()[tunnel_field::BASE])
    }

    /// Set the receive hash.
    pub fn set_hash_value(&mut self, value: u32) {
        let data = self.buffer.as_mut();
        set_le16(data, tunnel_field::HASH_VALUE_LO, value as u16);
        set_le16(data, tunnel_field::HASH_VALUE_HI, (value >> 16) as u16);
    }

    /// Set the kind of receive hash.
    pub fn set_hash_report(&mut self, value: u16) {
        set_le16(self.buffer.as_mut(), tunnel_field::HASH_REPORT, value);
    }

    /// Zero the padding after the hash report.
    pub fn clear_padding(&mut self) {
        self.buffer.as_mut()[tunnel_field::PADDING].fill(0);
    }

    /// Set where the outer transport header starts.
    pub fn set_outer_th_offset(&mut self, value: u16) {
        set_le16(self.buffer.as_mut(), tunnel_field::OUTER_TH_OFFSET, value);
    }

    /// Set where the inner network header starts.
    pub fn set_inner_nh_offset(&mut self, value: u16) {
        set_le16(self.buffer.as_mut(), tunnel_field::INNER_NH_OFFSET, value);
    }

    /// The Ethernet frame after the header, mutably.
    pub fn frame_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[tunnel_field::FRAME]
    }
}

impl<T: AsRef<[u8]>> fmt::Display for TunnelHeader<T> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match TunnelOffload::parse(self) {
            Ok(offload) => write!(f, "virtio-net {offload}"),
            Err(reason) => write!(f, "virtio-net ({reason})"),
        }
    }
}

/// Where the UDP tunnel of an encapsulated super-frame lies, as the tunnel
/// form of the header says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpTunnel {
    /// The outer IP version (`GSO_UDP_TUNNEL_IPV4` or `GSO_UDP_TUNNEL_IPV6`).
    pub outer: IpVersion,
    /// `VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM`: every segment gets an outer UDP
    /// checksum (the super-frame's field holds the pseudo-header sum);
    /// without it every segment's field is left as it is.
    pub checksum: bool,
    /// Where the outer UDP header starts, from the frame's start.
    pub outer_th_offset: u16,
    /// Where the inner IP header starts, from the frame's start.
    pub inner_nh_offset: u16,
}

/// What a tunnel-form header says about the frame after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TunnelOffload {
    /// The checksum state and segmentation, as the 12-byte header has
    /// them. In a tunnel super-frame they are the inner ones: the inner
    /// transport checksum (always partial) and the inner segments' size.
    pub offload: Offload,
    /// The UDP tunnel around a super-frame; `None` for any other frame.
    pub tunnel: Option<UdpTunnel>,
}

/// The outer headers an encapsulation put before a frame: what the tunnel
/// form needs to know of them (see
/// [`OuterTemplate::outer_headers`](crate::OuterTemplate::outer_headers)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OuterHeaders {
    /// The outer IP version.
    pub ip: IpVersion,
    /// Where the outer UDP header starts, from the start of the outer
    /// Ethernet header.
    pub udp_offset: u16,
    /// Their length (outer Ethernet to the end of the tunnel header):
    /// where the inner frame starts.
    pub len: u16,
}

impl TunnelOffload {
    /// Parse a tunnel-form header, checking it as Linux's
    /// `virtio_net_hdr_tnl_to_skb` does: the 12-byte part as
    /// [`Offload::parse`] does (the tunnel bits aside), and for a tunnel
    /// super-frame exactly one outer IP version, an inner GSO type, a
    /// partial checksum and offsets in order (outer UDP after an outer
    /// Ethernet and IP header, inner IP after the outer UDP header, inner
    /// transport after an inner IP header). Refuses
    /// (`BadVnetHeader`) UDP_TUNNEL_CSUM on a frame that is not a tunnel
    /// super-frame. The hash fields are ignored, and the offsets of a
    /// frame that is not a tunnel super-frame.
    pub fn parse<T: AsRef<[u8]>>(header: &TunnelHeader<T>) -> Result<TunnelOffload, DropReason> {
        header.check_len()?;
        TunnelOffload::parse_for(header, header.frame_len())
    }

    /// Check that this header is one [`parse`](Self::parse) (and Linux)
    /// takes before a frame of `frame_len` bytes.
    pub fn check(&self, frame_len: usize) -> Result<(), DropReason> {
        let bytes = self.to_bytes();
        TunnelOffload::parse_for(&TunnelHeader::new_unchecked(&bytes[..]), frame_len).map(drop)
    }

    /// Parse the header Linux wrote before a packet it read out of a TAP
    /// device with UDP tunnel GSO on (one the node's kernel received for
    /// the switch): the checksum state and segmentation as
    /// [`Offload::parse`] checks them, the tunnel bits taken out, offsets
    /// from the outer frame's start. The tunnel offsets are not read:
    /// for a packet that GRO built, Linux 6.18 reports the inner transport
    /// header's offset as the outer one's, so the caller finds the tunnel
    /// by decapsulating and moves the offload with
    /// [`Offload::without_outer_headers`]. A super-frame must be a tunnel
    /// one.
    pub fn parse_received<T: AsRef<[u8]>>(header: &TunnelHeader<T>) -> Result<Offload, DropReason> {
        header.check_len()?;
        let base = header.base();
        let tunnel_bits = base.gso_type() & (GSO_UDP_TUNNEL_IPV4 | GSO_UDP_TUNNEL_IPV6);
        let offload = Offload::parse_fields(
            &base,
            base.flags() & !FLAG_UDP_TUNNEL_CSUM,
            base.gso_type() & !tunnel_bits,
            header.frame_len(),
        )?;
        match (offload.gso, tunnel_bits) {
            (Some(_), 0) => Err(DropReason::BadVnetHeader),
            _ => Ok(offload),
        }
    }

    /// [`parse`](Self::parse) of a header (its length checked) before a
    /// frame of `frame_len` bytes.
    fn parse_for<T: AsRef<[u8]>>(
        header: &TunnelHeader<T>,
        frame_len: usize,
    ) -> Result<TunnelOffload, DropReason> {
        let base = header.base();
        let tunnel_bits = base.gso_type() & (GSO_UDP_TUNNEL_IPV4 | GSO_UDP_TUNNEL_IPV6);
        let tunnel_checksum = base.flags() & FLAG_UDP_TUNNEL_CSUM != 0;
        let offload = Offload::parse_fields(
            &base,
            base.flags() & !FLAG_UDP_TUNNEL_CSUM,
            base.gso_type() & !tunnel_bits,
            frame_len,
        )?;
        let outer = match tunnel_bits {
            0 if tunnel_checksum => return Err(DropReason::BadVnetHeader),
            0 => {
                return Ok(TunnelOffload {
                    offload,
                    tunnel: None,
                });
            }
            GSO_UDP_TUNNEL_IPV4 => IpVersion::Ipv4,
            GSO_UDP_TUNNEL_IPV6 => IpVersion::Ipv6,
            _ => return Err(DropReason::BadVnetHeader),
        };
        let (Some(gso), Checksum::Partial { start, .. }) = (offload.gso, offload.checksum) else {
            return Err(DropReason::BadVnetHeader);
        };
        let tunnel = UdpTunnel {
            outer,
            checksum: tunnel_checksum,
            outer_th_offset: header.outer_th_offset(),
            inner_nh_offset: header.inner_nh_offset(),
        };
        let outer_l3_min = ETHERNET_LEN + ip_header_min(outer);
        let inner_l3_min = ip_header_min(if gso.kind == GsoKind::TcpV6 {
            IpVersion::Ipv6
        } else {
            IpVersion::Ipv4
        });
        let (outer_th, inner_nh) = (
            usize::from(tunnel.outer_th_offset),
            usize::from(tunnel.inner_nh_offset),
        );
        if outer_th < outer_l3_min
            || inner_nh < outer_th + UDP_HEADER_LEN
            || usize::from(start) < inner_nh + inner_l3_min
        {
            return Err(DropReason::BadVnetHeader);
        }
        Ok(TunnelOffload {
            offload,
            tunnel: Some(tunnel),
        })
    }

    /// The header for a frame that `inner` describes (as a pod's TAP
    /// device handed it over, partial checksum offsets from the frame's
    /// start) once `outer` headers are in front of it, for a TAP device
    /// with UDP tunnel GSO on:
    ///
    /// - a super-frame becomes a tunnel super-frame: its segmentation and
    ///   ECN bit kept, `hdr_len` and the partial checksum moved past the
    ///   outer headers, the outer UDP header and the inner IP header
    ///   (after an untagged inner Ethernet header) located, and an outer
    ///   UDP checksum asked for every segment — the outer UDP field must
    ///   hold the pseudo-header sum;
    /// - a plain frame with a partial checksum keeps it, moved — the outer
    ///   UDP checksum must be complete already (local checksum offload:
    ///   [`OuterTemplate::encapsulate_offloaded`](crate::OuterTemplate::encapsulate_offloaded)
    ///   computes it from the headers alone);
    /// - a plain frame with complete checksums gets its outer UDP checksum
    ///   computed by the kernel (NEEDS_CSUM from the outer UDP header) —
    ///   the field must hold the pseudo-header sum.
    ///
    /// Refuses (`BadVnetHeader`) a super-frame without a partial checksum
    /// (the kernel's tunnel segmentation needs one) and offsets that pass
    /// 16 bits.
    pub fn encapsulated(inner: &Offload, outer: OuterHeaders) -> Result<TunnelOffload, DropReason> {
        let moved = |position: u16| {
            position
                .checked_add(outer.len)
                .ok_or(DropReason::BadVnetHeader)
        };
        let checksum = match (inner.checksum, inner.gso) {
            (Checksum::Partial { start, offset }, _) => Checksum::Partial {
                start: moved(start)?,
                offset,
            },
            (_, Some(_)) => return Err(DropReason::BadVnetHeader),
            (Checksum::Complete | Checksum::Verified, None) => Checksum::Partial {
                start: outer.udp_offset,
                offset: UDP_CHECKSUM_OFFSET,
            },
        };
        let Some(gso) = inner.gso else {
            return Ok(TunnelOffload {
                offload: Offload {
                    checksum,
                    gso: None,
                },
                tunnel: None,
            });
        };
        let gso = Gso {
            hdr_len: gso.hdr_len.saturating_add(outer.len),
            ..gso
        };
        Ok(TunnelOffload {
            offload: Offload {
                checksum,
                gso: Some(gso),
            },
            tunnel: Some(UdpTunnel {
                outer: outer.ip,
                checksum: true,
                outer_th_offset: outer.udp_offset,
                inner_nh_offset: moved(ETHERNET_LEN as u16)?,
            }),
        })
    }

    /// Write all 24 header bytes: the 12-byte part as [`Offload::emit`]
    /// writes it with the tunnel bits added, hash fields zero, the tunnel
    /// offsets (zero without a tunnel).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, header: &mut TunnelHeader<T>) {
        let mut base = header.base_mut();
        self.offload.emit(&mut base);
        if let Some(tunnel) = self.tunnel {
            let (flags, gso_type) = (base.flags(), base.gso_type());
            base.set_flags(
                flags
                    | if tunnel.checksum {
                        FLAG_UDP_TUNNEL_CSUM
                    } else {
                        0
                    },
            );
            base.set_gso_type(
                gso_type
                    | match tunnel.outer {
                        IpVersion::Ipv4 => GSO_UDP_TUNNEL_IPV4,
                        IpVersion::Ipv6 => GSO_UDP_TUNNEL_IPV6,
                    },
            );
        }
        header.set_hash_value(0);
        header.set_hash_report(0);
        header.clear_padding();
        let (outer_th, inner_nh) = self
            .tunnel
            .map_or((0, 0), |t| (t.outer_th_offset, t.inner_nh_offset));
        header.set_outer_th_offset(outer_th);
        header.set_inner_nh_offset(inner_nh);
    }

    /// The header bytes, for a caller that writes the header and the
    /// frame separately (`writev`).
    pub fn to_bytes(&self) -> [u8; TUNNEL_HEADER_LEN] {
        let mut bytes = [0; TUNNEL_HEADER_LEN];
        self.emit(&mut TunnelHeader::new_unchecked(&mut bytes[..]));
        bytes
    }
}

impl fmt::Display for TunnelOffload {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.offload)?;
        if let Some(tunnel) = self.tunnel {
            write!(
                f,
                " udp_tunnel={} outer_th={} inner_nh={}",
                tunnel.outer, tunnel.outer_th_offset, tunnel.inner_nh_offset
            )?;
            if tunnel.checksum {
                write!(f, " outer_csum")?;
            }
        }
        Ok(())
    }
}

/// Length of an untagged Ethernet header.
const ETHERNET_LEN: usize = 14;
/// Length of a UDP header.
const UDP_HEADER_LEN: usize = 8;

/// The shortest IP header of a version.
const fn ip_header_min(version: IpVersion) -> usize {
    match version {
        IpVersion::Ipv4 => 20,
        IpVersion::Ipv6 => 40,
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

    // The tunnel form for a pod's TCP/IPv4 super-frame (NEEDS_CSUM from
    // 34 at 16, gso_size 1398, hdr_len 66) behind VXLAN over IPv4 (50
    // bytes of outer headers, outer UDP at 34): NEEDS_CSUM |
    // UDP_TUNNEL_CSUM, TCPV4 | UDP_TUNNEL_IPV4, hdr_len 116, gso_size
    // 1398, csum_start 84, csum_offset 16, no hash, outer_th 34, inner_nh 64.
    static TUNNEL_BYTES: [u8; 24] = [
        0x09, 0x21, 0x74, 0x00, 0x76, 0x05, 0x54, 0x00, 0x10, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x22, 0x00, 0x40, 0x00,
    ];

    fn pod_super_frame() -> Offload {
        Offload {
            checksum: Checksum::Partial {
                start: 34,
                offset: 16,
            },
            gso: Some(Gso {
                kind: GsoKind::TcpV4,
                ecn: false,
                size: 1398,
                hdr_len: 66,
            }),
        }
    }

    const VXLAN_V4: OuterHeaders = OuterHeaders {
        ip: IpVersion::Ipv4,
        udp_offset: 34,
        len: 50,
    };

    fn tunnel_offload() -> TunnelOffload {
        TunnelOffload {
            offload: Offload {
                checksum: Checksum::Partial {
                    start: 84,
                    offset: 16,
                },
                gso: Some(Gso {
                    hdr_len: 116,
                    ..pod_super_frame().gso.unwrap()
                }),
            },
            tunnel: Some(UdpTunnel {
                outer: IpVersion::Ipv4,
                checksum: true,
                outer_th_offset: 34,
                inner_nh_offset: 64,
            }),
        }
    }

    fn tunnel_buffer(header: [u8; 24], frame_len: usize) -> Vec<u8> {
        let mut bytes = header.to_vec();
        bytes.resize(TUNNEL_HEADER_LEN + frame_len, 0xab);
        bytes
    }

    #[test]
    fn tunnel_deconstruct() {
        let mut header = TUNNEL_BYTES;
        header[12..20].copy_from_slice(&[0x78, 0x56, 0x34, 0x12, 0x02, 0x00, 0xff, 0xff]);
        let bytes = tunnel_buffer(header, 200);
        let view = TunnelHeader::new_checked(&bytes[..]).unwrap();
        assert_eq!(view.base().flags(), FLAG_NEEDS_CSUM | FLAG_UDP_TUNNEL_CSUM);
        assert_eq!(view.base().gso_type(), GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4);
        assert_eq!(view.base().hdr_len(), 116);
        assert_eq!(view.base().gso_size(), 1398);
        assert_eq!(view.base().csum_start(), 84);
        assert_eq!(view.base().csum_offset(), 16);
        assert_eq!(view.hash_value(), 0x1234_5678);
        assert_eq!(view.hash_report(), 2);
        assert_eq!(view.outer_th_offset(), 34);
        assert_eq!(view.inner_nh_offset(), 64);
        assert_eq!(view.frame_len(), 200);
        assert_eq!(view.frame(), &[0xab; 200][..]);
    }

    #[test]
    fn tunnel_construct() {
        let mut bytes = [0xffu8; 26];
        let mut view = TunnelHeader::new_unchecked(&mut bytes[..]);
        let mut base = view.base_mut();
        base.set_flags(FLAG_NEEDS_CSUM | FLAG_UDP_TUNNEL_CSUM);
        base.set_gso_type(GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4);
        base.set_hdr_len(116);
        base.set_gso_size(1398);
        base.set_csum_start(84);
        base.set_csum_offset(16);
        base.set_num_buffers(0);
        view.set_hash_value(0);
        view.set_hash_report(0);
        view.clear_padding();
        view.set_outer_th_offset(34);
        view.set_inner_nh_offset(64);
        view.frame_mut().copy_from_slice(&[1, 2]);
        assert_eq!(bytes[..24], TUNNEL_BYTES);
        assert_eq!(bytes[24..], [1, 2]);
    }

    #[test]
    fn tunnel_parse_and_emit() {
        let bytes = tunnel_buffer(TUNNEL_BYTES, 200);
        let view = TunnelHeader::new_checked(&bytes[..]).unwrap();
        assert_eq!(TunnelOffload::parse(&view), Ok(tunnel_offload()));
        let mut out = [0xffu8; 24];
        tunnel_offload().emit(&mut TunnelHeader::new_unchecked(&mut out[..]));
        assert_eq!(out, TUNNEL_BYTES);
        assert_eq!(tunnel_offload().to_bytes(), TUNNEL_BYTES);
        // Without a tunnel: the 12-byte header, then zeros.
        let plain = TunnelOffload {
            offload: offload(),
            tunnel: None,
        };
        let bytes = plain.to_bytes();
        assert_eq!(bytes[..12], HEADER_BYTES);
        assert_eq!(bytes[12..], [0; 12]);
        let with_frame = tunnel_buffer(bytes, 66);
        assert_eq!(
            TunnelOffload::parse(&TunnelHeader::new_unchecked(&with_frame[..])),
            Ok(plain)
        );
        // IPv6 outer (14 + 40 + 8 + 8 + 14 = 84), no outer checksum.
        let v6 = TunnelOffload {
            offload: Offload {
                checksum: Checksum::Partial {
                    start: 104,
                    offset: 16,
                },
                ..tunnel_offload().offload
            },
            tunnel: Some(UdpTunnel {
                outer: IpVersion::Ipv6,
                checksum: false,
                outer_th_offset: 54,
                inner_nh_offset: 84,
            }),
        };
        let bytes = v6.to_bytes();
        assert_eq!(bytes[..2], [0x01, 0x41]);
        assert_eq!(bytes[6..8], [104, 0]);
        assert_eq!(bytes[20..], [54, 0, 84, 0]);
        let with_frame = tunnel_buffer(bytes, 200);
        assert_eq!(
            TunnelOffload::parse(&TunnelHeader::new_unchecked(&with_frame[..])),
            Ok(v6)
        );
    }

    #[test]
    fn tunnel_parse_refuses_what_linux_refuses() {
        let parse = |edit: &dyn Fn(&mut [u8; 24]), frame_len: usize| {
            let mut header = TUNNEL_BYTES;
            edit(&mut header);
            let bytes = tunnel_buffer(header, frame_len);
            TunnelOffload::parse(&TunnelHeader::new_unchecked(&bytes[..]))
        };
        assert_eq!(parse(&|_| {}, 200), Ok(tunnel_offload()));
        let refused = Err(DropReason::BadVnetHeader);
        // Both outer versions at once.
        assert_eq!(parse(&|h| h[1] = 0x61, 200), refused);
        // A tunnel without an inner GSO type, or with UFO.
        assert_eq!(parse(&|h| h[1] = 0x20, 200), refused);
        assert_eq!(parse(&|h| h[1] = 0x23, 200), refused);
        // A tunnel without NEEDS_CSUM (DATA_VALID, or nothing).
        assert_eq!(parse(&|h| h[0] = 0x0a, 200), refused);
        assert_eq!(parse(&|h| h[0] = 0x08, 200), refused);
        // UDP_TUNNEL_CSUM without a tunnel.
        assert_eq!(parse(&|h| h[1] = GSO_TCPV4, 200), refused);
        assert!(parse(&|h| (h[0], h[1]) = (1, GSO_TCPV4), 200).is_ok());
        // Offsets out of order: outer UDP inside the outer IPv4 header,
        // inner IP inside the outer UDP header, inner TCP inside the inner
        // IP header; an IPv6 outer needs 40 bytes of IP header.
        assert_eq!(parse(&|h| h[20] = 33, 200), refused);
        assert_eq!(parse(&|h| h[22] = 41, 200), refused);
        assert_eq!(parse(&|h| h[22] = 65, 200), refused);
        assert_eq!(parse(&|h| h[1] = 0x41, 200), refused);
        assert!(parse(&|h| (h[1], h[20]) = (0x41, 54), 200).is_ok());
        // An inner TCP/IPv6 header needs 40 bytes of inner IP header.
        assert_eq!(parse(&|h| h[1] = 0x24, 200), refused);
        // The 12-byte part's own checks still apply: checksum past the frame.
        assert_eq!(parse(&|_| {}, 101), refused);
        assert_eq!(
            TunnelOffload::parse(&TunnelHeader::new_unchecked(&TUNNEL_BYTES[..23])),
            Err(DropReason::TruncatedVnetHeader)
        );
        assert_eq!(
            TunnelHeader::new_checked(&TUNNEL_BYTES[..23]),
            Err(DropReason::TruncatedVnetHeader)
        );
    }

    #[test]
    fn received_tunnel_packets() {
        // What Linux 6.18 wrote before a super-packet GRO built from a
        // kernel VXLAN sender's frames: offsets from the outer frame, and
        // outer_th_offset at the inner TCP header (84) rather than the
        // outer UDP one (34).
        let gro: [u8; 24] = [
            0x09, 0x21, 116, 0, 0x76, 0x05, 84, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 84, 0, 64,
            0,
        ];
        let bytes = tunnel_buffer(gro, 50 + 66 + 2 * 1398);
        let header = TunnelHeader::new_unchecked(&bytes[..]);
        assert_eq!(
            TunnelOffload::parse(&header),
            Err(DropReason::BadVnetHeader)
        );
        let received = TunnelOffload::parse_received(&header).unwrap();
        // The inner frame's offload is what the sending pod's was.
        let inner = pod_super_frame();
        assert_eq!(received.without_outer_headers(50), Ok(inner));
        // A plain packet whose outer UDP checksum is the pending one: the
        // inner frame's are complete.
        let mut plain = [0u8; 24];
        (plain[0], plain[6], plain[8]) = (FLAG_NEEDS_CSUM, 34, 6);
        let bytes = tunnel_buffer(plain, 200);
        let received = TunnelOffload::parse_received(&TunnelHeader::new_unchecked(&bytes[..]));
        assert_eq!(
            received.and_then(|o| o.without_outer_headers(50)),
            Ok(Offload::NONE)
        );
        // A super-frame whose pending checksum is an outer one, and one
        // that is not a tunnel's, are refused.
        let outer_partial = Offload {
            checksum: Checksum::Partial {
                start: 34,
                offset: 6,
            },
            ..inner
        };
        assert_eq!(
            outer_partial.without_outer_headers(50),
            Err(DropReason::BadVnetHeader)
        );
        let mut bare = gro;
        bare[1] = GSO_TCPV4;
        bare[0] = FLAG_NEEDS_CSUM;
        let bytes = tunnel_buffer(bare, 50 + 66 + 2 * 1398);
        assert_eq!(
            TunnelOffload::parse_received(&TunnelHeader::new_unchecked(&bytes[..])),
            Err(DropReason::BadVnetHeader)
        );
    }

    #[test]
    fn encapsulated_super_frame() {
        let header = TunnelOffload::encapsulated(&pod_super_frame(), VXLAN_V4).unwrap();
        assert_eq!(header, tunnel_offload());
        assert_eq!(header.to_bytes(), TUNNEL_BYTES);
        // Geneve over IPv6 with 8 bytes of options: 14 + 40 + 8 + 8 + 8.
        let geneve_v6 = OuterHeaders {
            ip: IpVersion::Ipv6,
            udp_offset: 54,
            len: 78,
        };
        let ecn = Offload {
            gso: Some(Gso {
                ecn: true,
                ..pod_super_frame().gso.unwrap()
            }),
            ..pod_super_frame()
        };
        let header = TunnelOffload::encapsulated(&ecn, geneve_v6).unwrap();
        let bytes = header.to_bytes();
        assert_eq!(bytes[..2], [0x09, 0x80 | 0x40 | 0x01]);
        assert_eq!(
            header.offload.checksum,
            Checksum::Partial {
                start: 112,
                offset: 16
            }
        );
        assert_eq!(header.tunnel.unwrap().outer_th_offset, 54);
        assert_eq!(header.tunnel.unwrap().inner_nh_offset, 92);
        // What it emits, Linux would take.
        let with_frame = tunnel_buffer(bytes, 78 + 66);
        assert_eq!(
            TunnelOffload::parse(&TunnelHeader::new_unchecked(&with_frame[..])),
            Ok(header)
        );
    }

    #[test]
    fn encapsulated_plain_frames() {
        // A partial checksum is kept, moved; the outer UDP checksum is
        // the caller's to complete.
        let partial = Offload {
            gso: None,
            ..pod_super_frame()
        };
        let header = TunnelOffload::encapsulated(&partial, VXLAN_V4).unwrap();
        assert_eq!(header.tunnel, None);
        assert_eq!(
            header.to_bytes(),
            [
                1, 0, 0, 0, 0, 0, 84, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        // Complete checksums: the kernel computes the outer UDP one.
        for checksum in [Checksum::Complete, Checksum::Verified] {
            let header = TunnelOffload::encapsulated(
                &Offload {
                    checksum,
                    gso: None,
                },
                VXLAN_V4,
            )
            .unwrap();
            assert_eq!(
                header.offload,
                Offload {
                    checksum: Checksum::Partial {
                        start: 34,
                        offset: 6
                    },
                    gso: None
                }
            );
        }
    }

    #[test]
    fn encapsulated_refuses() {
        let complete_super_frame = Offload {
            checksum: Checksum::Complete,
            ..pod_super_frame()
        };
        assert_eq!(
            TunnelOffload::encapsulated(&complete_super_frame, VXLAN_V4),
            Err(DropReason::BadVnetHeader)
        );
        let far = Offload {
            checksum: Checksum::Partial {
                start: 65500,
                offset: 16,
            },
            ..pod_super_frame()
        };
        assert_eq!(
            TunnelOffload::encapsulated(&far, VXLAN_V4),
            Err(DropReason::BadVnetHeader)
        );
    }

    #[test]
    fn tunnel_display() {
        let bytes = tunnel_buffer(TUNNEL_BYTES, 200);
        assert_eq!(
            TunnelHeader::new_unchecked(&bytes[..]).to_string(),
            "virtio-net csum=partial start=84 offset=16 gso=tcpv4 size=1398 hdr_len=116 \
             udp_tunnel=IPv4 outer_th=34 inner_nh=64 outer_csum"
        );
        assert_eq!(
            TunnelHeader::new_unchecked(&bytes[..20]).to_string(),
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
        fn tunnel_emit_then_parse_round_trips(
            inner in offload_strategy(),
            ipv6 in any::<bool>(),
            udp_offset in 34u16..80,
            tunnel_len in 8u16..300,
        ) {
            let outer = OuterHeaders {
                ip: if ipv6 { IpVersion::Ipv6 } else { IpVersion::Ipv4 },
                udp_offset,
                len: udp_offset + tunnel_len,
            };
            let Ok(header) = TunnelOffload::encapsulated(&inner, outer) else {
                return Ok(());
            };
            let mut bytes = vec![0u8; TUNNEL_HEADER_LEN + 700];
            header.emit(&mut TunnelHeader::new_unchecked(&mut bytes[..]));
            match TunnelOffload::parse(&TunnelHeader::new_unchecked(&bytes[..])) {
                Ok(parsed) => prop_assert_eq!(parsed, header),
                // Only what Linux refuses: the pod's own header was bad, or
                // the offsets are out of the order Linux wants.
                Err(reason) => {
                    prop_assert_eq!(reason, DropReason::BadVnetHeader);
                    let pod_bytes = {
                        let mut b = vec![0u8; HEADER_LEN + 700];
                        inner.emit(&mut Header::new_unchecked(&mut b[..]));
                        b
                    };
                    let pod_ok = Offload::parse(&Header::new_unchecked(&pod_bytes[..])).is_ok();
                    let ip_too_short = header.tunnel.is_some_and(|t| {
                        usize::from(t.outer_th_offset) < ETHERNET_LEN + ip_header_min(t.outer)
                            || matches!(header.offload.checksum, Checksum::Partial { start, .. }
                                if usize::from(start) < usize::from(t.inner_nh_offset) + 20)
                    });
                    prop_assert!(!pod_ok || ip_too_short, "{header}");
                }
            }
        }

        #[test]
        fn tunnel_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..60)) {
            let header = TunnelHeader::new_unchecked(&bytes[..]);
            if let Ok(TunnelOffload { offload: Offload { checksum: Checksum::Partial { start, offset }, .. }, .. }) =
                TunnelOffload::parse(&header)
            {
                prop_assert!(usize::from(start) + usize::from(offset) + 2 <= header.frame_len());
            }
            let _ = header.to_string();
        }

        #[test]
        fn received_parse_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..80),
            outer_len in 0usize..100,
        ) {
            let header = TunnelHeader::new_unchecked(&bytes[..]);
            if let Ok(inner) = TunnelOffload::parse_received(&header)
                .and_then(|o| o.without_outer_headers(outer_len))
                && let Checksum::Partial { start, offset } = inner.checksum
            {
                let inner_len = header.frame_len() - outer_len;
                prop_assert!(usize::from(start) + usize::from(offset) + 2 <= inner_len);
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
