//! The typed error of the checked constructors and `Repr::parse` functions.

use core::fmt;

/// The header a [`WireError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Header {
    /// Ethernet II header.
    Ethernet,
    /// 802.1Q / 802.1ad VLAN tag.
    Vlan,
    /// ARP packet (Ethernet/IPv4).
    Arp,
    /// IPv4 header.
    Ipv4,
    /// IPv6 header.
    Ipv6,
    /// ICMPv6 message.
    Icmpv6,
    /// UDP header.
    Udp,
    /// VXLAN header.
    Vxlan,
    /// Geneve base header.
    Geneve,
    /// One Geneve option TLV.
    GeneveOption,
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Header::Ethernet => "Ethernet header",
            Header::Vlan => "VLAN tag",
            Header::Arp => "ARP packet",
            Header::Ipv4 => "IPv4 header",
            Header::Ipv6 => "IPv6 header",
            Header::Icmpv6 => "ICMPv6 message",
            Header::Udp => "UDP header",
            Header::Vxlan => "VXLAN header",
            Header::Geneve => "Geneve header",
            Header::GeneveOption => "Geneve option",
        })
    }
}

/// Why a buffer could not be viewed as, or parsed into, a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer ends before the header (or the length it declares) does.
    #[error("{header} truncated: needs {needed} bytes, the buffer has {available}")]
    Truncated {
        /// The header that does not fit.
        header: Header,
        /// Bytes the header needs, counting from its first byte.
        needed: usize,
        /// Bytes the buffer has from that first byte.
        available: usize,
    },
    /// A field holds a value this implementation refuses.
    #[error("{header}: {field} is {value}, expected {expected}")]
    BadField {
        /// The header the field belongs to.
        header: Header,
        /// The field's name.
        field: &'static str,
        /// The value found.
        value: u32,
        /// What a valid value looks like.
        expected: &'static str,
    },
}

impl WireError {
    /// The header the error is about.
    pub fn header(&self) -> Header {
        match *self {
            WireError::Truncated { header, .. } | WireError::BadField { header, .. } => header,
        }
    }
}

/// Check that `available` bytes hold `needed`, or name what is short.
pub(crate) fn need(header: Header, needed: usize, available: usize) -> Result<(), WireError> {
    if available < needed {
        Err(WireError::Truncated {
            header,
            needed,
            available,
        })
    } else {
        Ok(())
    }
}
