//! The 24-bit virtual network identifier shared by VXLAN and Geneve.

use core::fmt;

/// A VXLAN or Geneve network identifier: 24 bits, so at most 16 777 215.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Vni(u32);

impl Vni {
    /// The largest VNI.
    pub const MAX: u32 = 0x00ff_ffff;

    /// A VNI, or `None` when `value` does not fit in 24 bits.
    pub const fn new(value: u32) -> Option<Vni> {
        if value <= Self::MAX {
            Some(Vni(value))
        } else {
            None
        }
    }

    /// The VNI as a number.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The VNI from its three network-order bytes.
    pub(crate) const fn from_bytes(bytes: [u8; 3]) -> Vni {
        Vni(((bytes[0] as u32) << 16) | ((bytes[1] as u32) << 8) | bytes[2] as u32)
    }

    /// The VNI's three network-order bytes.
    pub(crate) const fn to_bytes(self) -> [u8; 3] {
        [(self.0 >> 16) as u8, (self.0 >> 8) as u8, self.0 as u8]
    }
}

impl TryFrom<u32> for Vni {
    type Error = u32;

    /// Fails with the value itself when it does not fit in 24 bits.
    fn try_from(value: u32) -> Result<Vni, u32> {
        Vni::new(value).ok_or(value)
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range() {
        assert_eq!(Vni::new(0).map(Vni::get), Some(0));
        assert_eq!(Vni::new(Vni::MAX).map(Vni::get), Some(Vni::MAX));
        assert_eq!(Vni::new(Vni::MAX + 1), None);
        assert_eq!(Vni::try_from(1 << 24), Err(1 << 24));
    }

    #[test]
    fn bytes_round_trip() {
        let vni = Vni::new(0x12_3456).unwrap();
        assert_eq!(vni.to_bytes(), [0x12, 0x34, 0x56]);
        assert_eq!(Vni::from_bytes([0x12, 0x34, 0x56]), vni);
    }
}
