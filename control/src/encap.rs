//! Conversions to `podswitch-encap`'s wire types (the `encap` feature),
//! for the daemon's data path.

use podswitch_encap::TunnelKind;
use podswitch_encap::wire::EthernetAddress;

use crate::mac::MacAddr;
use crate::protocol::Encap;

impl From<MacAddr> for EthernetAddress {
    fn from(mac: MacAddr) -> EthernetAddress {
        EthernetAddress(mac.0)
    }
}

impl From<EthernetAddress> for MacAddr {
    fn from(mac: EthernetAddress) -> MacAddr {
        MacAddr(mac.0)
    }
}

impl From<Encap> for TunnelKind {
    fn from(encap: Encap) -> TunnelKind {
        match encap {
            Encap::Vxlan => TunnelKind::Vxlan,
            Encap::Geneve => TunnelKind::Geneve,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encap_names_match_the_tunnel_kinds() {
        for encap in [Encap::Vxlan, Encap::Geneve] {
            assert_eq!(encap.to_string(), TunnelKind::from(encap).as_str());
        }
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        assert_eq!(MacAddr::from(EthernetAddress::from(mac)), mac);
    }
}
