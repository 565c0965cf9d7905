//! Decapsulation of arbitrary uplink packets, VXLAN and Geneve, with and
//! without the uplink's MAC to check, and with a veth uplink's unfinished
//! checksums taken: never panics, an accepted packet's inner frame lies
//! inside it, and a refused one is left unchanged.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use podswitch_encap::wire::EthernetAddress;
use podswitch_encap::{Decapsulator, TunnelKind, Vni};

fuzz_target!(|packet: &[u8]| {
    let vni = Vni::new(1).unwrap();
    let locals = [
        IpAddr::V4(Ipv4Addr::new(10, 1, 0, 12)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x12)),
    ];
    for kind in [TunnelKind::Vxlan, TunnelKind::Geneve] {
        for (local, local_mac) in locals
            .into_iter()
            .zip([None, Some(EthernetAddress([2, 0, 0, 0, 0, 0x12]))])
        {
            let mut decap = Decapsulator {
                local_mac,
                ..Decapsulator::new(kind, local, vni)
            };
            decap.known_critical_options.push((0x0102, 0x85));
            if let Ok(d) = decap.decapsulate(packet) {
                assert!(d.inner.end <= packet.len());
                assert!(d.inner.len() >= 14);
                assert!(d.options.end <= d.inner.start);
                assert_eq!(d.vni, vni);
            }
            // What a veth uplink takes besides: a refused packet is left
            // as it came.
            let veth = Decapsulator {
                unfinished_checksums: true,
                ..decap.clone()
            };
            let mut copy = packet.to_vec();
            match veth.decapsulate_unfinished(&mut copy) {
                Ok(d) => {
                    assert!(d.inner.end <= copy.len());
                    assert!(d.inner.len() >= 14);
                }
                Err(_) => assert_eq!(copy, packet),
            }
        }
    }
});
