//! VXLAN header (RFC 7348), in the manner of `smoltcp::wire`.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The I flag must be set for the VNI to be valid; the reserved bits are
//! sent as zero and ignored on receipt, as the RFC says.

use core::fmt;

use crate::error::{Header, WireError, need};
use crate::vni::Vni;

/// The IANA-assigned VXLAN UDP port.
pub const UDP_PORT: u16 = 4789;
/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// The I flag: the VNI field is valid.
pub const FLAG_VNI: u8 = 0x08;

mod field {
    use core::ops::{Range, RangeFrom};

    pub const FLAGS: usize = 0;
    pub const RESERVED_0: Range<usize> = 1..4;
    pub const VNI: Range<usize> = 4..7;
    pub const RESERVED_1: usize = 7;
    pub const PAYLOAD: RangeFrom<usize> = 8..;
}

/// A read/write view of a VXLAN header and the frame it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// View `buffer` as VXLAN without checking its length.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// View `buffer` as VXLAN, refusing a buffer shorter than the header.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Check that every accessor can be called without panicking.
    pub fn check_len(&self) -> Result<(), WireError> {
        need(Header::Vxlan, HEADER_LEN, self.buffer.as_ref().len())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the I flag (valid VNI) is set.
    pub fn vni_valid(&self) -> bool {
        self.flags() & FLAG_VNI != 0
    }

    /// The VXLAN network identifier.
    pub fn vni(&self) -> Vni {
        let data = self.buffer.as_ref();
        Vni::from_bytes([data[4], data[5], data[6]])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The encapsulated Ethernet frame.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Set the flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Set the VXLAN network identifier.
    pub fn set_vni(&mut self, vni: Vni) {
        self.buffer.as_mut()[field::VNI].copy_from_slice(&vni.to_bytes());
    }

    /// Zero both reserved fields.
    pub fn clear_reserved(&mut self) {
        let data = self.buffer.as_mut();
        data[field::RESERVED_0].fill(0);
        data[field::RESERVED_1] = 0;
    }

    /// The encapsulated Ethernet frame, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]>> fmt::Display for Packet<T> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match Repr::parse(self) {
            Ok(repr) => write!(f, "{repr}"),
            Err(err) => write!(f, "VXLAN ({err})"),
        }
    }
}

/// The meaning of a VXLAN header: the network it carries a frame for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// The VXLAN network identifier.
    pub vni: Vni,
}

impl Repr {
    /// Parse a VXLAN header, refusing one whose I flag is clear.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, WireError> {
        packet.check_len()?;
        if !packet.vni_valid() {
            return Err(WireError::BadField {
                header: Header::Vxlan,
                field: "flags",
                value: packet.flags().into(),
                expected: "the I flag (0x08) set",
            });
        }
        Ok(Repr { vni: packet.vni() })
    }

    /// Length of the header this representation emits.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Write the header: I flag set, reserved fields zero.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_flags(FLAG_VNI);
        packet.clear_reserved();
        packet.set_vni(self.vni);
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "VXLAN vni={}", self.vni)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // VNI 0x123456, followed by 4 payload bytes.
    static PACKET_BYTES: [u8; 12] = [
        0x08, 0x00, 0x00, 0x00, 0x12, 0x34, 0x56, 0x00, 0xaa, 0xbb, 0xcc, 0xdd,
    ];
    static PAYLOAD_BYTES: [u8; 4] = [0xaa, 0xbb, 0xcc, 0xdd];

    fn repr() -> Repr {
        Repr {
            vni: Vni::new(0x12_3456).unwrap(),
        }
    }

    #[test]
    fn deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.flags(), 0x08);
        assert!(packet.vni_valid());
        assert_eq!(packet.vni().get(), 0x12_3456);
        assert_eq!(packet.payload(), &PAYLOAD_BYTES[..]);
    }

    #[test]
    fn construct() {
        let mut bytes = [0xffu8; 12];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_flags(FLAG_VNI);
        packet.clear_reserved();
        packet.set_vni(Vni::new(0x12_3456).unwrap());
        packet.payload_mut().copy_from_slice(&PAYLOAD_BYTES);
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn parse() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(Repr::parse(&packet), Ok(repr()));
    }

    #[test]
    fn emit() {
        let mut bytes = [0xffu8; 12];
        bytes[8..].copy_from_slice(&PAYLOAD_BYTES);
        repr().emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn refuses_truncated() {
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..7]),
            Err(WireError::Truncated {
                header: Header::Vxlan,
                needed: 8,
                available: 7
            })
        );
    }

    #[test]
    fn refuses_clear_i_flag_and_ignores_reserved_bits() {
        let mut bytes = PACKET_BYTES;
        bytes[0] = 0x00;
        let err = Repr::parse(&Packet::new_unchecked(&bytes[..])).unwrap_err();
        assert!(matches!(err, WireError::BadField { field: "flags", .. }));

        bytes[0] = 0xff;
        bytes[1] = 0xff;
        bytes[7] = 0xff;
        assert_eq!(Repr::parse(&Packet::new_unchecked(&bytes[..])), Ok(repr()));
    }

    #[test]
    fn display() {
        let packet = Packet::new_unchecked(&PACKET_BYTES[..]);
        assert_eq!(packet.to_string(), "VXLAN vni=1193046");
        assert_eq!(
            Packet::new_unchecked(&PACKET_BYTES[..3]).to_string(),
            "VXLAN (VXLAN header truncated: needs 8 bytes, the buffer has 3)"
        );
    }
}
