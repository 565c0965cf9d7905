//! Why the data path dropped a frame: one closed list the switch counts by.

use core::fmt;

macro_rules! drop_reasons {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// Why a frame was dropped by decapsulation, encapsulation, IPv4
        /// header checks or offload handling (virtio-net headers,
        /// segmentation).
        ///
        /// Closed on purpose: every drop has exactly one of these reasons,
        /// and [`DropReason::ALL`] lets a counter array cover them all.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum DropReason {
            $($(#[doc = $doc])* $variant,)*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            /// How many reasons there are.
            pub const COUNT: usize = Self::ALL.len();

            /// The reason's stable snake_case name, as stats print it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// Shorter than an Ethernet header (or a declared VLAN tag).
    TruncatedEthernet => "truncated_ethernet",
    /// Addressed to another unicast MAC than the uplink's: a frame a
    /// flooding or mirroring underlay (or promiscuous mode) let in, which
    /// the kernel drops as meant for another host.
    NotOurUplinkMac => "not_our_uplink_mac",
    /// The outer EtherType is neither IPv4 nor IPv6.
    NotIp => "not_ip",
    /// Shorter than the IPv4 header or its Total Length.
    TruncatedIpv4 => "truncated_ipv4",
    /// IPv4 version, IHL or Total Length is inconsistent.
    BadIpv4Header => "bad_ipv4_header",
    /// The IPv4 header checksum does not verify.
    BadIpv4Checksum => "bad_ipv4_checksum",
    /// IPv4 options the kernel refuses (`ip_options_compile`): a length
    /// of 0 or 1 or past the header, an option too short for its type, a
    /// pointer out of place, a repeated option (see [`crate::ipv4_options`]).
    BadIpv4Options => "bad_ipv4_options",
    /// An IPv4 fragment: tunnel packets must arrive whole.
    Ipv4Fragment => "ipv4_fragment",
    /// Shorter than the IPv6 header or its Payload Length.
    TruncatedIpv6 => "truncated_ipv6",
    /// IPv6 version is not 6.
    BadIpv6Header => "bad_ipv6_header",
    /// The outer packet is not UDP.
    NotUdp => "not_udp",
    /// The outer destination is not this node's VTEP address.
    NotForUs => "not_for_us",
    /// The outer UDP destination port is not the tunnel's.
    WrongUdpPort => "wrong_udp_port",
    /// Shorter than a UDP header.
    TruncatedUdp => "truncated_udp",
    /// The UDP Length disagrees with the IP packet.
    BadUdpLength => "bad_udp_length",
    /// The UDP checksum does not verify (or is zero over IPv6).
    BadUdpChecksum => "bad_udp_checksum",
    /// Shorter than the VXLAN or Geneve header and its options.
    TruncatedTunnel => "truncated_tunnel",
    /// VXLAN I flag clear.
    VxlanBadFlags => "vxlan_bad_flags",
    /// Geneve version other than 0.
    GeneveBadVersion => "geneve_bad_version",
    /// Geneve Protocol Type is not Ethernet (0x6558).
    GeneveBadProtocol => "geneve_bad_protocol",
    /// Geneve O bit set: a control message, not a frame for a pod.
    GeneveOam => "geneve_oam",
    /// Geneve option TLVs do not add up to Opt Len.
    GeneveBadOptions => "geneve_bad_options",
    /// A critical Geneve option this node does not understand.
    GeneveCriticalOption => "geneve_critical_option",
    /// The VNI is not this network's.
    UnknownVni => "unknown_vni",
    /// The encapsulated frame is shorter than an Ethernet header.
    TruncatedInner => "truncated_inner",
    /// Not enough headroom in the buffer to prepend the outer headers.
    NoHeadroom => "no_headroom",
    /// The frame would exceed the underlay MTU once encapsulated (or, for a
    /// super-frame handed to the kernel whole, the 65535-byte IP length,
    /// or its segments the underlay MTU).
    Oversize => "oversize",
    /// Shorter than the virtio-net header a TAP port puts before a frame.
    TruncatedVnetHeader => "truncated_vnet_header",
    /// A virtio-net header with unknown flags or GSO type, or fields that
    /// disagree (GSO size 0, a checksum position outside the frame, …).
    BadVnetHeader => "bad_vnet_header",
    /// A frame to segment that is not TCP over IPv4 (the only kind segmented).
    NotTcpIpv4 => "not_tcp_ipv4",
    /// A TCP header cut short by the IPv4 Total Length, or whose data
    /// offset is under 5 words or runs past the packet.
    BadTcpHeader => "bad_tcp_header",
}

impl DropReason {
    /// The reason's position in [`DropReason::ALL`], for counter arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_matches_all() {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
        assert_eq!(DropReason::COUNT, DropReason::ALL.len());
    }

    #[test]
    fn names_are_unique_snake_case() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert!(names.iter().all(|n| {
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        }));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
    }
}
