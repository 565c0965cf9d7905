//! Geneve header and option TLVs (RFC 8926), in the manner of `smoltcp::wire`.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |        Virtual Network Identifier (VNI)       |    Reserved   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ~                    Variable-Length Options                    ~
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!
//! Each option:
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Option Class         |      Type     |R|R|R| Length  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ~                  Variable-Length Option Data                  ~
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Opt Len and the option Length count 4-byte words. The O bit marks a
//! control (OAM) packet; the C bit says critical options are present; the
//! high bit of an option's Type marks that option critical: a receiver that
//! does not understand it must drop the packet.

use core::fmt;

use crate::error::{Header, WireError, need};
use crate::vni::Vni;

/// The IANA-assigned Geneve UDP port.
pub const UDP_PORT: u16 = 6081;
/// Length of the base header, without options.
pub const HEADER_LEN: usize = 8;
/// Longest options area the 6-bit Opt Len can describe.
pub const MAX_OPTIONS_LEN: usize = 0x3f * 4;
/// Protocol Type of an encapsulated Ethernet frame (Transparent Ethernet Bridging).
pub const PROTOCOL_ETHERNET: u16 = 0x6558;
/// The only Geneve version defined.
pub const VERSION: u8 = 0;
/// O flag: the packet carries a control message.
pub const FLAG_OAM: u8 = 0x80;
/// C flag: critical options are present.
pub const FLAG_CRITICAL: u8 = 0x40;
/// Length of an option's own header.
pub const OPTION_HEADER_LEN: usize = 4;
/// Longest option data the 5-bit option Length can describe.
pub const MAX_OPTION_DATA_LEN: usize = 0x1f * 4;
/// The bit of an option's Type that marks it critical.
pub const OPTION_TYPE_CRITICAL: u8 = 0x80;

mod field {
    use core::ops::Range;

    pub const VER_OPT_LEN: usize = 0;
    pub const FLAGS: usize = 1;
    pub const PROTOCOL: Range<usize> = 2..4;
    pub const VNI: Range<usize> = 4..7;
    pub const RESERVED: usize = 7;
    pub const OPTIONS_START: usize = 8;

    pub const OPT_CLASS: Range<usize> = 0..2;
    pub const OPT_TYPE: usize = 2;
    pub const OPT_LENGTH: usize = 3;
    pub const OPT_DATA_START: usize = 4;
}

/// A read/write view of a Geneve header, its options and the frame it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// View `buffer` as Geneve without checking its length.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// View `buffer` as Geneve, refusing a buffer shorter than the base
    /// header plus the options area that Opt Len declares.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Check that every accessor can be called without panicking.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        need(Header::Geneve, HEADER_LEN, len)?;
        need(Header::Geneve, self.header_len(), len)
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The version field (2 bits).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_OPT_LEN] >> 6
    }

    /// Length of the options area in bytes (Opt Len × 4).
    pub fn options_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_OPT_LEN] & 0x3f) * 4
    }

    /// Length of the base header plus options: where the payload starts.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options_len()
    }

    /// Whether the O (control packet) bit is set.
    pub fn oam(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & FLAG_OAM != 0
    }

    /// Whether the C (critical options present) bit is set.
    pub fn critical(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & FLAG_CRITICAL != 0
    }

    /// The Protocol Type of the payload (an EtherType).
    pub fn protocol_type(&self) -> u16 {
        let data = self.buffer.as_ref();
        u16::from_be_bytes([data[field::PROTOCOL.start], data[field::PROTOCOL.start + 1]])
    }

    /// The virtual network identifier.
    pub fn vni(&self) -> Vni {
        let data = self.buffer.as_ref();
        Vni::from_bytes([data[4], data[5], data[6]])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The raw options area.
    pub fn options(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::OPTIONS_START..self.header_len()]
    }

    /// The options, one TLV at a time.
    pub fn option_iter(&self) -> OptionIter<'a> {
        OptionIter::new(self.options())
    }

    /// The encapsulated payload.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Set the version field (2 bits).
    pub fn set_version(&mut self, version: u8) {
        let byte = &mut self.buffer.as_mut()[field::VER_OPT_LEN];
        *byte = (*byte & 0x3f) | (version << 6);
    }

    /// Set Opt Len from a length in bytes, which must be a multiple of 4 and
    /// at most [`MAX_OPTIONS_LEN`].
    pub fn set_options_len(&mut self, len: usize) {
        debug_assert!(len.is_multiple_of(4) && len <= MAX_OPTIONS_LEN);
        let byte = &mut self.buffer.as_mut()[field::VER_OPT_LEN];
        *byte = (*byte & 0xc0) | ((len / 4) as u8 & 0x3f);
    }

    /// Set or clear the O bit.
    pub fn set_oam(&mut self, oam: bool) {
        self.set_flag(FLAG_OAM, oam);
    }

    /// Set or clear the C bit.
    pub fn set_critical(&mut self, critical: bool) {
        self.set_flag(FLAG_CRITICAL, critical);
    }

    fn set_flag(&mut self, flag: u8, on: bool) {
        let byte = &mut self.buffer.as_mut()[field::FLAGS];
        if on {
            *byte |= flag;
        } else {
            *byte &= !flag;
        }
    }

    /// Set the Protocol Type.
    pub fn set_protocol_type(&mut self, protocol: u16) {
        self.buffer.as_mut()[field::PROTOCOL].copy_from_slice(&protocol.to_be_bytes());
    }

    /// Set the virtual network identifier.
    pub fn set_vni(&mut self, vni: Vni) {
        self.buffer.as_mut()[field::VNI].copy_from_slice(&vni.to_bytes());
    }

    /// Zero the reserved bits of the flags byte and the reserved last byte.
    pub fn clear_reserved(&mut self) {
        let data = self.buffer.as_mut();
        data[field::FLAGS] &= FLAG_OAM | FLAG_CRITICAL;
        data[field::RESERVED] = 0;
    }

    /// The raw options area, mutably.
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[field::OPTIONS_START..end]
    }

    /// The encapsulated payload, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }
}

impl<T: AsRef<[u8]>> fmt::Display for Packet<T> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let packet = Packet::new_unchecked(self.buffer.as_ref());
        match Repr::parse(&packet) {
            Ok(repr) => write!(f, "{repr}"),
            Err(err) => write!(f, "Geneve ({err})"),
        }
    }
}

/// A read/write view of one Geneve option TLV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneveOption<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> GeneveOption<T> {
    /// View `buffer` as an option without checking its length.
    pub const fn new_unchecked(buffer: T) -> GeneveOption<T> {
        GeneveOption { buffer }
    }

    /// View `buffer` as an option, refusing one shorter than the option's
    /// header plus the data its Length declares.
    pub fn new_checked(buffer: T) -> Result<GeneveOption<T>, WireError> {
        let option = Self::new_unchecked(buffer);
        option.check_len()?;
        Ok(option)
    }

    /// Check that every accessor can be called without panicking.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        need(Header::GeneveOption, OPTION_HEADER_LEN, len)?;
        need(Header::GeneveOption, self.total_len(), len)
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The Option Class.
    pub fn class(&self) -> u16 {
        let data = self.buffer.as_ref();
        u16::from_be_bytes([data[0], data[1]])
    }

    /// The Type, critical bit included.
    pub fn option_type(&self) -> u8 {
        self.buffer.as_ref()[field::OPT_TYPE]
    }

    /// Whether the option is critical (high bit of Type).
    pub fn critical(&self) -> bool {
        self.option_type() & OPTION_TYPE_CRITICAL != 0
    }

    /// Length of the option data in bytes (Length × 4).
    pub fn data_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::OPT_LENGTH] & 0x1f) * 4
    }

    /// Length of the whole option, header included.
    pub fn total_len(&self) -> usize {
        OPTION_HEADER_LEN + self.data_len()
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> GeneveOption<&'a T> {
    /// The option data.
    pub fn data(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::OPT_DATA_START..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> GeneveOption<T> {
    /// Set the Option Class.
    pub fn set_class(&mut self, class: u16) {
        self.buffer.as_mut()[field::OPT_CLASS].copy_from_slice(&class.to_be_bytes());
    }

    /// Set the Type, critical bit included.
    pub fn set_option_type(&mut self, option_type: u8) {
        self.buffer.as_mut()[field::OPT_TYPE] = option_type;
    }

    /// Set Length from a data length in bytes (a multiple of 4, at most
    /// [`MAX_OPTION_DATA_LEN`]); the reserved bits become zero.
    pub fn set_data_len(&mut self, len: usize) {
        debug_assert!(len.is_multiple_of(4) && len <= MAX_OPTION_DATA_LEN);
        self.buffer.as_mut()[field::OPT_LENGTH] = (len / 4) as u8 & 0x1f;
    }

    /// The option data, mutably.
    pub fn data_mut(&mut self) -> &mut [u8] {
        let end = self.total_len();
        &mut self.buffer.as_mut()[field::OPT_DATA_START..end]
    }
}

/// Iterator over the option TLVs of an options area. Yields an error, and
/// then stops, at an option that runs past the end of the area.
#[derive(Debug, Clone)]
pub struct OptionIter<'a> {
    rest: &'a [u8],
}

impl<'a> OptionIter<'a> {
    /// Iterate over the TLVs in `options`.
    pub fn new(options: &'a [u8]) -> OptionIter<'a> {
        OptionIter { rest: options }
    }
}

impl<'a> Iterator for OptionIter<'a> {
    type Item = Result<GeneveOption<&'a [u8]>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match GeneveOption::new_checked(self.rest) {
            Ok(option) => {
                let (this, rest) = self.rest.split_at(option.total_len());
                self.rest = rest;
                Some(Ok(GeneveOption::new_unchecked(this)))
            }
            Err(err) => {
                self.rest = &[];
                Some(Err(err))
            }
        }
    }
}

/// The meaning of one option TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GeneveOptionRepr<'a> {
    /// Option Class.
    pub class: u16,
    /// Type, critical bit included.
    pub option_type: u8,
    /// Option data: a multiple of 4 bytes, at most [`MAX_OPTION_DATA_LEN`].
    pub data: &'a [u8],
}

impl<'a> GeneveOptionRepr<'a> {
    /// Parse one option.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        option: &GeneveOption<&'a T>,
    ) -> Result<GeneveOptionRepr<'a>, WireError> {
        option.check_len()?;
        Ok(GeneveOptionRepr {
            class: option.class(),
            option_type: option.option_type(),
            data: option.data(),
        })
    }

    /// Whether the option is critical.
    pub fn critical(&self) -> bool {
        self.option_type & OPTION_TYPE_CRITICAL != 0
    }

    /// Length of the TLV this representation emits.
    pub fn buffer_len(&self) -> usize {
        OPTION_HEADER_LEN + self.data.len()
    }

    /// Write the TLV, refusing data of a length the Length field cannot
    /// express or a buffer too short for it.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        option: &mut GeneveOption<T>,
    ) -> Result<(), WireError> {
        let len = self.data.len();
        if !len.is_multiple_of(4) || len > MAX_OPTION_DATA_LEN {
            return Err(WireError::BadField {
                header: Header::GeneveOption,
                field: "data length",
                value: len as u32,
                expected: "a multiple of 4 bytes, at most 124",
            });
        }
        need(
            Header::GeneveOption,
            self.buffer_len(),
            option.buffer.as_ref().len(),
        )?;
        option.set_class(self.class);
        option.set_option_type(self.option_type);
        option.set_data_len(len);
        option.data_mut().copy_from_slice(self.data);
        Ok(())
    }
}

/// Write `options` one after another into the start of `out`; return the
/// bytes written, or why they do not make a valid options area.
pub fn emit_options(options: &[GeneveOptionRepr], out: &mut [u8]) -> Result<usize, WireError> {
    let total: usize = options.iter().map(GeneveOptionRepr::buffer_len).sum();
    if total > MAX_OPTIONS_LEN {
        return Err(WireError::BadField {
            header: Header::Geneve,
            field: "options length",
            value: total as u32,
            expected: "at most 252 bytes",
        });
    }
    let mut offset = 0;
    for option in options {
        option.emit(&mut GeneveOption::new_unchecked(&mut out[offset..]))?;
        offset += option.buffer_len();
    }
    Ok(offset)
}

/// The meaning of a Geneve header. Options stay raw (and validated) so
/// that parsing allocates nothing; iterate them with [`OptionIter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr<'a> {
    /// The virtual network identifier.
    pub vni: Vni,
    /// Protocol Type of the payload.
    pub protocol_type: u16,
    /// O bit: a control packet.
    pub oam: bool,
    /// C bit: critical options present.
    pub critical: bool,
    /// The options area: whole TLVs, a multiple of 4 bytes, at most 252.
    pub options: &'a [u8],
}

impl<'a> Repr<'a> {
    /// Parse a Geneve header, refusing an unknown version or an options
    /// area whose TLVs do not add up to Opt Len.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>, WireError> {
        packet.check_len()?;
        if packet.version() != VERSION {
            return Err(WireError::BadField {
                header: Header::Geneve,
                field: "version",
                value: packet.version().into(),
                expected: "0",
            });
        }
        for option in packet.option_iter() {
            option?;
        }
        Ok(Repr {
            vni: packet.vni(),
            protocol_type: packet.protocol_type(),
            oam: packet.oam(),
            critical: packet.critical(),
            options: packet.options(),
        })
    }

    /// The options, one TLV at a time.
    pub fn option_iter(&self) -> OptionIter<'a> {
        OptionIter::new(self.options)
    }

    /// Length of the header and options this representation emits.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.options.len()
    }

    /// Write the header and options, refusing an options area that Opt Len
    /// cannot express or a buffer too short for them.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
    ) -> Result<(), WireError> {
        let len = self.options.len();
        if !len.is_multiple_of(4) || len > MAX_OPTIONS_LEN {
            return Err(WireError::BadField {
                header: Header::Geneve,
                field: "options length",
                value: len as u32,
                expected: "a multiple of 4 bytes, at most 252",
            });
        }
        need(
            Header::Geneve,
            self.buffer_len(),
            packet.buffer.as_ref().len(),
        )?;
        packet.buffer.as_mut()[field::VER_OPT_LEN] = 0;
        packet.set_version(VERSION);
        packet.set_options_len(len);
        packet.buffer.as_mut()[field::FLAGS] = 0;
        packet.set_oam(self.oam);
        packet.set_critical(self.critical);
        packet.clear_reserved();
        packet.set_protocol_type(self.protocol_type);
        packet.set_vni(self.vni);
        packet.options_mut().copy_from_slice(self.options);
        Ok(())
    }
}

impl fmt::Display for Repr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "Geneve vni={} proto={:#06x} options={}B",
            self.vni,
            self.protocol_type,
            self.options.len()
        )?;
        if self.oam {
            f.write_str(" O")?;
        }
        if self.critical {
            f.write_str(" C")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Version 0, Opt Len 3 (12 bytes), C set, protocol 0x6558, VNI 0xabcdef,
    // then two options: class 0x0102 type 0x83 (critical) with 4 data bytes,
    // and class 0xffff type 0x01 with no data; then 2 payload bytes.
    static PACKET_BYTES: [u8; 22] = [
        0x03, 0x40, 0x65, 0x58, 0xab, 0xcd, 0xef, 0x00, // base header
        0x01, 0x02, 0x83, 0x01, 0xde, 0xad, 0xbe, 0xef, // option 1
        0xff, 0xff, 0x01, 0x00, // option 2
        0x12, 0x34, // payload
    ];

    fn options() -> [GeneveOptionRepr<'static>; 2] {
        [
            GeneveOptionRepr {
                class: 0x0102,
                option_type: 0x83,
                data: &[0xde, 0xad, 0xbe, 0xef],
            },
            GeneveOptionRepr {
                class: 0xffff,
                option_type: 0x01,
                data: &[],
            },
        ]
    }

    fn repr() -> Repr<'static> {
        Repr {
            vni: Vni::new(0xab_cdef).unwrap(),
            protocol_type: PROTOCOL_ETHERNET,
            oam: false,
            critical: true,
            options: &PACKET_BYTES[8..20],
        }
    }

    #[test]
    fn deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.version(), 0);
        assert_eq!(packet.options_len(), 12);
        assert_eq!(packet.header_len(), 20);
        assert!(!packet.oam());
        assert!(packet.critical());
        assert_eq!(packet.protocol_type(), 0x6558);
        assert_eq!(packet.vni().get(), 0xab_cdef);
        assert_eq!(packet.payload(), &[0x12, 0x34]);

        let opts: Vec<_> = packet.option_iter().map(Result::unwrap).collect();
        assert_eq!(opts.len(), 2);
        assert_eq!(opts[0].class(), 0x0102);
        assert_eq!(opts[0].option_type(), 0x83);
        assert!(opts[0].critical());
        assert_eq!(opts[0].data(), &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(opts[1].class(), 0xffff);
        assert!(!opts[1].critical());
        assert_eq!(opts[1].data(), &[] as &[u8]);
    }

    #[test]
    fn construct() {
        let mut bytes = [0xa5u8; 22];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_version(0);
        packet.set_options_len(12);
        packet.set_oam(false);
        packet.set_critical(true);
        packet.clear_reserved();
        packet.set_protocol_type(PROTOCOL_ETHERNET);
        packet.set_vni(Vni::new(0xab_cdef).unwrap());
        let mut option = GeneveOption::new_unchecked(&mut packet.options_mut()[..8]);
        option.set_class(0x0102);
        option.set_option_type(0x83);
        option.set_data_len(4);
        option.data_mut().copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let mut option = GeneveOption::new_unchecked(&mut packet.options_mut()[8..]);
        option.set_class(0xffff);
        option.set_option_type(0x01);
        option.set_data_len(0);
        packet.payload_mut().copy_from_slice(&[0x12, 0x34]);
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn parse() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(repr, self::repr());
        let opts: Vec<_> = repr
            .option_iter()
            .map(|o| GeneveOptionRepr::parse(&o.unwrap()).unwrap())
            .collect();
        assert_eq!(opts, options());
    }

    #[test]
    fn emit() {
        let mut options_area = [0u8; 12];
        assert_eq!(emit_options(&options(), &mut options_area), Ok(12));
        let repr = Repr {
            options: &options_area,
            ..repr()
        };
        let mut bytes = [0xa5u8; 22];
        bytes[20..].copy_from_slice(&[0x12, 0x34]);
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]))
            .unwrap();
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn refuses_truncated_header_and_options() {
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..5]),
            Err(WireError::Truncated {
                header: Header::Geneve,
                needed: 8,
                available: 5
            })
        );
        // The base header is there, but Opt Len says 12 option bytes follow.
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..15]),
            Err(WireError::Truncated {
                header: Header::Geneve,
                needed: 20,
                available: 15
            })
        );
    }

    #[test]
    fn refuses_option_running_past_opt_len() {
        let mut bytes = PACKET_BYTES;
        bytes[11] = 0x03; // option 1 claims 12 data bytes, only 8 remain
        let err = Repr::parse(&Packet::new_unchecked(&bytes[..])).unwrap_err();
        assert_eq!(
            err,
            WireError::Truncated {
                header: Header::GeneveOption,
                needed: 16,
                available: 12
            }
        );
    }

    #[test]
    fn refuses_unknown_version() {
        let mut bytes = PACKET_BYTES;
        bytes[0] |= 0x40;
        let err = Repr::parse(&Packet::new_unchecked(&bytes[..])).unwrap_err();
        assert!(matches!(
            err,
            WireError::BadField {
                field: "version",
                value: 1,
                ..
            }
        ));
    }

    #[test]
    fn option_iter_stops_after_error() {
        let mut iter = OptionIter::new(&[0x00, 0x01, 0x02]);
        assert!(matches!(iter.next(), Some(Err(_))));
        assert!(iter.next().is_none());
    }

    #[test]
    fn emit_refuses_inexpressible_lengths() {
        let odd = GeneveOptionRepr {
            class: 1,
            option_type: 1,
            data: &[1, 2, 3],
        };
        let mut out = [0u8; 16];
        assert!(emit_options(&[odd], &mut out).is_err());

        let big = [0u8; 124];
        let opt = GeneveOptionRepr {
            class: 1,
            option_type: 1,
            data: &big,
        };
        let mut out = [0u8; 512];
        // 3 × 128 bytes = 384 > 252
        assert!(matches!(
            emit_options(&[opt, opt, opt], &mut out),
            Err(WireError::BadField {
                field: "options length",
                ..
            })
        ));

        let unaligned = Repr {
            options: &[1, 2, 3],
            ..repr()
        };
        assert!(
            unaligned
                .emit(&mut Packet::new_unchecked(&mut out[..]))
                .is_err()
        );
        let no_options = Repr {
            options: &[],
            ..repr()
        };
        assert!(matches!(
            no_options.emit(&mut Packet::new_unchecked(&mut out[..4])),
            Err(WireError::Truncated { .. })
        ));
    }

    #[test]
    fn display() {
        let packet = Packet::new_unchecked(&PACKET_BYTES[..]);
        assert_eq!(
            packet.to_string(),
            "Geneve vni=11259375 proto=0x6558 options=12B C"
        );
    }
}
