//! Every reason the switch drops a frame: the wire-level reasons of
//! `podswitch-encap` plus the switch's own, counted per port.

use std::fmt;

use podswitch_encap::DropReason;

macro_rules! switch_drops {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// Why the switch dropped a frame. Closed: each drop has one reason.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum DropCause {
            /// Malformed or unacceptable on the wire (decap/encap).
            Wire(DropReason),
            $($(#[doc = $doc])* $variant,)*
        }

        const OWN: &[DropCause] = &[$(DropCause::$variant,)*];
        const OWN_NAMES: &[&str] = &[$($name,)*];
    };
}

switch_drops! {
    /// Shorter than an Ethernet header.
    Runt => "runt",
    /// Addressed to a MAC that is not the switch's router MAC.
    NotOurMac => "not_our_mac",
    /// A broadcast other than ARP.
    Broadcast => "broadcast",
    /// A multicast frame (IPv6 neighbour discovery, mDNS, …).
    Multicast => "multicast",
    /// Neither IPv4 nor ARP, nor IPv6 from a pod with an IPv6 address.
    NotIpv4 => "not_ipv4",
    /// An IPv6 packet shorter than its header says, or not version 6.
    BadIpv6 => "bad_ipv6",
    /// A malformed neighbour solicitation (hop limit, checksum, options).
    BadNeighborSolicit => "bad_neighbor_solicit",
    /// A neighbour solicitation the switch does not answer (duplicate
    /// address detection, or for an address it does not route).
    NeighborUnanswered => "neighbor_unanswered",
    /// An ARP packet that is not a request, or is malformed.
    BadArp => "bad_arp",
    /// An ARP request the switch does not answer (gratuitous, or for an
    /// address it does not route).
    ArpUnanswered => "arp_unanswered",
    /// The inner IPv4 header is truncated or inconsistent, or its
    /// checksum fails.
    BadIpv4 => "bad_ipv4",
    /// TTL 0 or 1: routing it would expire it.
    TtlExpired => "ttl_expired",
    /// No route to the destination address.
    NoRoute => "no_route",
    /// The route points at a port that is gone.
    PortGone => "port_gone",
    /// The route points at a peer whose underlay next hop is not resolved yet.
    PeerUnresolved => "peer_unresolved",
    /// A tunnel packet from an address that is not a configured peer.
    UnknownPeer => "unknown_peer",
    /// A frame from the tunnel routed back into the tunnel.
    TunnelHairpin => "tunnel_hairpin",
    /// A pod sent with a MAC, IPv4 or IPv6 source that is not its own.
    Spoofed => "spoofed",
    /// The destination port's TX ring was full.
    TxRingFull => "tx_ring_full",
    /// The destination device refused the frame (TAP write failed).
    TxError => "tx_error",
    /// No free buffer frame to copy a frame (or a segment of a cut
    /// super-frame) into: the pool is exhausted.
    NoFreeFrame => "no_free_frame",
    /// A multi-buffer packet whose last descriptor did not come with the
    /// rest (the kernel publishes a packet whole: never expected).
    IncompletePacket => "incomplete_packet",
    /// A new connection to a Service port with no usable endpoint
    /// (`service_translation = "switch"`).
    ServiceNoEndpoints => "service_no_endpoints",
    /// A new connection while the connection table (the Services' or the
    /// policies') is full.
    ConntrackFull => "conntrack_full",
    /// A new Service connection whose reply tuple another connection has
    /// (the same client port to two Services that picked one endpoint).
    ConntrackClash => "conntrack_clash",
    /// A later IP fragment to a Service address whose first fragment was
    /// not translated (it was lost or refused, or came later).
    ServiceFragmentUnknown => "service_fragment_unknown",
    /// A NetworkPolicy selecting the receiving pod allows no such
    /// connection to it.
    PolicyDeniedIngress => "policy_denied_ingress",
    /// A NetworkPolicy selecting the sending pod allows no such
    /// connection from it.
    PolicyDeniedEgress => "policy_denied_egress",
}

/// How many drop reasons there are, wire and own.
pub const DROP_COUNT: usize = DropReason::COUNT + OWN.len();

impl DropCause {
    /// Every reason, in counter order.
    pub fn all() -> impl Iterator<Item = DropCause> {
        DropReason::ALL
            .iter()
            .copied()
            .map(DropCause::Wire)
            .chain(OWN.iter().copied())
    }

    /// The reason's position in a counter array of [`DROP_COUNT`].
    pub fn index(self) -> usize {
        match self {
            DropCause::Wire(reason) => reason.index(),
            own => DropReason::COUNT + OWN.iter().position(|&d| d == own).unwrap_or(0),
        }
    }

    /// The reason's stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DropCause::Wire(reason) => reason.as_str(),
            own => OWN_NAMES[own.index() - DropReason::COUNT],
        }
    }
}

impl From<DropReason> for DropCause {
    fn from(reason: DropReason) -> DropCause {
        DropCause::Wire(reason)
    }
}

impl fmt::Display for DropCause {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_cover_every_reason_once() {
        let all: Vec<DropCause> = DropCause::all().collect();
        assert_eq!(all.len(), DROP_COUNT);
        for (i, d) in all.iter().enumerate() {
            assert_eq!(d.index(), i, "{d}");
        }
        let mut names: Vec<_> = all.iter().map(|d| d.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DROP_COUNT, "names are unique");
    }
}
